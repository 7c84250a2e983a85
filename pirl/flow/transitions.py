"""One denoising transition x_t -> x_{t-δ} of a flow-matching policy, as a Gaussian.

Conventions (DESIGN.md): t=1 is pure noise, t=0 is the action; K Euler steps of size
δ = 1/K. The velocity v = v_θ(x_t, t | obs) predicts x̂0 = x_t − t·v (action) and
x̂1 = x_t + (1−t)·v (noise).

    ODE:          μ = x_t − δ·v                                  σ = 0
    SDE (a):      σ_t = a·sqrt(t / (1−t)),
                  μ = x_t − δ·v − (σ_t²·δ / (2t))·x̂1           std = σ_t·sqrt(δ)
    learned noise μ = x_t − δ·v                                  std from the noise head

These are the torch references; the Triton kernels in `pirl.kernels` compute the same
thing fused, and `pirl.kernels.dispatch` chooses between them.
"""
from __future__ import annotations

import math

import torch

# Noise methods, as the seeds name them (`actor.model.openpi.noise_method`).
ODE = "ode"
FLOW_SDE = "flow_sde"
FLOW_NOISE = "flow_noise"
NOISE_METHODS = (FLOW_SDE, FLOW_NOISE)

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def time_grid(num_steps: int, device=None) -> torch.Tensor:
    """(K+1,) fp32 times 1, 1−δ, ..., 0: chain index k holds x at t_k = 1 − k/K."""
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=torch.float32)


def sde_sigma(t: torch.Tensor, delta: float, noise_level: float) -> torch.Tensor:
    """σ_t = a·sqrt(t/(1−t)); at t=1 the pole is guarded by using 1−t := δ, i.e. the
    σ of the first step is a·sqrt(1/δ) (the reference system's choice)."""
    one_minus_t = torch.where(t >= 1.0, torch.full_like(t, delta), 1.0 - t)
    return noise_level * torch.sqrt(t / one_minus_t)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t (B,) -> (B, 1, ..., 1) to broadcast against like (B, H, D)."""
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def transition(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D) velocity at (x_t, t)
    t: torch.Tensor,  # (B,) current time per sample
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,  # (B, H, D), flow_noise only
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (both (B, H, D), fp32) of x_{t−δ} | x_t for one stochastic step."""
    x_t, v = x_t.float(), v.float()
    tb = _bcast(t.float(), x_t)
    ode_mean = x_t - delta * v
    if method == FLOW_SDE:
        sigma = sde_sigma(tb, delta, noise_level)
        x1_hat = x_t + (1.0 - tb) * v
        mean = ode_mean - (sigma**2 * delta / (2.0 * tb)) * x1_hat
        std = (sigma * math.sqrt(delta)).expand_as(mean)
        return mean, std
    if method == FLOW_NOISE:
        if learned_std is None:
            raise ValueError("flow_noise transition needs learned_std from the noise head")
        return ode_mean, learned_std.float().expand_as(ode_mean)
    if method == ODE:
        return ode_mean, torch.zeros_like(ode_mean)
    raise ValueError(f"noise_method must be one of {NOISE_METHODS + (ODE,)}, got {method!r}")


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, std²) in fp32."""
    x, mean, std = x.float(), mean.float(), std.float()
    return -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - LOG_SQRT_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Element-wise entropy 0.5·log(2πe·σ²) of a Gaussian, fp32."""
    return torch.log(std.float()) + LOG_SQRT_2PI + 0.5


def denoise_step(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    t: torch.Tensor,  # (B,)
    delta: float,
    noise: torch.Tensor,  # (B, H, D) fresh N(0, 1)
    stochastic: torch.Tensor,  # (B,) bool: which samples take the stochastic step now
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t−δ} = μ + std·ε for stochastic rows, the ODE mean elsewhere; and the
    element-wise log-density of x_{t−δ} (zero for deterministic rows). Both fp32 (B, H, D)."""
    mean, std = transition(x_t, v, t, delta, method, noise_level, learned_std)
    ode_mean = x_t.float() - delta * v.float()
    s = _bcast(stochastic, mean)
    x_next = torch.where(s, mean + std * noise.float(), ode_mean)
    logprob = torch.where(s, gaussian_logprob(x_next, mean, std), torch.zeros_like(mean))
    return x_next, logprob


def step_logprob(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    x_next: torch.Tensor,  # (B, H, D) the stored x_{t−δ}
    t: torch.Tensor,  # (B,)
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise log-density of the stored x_{t−δ} under the current transition, and the
    element-wise entropy of that Gaussian; both fp32 (B, H, D), differentiable in v and std."""
    mean, std = transition(x_t, v, t, delta, method, noise_level, learned_std)
    return gaussian_logprob(x_next, mean, std), gaussian_entropy(std)
