"""ManiSkill3 (SAPIEN) behind the env protocol.

Two ways to run:
  * CPU sim backend (`sim_backend: cpu`, the default without CUDA): ManiSkill allows one CPU
    env per process, so every env is a `ManiSkillEnv` (`SingleEnv`) in its own worker
    process (`pirl.envs.vector.WorkerBackend`).
  * GPU sim backend (`sim_backend: gpu`): one process simulates all B envs in one batched
    SAPIEN scene; `ManiSkillGPUBackend` is a `Backend` over it.

Options (`env.<split>.init_params`; the task is `id`): control_mode (pd_ee_delta_pose: 7-D end-effector delta pose +
gripper, the seeds' action space; pd_joint_delta_pos: 8-D joint control), state_mode (joint:
robot joint angles qpos as in the seeds; full: ManiSkill's flattened state observation, for
state-only policies), sim_backend, camera (sensor name, default base_camera).

Rendering: SAPIEN needs Vulkan even for state observations; on CPU that is Mesa's lavapipe
(>= 25, Debian bookworm-backports, see scripts/install_sim_deps.sh). Only the chunk's last
step is rendered: intermediate steps run with the state observation mode.

Tasks whose assets ManiSkill would download (bridge / YCB families) are checked before the
env is built: a missing asset folder raises FileNotFoundError naming the folder and how to
provide it, never a download attempt or a prompt.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from pirl.envs.chunked import StepBatch

# ManiSkill asks on stdin before downloading assets; fail instead (no prompt, no hang).
os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")

TASK_DESCRIPTIONS: dict[str, str] = {
    "PickCube-v1": "pick up the red cube and move it to the goal position",
    "PushCube-v1": "push the cube to the goal region",
    "PullCube-v1": "pull the cube to the goal region",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PokeCube-v1": "use the peg to poke the cube to the goal",
    "LiftPegUpright-v1": "lift the peg and stand it upright",
    "PegInsertionSide-v1": "insert the peg into the hole sideways",
    "PlugCharger-v1": "plug the charger into the receptacle",
    "PullCubeTool-v1": "use the tool to pull the cube closer",
    "RollBall-v1": "push the ball so that it rolls to the goal region",
    "PushT-v1": "push the T-shaped block onto the target",
    "PlaceSphere-v1": "place the sphere into the bin",
    "TwoRobotPickCube-v1": "pick up the cube with two robots",
    "PutCarrotOnPlateInScene-v1": "put carrot on plate",
    "PutSpoonOnTableClothInScene-v1": "put the spoon on the towel",
    "StackGreenCubeOnYellowCubeBakedTexInScene-v1": "stack the green block on the yellow block",
    "PutEggplantInBasketScene-v1": "put eggplant into yellow basket",
}

CONTROL_MODES = ("pd_ee_delta_pose", "pd_joint_delta_pos", "pd_ee_delta_pos", "pd_joint_pos")


def describe(task: str) -> str:
    return TASK_DESCRIPTIONS.get(task, task)


def check_task_assets(task: str) -> None:
    """Raise a clear error when `task` is unknown or needs assets that are not on disk."""
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.utils.assets import DATA_SOURCES
    from mani_skill.utils.registration import REGISTERED_ENVS

    if task not in REGISTERED_ENVS:
        raise ValueError(
            f"ManiSkill task {task!r} is not registered in mani-skill (tasks such as the seeds' "
            f"PutOnPlateInScene25Main-v3 come from the reference system's own ManiSkill fork); "
            f"registered: {sorted(REGISTERED_ENVS)}"
        )
    for asset_id in REGISTERED_ENVS[task].asset_download_ids or []:
        source = DATA_SOURCES.get(asset_id)
        if source is None:
            continue
        folder = Path(source.output_dir) / source.target_path
        # A failed download leaves an empty folder behind: empty counts as absent.
        if not folder.is_dir() or not any(folder.iterdir()):
            raise FileNotFoundError(
                f"ManiSkill task {task!r} needs the asset {asset_id!r} at {folder}, which is absent or empty. "
                f"Provide it by running `python -m mani_skill.utils.download_asset {asset_id}` on a "
                f"machine with network access and copying {folder} here, or by pointing MS_ASSET_DIR "
                f"at a folder that holds {source.target_path}."
            )


def make_gym_env(task: str, num_envs: int, image_size: int, control_mode: str, sim_backend: str, camera: str):
    import gymnasium as gym

    import mani_skill.envs  # noqa: F401

    if control_mode not in CONTROL_MODES:
        raise ValueError(f"env.*.init_params.control_mode must be one of {CONTROL_MODES}, got {control_mode!r}")
    check_task_assets(task)
    return gym.make(
        task,
        num_envs=num_envs,
        obs_mode="rgb",
        control_mode=control_mode,
        sim_backend=sim_backend,
        sensor_configs={camera: dict(width=image_size, height=image_size)},
        render_mode=None,
    )


def _state_from(env, state_mode: str) -> np.ndarray:
    """(N, S) float32 state: joint angles (qpos) or the flattened full state."""
    u = env.unwrapped
    if state_mode == "joint":
        return u.agent.robot.get_qpos().detach().cpu().numpy().astype(np.float32)
    if state_mode == "full":
        prev = u._obs_mode
        u._obs_mode = "state"
        try:
            return u.get_obs().detach().cpu().numpy().astype(np.float32)
        finally:
            u._obs_mode = prev
    raise ValueError(f"env.*.init_params.state_mode must be 'joint' or 'full', got {state_mode!r}")


def _images_from(env, camera: str) -> np.ndarray:
    """(N, H, W, 3) uint8 from the sensor camera at the current state."""
    obs = env.unwrapped.get_obs()  # obs mode rgb: renders the sensors
    rgb = obs["sensor_data"][camera]["rgb"]
    return rgb.detach().cpu().numpy().astype(np.uint8)[..., :3]


class _PhysicsOnly:
    """Steps with the cheap state observation; the chunk's last observation renders."""

    def __init__(self, env):
        self.u = env.unwrapped

    def __enter__(self):
        self.prev = self.u._obs_mode
        self.u._obs_mode = "state"

    def __exit__(self, *exc):
        self.u._obs_mode = self.prev


class ManiSkillEnv:
    """One CPU-backend ManiSkill env (`SingleEnv`); one per process."""

    def __init__(
        self,
        task: str,
        image_size: int = 128,
        control_mode: str = "pd_ee_delta_pose",
        state_mode: str = "joint",
        render: bool = True,
        camera: str = "base_camera",
    ):
        self._env = make_gym_env(task, 1, image_size, control_mode, "cpu", camera)
        self.task_name = task
        self.task_description = describe(task)
        self.action_dim = int(self._env.action_space.shape[-1])
        self._state_mode = state_mode
        self._render = render
        self._camera = camera
        self.state_dim = int(_state_from(self._env, state_mode).shape[-1])

    def reset(self, seed: int) -> None:
        with _PhysicsOnly(self._env):
            self._env.reset(seed=int(seed))

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        with _PhysicsOnly(self._env):
            _, reward, terminated, _, info = self._env.step(np.asarray(action, dtype=np.float32)[None])
        return float(reward.reshape(-1)[0]), bool(terminated.reshape(-1)[0]), bool(info["success"].reshape(-1)[0])

    def observe(self) -> dict[str, np.ndarray]:
        out = {"state": _state_from(self._env, self._state_mode)[0]}
        if self._render:
            out["main_image"] = _images_from(self._env, self._camera)[0]
        return out

    def close(self) -> None:
        self._env.close()


class ManiSkillFactory:
    """Picklable builder for worker processes: env index -> ManiSkillEnv (tasks by group)."""

    def __init__(self, tasks: Sequence[str], group_size: int, **env_kwargs: Any):
        self.tasks = list(tasks)
        self.group_size = group_size
        self.env_kwargs = env_kwargs

    def task_of(self, index: int) -> str:
        return self.tasks[(index // self.group_size) % len(self.tasks)]

    def __call__(self, index: int) -> ManiSkillEnv:
        return ManiSkillEnv(self.task_of(index), **self.env_kwargs)


class ManiSkillGPUBackend:
    """All B envs of one task in one GPU-simulated ManiSkill scene (`Backend`).

    ManiSkill's GPU sim steps every env at once, so the envs a chunk no longer steps (their
    episode ended) are given zero actions and their results are ignored; partial resets use
    ManiSkill's `options={"env_idx": ...}`. One task per backend (ManiSkill's batched scene
    holds one task).
    """

    def __init__(self, task: str, num_envs: int, image_size: int = 128, control_mode: str = "pd_ee_delta_pose",
                 state_mode: str = "joint", render: bool = True, camera: str = "base_camera"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("env.*.init_params.sim_backend=gpu needs CUDA; use sim_backend=cpu with worker processes")
        self._env = make_gym_env(task, num_envs, image_size, control_mode, "gpu", camera)
        self.num_envs = num_envs
        self.action_dim = int(self._env.action_space.shape[-1])
        self.task_names = [task] * num_envs
        self.restarts = 0
        self._state_mode = state_mode
        self._render = render
        self._camera = camera
        self._description = describe(task)
        self.state_dim = int(_state_from(self._env, state_mode).shape[-1])

    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> None:
        import torch

        with _PhysicsOnly(self._env):
            # ManiSkill seeds a batched reset with one seed per env.
            self._env.reset(seed=[int(s) for s in seeds], options={"env_idx": torch.as_tensor(list(ids))})

    def step(self, ids: Sequence[int], actions: np.ndarray) -> StepBatch:
        import torch

        full = np.zeros((self.num_envs, self.action_dim), dtype=np.float32)
        full[list(ids)] = actions
        with _PhysicsOnly(self._env):
            _, reward, terminated, _, info = self._env.step(torch.from_numpy(full))
        sel = torch.as_tensor(list(ids))
        return StepBatch(
            reward=reward[sel].double().cpu().numpy(),
            terminated=terminated[sel].cpu().numpy().astype(bool),
            success=info["success"][sel].cpu().numpy().astype(bool),
            crashed=np.zeros(len(ids), dtype=bool),
        )

    def observe(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        states = _state_from(self._env, self._state_mode)
        images = _images_from(self._env, self._camera) if self._render else None
        out = []
        for i in ids:
            o = {"state": states[i]}
            if images is not None:
                o["main_image"] = images[i]
            out.append(o)
        return out

    def task_descriptions(self, ids: Sequence[int]) -> list[str]:
        return [self._description] * len(ids)

    def close(self) -> None:
        self._env.close()
