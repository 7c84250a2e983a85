"""Env adapters behind one protocol (pirl/envs/base.py): reach2d (built in), ManiSkill3,
LIBERO, MetaWorld, CALVIN, GSEnv. `make_env` is the one entry the runner uses.

Simulator envs are `pirl.envs.chunked.ChunkedVecEnv`s over a backend: all envs in this
process (`num_workers: 0`), or spread over `num_workers` worker processes that are restarted
when they crash (`pirl.envs.vector`). Keys of an `env.train` / `env.eval` section
(pirl.config.schema.EnvSplitConfig) used here: simulator_type, task, max_episode_steps,
auto_reset, ignore_terminations, use_rel_reward, reward_coef, group_size, num_workers,
image_size and `extra`:
    all:        render (default true: False gives state-only observations),
                reward_mode (sparse: success as reward, the seeds'; dense: the sim's reward),
                worker_timeout_s (300)
    maniskill:  control_mode (pd_ee_delta_pose | pd_joint_delta_pos), state_mode (joint | full),
                sim_backend (cpu | gpu; default gpu when CUDA is there), camera
    libero:     assets_path, reflections (true), fast_render (true), settle_steps (10)
    metaworld:  camera_name (corner2)
    calvin:     instructions (train | validation), subtask_max_steps (null | 360), num_sequences
                (1000), wrist_image_size (84), use_egl (false); the checkout: env.<split>.calvin_root
    gsenv:      assets_path, control_mode, state_mode, sim_backend, render_backend (auto | torch |
                gsplat), cache_table, render_bs, camera (pirl/envs/gsenv/env.py); image_size is the
                image width
Tasks: maniskill: an env id or a list (PickCube-v1); libero: a suite or "<suite>:<index>";
metaworld: a task (reach-v3), MT10, MT50, ML45 (45 train tasks) or ML45:test (the 5 held out);
calvin: calvin_abc, calvin_d or calvin_abcd (scenes; pirl/envs/calvin.py).
Multi-task envs get tasks by GRPO group: group g runs task g % num_tasks.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional

SIMULATORS = ("reach2d", "maniskill", "libero", "metaworld", "calvin", "gsenv")

# Keys of `extra` each simulator accepts (besides the common ones); anything else is a typo.
_COMMON_EXTRA = {"render", "reward_mode", "worker_timeout_s"}
_EXTRA_KEYS = {
    "maniskill": {"control_mode", "state_mode", "sim_backend", "camera"},
    "libero": {"assets_path", "reflections", "fast_render", "settle_steps"},
    "metaworld": {"camera_name"},
    "calvin": {"instructions", "subtask_max_steps", "num_sequences", "wrist_image_size", "use_egl"},
    "gsenv": {"assets_path", "control_mode", "state_mode", "sim_backend", "render_backend", "cache_table", "render_bs",
              "camera"},
}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a key from a dataclass, DictConfig or dict section."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _ensure_gl() -> None:
    """MuJoCo picks its GL backend at import: headless EGL unless the user chose one."""
    os.environ.setdefault("MUJOCO_GL", "egl")


def make_env(split_cfg, num_envs: int, seed: int, rank: int = 0, *, video_cfg: Optional[Any] = None):
    """An `env.train` / `env.eval` section -> a VecEnv of `num_envs` envs on this rank.

    `seed` is the rank's base seed (reset(seed=None) uses it); `rank` names the video
    folder; `video_cfg` (the top-level `video_cfg` section) turns on mp4 recording.
    """
    kind = str(_get(split_cfg, "simulator_type"))
    extra = dict(_get(split_cfg, "extra") or {})
    if kind == "reach2d":
        from pirl.envs.reach2d import Reach2DEnv

        return Reach2DEnv(num_envs, max_episode_steps=int(_get(split_cfg, "max_episode_steps")),
                          image_size=int(_get(split_cfg, "image_size")), auto_reset=bool(_get(split_cfg, "auto_reset")),
                          ignore_terminations=bool(_get(split_cfg, "ignore_terminations")),
                          use_rel_reward=bool(_get(split_cfg, "use_rel_reward")),
                          reward_coef=float(_get(split_cfg, "reward_coef")), seed=seed, **extra)
    if kind not in SIMULATORS:
        raise ValueError(f"env.*.simulator_type must be one of {SIMULATORS}, got {kind!r}")
    unknown = set(extra) - _COMMON_EXTRA - _EXTRA_KEYS[kind]
    if unknown:
        raise ValueError(
            f"env.*.extra has keys {sorted(unknown)} that {kind} does not take; "
            f"allowed: {sorted(_COMMON_EXTRA | _EXTRA_KEYS[kind])}"
        )
    max_steps = int(_get(split_cfg, "max_episode_steps"))
    if max_steps < 1:
        raise ValueError(f"env.*.max_episode_steps must be >= 1, got {max_steps}")
    if num_envs < 1:
        raise ValueError(f"make_env: num_envs must be >= 1, got {num_envs}")
    group_size = int(_get(split_cfg, "group_size", 1) or 1)
    num_workers = int(_get(split_cfg, "num_workers", 0) or 0)
    _ensure_gl()
    backend = _make_backend(kind, split_cfg, extra, num_envs, group_size, num_workers)
    from pirl.envs.chunked import ChunkedVecEnv

    return ChunkedVecEnv(
        backend,
        max_steps,
        auto_reset=bool(_get(split_cfg, "auto_reset", True)),
        ignore_terminations=bool(_get(split_cfg, "ignore_terminations", False)),
        use_rel_reward=bool(_get(split_cfg, "use_rel_reward", False)),
        reward_coef=float(_get(split_cfg, "reward_coef", 1.0)),
        reward_mode=str(extra.get("reward_mode", "sparse")),
        seed=seed,
        video=_make_video(video_cfg, rank),
    )


def _make_video(video_cfg: Optional[Any], rank: int):
    if video_cfg is None or not bool(_get(video_cfg, "save_video", False)):
        return None
    from pirl.envs.video import VideoRecorder

    return VideoRecorder(
        str(_get(video_cfg, "video_base_dir")),
        rank=rank,
        fps=int(_get(video_cfg, "fps", 10)),
        info_on_video=bool(_get(video_cfg, "info_on_video", True)),
    )


def _make_backend(kind: str, split_cfg: Any, extra: dict, num_envs: int, group_size: int, num_workers: int):
    from pirl.envs.chunked import LocalBackend
    from pirl.envs.vector import WorkerBackend

    task = _get(split_cfg, "task")
    image_size = int(_get(split_cfg, "image_size", 128))
    render = bool(extra.get("render", True))
    timeout_s = float(extra.get("worker_timeout_s", 300.0))
    if kind == "maniskill":
        from pirl.envs import maniskill as ms

        tasks = [str(t) for t in task] if isinstance(task, (list, tuple)) else [str(task or "PickCube-v1")]
        kwargs: dict[str, Any] = dict(
            image_size=image_size,
            control_mode=str(extra.get("control_mode", "pd_ee_delta_pose")),
            state_mode=str(extra.get("state_mode", "joint")),
            render=render,
            camera=str(extra.get("camera", "base_camera")),
        )
        backend_kind = str(extra.get("sim_backend", "gpu" if _cuda() else "cpu"))
        for t in tasks:  # fail here, with the asset folder named, not inside a worker
            ms.check_task_assets(t)
        if backend_kind == "gpu":
            if len(tasks) != 1:
                raise ValueError("maniskill sim_backend=gpu runs one task per env rank; got tasks {tasks}")
            return ms.ManiSkillGPUBackend(tasks[0], num_envs, **kwargs)
        if backend_kind != "cpu":
            raise ValueError(f"env.extra.sim_backend must be cpu or gpu, got {backend_kind!r}")
        # ManiSkill's CPU backend allows one env per process: one worker per env by default.
        return WorkerBackend(ms.ManiSkillFactory(tasks, group_size, **kwargs), num_envs,
                             num_workers or num_envs, timeout_s=timeout_s)
    if kind == "gsenv":
        from pirl.envs.gsenv.env import make_backend

        return make_backend(task, extra, image_size, render, num_envs, num_workers, timeout_s)
    factory: Callable[[int], Any]  # env index -> one simulator env
    if kind == "calvin":
        from pirl.envs import calvin

        suite, scenes = calvin.resolve_suite(task)
        source = calvin.CheckoutSource(_get(split_cfg, "calvin_root"))  # checked here, not in a worker
        factory = calvin.CalvinFactory(
            source, scenes, group_size, main_size=image_size,
            wrist_size=int(extra.get("wrist_image_size", calvin.WRIST_SIZE)),
            use_egl=bool(extra.get("use_egl", False)),
            instructions=str(extra.get("instructions") or calvin.default_instructions(suite)),
            subtask_max_steps=extra.get("subtask_max_steps"),
            num_sequences=int(extra.get("num_sequences", calvin.NUM_SEQUENCES)), render=render)
    elif kind == "metaworld":
        from pirl.envs import metaworld as mw

        bench, names = mw.resolve_tasks(task)
        factory = mw.MetaWorldFactory(bench, names, group_size, image_size=image_size, render=render,
                                      camera_name=str(extra.get("camera_name", "corner2")))
    else:  # libero
        from pirl.envs import libero as lb

        suite, indices = lb.resolve_tasks(task)
        lb.find_libero_assets(extra.get("assets_path"))  # clear error before any worker starts
        factory = lb.LiberoFactory(suite, indices, group_size, image_size=image_size, render=render,
                                   assets_path=extra.get("assets_path"),
                                   reflections=bool(extra.get("reflections", True)),
                                   fast_render=bool(extra.get("fast_render", True)),
                                   settle_steps=int(extra.get("settle_steps", lb.SETTLE_STEPS)))
    if num_workers > 0:
        return WorkerBackend(factory, num_envs, num_workers, timeout_s=timeout_s)
    return LocalBackend([factory(i) for i in range(num_envs)])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
