"""GSEnv behind the env protocol: PutCubeOnPlate-v0 physics (pirl.envs.gsenv.task) seen
through Gaussian-splat rendering.

`GSEnvCore` holds one ManiSkill env (B sub-scenes) and a `GSRenderer` built from the same
asset folder. Every observation reads the simulator's link and object poses, moves the
splats and renders the third-person camera; the state is the robot's joint angles (qpos,
(9,), as RLinf's ManiSkill wrapper gives π0.5) or ManiSkill's full state vector (46: qpos,
qvel, the end-effector controller's target pose, then the TCP, cube and plate poses, 7 each).

  * CPU sim (`sim_backend: cpu`): `GSEnvSingle`s (SingleEnv), in this process
    (`num_workers: 0`) or spread over worker processes, rendered by pirl's torch rasterizer
    (small images: `image_size` is the image width; 160 renders 160x120). Unlike ManiSkill's
    own CPU envs, several share a process with exactly the results they give alone.
  * GPU sim (`sim_backend: gpu`): all B envs of a rank in one GPU scene (`GSEnvGPUBackend`, a
    Backend), rendered in one batched gsplat call.

Options (`env.<split>.init_params`): id, assets_path (required), control_mode
(pd_ee_target_delta_pose, the seeds'), state_mode (joint | full), sim_backend (cpu | gpu),
render_backend (auto | torch | gsplat), cache_table (true), render_bs (envs per rasterizer
call; null: all), camera (overrides of the calibrated camera, pirl.envs.gsenv.camera).
"""
from __future__ import annotations

from typing import Any, Optional, cast
from collections.abc import Sequence

import numpy as np
import torch

from pirl.envs.chunked import StepBatch
from pirl.envs.gsenv.assets import AssetLayout
from pirl.envs.gsenv.camera import Camera
from pirl.envs.gsenv.rasterize import make_rasterizer
from pirl.envs.gsenv.renderer import GSRenderer, SplatCloud
from pirl.envs.gsenv.splats import Splats, load_ply
from pirl.envs.gsenv.transforms import invert, raw_pose_matrix, translation

TASK_NAMES = ("PutCubeOnPlate-v0", "GSEnv-PutCubeOnPlate-v0")  # pirl's id; the reference system's
STATE_MODES = ("joint", "full")


def load_background(path, width: int, height: int) -> torch.Tensor:
    """(H, W, 3) float32 in [0, 1], resized (bilinear) to the render size if needed."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def _aligned(s: Splats, center: bool, offset, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Object splats in the object frame: x -> offset + scale ⊙ (x − mean if center), Σ -> S Σ S."""
    c = s.means.mean(0) if center else torch.zeros(3)
    sc = torch.tensor(scale)
    means = torch.tensor(offset) + sc * (s.means - c)
    covs = s.covariances() * sc[:, None] * sc[None, :]
    return means, covs


def build_renderer(layout: AssetLayout, camera: Camera, link_world_default: torch.Tensor, links: Sequence[str],
                   backend: str = "auto", device: str | torch.device = "cpu", cache_table: bool = True,
                   render_bs: int | None = None) -> GSRenderer:
    """The renderer of an asset folder. Foreground groups: the `links` (in order), then the
    cube and the plate. `link_world_default` (L, 4, 4): the links' world poses at the
    configuration their splats were captured at."""
    device = torch.device(device)
    clouds = [SplatCloud.from_splats(load_ply(layout.link_splats[name])) for name in links]
    for name in ("cube", "plate"):
        o = layout.objects[name]
        s = load_ply(o.splats)
        clouds.append(SplatCloud.from_splats(s, *_aligned(s, o.center, o.offset, o.scale)))
    fg = SplatCloud.merge(clouds)
    # C_g: capture frame -> the group's local frame. Links: world at the default pose, after
    # the asset's offset; objects: their own frame already (identity).
    shift = translation(torch.tensor(layout.robot_offset, dtype=torch.float64))
    capture = torch.cat([invert(link_world_default.double()) @ shift, torch.eye(4, dtype=torch.float64).expand(2, 4, 4)])
    t = load_ply(layout.table_splats)
    table = SplatCloud.from_splats(t, means=t.means + torch.tensor(layout.table_offset))
    background = load_background(layout.background, camera.width, camera.height)
    return GSRenderer(fg, capture.float(), table, background, camera, make_rasterizer(backend, device), device,
                      cache_table, render_bs)


class GSEnvCore:
    """One PutCubeOnPlate-v0 env of `num_envs` sub-scenes and its splat renderer."""

    def __init__(self, assets_path: str, num_envs: int = 1, image_size: int = 160,
                 control_mode: str = "pd_ee_target_delta_pose", state_mode: str = "joint", render: bool = True,
                 sim_backend: str = "cpu", render_backend: str = "auto", cache_table: bool = True,
                 camera: Optional[dict] = None, obs_mode: str = "state", render_bs: Optional[int] = None):
        """obs_mode: ManiSkill's own observations ("state"; "rgb+segmentation" also renders the
        meshes with SAPIEN from the same camera, for comparing the two renders)."""
        import gymnasium as gym

        from pirl.envs.gsenv import task
        from pirl.envs.gsenv.robot import CONTROL_MODES, link_poses

        if control_mode not in CONTROL_MODES:
            raise ValueError(f"env.*.init_params.control_mode must be one of {CONTROL_MODES}, got {control_mode!r}")
        if state_mode not in STATE_MODES:
            raise ValueError(f"env.*.init_params.state_mode must be one of {STATE_MODES}, got {state_mode!r}")
        full_camera = Camera.from_config(camera)
        self.camera = full_camera.resized(image_size)
        # ManiSkill's attributes (agent, cube, ...) are not in gymnasium's types
        self.env = cast(Any, gym.make(task.TASK_ID, num_envs=num_envs, assets_path=assets_path, camera=camera,
                                      obs_mode=obs_mode, control_mode=control_mode, sim_backend=sim_backend,
                                      reward_mode="sparse", render_mode=None))
        self.u = self.env.unwrapped  # the PutCubeOnPlateEnv
        self.num_envs = num_envs
        self.action_dim = int(self.env.action_space.shape[-1])
        self.state_mode = state_mode
        layout = self.u.assets
        self.links = [name for name in layout.urdf.links if name in layout.link_splats]
        self._link_objs = [self.u.agent.robot.links_map[name] for name in self.links]
        self._renderer: GSRenderer | None = None
        if render:
            base = raw_pose_matrix(torch.tensor([*task.ROBOT_BASE, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
            default = base @ link_poses(layout.urdf, layout.default_qpos, self.links)
            device = self.u.device if sim_backend == "gpu" else torch.device("cpu")
            self._renderer = build_renderer(layout, self.camera, default, self.links, render_backend, device,
                                            cache_table, render_bs)
        self.state_dim = int(self.states().shape[-1])

    def poses(self) -> torch.Tensor:
        """(B, G, 4, 4) world poses of the rendered links, then the cube and the plate."""
        raw = [link.pose.raw_pose for link in self._link_objs] + [self.u.cube.pose.raw_pose, self.u.plate.pose.raw_pose]
        return raw_pose_matrix(torch.stack(raw, dim=1).float())

    @property
    def rendering(self) -> bool:
        return self._renderer is not None

    @property
    def renderer(self) -> GSRenderer:
        if self._renderer is None:
            raise RuntimeError("this GSEnv was built with render=False (env.*.init_params.render)")
        return self._renderer

    def images(self) -> torch.Tensor:
        """(B, H, W, 3) uint8 splat render of the current state."""
        return self.renderer.render(self.poses())

    def states(self) -> torch.Tensor:
        """(B, S) float32: qpos (joint) or ManiSkill's flattened state observation (full)."""
        if self.state_mode == "joint":
            return self.u.agent.robot.get_qpos().detach().float().cpu()
        return self._full_state()

    def _full_state(self) -> torch.Tensor:
        prev, self.u._obs_mode = self.u._obs_mode, "state"  # the flat state whatever obs_mode renders
        try:
            return self.u.get_obs().detach().float().cpu()
        finally:
            self.u._obs_mode = prev

    def close(self) -> None:
        self.env.close()


class GSEnvSingle:
    """One CPU-sim GSEnv (`pirl.envs.chunked.SingleEnv`); one per worker process."""

    def __init__(self, task_name: str = "PutCubeOnPlate-v0", **kwargs: Any):
        from pirl.envs.gsenv.task import INSTRUCTION

        self.core = GSEnvCore(num_envs=1, sim_backend="cpu", **kwargs)
        self.task_name = task_name
        self.task_description = INSTRUCTION
        self.action_dim = self.core.action_dim
        self.state_dim = self.core.state_dim

    def reset(self, seed: int) -> None:
        self.core.env.reset(seed=int(seed))

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        _, reward, terminated, _, info = self.core.env.step(np.asarray(action, dtype=np.float32)[None])
        return float(reward.reshape(-1)[0]), bool(terminated.reshape(-1)[0]), bool(info["success"].reshape(-1)[0])

    def observe(self) -> dict[str, np.ndarray]:
        out = {"state": self.core.states()[0].numpy()}
        if self.core.rendering:
            out["main_image"] = self.core.images()[0].numpy()
        return out

    def close(self) -> None:
        self.core.close()


class GSEnvFactory:
    """Picklable builder for worker processes: env index -> GSEnvSingle."""

    def __init__(self, task_name: str, **env_kwargs: Any):
        self.task_name = task_name
        self.env_kwargs = env_kwargs

    def build(self, index: int) -> GSEnvSingle:
        """An env in this process."""
        return GSEnvSingle(self.task_name, **self.env_kwargs)

    def __call__(self, index: int) -> GSEnvSingle:
        """An env in a worker process (pirl.envs.vector): workers already use the cores in
        parallel, and more torch threads per worker only contend (a 160x120 frame took 2.9 s
        with 2 threads vs 0.2 s with 1 on the loaded 2-core machine)."""
        torch.set_num_threads(1)
        return self.build(index)


class GSEnvGPUBackend:
    """All B envs of a rank in one GPU-simulated scene, rendered in one batched call (`Backend`).

    As for ManiSkill's GPU backend (pirl.envs.maniskill.ManiSkillGPUBackend): envs whose
    episode ended get zero actions and their results are ignored; partial resets pass
    ManiSkill's `options={"env_idx": ...}`."""

    def __init__(self, task_name: str, num_envs: int, **kwargs: Any):
        from pirl.envs.gsenv.task import INSTRUCTION

        if not torch.cuda.is_available():
            raise RuntimeError("env.*.init_params.sim_backend=gpu needs CUDA; use sim_backend=cpu with worker processes")
        self.core = GSEnvCore(num_envs=num_envs, sim_backend="gpu", **kwargs)
        self.num_envs = num_envs
        self.action_dim = self.core.action_dim
        self.state_dim = self.core.state_dim
        self.task_names = [task_name] * num_envs
        self.restarts = 0
        self._description = INSTRUCTION

    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> None:
        self.core.env.reset(seed=[int(s) for s in seeds], options={"env_idx": torch.as_tensor(list(ids))})

    def step(self, ids: Sequence[int], actions: np.ndarray) -> StepBatch:
        full = np.zeros((self.num_envs, self.action_dim), dtype=np.float32)
        full[list(ids)] = actions
        _, reward, terminated, _, info = self.core.env.step(torch.from_numpy(full))
        sel = torch.as_tensor(list(ids))
        return StepBatch(reward=reward[sel].double().cpu().numpy(),
                         terminated=terminated[sel].cpu().numpy().astype(bool),
                         success=info["success"][sel].cpu().numpy().astype(bool),
                         crashed=np.zeros(len(ids), dtype=bool))

    def observe(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        states = self.core.states().numpy()
        images = self.core.images().numpy() if self.core.rendering else None
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
        self.core.close()


def make_backend(task: Any, extra: dict, image_size: int, render: bool, num_envs: int, num_workers: int,
                 timeout_s: float):
    """The Backend an `env.<split>` section asks for (pirl.envs.make_env's gsenv branch)."""
    from pirl.envs.gsenv.assets import check_assets

    name = str(task or TASK_NAMES[0])
    if name not in TASK_NAMES:
        raise ValueError(f"env.*.init_params.id: GSEnv has the task {TASK_NAMES[0]} (also spelled {TASK_NAMES[1]}), got {name!r}")
    try:  # fail here, naming the file, not inside a worker
        check_assets(extra.get("assets_path"))
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"env.*.init_params.assets_path: {e}") from None
    kwargs = dict(assets_path=str(extra["assets_path"]), image_size=image_size, render=render,
                  control_mode=str(extra.get("control_mode", "pd_ee_target_delta_pose")),
                  state_mode=str(extra.get("state_mode", "joint")),
                  render_backend=str(extra.get("render_backend", "auto")),
                  cache_table=bool(extra.get("cache_table", True)), camera=extra.get("camera"),
                  render_bs=extra.get("render_bs"))
    sim_backend = str(extra.get("sim_backend", "gpu" if torch.cuda.is_available() else "cpu"))
    if sim_backend == "gpu":
        return GSEnvGPUBackend(name, num_envs, **kwargs)
    if sim_backend != "cpu":
        raise ValueError(f"env.*.init_params.sim_backend must be cpu or gpu, got {sim_backend!r}")
    from pirl.envs.chunked import LocalBackend
    from pirl.envs.vector import WorkerBackend

    factory = GSEnvFactory(name, **kwargs)
    if num_workers == 0:  # several CPU-sim envs share a process exactly (tests/test_envs_gsenv.py)
        return LocalBackend([factory.build(i) for i in range(num_envs)])
    return WorkerBackend(factory, num_envs, num_workers, timeout_s=timeout_s)
