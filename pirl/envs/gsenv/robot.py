"""The Franka of an asset folder as a ManiSkill agent, and its link poses at the capture
configuration.

The URDF comes from the user's folder, so the agent class is made per folder
(`agent_class`); ManiSkill accepts an agent class in place of a registered uid. Control
modes and gains are those of ManiSkill-GS's `my_franka` (mani_skill_gs/env_simulation/
ms_robot.py): PD gains 1e3 / 1e2, force limit 100; `pd_ee_target_delta_pose` moves the
end-effector target by ±0.1 m and ±0.1 rad (axis-angle) per step, in the robot base frame,
accumulated on the previous target; the gripper action in [-1, 1] maps to a finger target
in [-0.01, 0.04] m (below zero keeps squeezing thin objects).
"""
from __future__ import annotations

import contextlib
import io
from copy import deepcopy

import numpy as np
import torch

from pirl.envs.gsenv.assets import UrdfInfo

CONTROL_MODES = ("pd_ee_target_delta_pose", "pd_ee_delta_pose", "pd_joint_delta_pos", "pd_joint_pos")
ARM_STIFFNESS, ARM_DAMPING, ARM_FORCE = 1e3, 1e2, 100.0
GRIPPER_STIFFNESS, GRIPPER_DAMPING, GRIPPER_FORCE = 1e3, 1e2, 100.0
EE_STEP = 0.1  # max |Δposition| (m) and |Δrotation| (rad) per control step
GRIPPER_RANGE = (-0.01, 0.04)  # finger joint target (m) for gripper actions -1 .. 1


def agent_class(urdf: UrdfInfo, default_qpos: tuple[float, ...]):
    """A ManiSkill BaseAgent subclass driving the Franka of `urdf`."""
    import sapien
    from mani_skill.agents.base_agent import BaseAgent, Keyframe
    from mani_skill.agents.controllers import (PDEEPoseControllerConfig, PDJointPosControllerConfig,
                                               PDJointPosMimicControllerConfig)

    arm, gripper, ee = list(urdf.arm_joints), list(urdf.gripper_joints), urdf.ee_link
    finger_links = [n for n in urdf.links if n.endswith(("leftfinger", "rightfinger"))]

    class GSEnvFranka(BaseAgent):
        uid = "pirl_gsenv_franka"
        urdf_path = str(urdf.path)
        urdf_config = dict(
            _materials=dict(gripper=dict(static_friction=2.0, dynamic_friction=2.0, restitution=0.0)),
            link={n: dict(material="gripper", patch_radius=0.1, min_patch_radius=0.1) for n in finger_links},
        )
        keyframes = dict(rest=Keyframe(qpos=np.asarray(default_qpos), pose=sapien.Pose()))
        arm_joint_names = arm
        gripper_joint_names = gripper
        ee_link_name = ee

        @property
        def _controller_configs(self):
            def ee_pose(use_target: bool):
                return PDEEPoseControllerConfig(
                    joint_names=arm, pos_lower=-EE_STEP, pos_upper=EE_STEP, rot_lower=-EE_STEP, rot_upper=EE_STEP,
                    stiffness=ARM_STIFFNESS, damping=ARM_DAMPING, force_limit=ARM_FORCE, ee_link=ee,
                    urdf_path=str(urdf.path), use_delta=True, use_target=use_target, normalize_action=False)

            joint_kw = dict(stiffness=ARM_STIFFNESS, damping=ARM_DAMPING, force_limit=ARM_FORCE, normalize_action=False)
            grip = PDJointPosMimicControllerConfig(  # the second finger follows the first
                gripper, lower=GRIPPER_RANGE[0], upper=GRIPPER_RANGE[1], stiffness=GRIPPER_STIFFNESS,
                damping=GRIPPER_DAMPING, force_limit=GRIPPER_FORCE, mimic={gripper[0]: {"joint": gripper[1]}})
            arms = {
                "pd_ee_target_delta_pose": ee_pose(True),
                "pd_ee_delta_pose": ee_pose(False),
                "pd_joint_delta_pos": PDJointPosControllerConfig(arm, lower=-0.1, upper=0.1, use_delta=True, **joint_kw),
                "pd_joint_pos": PDJointPosControllerConfig(arm, lower=None, upper=None, **joint_kw),
            }
            return deepcopy({k: dict(arm=v, gripper=grip, balance_passive_force=False) for k, v in arms.items()})

    return GSEnvFranka


def link_poses(urdf: UrdfInfo, qpos: tuple[float, ...], links: list[str]) -> torch.Tensor:
    """(L, 4, 4) float64 poses of `links` in the robot base (root link) frame at joint
    configuration `qpos` (arm joints, then gripper joints), by forward kinematics of the URDF
    (pytorch_kinematics, the package ManiSkill's own IK uses)."""
    import pytorch_kinematics as pk

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        chain = pk.build_chain_from_urdf(urdf.path.read_bytes()).to(dtype=torch.float64)
    names = chain.get_joint_parameter_names()
    by_name = dict(zip(urdf.arm_joints + urdf.gripper_joints, qpos))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"{urdf.path}: movable joints {missing} have no value in robot.default_qpos")
    fk = chain.forward_kinematics(torch.tensor([[by_name[n] for n in names]], dtype=torch.float64))
    return torch.stack([fk[name].get_matrix()[0] for name in links])
