"""The denoising chain as a stochastic policy: sample it, remember it, re-score it.

A flow policy exposes its velocity field as a `VelocityFn`: (x_t (B, H, D), t (B,)) ->
(v (B, H, D), learned_std (B, H, D) or None). Everything here is independent of the
model behind it (the MLP flow policy and π0 both plug in).

Stored per RL sample (one chunk step of one env):
    chains     (B, K+1, H, D)  x at t_0=1 (noise) ... t_K=0 (action), fp32
    step_mask  (B, K) bool     which transitions were stochastic (scored by the log-prob)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from collections.abc import Callable

import torch

from pirl.flow import transitions as T
from pirl.kernels import dispatch  # Triton on CUDA, the transitions.py reference elsewhere

VelocityFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]

# How the log-prob is reduced before the PPO ratio (`algorithm.logprob_type`): a "token" is
# one executed action dim of one executed chunk step; padded dims never count.
CHUNK_LEVEL = "chunk_level"  # one ratio per sample: sum over chunk steps and dims -> (B,)
ACTION_LEVEL = "action_level"  # one ratio per executed action: sum over dims -> (B, C)
TOKEN_LEVEL = "token_level"  # one ratio per action dim -> (B, C, D_env)
LOGPROB_TYPES = (CHUNK_LEVEL, ACTION_LEVEL, TOKEN_LEVEL)


@dataclass(frozen=True)
class FlowSpec:
    """What defines the stochastic chain (from `actor.model.openpi` and `actor.model`)."""

    num_steps: int  # K
    noise_method: str  # flow_sde | flow_noise
    noise_level: float = 0.5  # SDE a
    joint_logprob: bool = False  # True: every step stochastic; False: one per sample
    action_chunk: int = 1  # C: executed chunk steps (<= model horizon H)
    action_env_dim: int = 1  # D_env: the env's real action dims (<= model dim D)

    @property
    def delta(self) -> float:
        return 1.0 / self.num_steps


def select_steps(batch: int, spec: FlowSpec, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """(B, K) bool: the transitions that are stochastic. With `joint_logprob` off, each
    sample draws its own step uniformly (one per sample, not one per batch)."""
    K = spec.num_steps
    if spec.joint_logprob:
        return torch.ones(batch, K, dtype=torch.bool, device=device)
    idx = torch.randint(0, K, (batch,), generator=generator)  # CPU draw: same on every device
    return torch.nn.functional.one_hot(idx, K).bool().to(device)


@torch.no_grad()
def sample_chain(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,  # (B, H, D) initial noise at t=1
    spec: FlowSpec,
    step_mask: torch.Tensor | None,  # (B, K) bool; None = deterministic ODE (eval)
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run K denoising steps. Returns chains (B, K+1, H, D) fp32 and the element-wise
    log-prob (B, H, D) fp32 of the stochastic steps taken (summed over steps)."""
    B = x1.shape[0]
    times = T.time_grid(spec.num_steps, device=x1.device)
    x = x1.float()
    chain = [x]
    logprob = torch.zeros_like(x)
    method = spec.noise_method if step_mask is not None else T.ODE
    for k in range(spec.num_steps):
        t = times[k].expand(B)
        v, std = velocity_fn(x, t)
        stochastic = step_mask[:, k] if step_mask is not None else torch.zeros(B, dtype=torch.bool, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        if method == T.ODE:
            x = x - spec.delta * v.float()
        else:
            x, lp = dispatch.denoise_step(x, v, t, spec.delta, noise, stochastic, method, spec.noise_level, std)
            logprob = logprob + lp
        chain.append(x)
    return torch.stack(chain, dim=1), logprob


def chain_logprob(
    velocity_fn: VelocityFn,
    chains: torch.Tensor,  # (B, K+1, H, D)
    step_mask: torch.Tensor,  # (B, K) bool
    spec: FlowSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score stored chains under the current velocity field (with gradients).

    Returns the element-wise log-prob (B, H, D) summed over stochastic steps, and the
    element-wise entropy (B, H, D) averaged over them. With one stochastic step per
    sample only that step is re-evaluated: one velocity call on the gathered x_t."""
    B, K1 = chains.shape[:2]
    K = K1 - 1
    times = T.time_grid(K, device=chains.device)
    rows = torch.arange(B, device=chains.device)
    if bool((step_mask.sum(dim=1) == 1).all()):
        ks = step_mask.float().argmax(dim=1)  # (B,)
        x_t, x_next, t = chains[rows, ks], chains[rows, ks + 1], times[ks]
        v, std = velocity_fn(x_t, t)
        return dispatch.step_logprob(x_t, v, x_next, t, spec.delta, spec.noise_method, spec.noise_level, std)
    logprob = chains.new_zeros(chains[:, 0].shape, dtype=torch.float32)
    entropy = torch.zeros_like(logprob)
    count = step_mask.sum(dim=1).clamp(min=1).float()  # (B,)
    for k in range(K):
        m = step_mask[:, k].float().reshape(B, 1, 1)
        if not bool(m.any()):
            continue
        t = times[k].expand(B)
        v, std = velocity_fn(chains[:, k], t)
        lp, ent = dispatch.step_logprob(chains[:, k], v, chains[:, k + 1], t, spec.delta, spec.noise_method,
                                        spec.noise_level, std)
        logprob = logprob + m * lp
        entropy = entropy + m * ent
    return logprob, entropy / count.reshape(B, 1, 1)


def executed(x: torch.Tensor, spec: FlowSpec) -> torch.Tensor:
    """(B, H, D) -> (B, C, D_env): only actions the env executes count (first
    `action_chunk` steps, real action dims); padding never enters a log-prob."""
    return x[:, : spec.action_chunk, : spec.action_env_dim]


def reduce_logprob(logprob: torch.Tensor, logprob_type: str) -> torch.Tensor:
    """(B, C, D_env) element log-probs -> the granularity of the PPO ratio."""
    if logprob_type == CHUNK_LEVEL:
        return logprob.sum(dim=(1, 2))
    if logprob_type == ACTION_LEVEL:
        return logprob.sum(dim=2)
    if logprob_type == TOKEN_LEVEL:
        return logprob
    raise ValueError(f"algorithm.logprob_type must be one of {LOGPROB_TYPES}, got {logprob_type!r}")
