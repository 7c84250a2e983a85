"""Demonstrations for supervised warm starts (`python -m pirl.sft`).

Every source yields `Episode`s: per-frame records in the env protocol's observation layout
(pirl.envs.base), so a policy warm-started on them sees exactly what its RL run will see.
`chunk_episodes` turns them into training samples: the observation at frame t and the
actions of frames t .. t+C-1 (C = actor.model.num_action_chunks), every frame a sample.

Sources (`load_demonstrations(source, ...)`):
    expert                  the env's scripted expert recorded through pirl's own env
                            pipeline (`make_env`: rendering, image orientation, state,
                            instruction): reach2d (pirl.demos.experts) and MetaWorld
                            (its `metaworld.policies`), N episodes per task
    DIR with meta/info.json a LeRobotDataset, v2.1 or v3.0 (parquet + mp4; pirl.demos.lerobot)
    FILE.hdf5 or a DIR of them  LIBERO's HDF5 demonstrations (robomimic layout; pirl.demos.libero_hdf5)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class Episode:
    """One demonstrated episode, frame-aligned: actions[t] was taken after observing frame t."""

    states: np.ndarray  # (T, S) float32, env units
    actions: np.ndarray  # (T, D_env) float32, env units
    task_description: str  # the instruction the policy is given
    task_name: str = ""  # metric key of the task (reach-v3, libero_spatial:0, ...)
    main_images: Optional[np.ndarray] = None  # (T, H, W, 3) uint8, third-person camera
    wrist_images: Optional[np.ndarray] = None  # (T, H, W, 3) uint8

    def __post_init__(self):
        T = len(self.states)
        if T == 0 or len(self.actions) != T:
            raise ValueError(f"episode {self.task_name!r}: {T} states but {len(self.actions)} actions (need T > 0 of each)")
        for name in ("main_images", "wrist_images"):
            img = getattr(self, name)
            if img is not None and (img.shape[0] != T or img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8):
                raise ValueError(f"episode {self.task_name!r}: {name} must be ({T}, H, W, 3) uint8, "
                                 f"got {img.shape} {img.dtype}")


@dataclass
class Demonstrations:
    """Training samples: row n is the observation at a frame and the next C actions."""

    observations: dict[str, Any]  # states (N, S) fp32, main_images / wrist_images (N, H, W, 3) uint8, task_descriptions [N]
    actions: torch.Tensor  # (N, C, D_env) fp32, env units
    task_names: list[str] = field(default_factory=list)  # (N,)
    num_episodes: int = 0

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def select(self, rows: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
        """Observations and actions of rows (N',) long."""
        idx = rows.tolist()
        obs = {k: v[rows] if torch.is_tensor(v) else [v[i] for i in idx] for k, v in self.observations.items()}
        return obs, self.actions[rows]


def chunk_episodes(episodes: list[Episode], chunk: int) -> Demonstrations:
    """Episodes -> samples at every frame t: (observation t, actions t .. t+C-1). Past the
    episode's end the chunk repeats the last action (LeRobot clamps to the episode's
    boundary frame the same way), so the final frames still teach where to stop."""
    if not episodes:
        raise ValueError("no demonstrated episodes")
    if chunk < 1:
        raise ValueError(f"action chunk must be >= 1, got {chunk}")
    has = {k: all(getattr(e, k) is not None for e in episodes) for k in ("main_images", "wrist_images")}
    states, actions, descs, names = [], [], [], []
    images: dict[str, list[np.ndarray]] = {k: [] for k, ok in has.items() if ok}
    for e in episodes:
        T = len(e.states)
        idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None, :], T - 1)  # (T, C)
        states.append(e.states.astype(np.float32))
        actions.append(e.actions.astype(np.float32)[idx])
        descs += [e.task_description] * T
        names += [e.task_name] * T
        for k in images:
            images[k].append(getattr(e, k))
    obs: dict[str, Any] = {"states": torch.from_numpy(np.concatenate(states)), "task_descriptions": descs}
    for k, parts in images.items():
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"demonstrations have {k} of several sizes {sorted(shapes)}")
        obs[k] = torch.from_numpy(np.concatenate(parts))
    return Demonstrations(obs, torch.from_numpy(np.concatenate(actions)), names, len(episodes))


def detect_source(source: str) -> str:
    """'expert', 'lerobot' or 'libero_hdf5' for a `--demos` argument."""
    if source == "expert":
        return "expert"
    p = Path(source)
    if (p / "meta" / "info.json").is_file():
        return "lerobot"
    if p.suffix in (".hdf5", ".h5") and p.is_file():
        return "libero_hdf5"
    if p.is_dir() and any(p.glob("*.hdf5")):
        return "libero_hdf5"
    raise ValueError(f"--demos {source!r}: expected 'expert', a LeRobotDataset folder (with meta/info.json), "
                     "a LIBERO .hdf5 file or a folder of them")


def load_episodes(source: str, **kwargs: Any) -> list[Episode]:
    """Episodes of a file source (LeRobotDataset or LIBERO HDF5); kwargs go to the reader."""
    kind = detect_source(source)
    if kind == "lerobot":
        from pirl.demos.lerobot import read_lerobot_dataset

        return read_lerobot_dataset(source, **kwargs)
    if kind == "libero_hdf5":
        from pirl.demos.libero_hdf5 import read_libero_hdf5

        return read_libero_hdf5(source, **kwargs)
    raise ValueError("load_episodes reads files; the scripted experts are in pirl.demos.experts")


__all__ = ["Demonstrations", "Episode", "chunk_episodes", "detect_source", "load_episodes"]
