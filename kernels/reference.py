"""Torch references of the fused kernels: the math of `pirl.flow.transitions`, plus the
executed-box slicing and `logprob_type` reduction the log-prob kernel fuses.

These run wherever torch runs (CPU, CUDA, any dtype) and are what the dispatcher uses off
CUDA; the kernel tests hold the Triton kernels to them and to a float64 re-derivation.
"""
from __future__ import annotations

import torch

from pirl.flow import transitions as T

# `algorithm.logprob_type`, spelled as pirl.flow.chain spells them (chain imports the
# dispatcher, so the names cannot be imported from there without a cycle).
TOKEN_LEVEL, ACTION_LEVEL, CHUNK_LEVEL = "token_level", "action_level", "chunk_level"
LOGPROB_TYPES = (CHUNK_LEVEL, ACTION_LEVEL, TOKEN_LEVEL)


def denoise_step(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    t: torch.Tensor,  # (B,)
    delta: float,
    noise: torch.Tensor,  # (B, H, D) fresh N(0, 1)
    stochastic: torch.Tensor,  # (B,) bool
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transitions.denoise_step; for method "ode" no row is stochastic (an ODE step has no
    density), so x_next is the ODE mean and the log-prob zero. Both fp32 (B, H, D)."""
    if method == T.ODE:
        x_next = x_t.float() - delta * v.float()
        return x_next, torch.zeros_like(x_next)
    return T.denoise_step(x_t, v, t, delta, noise, stochastic, method, noise_level, learned_std)


def step_logprob(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    x_next: torch.Tensor,  # (B, H, D) stored x_{t−δ}
    t: torch.Tensor,  # (B,)
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transitions.step_logprob: element log-prob and entropy, fp32 (B, H, D)."""
    if method == T.ODE:
        raise ValueError(f"an ODE transition has no density: step_logprob needs noise_method in {T.NOISE_METHODS}")
    return T.step_logprob(x_t, v, x_next, t, delta, method, noise_level, learned_std)


def reduce_box(x: torch.Tensor, logprob_type: str) -> torch.Tensor:
    """(B, C, D_env) element values -> (B, C, D_env), (B, C) or (B,) sums per logprob_type."""
    if logprob_type == TOKEN_LEVEL:
        return x
    if logprob_type == ACTION_LEVEL:
        return x.sum(dim=2)
    if logprob_type == CHUNK_LEVEL:
        return x.sum(dim=(1, 2))
    raise ValueError(f"algorithm.logprob_type must be one of {LOGPROB_TYPES}, got {logprob_type!r}")


def executed_box(H: int, D: int, action_chunk: int | None, action_env_dim: int | None) -> tuple[int, int]:
    """(C, D_env) of the executed box inside a (H, D) chunk; None means the full extent."""
    C = H if action_chunk is None else int(action_chunk)
    DE = D if action_env_dim is None else int(action_env_dim)
    if not (1 <= C <= H and 1 <= DE <= D):
        raise ValueError(f"action_chunk={C} must be in [1, H={H}] and action_env_dim={DE} in [1, D={D}]")
    return C, DE


def flow_step_logprob(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    x_next: torch.Tensor,  # (B, H, D)
    t: torch.Tensor,  # (B,)
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,
    action_chunk: int | None = None,  # C; None = the whole horizon H
    action_env_dim: int | None = None,  # D_env; None = all D dims
    logprob_type: str = TOKEN_LEVEL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy of the executed box (first C steps, first D_env dims: padding
    never counts), summed to the granularity of `logprob_type`, fp32."""
    lp, ent = step_logprob(x_t, v, x_next, t, delta, method, noise_level, learned_std)
    C, DE = executed_box(lp.shape[1], lp.shape[2], action_chunk, action_env_dim)
    return reduce_box(lp[:, :C, :DE], logprob_type), reduce_box(ent[:, :C, :DE], logprob_type)
