"""PutCubeOnPlate-v0: pirl's ManiSkill3 task of the seeds' GSEnv (Real2Sim2Real, πRL).

A Franka on a table picks a cube and puts it on a plate. Physics at 500 Hz, control at
10 Hz (50 substeps per action), 100-step episodes; sparse success: the cube within 0.07 m of
the plate centre in xy and 0 - 0.07 m above it (origins of the two objects); instruction
"pick up the cube and put it on the plate". Scene, gains and initial-state ranges follow
ManiSkill-GS (mani_skill_gs/env_simulation/ms_env.py, ms_configs.py): robot base at the
origin, the table top the plane z = 0, cube around (0.4, 0.2) ± (0.1, 0.05), plate around
(0.45, 0) ± (0.05, 0), arm joints N(default, 0.02²), fingers open. Each object starts at
rest on the table (its mesh's lowest point at z = 0). All randomness comes from ManiSkill's
per-env episode RNG, so reset(seed) fixes the initial state.

The asset folder (pirl.envs.gsenv.assets) gives the robot URDF and the object meshes; its
splats are rendered by pirl.envs.gsenv.env, not here: this env's own sensor is the same
camera (`3rd_view_camera`), rendered by SAPIEN when obs_mode asks for images.

    import pirl.envs.gsenv.task, gymnasium as gym
    env = gym.make("PutCubeOnPlate-v0", assets_path=DIR, obs_mode="state",
                   control_mode="pd_ee_target_delta_pose")
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import sapien
import torch
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils.geometry.rotation_conversions import matrix_to_quaternion
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs import Pose
from mani_skill.utils.structs.types import SceneConfig, SimConfig

from pirl.envs.gsenv.assets import check_assets
from pirl.envs.gsenv.camera import Camera
from pirl.envs.gsenv.robot import agent_class

TASK_ID = "PutCubeOnPlate-v0"
INSTRUCTION = "pick up the cube and put it on the plate"
MAX_EPISODE_STEPS = 100
SIM_FREQ, CONTROL_FREQ = 500, 10
CAMERA_UID = "3rd_view_camera"
ROBOT_BASE = (0.0, 0.0, 0.0)
SUCCESS_XY, SUCCESS_DZ = 0.07, 0.07  # m
# Object centre (x, y) and half-range of its uniform initial offset.
OBJECT_INIT = {"cube": ((0.4, 0.2), (0.1, 0.05)), "plate": ((0.45, 0.0), (0.05, 0.0))}
OBJECT_PHYSICS = dict(mass=0.3, static_friction=1.0, dynamic_friction=1.0, restitution=0.0,
                      patch_radius=0.1, min_patch_radius=0.1)
QPOS_NOISE = 0.02  # rad, std of the arm joints' initial offset


def _mesh_rest(path) -> tuple[float, float]:
    """(height of the object frame above the table when the mesh rests on z = 0, volume of
    its convex hull, the collision shape)."""
    import trimesh

    mesh: Any = trimesh.load(str(path), force="mesh")
    return -float(mesh.bounds[0, 2]), float(mesh.convex_hull.volume)


@register_env(TASK_ID, max_episode_steps=MAX_EPISODE_STEPS)
class PutCubeOnPlateEnv(BaseEnv):
    SUPPORTED_REWARD_MODES = ("sparse", "none")

    def __init__(self, *args, assets_path: str, camera: Optional[dict] = None,
                 robot_init_qpos_noise: float = QPOS_NOISE, robot_uids: Any = None, **kwargs):
        if robot_uids is not None:
            raise ValueError(f"{TASK_ID} builds its robot from the asset folder's URDF; do not pass robot_uids")
        self.assets = check_assets(assets_path)
        self.camera = Camera.from_config(camera)
        self.robot_init_qpos_noise = float(robot_init_qpos_noise)
        rest = {name: _mesh_rest(o.mesh) for name, o in self.assets.objects.items()}
        self._rest_z = {name: z for name, (z, _) in rest.items()}
        # ManiSkill-GS gives both objects 0.3 kg; a density from the hull keeps mass and inertia consistent.
        self._density = {name: OBJECT_PHYSICS["mass"] / vol for name, (_, vol) in rest.items()}
        agent = agent_class(self.assets.urdf, self.assets.default_qpos)
        self.SUPPORTED_ROBOTS = [agent]  # the folder's robot is the one this env supports
        super().__init__(*args, robot_uids=agent, **kwargs)

    # ------------------------------------------------------------------ configuration
    @property
    def _default_sim_config(self):
        # ManiSkill-GS's settings: fine contacts and many solver iterations keep the grasp stable.
        return SimConfig(sim_freq=SIM_FREQ, control_freq=CONTROL_FREQ,
                         scene_config=SceneConfig(contact_offset=0.005, solver_position_iterations=25,
                                                  solver_velocity_iterations=2))

    def _camera_config(self) -> CameraConfig:
        c2w = self.camera.cam_to_world
        pose = sapien.Pose(p=c2w[:3, 3].numpy().astype(np.float32),
                           q=matrix_to_quaternion(c2w[:3, :3].float()).numpy())
        return CameraConfig(CAMERA_UID, pose=pose, width=self.camera.width, height=self.camera.height,
                            intrinsic=np.asarray(self.camera.K.numpy()), near=0.01, far=100)

    @property
    def _default_sensor_configs(self):
        return [self._camera_config()]

    @property
    def _default_human_render_camera_configs(self):
        return [self._camera_config()]

    # ------------------------------------------------------------------ scene
    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=list(ROBOT_BASE)))

    def _load_scene(self, options: dict):
        from sapien.physx import PhysxMaterial

        table = self.scene.create_actor_builder()
        # A plane's normal is its +x axis: rotate it to +z (the table top, z = 0).
        up = sapien.Pose(q=[0.7071068, 0.0, -0.7071068, 0.0])
        table.add_plane_collision(pose=up)
        table.add_plane_visual(pose=up, material=[0.16, 0.16, 0.16])
        table.initial_pose = sapien.Pose()
        self.table = table.build_kinematic(name="table")
        self.objects = {}
        for name, asset in self.assets.objects.items():
            b = self.scene.create_actor_builder()
            b.add_visual_from_file(filename=str(asset.mesh))
            b.add_convex_collision_from_file(
                filename=str(asset.mesh), density=self._density[name],
                material=PhysxMaterial(static_friction=OBJECT_PHYSICS["static_friction"],
                                       dynamic_friction=OBJECT_PHYSICS["dynamic_friction"],
                                       restitution=OBJECT_PHYSICS["restitution"]),
                patch_radius=OBJECT_PHYSICS["patch_radius"], min_patch_radius=OBJECT_PHYSICS["min_patch_radius"])
            (x, y), _ = OBJECT_INIT[name]
            b.initial_pose = sapien.Pose(p=[x, y, self._rest_z[name]])
            self.objects[name] = b.build(name=name)
        self.cube, self.plate = self.objects["cube"], self.objects["plate"]

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        b = len(env_idx)
        rng = self._batched_episode_rng[env_idx]
        with torch.device(self.device):
            for name, actor in self.objects.items():
                (x, y), (dx, dy) = OBJECT_INIT[name]
                u = rng.uniform(-1.0, 1.0, size=2)  # (b, 2)
                p = torch.zeros(b, 3)
                p[:, 0] = torch.as_tensor(x + dx * u[:, 0], dtype=torch.float32)
                p[:, 1] = torch.as_tensor(y + dy * u[:, 1], dtype=torch.float32)
                p[:, 2] = self._rest_z[name]
                actor.set_pose(Pose.create_from_pq(p=p, q=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(b, 4)))
                actor.set_linear_velocity(torch.zeros(b, 3))
                actor.set_angular_velocity(torch.zeros(b, 3))
            qpos = np.asarray(self.assets.default_qpos, dtype=np.float64)[None].repeat(b, 0)
            qpos[:, :7] += rng.normal(0.0, self.robot_init_qpos_noise, size=7)
            self.agent.robot.set_pose(sapien.Pose(p=list(ROBOT_BASE)))
            self.agent.reset(torch.as_tensor(qpos, dtype=torch.float32))

    # ------------------------------------------------------------------ task
    def evaluate(self) -> dict:
        cube, plate = self.cube.pose.p, self.plate.pose.p
        dist_xy = torch.linalg.norm(cube[:, :2] - plate[:, :2], dim=1)
        dz = cube[:, 2] - plate[:, 2]
        success = (dist_xy < SUCCESS_XY) & (dz >= 0.0) & (dz <= SUCCESS_DZ)
        return {"success": success, "cube_plate_dist_xy": dist_xy, "cube_above_plate": dz}

    def _get_obs_extra(self, info: dict):
        return dict(tcp_pose=self.agent.robot.links_map[self.assets.urdf.ee_link].pose.raw_pose,
                    cube_pose=self.cube.pose.raw_pose, plate_pose=self.plate.pose.raw_pose)

    def compute_sparse_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return info["success"].float()

    def get_language_instruction(self) -> list[str]:
        return [INSTRUCTION] * self.num_envs
