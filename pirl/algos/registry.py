"""Advantage estimators, reward reductions and policy losses by name (verl's core_algos
registry). The actor looks them up by `algorithm.adv_type`, `algorithm.reward_type` and
`algorithm.loss_type`; config validation reads the same tables (names, and which need a
critic or GRPO groups), so a new estimator is one registration here, not an if/else in the
actor and a choice list copied into validate.py.

Estimators see `Trajectories`: time-major (T, B) chunk-step tensors of one actor rank's
env columns, built from the rollout buffer by `trajectories`.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch

from pirl.algos.advantages import (
    chunk_rewards, compute_gae, compute_grpo_advantages, filter_groups, invalidate_cut_episodes, loss_mask_after_done,
    normalize_advantages,
)
from pirl.algos.losses import loss_kwargs, ppo_loss
from pirl.flow import reduce_logprob

ReduceSum = Callable[[torch.Tensor], torch.Tensor]  # sums a small tensor over the actor group


@dataclass
class Trajectories:
    rewards: torch.Tensor  # (T, B) chunk-step rewards (after `reward_type`'s reduction)
    values: torch.Tensor  # (T, B) V(obs_t) at sampling
    dones: torch.Tensor  # (T, B) bool, the episode is over after chunk step t
    truncations: torch.Tensor  # (T, B) bool, ... by the time limit
    final_values: torch.Tensor  # (T, B) V(last obs) of episodes truncated at t
    mask: torch.Tensor  # (T, B) bool, samples that may be trained on
    last_values: torch.Tensor  # (B,) V(obs after the last chunk step)
    success: torch.Tensor  # (B,) float, success_once of each column's first episode
    bootstrap: bool = False  # GAE adds γ·V(last obs) at episode ends (`bootstraps`)


@dataclass
class Advantages:
    advantages: torch.Tensor  # (T, B)
    returns: torch.Tensor  # (T, B) critic targets
    mask: torch.Tensor  # (T, B) bool, after the estimator's own filtering


# ---- reward reductions: env-step rewards (T, B, C) -> chunk-step rewards (T, B) -------------
# One RL step is one chunk (the critic scores the chunk's observation), so rewards are summed
# over the chunk. Per-action rewards would need a critic per action: no reduction is
# registered for them until a policy with `value_shape` (C,) and an estimator that uses it are.
REWARD_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "chunk_level": lambda r: chunk_rewards(r, 1.0),  # the env already applied reward_coef
}


def first_episode_success(success: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """success (T, B, C) per env step, dones (T, B) per chunk step -> (B,) 1.0 where the
    column's first episode solved the task at some step (success_once), else 0.0."""
    d = dones.long()
    first = (torch.cumsum(d, dim=0) - d) == 0  # (T, B): chunk steps before the first episode ended
    return (success.any(dim=-1) & first).any(dim=0).float()


def trajectories(steps: dict[str, torch.Tensor], envs: dict[str, torch.Tensor], reward_type: str,
                 auto_reset: bool, bootstrap: bool = False) -> Trajectories:
    """Rollout-buffer fields (pirl.data: steps (T, B, ...), envs (B, ...)) -> Trajectories.
    The env protocol keeps done flags set to the end of a chunk, so the last env step says
    whether the episode is over after the chunk."""
    dones, trunc = steps["dones"][..., -1], steps["truncations"][..., -1]
    mask = invalidate_cut_episodes(steps["valid"], dones)
    if not auto_reset:  # an env that ended stays ended: its later chunk steps are stale
        mask &= loss_mask_after_done(dones)
    return Trajectories(rewards=REWARD_REDUCTIONS[reward_type](steps["rewards"]), values=steps["values"],
                        dones=dones, truncations=trunc, final_values=steps["final_values"], mask=mask,
                        last_values=envs["last_values"], success=first_episode_success(steps["success"], dones),
                        bootstrap=bootstrap)


# ---- advantage estimators ---------------------------------------------------------------------
@dataclass(frozen=True)
class Estimator:
    fn: Callable[[Trajectories, object, ReduceSum | None], Advantages]
    needs_critic: bool  # reads values: needs loss_type actor_critic and a value head
    needs_groups: bool  # compares the episodes of a GRPO group (algorithm.group_size >= 2)


def bootstraps(algo, auto_reset: bool) -> bool:
    """Whether GAE adds γ·V(last obs) where an episode ended (`algorithm.bootstrap_type`):
    as in the reference system, only for auto-reset episodes and a critic."""
    return algo.bootstrap_type != "none" and ADVANTAGE_ESTIMATORS[algo.adv_type].needs_critic and auto_reset


def gae(traj: Trajectories, algo, reduce_sum: ReduceSum | None) -> Advantages:
    """Chunk-level GAE. With `bootstraps`, episodes truncated at t (bootstrap_type standard)
    or ended at t (always) add γ·V(last obs); advantages normalized over the valid entries of
    every actor rank when `normalize_advantages`."""
    boot = traj.bootstrap
    ends = traj.dones if algo.bootstrap_type == "always" else traj.truncations
    adv, ret = compute_gae(traj.rewards, traj.values, traj.dones, traj.last_values, algo.gamma, algo.gae_lambda,
                           ends if boot else None, traj.final_values if boot else None)
    if algo.normalize_advantages:
        adv = normalize_advantages(adv, traj.mask, reduce_sum=reduce_sum)
    return Advantages(adv, ret, traj.mask)


def grpo(traj: Trajectories, algo, reduce_sum: ReduceSum | None) -> Advantages:
    """Group-relative advantages over `group_size` consecutive env columns; groups whose
    success rate is outside [rewards_lower_bound, rewards_upper_bound] are dropped when
    `filter_rewards`. No critic: returns are the advantages."""
    adv, keep = compute_grpo_advantages(traj.rewards, traj.mask, algo.group_size)
    mask = traj.mask & keep[None]
    if algo.filter_rewards:
        mask = mask & filter_groups(traj.success, algo.group_size, algo.rewards_lower_bound,
                                    algo.rewards_upper_bound)[None]
    return Advantages(adv, adv.clone(), mask)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(gae, needs_critic=True, needs_groups=False),
    "grpo": Estimator(grpo, needs_critic=False, needs_groups=True),
}


# ---- policy losses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Loss:
    fn: Callable[[object, dict, object], tuple[torch.Tensor, dict]]
    needs_critic: bool


def _ppo(ev, mb: dict, algo, critic: bool) -> tuple[torch.Tensor, dict]:
    """ev: the policy's ChunkEval of minibatch mb; log-probs reduced per `logprob_type`."""
    lp = reduce_logprob(ev.logprob, algo.logprob_type)
    old = reduce_logprob(mb["logprob"], algo.logprob_type)
    return ppo_loss(lp, old, mb["advantages"], mb["mask"], entropy=reduce_logprob(ev.entropy, algo.entropy_type),
                    values=ev.values if critic else None, old_values=mb["values"] if critic else None,
                    returns=mb["returns"] if critic else None, **loss_kwargs(algo))


POLICY_LOSSES: dict[str, Loss] = {
    "actor_critic": Loss(lambda ev, mb, algo: _ppo(ev, mb, algo, critic=True), needs_critic=True),  # PPO
    "actor": Loss(lambda ev, mb, algo: _ppo(ev, mb, algo, critic=False), needs_critic=False),  # GRPO
}


def estimator(name: str) -> Estimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"algorithm.adv_type must be one of {sorted(ADVANTAGE_ESTIMATORS)}, got {name!r}")
    return ADVANTAGE_ESTIMATORS[name]


def policy_loss(name: str) -> Loss:
    if name not in POLICY_LOSSES:
        raise KeyError(f"algorithm.loss_type must be one of {sorted(POLICY_LOSSES)}, got {name!r}")
    return POLICY_LOSSES[name]
