"""Env adapters behind one protocol (pirl/envs/base.py): reach2d (built in), ManiSkill3,
LIBERO, MetaWorld, CALVIN, GSEnv. `make_env` is the one entry the runner uses.

Simulator envs are `pirl.envs.chunked.ChunkedVecEnv`s over a backend: all envs in this
process (`num_workers: 0`), or spread over `num_workers` worker processes that are restarted
when they crash (`pirl.envs.vector`). An `env.train` / `env.eval` section
(pirl.config.schema.EnvSplitConfig, the reference system's env group) gives env_type,
task_suite_name, max_episode_steps, auto_reset, ignore_terminations, use_rel_reward,
reward_coef, reward_mode, group_size, use_fixed_reset_state_ids, num_workers, video_cfg and
the simulator's constructor options `init_params` (INIT_PARAMS):
    all:        render (default true: False gives state-only observations), worker_timeout_s (300)
    reach2d:    num_targets, speed, success_radius, image_size (64)
    maniskill:  id (the task: PickCube-v1, or a list), control_mode (pd_ee_delta_pose |
                pd_joint_delta_pos), state_mode (joint | full), sim_backend (cpu | gpu; default
                gpu when CUDA is there), camera, sensor_configs {width, height} (128)
    libero:     camera_heights, camera_widths (128; equal), assets_path, reflections (true),
                fast_render (true), settle_steps (10)
    metaworld:  camera_heights, camera_widths (128; equal), camera_name (corner2)
    calvin:     camera_heights, camera_widths (the static camera, 200), wrist_image_size (84),
                instructions (train | validation), subtask_max_steps (null | 360), num_sequences
                (1000), use_egl (false); the checkout: env.<split>.calvin_root
    gsenv:      id (PutCubeOnPlate-v0), assets_path, control_mode, state_mode, sim_backend,
                render_backend (auto | torch | gsplat), cache_table, render_bs, camera, camera_widths (the
                4:3 image's width, 640) (pirl/envs/gsenv/env.py)
Tasks: libero: task_suite_name, a suite or "<suite>:<index>"; metaworld: task_suite_name,
metaworld_50 / metaworld_45_ind / metaworld_45_ood (the reference's names), MT10, MT50, ML45,
ML45:test or one task (reach-v3); calvin: task_suite_name, calvin_abc, calvin_d or calvin_abcd
(scenes; pirl/envs/calvin.py); maniskill, gsenv: init_params.id.
Multi-task envs get tasks by GRPO group: group g runs task g % num_tasks.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

SIMULATORS = ("reach2d", "maniskill", "libero", "metaworld", "calvin", "gsenv")

# init_params keys each simulator takes (besides the common ones); anything else is a typo.
COMMON_INIT_PARAMS = ("render", "worker_timeout_s")
INIT_PARAMS = {
    "reach2d": ("num_targets", "speed", "success_radius", "image_size"),
    "maniskill": ("id", "control_mode", "state_mode", "sim_backend", "camera", "sensor_configs"),
    "libero": ("camera_heights", "camera_widths", "assets_path", "reflections", "fast_render", "settle_steps"),
    "metaworld": ("camera_heights", "camera_widths", "camera_name"),
    "calvin": ("camera_heights", "camera_widths", "wrist_image_size", "instructions", "subtask_max_steps",
               "num_sequences", "use_egl"),
    "gsenv": ("id", "assets_path", "control_mode", "state_mode", "sim_backend", "render_backend", "cache_table",
              "render_bs", "camera", "camera_widths"),
}
DEFAULT_IMAGE_SIZE = 128


def check_init_params(env_type: str, params: dict) -> str | None:
    """Why `params` is not a valid init_params of `env_type`, or None."""
    allowed = COMMON_INIT_PARAMS + INIT_PARAMS.get(env_type, ())
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        return f"{env_type} takes no {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
    try:
        image_size(env_type, params)
    except ValueError as e:
        return str(e)
    if env_type == "maniskill" and set(params.get("sensor_configs") or {}) - {"width", "height"}:
        return "sensor_configs takes width and height (square images)"
    return None


def image_size(env_type: str, params: dict) -> int:
    """The (square; GSEnv: 4:3) camera size an env's init_params ask for."""
    if env_type == "reach2d":
        h = w = params.get("image_size", 64)
        names = "image_size"
    elif env_type == "gsenv":  # the calibrated camera's width; its height is 3/4 of it
        h = w = params.get("camera_widths", 640)
        names = "camera_widths"
    elif env_type == "maniskill":
        sensors = params.get("sensor_configs") or {}
        h, w = sensors.get("height", DEFAULT_IMAGE_SIZE), sensors.get("width", DEFAULT_IMAGE_SIZE)
        names = "sensor_configs.height and sensor_configs.width"
    else:
        h = params.get("camera_heights", DEFAULT_IMAGE_SIZE)
        w = params.get("camera_widths", DEFAULT_IMAGE_SIZE)
        names = "camera_heights and camera_widths"
    if h != w:
        raise ValueError(f"{names} differ ({h} x {w}); pirl renders square images")
    if isinstance(h, bool) or not isinstance(h, int) or h < 1:
        raise ValueError(f"{names}: {h!r} is not a positive image size in pixels")
    return h


def _ensure_gl() -> None:
    """MuJoCo picks its GL backend at import: headless EGL unless the user chose one."""
    os.environ.setdefault("MUJOCO_GL", "egl")


def split_config(split_cfg: Any):
    """An env section as a typed config: a plain dict (a resolved copy of one) gets the
    schema's defaults for what it leaves out."""
    if isinstance(split_cfg, dict):
        from omegaconf import OmegaConf

        from pirl.config.schema import EnvSplitConfig

        return OmegaConf.merge(OmegaConf.structured(EnvSplitConfig), split_cfg)
    return split_cfg


def task_spec(split_cfg: Any) -> Any:
    """The task an env section names: `task_suite_name` (libero, metaworld, calvin), or
    `init_params.id` (maniskill, gsenv; the reference system's layout)."""
    split_cfg = split_config(split_cfg)
    if split_cfg.env_type in ("maniskill", "gsenv"):
        return (split_cfg.init_params or {}).get("id")
    return split_cfg.task_suite_name


def make_env(split_cfg, num_envs: int, seed: int, rank: int = 0, *, record: bool = True):
    """An `env.train` / `env.eval` section -> a VecEnv of `num_envs` envs on this rank.

    `seed` is the rank's base seed (reset(seed=None) uses it); `rank` names the video
    folder; with `record` the split's `video_cfg.save_video` turns on mp4 recording.
    """
    split_cfg = split_config(split_cfg)
    kind = split_cfg.env_type
    params = dict(split_cfg.init_params or {})
    problem = check_init_params(kind, params) if kind in SIMULATORS else f"env_type must be one of {SIMULATORS}"
    if problem:
        raise ValueError(f"env.*.init_params: {problem}" if kind in SIMULATORS else f"env.*.{problem}, got {kind!r}")
    size = image_size(kind, params)
    if kind == "reach2d":
        from pirl.envs.reach2d import Reach2DEnv

        params.pop("image_size", None)
        params.pop("worker_timeout_s", None)
        return Reach2DEnv(num_envs, max_episode_steps=split_cfg.max_episode_steps, image_size=size,
                          auto_reset=split_cfg.auto_reset, ignore_terminations=split_cfg.ignore_terminations,
                          use_rel_reward=split_cfg.use_rel_reward, reward_coef=split_cfg.reward_coef,
                          seed=seed, **params)
    if split_cfg.max_episode_steps < 1:
        raise ValueError(f"env.*.max_episode_steps must be >= 1, got {split_cfg.max_episode_steps}")
    if num_envs < 1:
        raise ValueError(f"make_env: num_envs must be >= 1, got {num_envs}")
    _ensure_gl()
    backend = _make_backend(kind, split_cfg, params, size, num_envs)
    from pirl.envs.chunked import ChunkedVecEnv

    return ChunkedVecEnv(
        backend,
        split_cfg.max_episode_steps,
        auto_reset=split_cfg.auto_reset,
        ignore_terminations=split_cfg.ignore_terminations,
        use_rel_reward=split_cfg.use_rel_reward,
        reward_coef=split_cfg.reward_coef,
        reward_mode=split_cfg.reward_mode,
        seed=seed,
        video=_make_video(split_cfg.video_cfg, rank) if record else None,
    )


def _make_video(video_cfg: Any, rank: int):
    if video_cfg is None or not video_cfg.save_video:
        return None
    from pirl.envs.video import VideoRecorder

    return VideoRecorder(video_cfg.video_base_dir, rank=rank, fps=video_cfg.fps,
                         info_on_video=video_cfg.info_on_video)


def _make_backend(kind: str, split_cfg: Any, params: dict, size: int, num_envs: int):
    from pirl.envs.chunked import LocalBackend
    from pirl.envs.vector import WorkerBackend

    group_size, num_workers = split_cfg.group_size, split_cfg.num_workers
    render = params.get("render", True)
    timeout_s = params.get("worker_timeout_s", 300.0)
    if kind == "maniskill":
        from pirl.envs import maniskill as ms

        task = params.get("id", "PickCube-v1")
        tasks = [str(t) for t in task] if isinstance(task, (list, tuple)) else [str(task)]  # a list: multi-task
        kwargs: dict[str, Any] = dict(
            image_size=size,
            control_mode=params.get("control_mode", "pd_ee_delta_pose"),
            state_mode=params.get("state_mode", "joint"),
            render=render,
            camera=params.get("camera", "base_camera"),
        )
        backend_kind = params.get("sim_backend", "gpu" if _cuda() else "cpu")
        for t in tasks:  # fail here, with the asset folder named, not inside a worker
            ms.check_task_assets(t)
        if backend_kind == "gpu":
            if len(tasks) != 1:
                raise ValueError(f"maniskill sim_backend=gpu runs one task per env rank; got tasks {tasks}")
            return ms.ManiSkillGPUBackend(tasks[0], num_envs, **kwargs)
        if backend_kind != "cpu":
            raise ValueError(f"env.*.init_params.sim_backend must be cpu or gpu, got {backend_kind!r}")
        # ManiSkill's CPU backend allows one env per process: one worker per env by default.
        return WorkerBackend(ms.ManiSkillFactory(tasks, group_size, **kwargs), num_envs,
                             num_workers or num_envs, timeout_s=timeout_s)
    if kind == "gsenv":
        from pirl.envs.gsenv.env import make_backend

        return make_backend(params.get("id"), params, size, render, num_envs, num_workers, timeout_s)
    factory: Callable[[int], Any]  # env index -> one simulator env
    if kind == "calvin":
        from pirl.envs import calvin

        suite, scenes = calvin.resolve_suite(split_cfg.task_suite_name)
        source = calvin.CheckoutSource(split_cfg.calvin_root)  # checked here, not in a worker
        factory = calvin.CalvinFactory(
            source, scenes, group_size, main_size=size,
            wrist_size=params.get("wrist_image_size", calvin.WRIST_SIZE),
            use_egl=params.get("use_egl", False),
            instructions=params.get("instructions") or calvin.default_instructions(suite),
            subtask_max_steps=params.get("subtask_max_steps"),
            num_sequences=params.get("num_sequences", calvin.NUM_SEQUENCES), render=render)
    elif kind == "metaworld":
        from pirl.envs import metaworld as mw

        bench, names = mw.resolve_tasks(split_cfg.task_suite_name)
        factory = mw.MetaWorldFactory(bench, names, group_size, image_size=size, render=render,
                                      camera_name=params.get("camera_name", "corner2"))
    else:  # libero
        from pirl.envs import libero as lb

        suite, indices = lb.resolve_tasks(split_cfg.task_suite_name)
        lb.find_libero_assets(params.get("assets_path"))  # clear error before any worker starts
        factory = lb.LiberoFactory(suite, indices, group_size, image_size=size, render=render,
                                   assets_path=params.get("assets_path"),
                                   reflections=params.get("reflections", True),
                                   fast_render=params.get("fast_render", True),
                                   settle_steps=params.get("settle_steps", lb.SETTLE_STEPS))
    if num_workers > 0:
        return WorkerBackend(factory, num_envs, num_workers, timeout_s=timeout_s)
    return LocalBackend([factory(i) for i in range(num_envs)])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
