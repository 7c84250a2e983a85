"""MetaWorld (v3 tasks, MuJoCo) behind `pirl.envs.chunked.SingleEnv`.

Task specs (`env.<split>.task_suite_name`):
    metaworld_50, metaworld_45_ind, metaworld_45_ood
                                    the reference system's names of MT50, ML45 and
                                    ML45:test
    "reach-v3" (or "MT1:reach-v3")  one task
    "MT10", "MT50"                  multi-task: train and eval on the same tasks
    "ML45" / "ML45:test"            the 45 train tasks / the 5 held-out tasks (train on
                                    ML45, evaluate on ML45:test)
    a list of task names            any subset
Envs are assigned tasks by GRPO group (group g runs task g % num_tasks), so a group shares
its task as well as its initial state.

Initial state: each v3 task comes with 50 fixed goal/object configurations (MetaWorld's
"tasks"); reset(seed) selects configuration seed % 50, so equal seeds give equal states.
Actions: 4-D (end-effector dx, dy, dz in [-1, 1], gripper). Observation: `state` is the
39-D Sawyer observation (hand xyz, gripper, object poses, previous frame, goal), `main_image`
the `camera_name` camera (default corner2) at `image_size`, turned the right way up.

Rendering on CPU (MUJOCO_GL=egl or osmesa): shadows and multisampling are switched off in
the model before the first render (measured 10 -> 61 fps at 224 px).
"""
from __future__ import annotations

import functools
import os
from typing import Any
from collections.abc import Sequence

import numpy as np

# Natural-language instruction for each MetaWorld v3 task (MetaWorld ships none).
TASK_DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the cover and close the box with it",
    "button-press-topdown-v3": "press a button from the top",
    "button-press-topdown-wall-v3": "bypass a wall and press a button from the top",
    "button-press-v3": "press a button",
    "button-press-wall-v3": "bypass a wall and press a button",
    "coffee-button-v3": "push a button on the coffee machine",
    "coffee-pull-v3": "pull a mug from a coffee machine",
    "coffee-push-v3": "push a mug under a coffee machine",
    "dial-turn-v3": "rotate a dial 180 degrees",
    "disassemble-v3": "pick a nut out of a peg",
    "door-close-v3": "close a door with a revolving joint",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open a door with a revolving joint",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "insert the gripper into a hole",
    "drawer-close-v3": "push and close a drawer",
    "drawer-open-v3": "open a drawer",
    "faucet-open-v3": "rotate the faucet counter-clockwise",
    "faucet-close-v3": "rotate the faucet clockwise",
    "hammer-v3": "hammer a screw on the wall",
    "handle-press-side-v3": "press a handle down sideways",
    "handle-press-v3": "press a handle down",
    "handle-pull-side-v3": "pull a handle up sideways",
    "handle-pull-v3": "pull a handle up",
    "lever-pull-v3": "pull a lever down 90 degrees",
    "pick-place-wall-v3": "pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "pick up a puck from a hole",
    "pick-place-v3": "pick and place a puck to a goal",
    "plate-slide-v3": "slide a plate into a cabinet",
    "plate-slide-side-v3": "slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "get a plate from the cabinet",
    "plate-slide-back-side-v3": "get a plate from the cabinet sideways",
    "peg-insert-side-v3": "insert a peg sideways",
    "peg-unplug-side-v3": "unplug a peg sideways",
    "soccer-v3": "kick a soccer ball into the goal",
    "stick-push-v3": "grasp a stick and push a box using the stick",
    "stick-pull-v3": "grasp a stick and pull a box with the stick",
    "push-v3": "push the puck to a goal",
    "push-wall-v3": "bypass a wall and push a puck to a goal",
    "push-back-v3": "pull a puck to a goal",
    "reach-v3": "reach a goal position",
    "reach-wall-v3": "bypass a wall and reach a goal",
    "shelf-place-v3": "pick and place a puck onto a shelf",
    "sweep-into-v3": "sweep a puck into a hole",
    "sweep-v3": "sweep a puck off the table",
    "window-open-v3": "push and open a window",
    "window-close-v3": "push and close a window",
}

ACTION_DIM = 4
BENCHMARKS = ("MT10", "MT50", "ML45")


def _benchmark_names(bench: str, test: bool) -> list[str]:
    """Task names of MT10 / MT50 / ML45 (train or test) from MetaWorld's env tables,
    without building the benchmark."""
    from metaworld import env_dict

    if bench == "ML45":
        return list(env_dict.ML45_V3["test" if test else "train"].keys())
    return list((env_dict.MT10_V3 if bench == "MT10" else env_dict.MT50_V3).keys())


# The reference system's task_suite_name for MetaWorld's benchmarks.
REFERENCE_SUITES = {"metaworld_50": "MT50", "metaworld_45_ind": "ML45", "metaworld_45_ood": "ML45:test"}


def resolve_tasks(task: Any) -> tuple[str, list[str]]:
    """(benchmark name, task names) for a task spec: "reach-v3", "MT1:reach-v3", "MT10",
    "MT50", "ML45" / "ML45:train" (the 45 train tasks), "ML45:test" (the 5 held out), the
    REFERENCE_SUITES names, or a list of task names."""

    if task is None:
        raise ValueError("env.<split>.task_suite_name must name a MetaWorld task (reach-v3), metaworld_50, "
                         "metaworld_45_ind, metaworld_45_ood, MT10, MT50, ML45 or ML45:test")
    task = REFERENCE_SUITES.get(task, task) if isinstance(task, str) else task
    if not isinstance(task, str) and isinstance(task, Sequence):  # a list (or an OmegaConf ListConfig)
        bench, names = "MT50", [str(t) for t in task]
    else:
        head, _, tail = str(task).partition(":")
        if head in BENCHMARKS:
            if tail not in ("", "train", "test") or (tail == "test" and head != "ML45"):
                raise ValueError(f"MetaWorld task spec {task!r}: only ML45 has a ':test' split")
            bench = f"{head}:test" if tail == "test" else head
            names = list(_benchmark_names(head, tail == "test"))
        else:
            bench, names = "MT1", [tail or head]
    unknown = [n for n in names if n not in TASK_DESCRIPTIONS]
    if unknown:
        raise ValueError(f"unknown MetaWorld task(s) {unknown}; known: {sorted(TASK_DESCRIPTIONS)}")
    return bench, names


@functools.cache  # envs of one task in a process share its configurations
def _benchmark_tasks(bench: str, name: str, seed: int) -> tuple[type, list]:
    """The env class and the 50 fixed configurations of task `name`.

    Built per task with MetaWorld's single-task benchmarks (building MT50 or ML45 whole
    instantiates every task's env, ~1 s each): MT1 for MT benchmarks (goal in the
    observation), ML1 for ML45 (goal hidden; its test configurations for ML45:test)."""
    import metaworld

    b: metaworld.Benchmark
    if bench.startswith("ML"):
        b = metaworld.ML1(name, seed=seed)
        tasks = b.test_tasks if bench.endswith(":test") else b.train_tasks
    else:
        b = metaworld.MT1(name, seed=seed)
        tasks = b.train_tasks
    return b.train_classes[name], list(tasks)


def fast_cpu_rendering(model) -> None:
    """Shadows and multisampling off: most of MuJoCo's CPU render cost, not what the
    policy needs (edges slightly aliased)."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0


class MetaWorldEnv:
    """One MetaWorld task instance (`SingleEnv`)."""

    action_dim = ACTION_DIM
    state_dim = 39

    def __init__(
        self,
        task_name: str,
        benchmark: str = "MT1",
        image_size: int = 480,
        camera_name: str = "corner2",
        render: bool = True,
        benchmark_seed: int = 0,
        max_path_length: int = 10_000,
    ):
        env_cls, self._tasks = _benchmark_tasks(benchmark, task_name, benchmark_seed)
        self.task_name = task_name
        self.task_description = TASK_DESCRIPTIONS[task_name]
        self._render = render
        self._env = env_cls(
            render_mode="rgb_array" if render else None,
            camera_name=camera_name if render else None,
            width=image_size,
            height=image_size,
        )
        # Episode length is enforced by ChunkedVecEnv; MetaWorld's own cap would raise.
        self._env.max_path_length = max_path_length
        fast_cpu_rendering(self._env.model)
        self._obs: np.ndarray | None = None

    def reset(self, seed: int) -> None:
        self._env.set_task(self._tasks[seed % len(self._tasks)])
        obs, _ = self._env.reset()
        self._obs = obs

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        obs, reward, _, _, info = self._env.step(np.asarray(action, dtype=np.float64))
        self._obs = obs
        success = bool(info["success"])
        return float(reward), success, success

    def observe(self) -> dict[str, np.ndarray]:
        out = {"state": np.asarray(self._obs, dtype=np.float32)}
        if self._render:
            # MuJoCo's offscreen buffer is bottom-up; corner cameras also look from behind.
            frame = self._env.render()
            out["main_image"] = np.ascontiguousarray(np.flip(frame, (0, 1)))
        return out

    def close(self) -> None:
        self._env.close()


class MetaWorldFactory:
    """Picklable env builder for worker processes: env index -> MetaWorldEnv."""

    def __init__(self, benchmark: str, task_names: Sequence[str], group_size: int, **env_kwargs):
        self.benchmark = benchmark
        self.task_names = list(task_names)
        self.group_size = group_size
        self.env_kwargs = env_kwargs

    def task_of(self, index: int) -> str:
        return self.task_names[(index // self.group_size) % len(self.task_names)]

    def __call__(self, index: int) -> MetaWorldEnv:
        os.environ.setdefault("MUJOCO_GL", "egl")
        return MetaWorldEnv(self.task_of(index), self.benchmark, **self.env_kwargs)
