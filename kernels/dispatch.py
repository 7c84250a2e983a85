"""Choose the Triton kernel or the torch reference for each hot call.

The rollout sampler (`pirl.flow.chain.sample_chain`) and the actor's re-scoring
(`pirl.flow.chain.chain_logprob`) call these, never a kernel directly.

PIRL_KERNELS (read at every call):
    auto    (default) Triton on CUDA tensors, the torch reference elsewhere
    triton  always Triton; CPU tensors need TRITON_INTERPRET=1 (Triton's CPU interpreter)
    torch   always the torch reference
"""
from __future__ import annotations

import os

import torch

from pirl.kernels import reference as R

BACKEND_ENV = "PIRL_KERNELS"
AUTO, TRITON, TORCH = "auto", "triton", "torch"
BACKENDS = (AUTO, TRITON, TORCH)


def backend(x: torch.Tensor) -> str:
    """"triton" or "torch": what PIRL_KERNELS selects for tensors on x's device."""
    choice = os.environ.get(BACKEND_ENV, AUTO).strip().lower() or AUTO
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {choice!r}")
    if choice == TORCH:
        return TORCH
    if choice == AUTO:
        return TRITON if x.device.type == "cuda" else TORCH
    if x.device.type != "cuda":
        from pirl.kernels.flow_step import interpreting  # imports triton only when asked for

        if not interpreting():
            raise RuntimeError(f"{BACKEND_ENV}=triton on {x.device.type} tensors needs TRITON_INTERPRET=1 "
                               f"(Triton's CPU interpreter); use {BACKEND_ENV}=auto or torch off CUDA")
    return TRITON


def denoise_step(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    t: torch.Tensor,  # (B,)
    delta: float,
    noise: torch.Tensor,  # (B, H, D) fresh N(0, 1)
    stochastic: torch.Tensor,  # (B,) bool: which samples take the stochastic step now
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,  # (B, H, D), flow_noise only
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rollout's denoising step (transitions.denoise_step): x_next and its element
    log-density, both fp32 (B, H, D); zero log-density on deterministic rows."""
    if backend(x_t) == TRITON:
        from pirl.kernels import flow_step

        return flow_step.denoise_step(x_t, v, t, delta, noise, stochastic, method, noise_level, learned_std)
    return R.denoise_step(x_t, v, t, delta, noise, stochastic, method, noise_level, learned_std)


def step_logprob(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    x_next: torch.Tensor,  # (B, H, D) the stored x_{t−δ}
    t: torch.Tensor,  # (B,)
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,  # (B, H, D), flow_noise only
) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor's re-scoring (transitions.step_logprob): element log-prob and entropy,
    fp32 (B, H, D), differentiable in v and learned_std."""
    return flow_step_logprob(x_t, v, x_next, t, delta, method, noise_level, learned_std)


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
    logprob_type: str = R.TOKEN_LEVEL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy of the executed box (first C steps, first D_env dims), fp32,
    summed per `logprob_type`: token (B, C, D_env), action (B, C), chunk (B,)."""
    if backend(x_t) == TRITON:
        from pirl.kernels.autograd import flow_step_logprob as fused

        return fused(x_t, v, x_next, t, delta, method, noise_level, learned_std,
                     action_chunk, action_env_dim, logprob_type)
    return R.flow_step_logprob(x_t, v, x_next, t, delta, method, noise_level, learned_std,
                               action_chunk, action_env_dim, logprob_type)
