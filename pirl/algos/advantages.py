"""Advantages of the chunk-level MDP: one RL step = one chunk step of one env.

Rollout tensors are time-major, as the runner collects them:
    step_rewards  (T, B, C)  per executed env step inside each chunk
    rewards       (T, B)     per chunk step (`chunk_rewards`)
    values        (T, B)     critic V(obs_t) recorded at sampling
    dones         (T, B) bool  the episode ended inside chunk step t (terminated or truncated)
    truncations   (T, B) bool  ...ended by the time limit, not a terminal state
    final_values  (T, B)     V(last obs of the truncated episode), rows valid where truncated
    mask          (T, B) bool  entries that may be trained on

All math runs in fp32 (fp64 inputs stay fp64, so references and gradcheck can use them).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def _fp(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 (and ints, bools) to fp32; keep fp64 as is."""
    return x if x.dtype == torch.float64 else x.float()


def _check_shape(name: str, x: torch.Tensor, shape: tuple) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def chunk_rewards(step_rewards: torch.Tensor, reward_coef: float = 1.0) -> torch.Tensor:
    """(T, B, C) env-step rewards -> (T, B) chunk rewards (`reward_type: chunk_level`):
    the sum over the chunk, scaled by `env.*.reward_coef`."""
    if step_rewards.dim() != 3:
        raise ValueError(f"step_rewards must be (T, B, C), got shape {tuple(step_rewards.shape)}")
    return reward_coef * _fp(step_rewards).sum(dim=2)


def loss_mask_after_done(dones: torch.Tensor) -> torch.Tensor:
    """(T, B) bool -> (T, B) bool valid entries when `auto_reset` is off: an env's data is
    valid up to and including its first done; everything after it is stale."""
    if dones.dim() != 2:
        raise ValueError(f"dones must be (T, B), got shape {tuple(dones.shape)}")
    d = dones.bool().long()
    dones_before = torch.cumsum(d, dim=0) - d  # dones strictly before t
    return dones_before == 0


def invalidate_cut_episodes(valid: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """(T, B) masks: an episode cut by a crashed env worker (valid False at its last chunk)
    is dropped whole, also its chunks before the crash."""
    mask = valid.clone()
    bad = torch.zeros_like(valid[0])
    for t in reversed(range(valid.shape[0])):
        bad = torch.where(dones[t], ~valid[t], bad)  # an episode ending here: bad iff cut
        mask[t] &= ~bad
    return mask


def compute_gae(
    rewards: torch.Tensor,  # (T, B)
    values: torch.Tensor,  # (T, B)
    dones: torch.Tensor,  # (T, B) bool
    last_values: torch.Tensor,  # (B,) V(obs after the last chunk step)
    gamma: float,
    lam: float,
    truncations: torch.Tensor | None = None,  # (T, B) bool
    final_values: torch.Tensor | None = None,  # (T, B)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over chunk steps -> (advantages, returns), (T, B).

    A done (terminated or truncated; a truncation counts as a done even when `dones`
    misses it) cuts both the bootstrap and the GAE recursion: with auto_reset the next
    value belongs to a new episode. A truncated episode did not reach a terminal state,
    so its reward gets + gamma * final_values (value of its last observation) first.
    Pass truncations without the steps that also terminated: a terminal state is never
    bootstrapped. `last_values` bootstraps the step after the rollout for envs still
    running. returns = advantages + values (the critic's target)."""
    T, B = rewards.shape
    for name, x in (("values", values), ("dones", dones)):
        _check_shape(name, x, (T, B))
    _check_shape("last_values", last_values, (B,))
    if (truncations is None) != (final_values is None):
        raise ValueError("compute_gae needs truncations and final_values together (or neither)")
    r, v = _fp(rewards), _fp(values)
    done = dones.bool()
    if truncations is not None and final_values is not None:
        _check_shape("truncations", truncations, (T, B))
        _check_shape("final_values", final_values, (T, B))
        trunc = truncations.bool()
        # where(), not multiply: final_values rows of untruncated envs may hold garbage
        r = r + torch.where(trunc, gamma * _fp(final_values), torch.zeros_like(r))
        done = done | trunc
    not_done = (~done).to(r.dtype)
    next_values = torch.cat([v[1:], _fp(last_values).reshape(1, B)], dim=0)  # (T, B)
    deltas = r + gamma * next_values * not_done - v
    advantages = torch.zeros_like(r)
    running = torch.zeros_like(r[0])  # (B,)
    for t in reversed(range(T)):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + v


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                         reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(adv - mean) / (std + eps) with mean and unbiased std over valid entries only;
    invalid entries come out 0 (never NaN, whatever they held). `reduce_sum` sums a float64
    tensor over ranks (pirl.engine.dist.all_reduce_sum) so the statistics cover the valid
    entries of every rank and the result does not depend on how envs are split."""
    _check_shape("mask", mask, tuple(adv.shape))
    m = mask.bool()
    a = torch.where(m, _fp(adv), torch.zeros((), dtype=torch.float32, device=adv.device))
    sums = torch.stack([a.double().sum(), (a.double() ** 2).sum(), m.sum().double()])  # (3,) Σa, Σa², n
    if reduce_sum is not None:
        sums = reduce_sum(sums)
    n = sums[2].clamp(min=1)
    mean = sums[0] / n
    var = ((sums[1] - n * mean**2) / (n - 1).clamp(min=1)).clamp(min=0)
    centered = torch.where(m, a - mean.float(), torch.zeros_like(a))
    return centered / (var.sqrt().float() + eps)


def _groups(b: int, group_size: int) -> int:
    if group_size < 1 or b % group_size != 0:
        raise ValueError(
            f"algorithm.group_size ({group_size}) must be >= 1 and divide the number of envs "
            f"({b}): groups are group_size consecutive envs sharing one initial state")
    return b // group_size


def compute_grpo_advantages(
    rewards: torch.Tensor,  # (T, B)
    mask: torch.Tensor,  # (T, B) bool
    group_size: int,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: an env's score is the sum of its valid rewards; envs 0..G-1, G..2G-1, ... form
    groups; advantage = (score - group mean) / (group std + eps), broadcast over the env's
    valid steps -> advantages (T, B) (0 where invalid) and group_keep (B,) bool.

    Group statistics use only envs with at least one valid step (std unbiased). A group
    with no such env is dropped (group_keep False, advantages 0). group_size 1 has no
    group to compare with: as verl, mean 0 and std 1, so the advantage is the score."""
    T, B = rewards.shape
    _check_shape("mask", mask, (T, B))
    n_groups = _groups(B, group_size)
    m = mask.bool()
    r = _fp(rewards)
    r = torch.where(m, r, r.new_zeros(()))
    scores = r.sum(dim=0).reshape(n_groups, group_size)  # (B/G, G)
    env_valid = m.any(dim=0).reshape(n_groups, group_size)  # (B/G, G)
    w = env_valid.to(scores.dtype)
    count = w.sum(dim=1, keepdim=True)  # (B/G, 1)
    if group_size == 1:
        mean, std = torch.zeros_like(scores), torch.ones_like(scores)
    else:
        mean = (scores * w).sum(dim=1, keepdim=True) / count.clamp(min=1)
        var = (((scores - mean) * w) ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        std = var.sqrt()
    env_adv = ((scores - mean) / (std + eps) * w).reshape(B)  # (B,)
    group_keep = (count > 0).expand(n_groups, group_size).reshape(B)
    advantages = torch.where(m, env_adv.unsqueeze(0).expand(T, B), torch.zeros_like(r))
    return advantages, group_keep


def filter_groups(success: torch.Tensor, group_size: int, low: float, high: float) -> torch.Tensor:
    """(B,) per-env success (bool or 0/1) -> keep (B,) bool: groups whose mean success lies
    in [low, high] (`algorithm.filter_rewards`, bounds `rewards_lower_bound` /
    `rewards_upper_bound`). All-success or all-failure groups carry no GRPO signal."""
    if success.dim() != 1:
        raise ValueError(f"success must be (B,), got shape {tuple(success.shape)}")
    n_groups = _groups(success.shape[0], group_size)
    rate = _fp(success).reshape(n_groups, group_size).mean(dim=1, keepdim=True)  # (B/G, 1)
    keep = (rate >= low) & (rate <= high)
    return keep.expand(n_groups, group_size).reshape(-1)
