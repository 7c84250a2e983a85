"""CALVIN (mees/calvin on PyBullet) behind `pirl.envs.chunked.SingleEnv`.

The checkout. Users have a git checkout of mees/calvin with its calvin_env submodule
(`git clone --recurse-submodules https://github.com/mees/calvin.git`); calvin_env reads its
own commit hash at start, so a plain copy fails. pirl takes the path from
`env.<split>.calvin_root` or $CALVIN_ROOT, checks it (`find_calvin_root`: .git, the
calvin_env submodule, its data/ and conf/, the language annotations; each missing piece is
named) and puts calvin_env on the import path. calvin_agent is never imported (it pins torch
1.13): the protocol it defines is pirl.envs.calvin_sequences. Python packages: the
`calvin` extra (`pip install -e ".[calvin]"`: pybullet, gym, numpy-quaternion, gitpython,
hydra-core).

Task suites (`env.<split>.task_suite_name`, the reference system's names): calvin_abc (scenes A, B,
C: training of ABC->D), calvin_d (scene D: evaluation), calvin_abcd (A-D). Env i builds
scene suite[(i // group_size) % len(suite)], so a GRPO group shares its scene.

An episode is one 5-task chain. reset(seed) takes chain seed % num_sequences of
`get_sequences(num_sequences)` (the official 1000 by default) and resets the simulator to
its start state; the chain's first instruction becomes `task_description`. Each step
asks calvin_env's task oracle (Tasks.get_task_info_for_set, from the checkout's
new_playtable_tasks.yaml) whether the current subtask was done since it started, exactly as
calvin_agent's evaluation does; when it was, the next subtask starts (new instruction,
new start info, fresh subtask budget).

Step results (for ChunkedVecEnv): reward = the number of subtasks completed so far (the
chain's progress). With `use_rel_reward: True` (the reference configs) ChunkedVecEnv pays
its increments: reward_coef once per completed subtask, on the step that completes it
(the reference's sparse 0/1 subtask reward); with `reward_mode: dense` it is used,
with `sparse` the reward is the chain's success. Terminated = success = all 5 subtasks done.
Truncated (the 4th value): the current subtask ran `init_params.subtask_max_steps` steps without
success (the official protocol: 360 per subtask); a budget for the whole chain is
`max_episode_steps` (the reference system: 480). Episode stat `avg_len`: subtasks completed
(its mean over episodes is CALVIN's average length).

Observation: `main_image` the static camera (`image_size`, CALVIN's 200 px), `wrist_image`
the gripper camera (`init_params.wrist_image_size`, 84 px), `state` (7,) = tcp position (3), tcp
euler xyz (3), gripper opening width (robot_obs[:7], as the reference system feeds π0.5).
Actions (7,): relative tcp position (3) and euler (3) in [-1, 1] (calvin_env scales them by
2 cm and 0.05 rad; values outside are clipped) and the gripper, binarized as calvin_agent
does: > 0 opens (1), otherwise closes (-1).

Instructions (`init_params.instructions`): validation (the one validation sentence per task, the
official evaluation's) or train (a paraphrase from the training annotations, drawn per
subtask from the reset seed). Default: validation for calvin_d, train otherwise.

Rendering: calvin_env renders both cameras inside every step(); the adapter hides the
camera list during steps and resets, so a chunk of C actions costs C physics steps and one
render. PyBullet's CPU TinyRenderer unless `init_params.use_egl` (its EGL plugin, on GPU hosts).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol
from collections.abc import Iterator, Sequence

import numpy as np

from pirl.envs.calvin_sequences import CHAIN_LENGTH, NUM_SEQUENCES, get_sequences, scene_obs_for

CALVIN_ROOT_ENV = "CALVIN_ROOT"
SUITES: dict[str, tuple[str, ...]] = {
    "calvin_abc": ("A", "B", "C"),
    "calvin_d": ("D",),
    "calvin_abcd": ("A", "B", "C", "D"),
}
ACTION_DIM = 7
STATE_DIM = 7
MAIN_SIZE, WRIST_SIZE = 200, 84  # CALVIN's static and gripper cameras
INSTRUCTION_SETS = ("train", "validation")
# calvin_env's scene_obs puts the blocks in the order of the scene config; the evaluation
# start states are written for red, blue, pink. Scenes A-C list them in another order
# (mees/calvin issue 41; the reference system patches those files): reordered on load.
BLOCK_ORDER = ("block_red", "block_blue", "block_pink")
CLONE_HINT = "git clone --recurse-submodules https://github.com/mees/calvin.git"


@dataclass(frozen=True)
class CalvinCheckout:
    """The paths pirl uses in a mees/calvin checkout."""

    root: Path

    @property
    def env_repo(self) -> Path:  # the calvin_env submodule (holds the calvin_env package)
        return self.root / "calvin_env"

    @property
    def data(self) -> Path:
        return self.env_repo / "data"

    @property
    def conf(self) -> Path:
        return self.env_repo / "conf"

    @property
    def models_conf(self) -> Path:
        return self.root / "calvin_models" / "conf"

    @property
    def tasks_yaml(self) -> Path:
        return self.models_conf / "callbacks" / "rollout" / "tasks" / "new_playtable_tasks.yaml"

    def annotations(self, which: str) -> Path:
        name = "new_playtable_validation.yaml" if which == "validation" else "new_playtable.yaml"
        return self.models_conf / "annotations" / name


def find_calvin_root(calvin_root: Optional[str] = None, key: str = "env.<split>.calvin_root") -> CalvinCheckout:
    """The checkout named by `calvin_root` (the config key `key`), else $CALVIN_ROOT,
    checked: raises naming the first thing missing (and how to get it)."""
    where = key if calvin_root else f"${CALVIN_ROOT_ENV}"
    path = calvin_root or os.environ.get(CALVIN_ROOT_ENV)
    if not path:
        raise FileNotFoundError(
            f"CALVIN needs a git checkout of mees/calvin with its calvin_env submodule: set "
            f"{key} or ${CALVIN_ROOT_ENV} to it ({CLONE_HINT})")
    root = Path(path).expanduser().resolve()
    checkout = CalvinCheckout(root)
    submodule = "git submodule update --init --recursive"
    checks = [
        (root.is_dir(), f"{root} is not a directory"),
        ((root / ".git").exists(), f"{root} has no .git: calvin_env reads its commit hash at start, so it must "
                                   f"be a git checkout, not a copy ({CLONE_HINT})"),
        ((checkout.env_repo / "calvin_env" / "__init__.py").is_file(),
         f"{checkout.env_repo} has no calvin_env package: the calvin_env submodule is not checked out ({submodule})"),
        ((checkout.env_repo / ".git").exists(), f"{checkout.env_repo} has no .git: the calvin_env submodule is not a "
                                                f"git checkout ({submodule})"),
        (checkout.data.is_dir(), f"{checkout.data} is missing (calvin_env's URDFs and meshes; {submodule})"),
        (checkout.conf.is_dir(), f"{checkout.conf} is missing (calvin_env's scene, robot and camera configs)"),
        (checkout.tasks_yaml.is_file(), f"{checkout.tasks_yaml} is missing (the task definitions of the evaluation)"),
        (checkout.annotations("train").is_file(), f"{checkout.annotations('train')} is missing (training instructions)"),
        (checkout.annotations("validation").is_file(),
         f"{checkout.annotations('validation')} is missing (validation instructions)"),
    ]
    for ok, message in checks:
        if not ok:
            raise FileNotFoundError(f"CALVIN checkout from {where}: {message}")
    return checkout


def _require_packages() -> None:
    missing = [mod for mod in ("pybullet", "gym", "quaternion", "git", "hydra")
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"CALVIN needs the Python packages of pirl's calvin extra (missing modules: "
                          f"{', '.join(missing)}): pip install -e \".[calvin]\"")


def import_calvin_env(checkout: CalvinCheckout):
    """calvin_env from the checkout (its folder put first on sys.path); refuses one already
    imported from elsewhere, which would silently run another version."""
    _require_packages()
    package = checkout.env_repo / "calvin_env"
    loaded = sys.modules.get("calvin_env")
    where = Path(str(getattr(loaded, "__file__", ""))).resolve().parent
    if loaded is not None and where != package.resolve():
        raise ImportError(f"calvin_env is already imported from {where}, not from the checkout {package}: "
                          f"use one checkout per process")
    if str(checkout.env_repo) not in sys.path:
        sys.path.insert(0, str(checkout.env_repo))
    hook = sys.excepthook
    try:
        play_table_env = importlib.import_module("calvin_env.envs.play_table_env")
    finally:
        sys.excepthook = hook  # play_table_env installs rich's traceback hook at import
    _patch_base_cylinder(importlib.import_module("calvin_env.robot.robot").Robot)
    return play_table_env


def _patch_base_cylinder(robot_cls) -> None:
    """calvin_env's Robot.add_base_cylinder (the white column under the arm, visual only)
    creates it without a physicsClientId, so it lands in PyBullet's client 0: with several
    simulators in one process the first shows every column and the others none (measured:
    198 of 40,000 static-camera pixels differ). Replaced, once per process, by the same
    column in the robot's own client."""
    if getattr(robot_cls, "_pirl_patched", False):
        return
    import pybullet as p

    def add_base_cylinder(self) -> None:
        pos = list(self.base_position)
        pos[2] /= 2
        angle = p.getEulerFromQuaternion(self.base_orientation)[2]
        pos[0] -= np.cos(angle) * 0.05
        pos[1] -= np.sin(angle) * 0.05
        shape = p.createVisualShape(shapeType=p.GEOM_CYLINDER, rgbaColor=[1, 1, 1, 1], radius=0.13,
                                    length=self.base_position[2], visualFramePosition=pos, physicsClientId=self.cid)
        p.createMultiBody(baseVisualShapeIndex=shape, physicsClientId=self.cid)

    robot_cls.add_base_cylinder = add_base_cylinder
    robot_cls._pirl_patched = True


def scene_config(checkout: CalvinCheckout, scene: str):
    """calvin_env's config of scene `scene` (A-D), blocks in the evaluation's order."""
    from omegaconf import OmegaConf

    path = checkout.conf / "scene" / f"calvin_scene_{scene}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"CALVIN scene config {path} is missing")
    cfg = OmegaConf.load(path)
    movable = cfg.objects.movable_objects
    if set(movable) != set(BLOCK_ORDER):
        raise ValueError(f"{path}: movable objects {sorted(movable)}, expected {sorted(BLOCK_ORDER)}")
    cfg.objects.movable_objects = OmegaConf.create({name: movable[name] for name in BLOCK_ORDER})
    return cfg


def _yaml_mapping(path: Path) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    return data


def sim_config(checkout: CalvinCheckout, scene: str, main_size: int = MAIN_SIZE, wrist_size: int = WRIST_SIZE,
               use_egl: bool = False):
    """The PlayTableSimEnv config the official evaluation's merged_config.yaml holds, built
    from the checkout's calvin_env/conf: the panda_longer_finger robot, the static and
    gripper cameras at the given sizes, the scene, show_gui / use_vr off."""
    from omegaconf import OmegaConf

    conf = checkout.conf
    finger = _yaml_mapping(conf / "robot" / "panda_longer_finger.yaml")
    finger.pop("defaults", None)  # its defaults list names panda, merged here first
    robot = OmegaConf.create({**_yaml_mapping(conf / "robot" / "panda.yaml"), **finger})
    cameras = {
        "static": OmegaConf.load(conf / "cameras" / "cameras" / "static.yaml"),
        "gripper": OmegaConf.load(conf / "cameras" / "cameras" / "gripper.yaml"),
    }
    for cam, size in (("static", main_size), ("gripper", wrist_size)):
        cameras[cam].width = cameras[cam].height = int(size)
    env = OmegaConf.load(conf / "env" / "play_table_env.yaml")
    env.use_egl = bool(use_egl)
    cfg = OmegaConf.create({"data_path": str(checkout.data), "use_vr": False, "show_gui": False})
    cfg.cameras, cfg.robot, cfg.scene, cfg.env = cameras, robot, scene_config(checkout, scene), env
    return cfg


def load_instructions(checkout: CalvinCheckout, which: str) -> dict[str, list[str]]:
    """Task name -> instructions: the training paraphrases or the one validation sentence."""
    if which not in INSTRUCTION_SETS:
        raise ValueError(f"env.<split>.init_params.instructions must be one of {INSTRUCTION_SETS}, got {which!r}")
    table = _yaml_mapping(checkout.annotations(which))
    return {str(k): [str(s) for s in v] for k, v in table.items()}


class CalvinSource(Protocol):
    """Where CalvinFactory gets a simulator and the instructions (picklable, for workers)."""

    def build(self, scene: str, main_size: int, wrist_size: int, use_egl: bool) -> tuple[Any, Any]:
        """(simulator, task oracle) for scene A-D."""

    def instructions(self, which: str) -> dict[str, list[str]]:
        """Task name -> instructions of the train or validation set."""


class CheckoutSource:
    """Builds calvin_env's simulator and task oracle from a checkout (picklable: a path)."""

    def __init__(self, calvin_root: Optional[str] = None, key: str = "env.<split>.calvin_root"):
        self.checkout = find_calvin_root(calvin_root, key)

    def build(self, scene: str, main_size: int, wrist_size: int, use_egl: bool) -> tuple[Any, Any]:
        """(PlayTableSimEnv, Tasks) for one scene."""
        import hydra
        from omegaconf import OmegaConf

        import_calvin_env(self.checkout)
        cfg = sim_config(self.checkout, scene, main_size, wrist_size, use_egl)
        sim = hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True)
        oracle = hydra.utils.instantiate(OmegaConf.load(self.checkout.tasks_yaml))
        return sim, oracle

    def instructions(self, which: str) -> dict[str, list[str]]:
        return load_instructions(self.checkout, which)


def binarize_action(action: np.ndarray) -> np.ndarray:
    """(7,) policy action -> calvin_env's: position / euler deltas clipped to [-1, 1], the
    gripper 1 (open) where > 0, else -1 (close)."""
    a = np.asarray(action, dtype=np.float64).reshape(ACTION_DIM).copy()
    a[:6] = np.clip(a[:6], -1.0, 1.0)
    a[6] = 1.0 if a[6] > 0 else -1.0
    return a


class CalvinEnv:
    """One CALVIN scene running 5-task chains (`SingleEnv`).

    `sim` and `oracle`: calvin_env's PlayTableSimEnv and Tasks (`CheckoutSource.build`), or the
    stand-in of pirl.envs.calvin_standin; the adapter uses their reset / step / get_obs /
    get_info / cameras and get_task_info_for_set only."""

    action_dim = ACTION_DIM
    state_dim = STATE_DIM

    def __init__(
        self,
        sim: Any,
        oracle: Any,
        instructions: dict[str, list[str]],
        scene: str,
        *,
        instruction_set: str = "validation",
        subtask_max_steps: Optional[int] = None,
        num_sequences: int = NUM_SEQUENCES,
        render: bool = True,
    ):
        if subtask_max_steps is not None and subtask_max_steps < 1:
            raise ValueError(f"env.<split>.init_params.subtask_max_steps must be >= 1 or null, got {subtask_max_steps}")
        self.sim, self.oracle = sim, oracle
        self.instructions = instructions
        self.instruction_set = instruction_set
        self.subtask_max_steps = subtask_max_steps
        self.sequences = get_sequences(num_sequences)
        self.task_name = f"scene_{scene}"
        self._render = render
        self._cameras = list(sim.cameras)
        self._rng = np.random.default_rng(0)
        self.chain: tuple[str, ...] = ()
        self.completed = 0  # subtasks of the chain done so far
        self.subtask_steps = 0  # steps spent on the current subtask
        self.task_description = ""
        self._start_info: Any = None

    @contextlib.contextmanager
    def _cameras_off(self) -> Iterator[None]:
        self.sim.cameras = []
        try:
            yield
        finally:
            self.sim.cameras = self._cameras

    def _describe(self, task: str) -> str:
        options = self.instructions[task]
        if self.instruction_set == "validation":
            return options[0]
        return options[int(self._rng.integers(len(options)))]

    def reset(self, seed: int) -> None:
        state, self.chain = self.sequences[seed % len(self.sequences)]
        robot_obs, scene_obs = scene_obs_for(state)
        with self._cameras_off():
            self.sim.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        self._rng = np.random.default_rng(seed)
        self.completed, self.subtask_steps = 0, 0
        self._start_info = self.sim.get_info()
        self.task_description = self._describe(self.chain[0])

    @property
    def current_subtask(self) -> Optional[str]:
        return self.chain[self.completed] if self.completed < CHAIN_LENGTH else None

    def step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        with self._cameras_off():
            _, _, _, info = self.sim.step(binarize_action(action))
        task = self.current_subtask
        truncated = False
        if task is not None:
            self.subtask_steps += 1
            if self.oracle.get_task_info_for_set(self._start_info, info, {task}):
                self.completed += 1
                self.subtask_steps = 0
                self._start_info = info
                if self.current_subtask is not None:
                    self.task_description = self._describe(self.current_subtask)
            elif self.subtask_max_steps is not None and self.subtask_steps >= self.subtask_max_steps:
                truncated = True
        done = self.completed == CHAIN_LENGTH
        return float(self.completed), done, done, {"truncated": truncated, "avg_len": float(self.completed)}

    def observe(self) -> dict[str, np.ndarray]:
        if self._render:
            obs = self.sim.get_obs()
        else:
            with self._cameras_off():
                obs = self.sim.get_obs()
        out = {"state": np.asarray(obs["robot_obs"][:STATE_DIM], dtype=np.float32)}
        if self._render:
            out["main_image"] = np.ascontiguousarray(obs["rgb_obs"]["rgb_static"], dtype=np.uint8)
            out["wrist_image"] = np.ascontiguousarray(obs["rgb_obs"]["rgb_gripper"], dtype=np.uint8)
        return out

    def close(self) -> None:
        self.sim.close()
        # calvin_env's __del__ closes once more; with cid -1 it no longer touches the
        # disconnected client (which raises)
        self.sim.cid = -1


def resolve_suite(task: Any) -> tuple[str, tuple[str, ...]]:
    """(suite, scenes) for env.<split>.task_suite_name: calvin_abc, calvin_d or calvin_abcd."""
    if task not in SUITES:
        raise ValueError(f"env.<split>.task_suite_name for CALVIN must be one of {sorted(SUITES)}, got {task!r}")
    return str(task), SUITES[str(task)]


def default_instructions(suite: str) -> str:
    """The reference system's choice: the validation sentence on D, paraphrases in training."""
    return "validation" if suite == "calvin_d" else "train"


class CalvinFactory:
    """Picklable builder for worker processes: env index -> CalvinEnv (scenes by group).

    `source` builds the simulator and gives the instructions: a `CheckoutSource`, or the
    stand-in's (pirl.envs.calvin_standin.StandInSource) in tests."""

    def __init__(self, source: CalvinSource, scenes: Sequence[str], group_size: int, *, main_size: int = MAIN_SIZE,
                 wrist_size: int = WRIST_SIZE, use_egl: bool = False, instructions: str = "validation",
                 subtask_max_steps: Optional[int] = None, num_sequences: int = NUM_SEQUENCES, render: bool = True):
        if instructions not in INSTRUCTION_SETS:
            raise ValueError(f"env.<split>.init_params.instructions must be one of {INSTRUCTION_SETS}, got {instructions!r}")
        self.source = source
        self.scenes = list(scenes)
        self.group_size = group_size
        self.main_size, self.wrist_size, self.use_egl = main_size, wrist_size, use_egl
        self.instructions = instructions
        self.subtask_max_steps = subtask_max_steps
        self.num_sequences = num_sequences
        self.render = render

    def scene_of(self, index: int) -> str:
        return self.scenes[(index // self.group_size) % len(self.scenes)]

    def __call__(self, index: int) -> CalvinEnv:
        scene = self.scene_of(index)
        sim, oracle = self.source.build(scene, self.main_size, self.wrist_size, self.use_egl)
        return CalvinEnv(sim, oracle, self.source.instructions(self.instructions), scene,
                         instruction_set=self.instructions, subtask_max_steps=self.subtask_max_steps,
                         num_sequences=self.num_sequences, render=self.render)
