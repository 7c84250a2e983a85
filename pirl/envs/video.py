"""Rollout videos (`video_cfg.save_video`): one mp4 per env rank, one frame per chunk step.

Each frame tiles the batch's `main_images` in a grid (up to `max_envs` envs); with
`info_on_video` every tile carries its env's step, chunk reward, success flag and
instruction. Files: `<video_base_dir>/rank_<rank>/<name>_<index>.mp4`, a new file at every
`new_episode()` (each env reset) and every `max_frames` frames, so memory stays bounded
and a crash loses at most one file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TEXT_COLOR = (255, 255, 255)
SUCCESS_COLOR = (0, 220, 0)
SHADOW_COLOR = (0, 0, 0)


def annotate(image: np.ndarray, lines: Sequence[str], success: bool) -> np.ndarray:
    """(H, W, 3) uint8 -> a copy with `lines` drawn top-left (green when successful)."""
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    color = SUCCESS_COLOR if success else TEXT_COLOR
    y = 2
    for line in lines:
        draw.text((3, y + 1), line, fill=SHADOW_COLOR, font=font)  # shadow: readable on any scene
        draw.text((2, y), line, fill=color, font=font)
        y += 11
    return np.asarray(img)


def wrap(text: str, width_px: int) -> list[str]:
    """Split an instruction into lines that fit `width_px` at the default font (~6 px a char)."""
    per_line = max(8, width_px // 6)
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > per_line:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return lines


# Below this many pixels a side the drawn text would cover the scene: small renders (the
# tiny policies' 64 px) are enlarged by an integer factor (nearest) before annotation.
MIN_TEXT_SIDE = 192


def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, kH, kW, 3) with the smallest integer k >= 1 that makes min(H, W) >= min_side."""
    k = max(1, -(-min_side // min(frames.shape[1:3])))
    return frames if k == 1 else frames.repeat(k, axis=1).repeat(k, axis=2)


def tile(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> one (rows*H, cols*W, 3) image, cols = ceil(sqrt(N)); even sides
    (H.264 needs them)."""
    n, h, w, _ = frames.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h + (rows * h) % 2, cols * w + (cols * w) % 2, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    return grid


class VideoRecorder:
    """Collects one tiled frame per `add` and writes mp4 files with imageio-ffmpeg."""

    def __init__(
        self,
        video_base_dir: str,
        rank: int = 0,
        fps: int = 10,
        info_on_video: bool = True,
        max_envs: int = 16,
        name: str = "rollout",
        max_frames: int = 500,
    ):
        self.dir = Path(video_base_dir) / f"rank_{rank}"
        self.fps = fps
        self.info_on_video = info_on_video
        self.max_envs = max_envs
        self.name = name
        self.max_frames = max_frames
        self._frames: list[np.ndarray] = []
        self._index = 0
        self.paths: list[Path] = []

    def add(self, obs: dict[str, Any], rewards: np.ndarray, success: np.ndarray, steps: np.ndarray) -> None:
        """obs: the protocol's batch (main_images (B, H, W, 3)); rewards, success, steps (B,)."""
        if "main_images" not in obs:
            return
        images = obs["main_images"][: self.max_envs]
        images = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
        if self.info_on_video:
            images = upscale(images, MIN_TEXT_SIDE)
            descs = obs.get("task_descriptions", [""] * len(images))
            images = np.stack(
                [
                    annotate(
                        img,
                        [f"step {int(steps[i])}", f"r {float(rewards[i]):.2f} {'success' if success[i] else ''}"]
                        + wrap(str(descs[i]), img.shape[1]),
                        bool(success[i]),
                    )
                    for i, img in enumerate(images)
                ]
            )
        self._frames.append(tile(images))
        if len(self._frames) >= self.max_frames:
            self.new_episode()

    def new_episode(self) -> Optional[Path]:
        """Write the frames gathered so far to a new mp4; returns its path (None if empty)."""
        if not self._frames:
            return None
        import imageio.v2 as imageio

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.name}_{self._index:04d}.mp4"
        with imageio.get_writer(path, fps=self.fps, codec="libx264", macro_block_size=1) as writer:
            for f in self._frames:
                writer.append_data(f)  # type: ignore[attr-defined]  # the ffmpeg Writer's method
        self._frames = []
        self._index += 1
        self.paths.append(path)
        return path

    def close(self) -> None:
        self.new_episode()
