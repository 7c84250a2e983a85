"""Rigid transforms that carry splats from the frame they were captured in to the world.

A splat set is split into groups (one per robot link, one per object); every splat of
group g moves with one rigid transform

    M_g = P_g · C_g        (4, 4), capture frame -> world

where P_g is the group's pose now (world <- local frame of the link or object, read from
the simulator every step) and C_g the fixed capture transform (local frame <- capture
frame). Robot links are captured in the world at the default joint configuration, so
C_g = P_g(default)⁻¹: at the default pose M_g = I and the splats stay where the PLY put
them. Objects are captured in their own frame: C_g = I (up to the asset's alignment).

Splats move as  μ' = R μ + t  and  Σ' = R Σ Rᵀ  (their colour does not change: the SH
coefficients stay in the capture frame and are evaluated with the view direction taken
back into it, see `view_dirs`).
"""
from __future__ import annotations

import torch

from pirl.envs.gsenv.splats import quat_to_matrix


def pose_matrix(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Position (..., 3) and quaternion (..., 4) (w, x, y, z), as SAPIEN poses hold them,
    -> (..., 4, 4) homogeneous transforms."""
    out = torch.zeros(p.shape[:-1] + (4, 4), dtype=p.dtype, device=p.device)
    out[..., :3, :3] = quat_to_matrix(q.to(p.dtype))
    out[..., :3, 3] = p
    out[..., 3, 3] = 1.0
    return out


def raw_pose_matrix(raw: torch.Tensor) -> torch.Tensor:
    """(..., 7) SAPIEN raw poses [p (3), q (4, w first)] -> (..., 4, 4)."""
    return pose_matrix(raw[..., :3], raw[..., 3:7])


def invert(t: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) rigid transforms -> their inverses [Rᵀ, -Rᵀ t]."""
    r_t = t[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(t)
    out[..., :3, :3] = r_t
    out[..., :3, 3] = -(r_t @ t[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def translation(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 4, 4) pure translations."""
    out = torch.zeros(v.shape[:-1] + (4, 4), dtype=v.dtype, device=v.device)
    out[..., :3, :3] = torch.eye(3, dtype=v.dtype, device=v.device)
    out[..., :3, 3] = v
    out[..., 3, 3] = 1.0
    return out


def place(means: torch.Tensor, covs: torch.Tensor, group: torch.Tensor,
          transforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move splats by their group's transform.

    means (N, 3), covs (N, 3, 3) in the capture frame; group (N,) int64 in [0, G);
    transforms (B, G, 4, 4) = M_g per env -> world means (B, N, 3), covariances (B, N, 3, 3).
    """
    r = transforms[:, :, :3, :3][:, group]  # (B, N, 3, 3)
    t = transforms[:, :, :3, 3][:, group]  # (B, N, 3)
    world_means = (r @ means[None, :, :, None])[..., 0] + t
    world_covs = r @ covs[None] @ r.transpose(-1, -2)
    return world_means, world_covs


def view_dirs(means: torch.Tensor, group: torch.Tensor, transforms: torch.Tensor,
              cam_center: torch.Tensor) -> torch.Tensor:
    """Directions camera -> splat in each splat's capture frame, where its SH were fitted.

    With M_g = [R | t]: R⁻¹(R μ + t − c) = μ − R⁻¹(c − t), so only the camera centre is taken
    back into each group's capture frame. means (N, 3), group (N,), transforms (B, G, 4, 4),
    cam_center (3,) world -> (B, N, 3).
    """
    r, t = transforms[..., :3, :3], transforms[..., :3, 3]
    cam_local = (r.transpose(-1, -2) @ (cam_center - t)[..., None])[..., 0]  # (B, G, 3)
    return means[None] - cam_local[:, group]
