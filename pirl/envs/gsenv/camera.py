"""The third-person pinhole camera GSEnv renders from, in two conventions.

  * SAPIEN / ManiSkill mount pose (`cam_to_world`): camera x forward (the optical axis),
    y left, z up. This is what the task hands ManiSkill (`CameraConfig.pose`), so the
    simulator's own camera sees what the splats show.
  * OpenCV (`viewmat`, world -> camera): x right, y down, z forward, as gsplat and the torch
    rasterizer take it. A camera point (x, y, z) with z > 0 lands at pixel
    (fx·x/z + cx, fy·y/z + cy), pixel (i, j) covering [j, j+1) x [i, i+1) (centre j+0.5).

The defaults are the real setup's calibration that ManiSkill-GS ships for
PutCubeOnPlate (mani_skill_gs/env_simulation/ms_configs.py): 640x480, fx 604.15,
fy 604.27, principal point (316.67, 243.19), mounted at (0.075, -0.161, 0.497) looking
down at the table. `env.<split>.init_params.camera` overrides any of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

import torch

WIDTH, HEIGHT = 640, 480
INTRINSICS = {"fx": 604.152161, "fy": 604.267212, "cx": 316.670074, "cy": 243.194473}
CAM_TO_WORLD = (
    (0.68370109, -0.50239316, 0.52929587, 0.07500001),
    (0.33318036, 0.86018832, 0.38609201, -0.16100000),
    (-0.64926404, -0.08762054, 0.75549905, 0.49700000),
    (0.0, 0.0, 0.0, 1.0),
)
CAMERA_KEYS = ("width", "height", "fx", "fy", "cx", "cy", "cam_to_world")

# Columns: the OpenCV camera axes (right, down, forward) written in SAPIEN camera axes
# (forward, left, up): right = -left, down = -up, forward = forward.
CV_TO_SAPIEN = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    cam_to_world: torch.Tensor  # (4, 4) float64 SAPIEN mount pose (x forward, y left, z up)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None) -> Camera:
        """The default camera with the keys of `env.<split>.init_params.camera` applied."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(CAMERA_KEYS))
        if unknown:
            raise ValueError(f"env.*.init_params.camera has keys {unknown}; allowed: {list(CAMERA_KEYS)}")
        c2w = torch.tensor(cfg.get("cam_to_world", CAM_TO_WORLD), dtype=torch.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"env.*.init_params.camera.cam_to_world must be a 4x4 matrix, got shape {tuple(c2w.shape)}")
        r = c2w[:3, :3]
        if not torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-5) or float(torch.det(r)) < 0:
            raise ValueError("env.*.init_params.camera.cam_to_world: the upper-left 3x3 block is not a rotation")
        u, _, vh = torch.linalg.svd(r)  # calibrations are printed to ~8 digits: the nearest exact rotation
        c2w[:3, :3] = u @ vh
        intr = {k: float(cfg.get(k, v)) for k, v in INTRINSICS.items()}
        return cls(int(cfg.get("width", WIDTH)), int(cfg.get("height", HEIGHT)), cam_to_world=c2w, **intr)

    @property
    def K(self) -> torch.Tensor:
        """(3, 3) float64 intrinsics."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=torch.float64)

    @property
    def center(self) -> torch.Tensor:
        """(3,) camera centre in the world."""
        return self.cam_to_world[:3, 3]

    def viewmat(self) -> torch.Tensor:
        """(4, 4) float64 world -> OpenCV camera transform."""
        r_cv = self.cam_to_world[:3, :3] @ CV_TO_SAPIEN  # OpenCV camera -> world rotation
        out = torch.eye(4, dtype=torch.float64)
        out[:3, :3] = r_cv.T
        out[:3, 3] = -r_cv.T @ self.center
        return out

    def resized(self, width: int) -> Camera:
        """The same camera at another resolution of the same aspect ratio: the image plane is
        scaled, so f and c scale with it (pixel corners on integer coordinates)."""
        s = width / self.width
        height = round(self.height * s)
        if abs(height - self.height * s) > 1e-6:
            raise ValueError(f"image width {width} does not keep the camera's {self.width}x{self.height} "
                             f"aspect ratio at a whole number of rows")
        return Camera(width, height, self.fx * s, self.fy * s, self.cx * s, self.cy * s, self.cam_to_world)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) world points -> pixel coordinates (..., 2) and depth along the axis (...,)."""
        v = self.viewmat().to(points.dtype)
        cam = points @ v[:3, :3].T + v[:3, 3]
        z = cam[..., 2]
        uv = torch.stack([self.fx * cam[..., 0] / z + self.cx, self.fy * cam[..., 1] / z + self.cy], dim=-1)
        return uv, z

    def sapien_intrinsic(self) -> list[list[float]]:
        """K as ManiSkill's CameraConfig(intrinsic=...) takes it."""
        return self.K.tolist()
