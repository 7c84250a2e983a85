"""LIBERO's HDF5 demonstrations (robomimic layout, as LIBERO's datasets ship), read with h5py.

    data.attrs["problem_info"]   JSON with "language_instruction"
    data/demo_<k>/actions        (T, 7) delta position, delta axis-angle, gripper in [-1, 1]
    data/demo_<k>/obs/agentview_rgb, eye_in_hand_rgb   (T, H, W, 3) uint8, as rendered
    data/demo_<k>/obs/ee_pos (T, 3), ee_ori (T, 3) axis-angle, gripper_states (T, 2)

Observations are mapped onto pirl's LIBERO env (pirl/envs/libero.py): state (8,) =
ee_pos ‖ ee_ori ‖ gripper_states, images rotated 180 degrees (the env turns MuJoCo's
renders the same way, as openpi and RLinf feed them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from pirl.demos import Episode

MAIN_KEY, WRIST_KEY = "agentview_rgb", "eye_in_hand_rgb"
STATE_KEYS = ("ee_pos", "ee_ori", "gripper_states")


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    files = sorted(source.glob("*.hdf5"))
    if not files:
        raise FileNotFoundError(f"{source}: no .hdf5 files")
    return files


def _instruction(f, path: Path) -> str:
    info = f["data"].attrs.get("problem_info")
    if info is None:
        raise ValueError(f"{path}: data.attrs has no 'problem_info' (LIBERO's task instruction)")
    return str(json.loads(info)["language_instruction"])


def read_libero_hdf5(source: str | Path, max_episodes: Optional[int] = None, task_name: Optional[str] = None,
                     images: bool = True) -> list[Episode]:
    """Episodes of one LIBERO .hdf5 file or every .hdf5 file of a folder (demo_0, demo_1, ...
    in index order; at most `max_episodes` per file)."""
    import h5py

    out: list[Episode] = []
    for path in _files(Path(source)):
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ValueError(f"{path}: no 'data' group (not a LIBERO / robomimic HDF5 file)")
            text = _instruction(f, path)
            demos = sorted(f["data"].keys(), key=lambda k: int(k.split("_")[-1]))
            for name in demos[:max_episodes]:
                g = f["data"][name]
                missing = [k for k in STATE_KEYS + ((MAIN_KEY, WRIST_KEY) if images else ()) if k not in g["obs"]]
                if missing or "actions" not in g:
                    raise ValueError(f"{path}:data/{name} lacks {missing or ['actions']}")
                state = np.concatenate([np.asarray(g["obs"][k], dtype=np.float32) for k in STATE_KEYS], axis=1)
                out.append(Episode(
                    states=state, actions=np.asarray(g["actions"], dtype=np.float32), task_description=text,
                    task_name=task_name or path.stem,
                    main_images=np.ascontiguousarray(np.asarray(g["obs"][MAIN_KEY])[:, ::-1, ::-1]) if images else None,
                    wrist_images=np.ascontiguousarray(np.asarray(g["obs"][WRIST_KEY])[:, ::-1, ::-1]) if images else None))
    return out
