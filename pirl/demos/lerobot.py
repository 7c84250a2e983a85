"""LeRobotDataset demonstrations (lerobot's on-disk format), read with pyarrow and PyAV.

Both layouts lerobot writes are read (`meta/info.json` "codebase_version"):
    v2.x  one parquet per episode: data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet,
          one mp4 per episode and camera; meta/episodes.jsonl, meta/tasks.jsonl
    v3.0  many episodes per file: data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet;
          meta/episodes/chunk-*/file-*.parquet has each episode's rows and its segment
          (videos/<key>/from_timestamp .. to_timestamp) of a shared mp4; meta/tasks.parquet
The path templates themselves come from info.json ("data_path", "video_path").

Columns: the state (`observation.state`), the action (`action`), `episode_index`,
`frame_index`, `timestamp`, `task_index`, and camera features of dtype "video" (decoded
from the mp4 at each frame's timestamp) or "image" (PNG/JPEG bytes in the parquet).
Cameras map onto pirl's observation keys: the first camera -> main_images, the second ->
wrist_images, unless `cameras` names them ({"main_images": "observation.images.image", ...}).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import numpy as np

from pirl.demos import Episode

CAMERA_SLOTS = ("main_images", "wrist_images")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tasks(root: Path, version: str) -> dict[int, str]:
    if version.startswith("v2"):
        return {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(root / "meta" / "tasks.jsonl")}
    import pandas as pd

    df = pd.read_parquet(root / "meta" / "tasks.parquet")  # index: task string, column task_index
    if "task" in df.columns:
        return {int(i): str(t) for t, i in zip(df["task"], df["task_index"])}
    return {int(i): str(t) for t, i in zip(df.index, df["task_index"])}


def _decode_video(path: Path, timestamps: np.ndarray, start: float = 0.0) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of an mp4 at start + timestamps (s): for each timestamp
    the first decoded frame at or after it (within half a frame)."""
    import av

    want = start + np.asarray(timestamps, dtype=np.float64)
    out: list[Optional[np.ndarray]] = [None] * len(want)
    t = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        tol = 0.5 / fps
        j = 0
        for frame in container.decode(stream):
            t = float(frame.time)  # seconds: pts x time_base
            while j < len(want) and t >= want[j] - tol:
                out[j] = frame.to_ndarray(format="rgb24")
                j += 1
            if j == len(want):
                break
    if j < len(want):
        raise ValueError(f"{path}: video ends at {t:.3f} s, before frame time {want[j]:.3f} s")
    return np.stack([f for f in out if f is not None])


def _decode_images(cells) -> np.ndarray:
    from PIL import Image

    frames = []
    for c in cells:
        data = c["bytes"] if isinstance(c, dict) else c
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(frames)


def read_lerobot_dataset(root: str | Path, state_key: str = "observation.state", action_key: str = "action",
                         cameras: Optional[dict[str, str]] = None, episodes: Optional[list[int]] = None,
                         task_name: Optional[str] = None) -> list[Episode]:
    """Episodes of a LeRobotDataset folder (v2.x or v3.0), optionally only `episodes`."""
    import pandas as pd

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset: no meta/info.json")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not (version.startswith("v2") or version.startswith("v3")):
        raise ValueError(f"{info_path}: codebase_version {version!r}; pirl reads v2.x and v3.0")
    features = info.get("features", {})
    for key in (state_key, action_key):
        if key not in features:
            raise ValueError(f"{info_path}: no feature {key!r} (features: {sorted(features)})")
    cams = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    if cameras is None:
        cameras = dict(zip(CAMERA_SLOTS, cams))
    for slot, key in cameras.items():
        if slot not in CAMERA_SLOTS or key not in features:
            raise ValueError(f"cameras {cameras}: slots must be {CAMERA_SLOTS} and keys camera features {cams}")
    tasks = _tasks(root, version)
    chunks_size = int(info.get("chunks_size", 1000))

    if version.startswith("v2"):
        meta = _read_jsonl(root / "meta" / "episodes.jsonl")
        ids = [int(m["episode_index"]) for m in meta]
    else:
        meta_df = pd.concat([pd.read_parquet(p) for p in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))])
        meta = meta_df.to_dict("records")
        ids = [int(m["episode_index"]) for m in meta]
    chosen = set(ids if episodes is None else episodes)
    missing = chosen - set(ids)
    if missing:
        raise ValueError(f"{root}: no episodes {sorted(missing)} (has {len(ids)}: {min(ids)}..{max(ids)})")

    out: list[Episode] = []
    frames_cache: dict[Path, pd.DataFrame] = {}
    for m, ep in zip(meta, ids):
        if ep not in chosen:
            continue
        if version.startswith("v2"):
            path = root / info["data_path"].format(episode_chunk=ep // chunks_size, episode_index=ep)
            df = pd.read_parquet(path)
        else:
            path = root / info["data_path"].format(chunk_index=int(m["data/chunk_index"]),
                                                   file_index=int(m["data/file_index"]))
            if path not in frames_cache:
                frames_cache[path] = pd.read_parquet(path)
            df = frames_cache[path]
            df = df[df["episode_index"] == ep]
        df = df.sort_values("frame_index")
        if len(df) == 0:
            raise ValueError(f"{path}: no frames of episode {ep}")
        images = {}
        for slot, key in cameras.items():
            if features[key]["dtype"] == "image":
                images[slot] = _decode_images(df[key].tolist())
                continue
            if version.startswith("v2"):
                vpath = root / info["video_path"].format(episode_chunk=ep // chunks_size, video_key=key, episode_index=ep)
                start = 0.0
            else:
                vpath = root / info["video_path"].format(video_key=key, chunk_index=int(m[f"videos/{key}/chunk_index"]),
                                                         file_index=int(m[f"videos/{key}/file_index"]))
                start = float(m[f"videos/{key}/from_timestamp"])
            images[slot] = _decode_video(vpath, df["timestamp"].to_numpy(), start)
        task_index = int(df["task_index"].iloc[0])
        if task_index not in tasks:
            raise ValueError(f"{path}: episode {ep} has task_index {task_index}, not in the dataset's tasks")
        out.append(Episode(
            states=np.stack(df[state_key].to_numpy()).astype(np.float32),
            actions=np.stack(df[action_key].to_numpy()).astype(np.float32),
            task_description=tasks[task_index], task_name=task_name or tasks[task_index],
            main_images=images.get("main_images"), wrist_images=images.get("wrist_images")))
    return out
