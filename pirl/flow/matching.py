"""The supervised flow-matching objective (π0's pre-training loss), for warm starts.

Conventions as the rest of pirl.flow: t=1 is pure noise, t=0 the action.

    t ~ Beta(1.5, 1) (mass towards the noisy end, openpi's choice), squeezed into
        [T_MIN, 1] so no sample sits exactly on the action
    x_t = t·noise + (1−t)·action
    target velocity  v* = noise − action   (so x_t − t·v* = action, x_t + (1−t)·v* = noise)
    loss = mean over valid elements of (v_θ(x_t, t) − v*)²
"""
from __future__ import annotations

import torch

from pirl.flow.chain import VelocityFn

BETA_ALPHA, BETA_BETA = 1.5, 1.0
T_MIN = 1e-3  # openpi: t = Beta(1.5, 1)·0.999 + 0.001


def sample_times(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B,) fp32 flow times ~ Beta(1.5, 1) mapped into [T_MIN, 1]. Beta(a, 1) has CDF t^a,
    so t = u^(1/a) with u uniform (inverse CDF; draws from the generator only)."""
    u = torch.rand(batch, generator=generator)
    t = u ** (1.0 / BETA_ALPHA)
    return (t * (1.0 - T_MIN) + T_MIN).to(device)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """actions, noise (B, H, D), t (B,) -> x_t (B, H, D) and the target velocity (B, H, D)."""
    if actions.shape != noise.shape:
        raise ValueError(f"actions {tuple(actions.shape)} and noise {tuple(noise.shape)} must have one shape")
    tb = t.reshape(-1, *([1] * (actions.dim() - 1))).to(actions.dtype)
    return tb * noise + (1.0 - tb) * actions, noise - actions


def pad_demonstrations(actions: torch.Tensor, horizon: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Demonstrated chunks (B, C, D_env) in model units -> zero-padded (B, H, D) and the
    (1, H, D) bool mask of the demonstrated elements (the loss covers only those)."""
    B, C, De = actions.shape
    padded = actions.new_zeros(B, horizon, dim)
    padded[:, :C, :De] = actions
    mask = torch.zeros(1, horizon, dim, dtype=torch.bool, device=actions.device)
    mask[:, :C, :De] = True
    return padded, mask


def flow_matching_loss(
    velocity_fn: VelocityFn,
    actions: torch.Tensor,  # (B, H, D) demonstrated chunks, model units
    noise: torch.Tensor,  # (B, H, D) N(0, I)
    t: torch.Tensor,  # (B,) flow times
    mask: torch.Tensor | None = None,  # (B, H, D) bool, real (non-padded) elements; None = all
) -> torch.Tensor:
    """Scalar mean squared velocity error over the valid elements (fp32)."""
    x_t, target = interpolate(actions.float(), noise.float(), t.float())
    v, _ = velocity_fn(x_t, t)
    err = (v.float() - target) ** 2
    if mask is None:
        return err.mean()
    m = mask.bool().expand_as(err)
    return torch.where(m, err, torch.zeros_like(err)).sum() / m.sum().clamp(min=1)
