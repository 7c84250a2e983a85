"""The env protocol every simulator adapter implements (reach2d, ManiSkill3, LIBERO, MetaWorld).

Batched and chunked: one `chunk_step` executes C actions in each of B envs.

Observations (dict):
    main_images        (B, H, W, 3) uint8   third-person camera
    wrist_images       (B, H, W, 3) uint8   where the simulator has a wrist camera
    states             (B, S) float32       proprioception
    task_descriptions  list[str] of length B

`chunk_step(actions (B, C, D))` returns (obs, rewards (B, C) fp32, terminations (B, C) bool,
truncations (B, C) bool, infos).

The episode protocol, one rule for every env (tests/test_env_protocol.py checks each):
an env whose episode has ended executes no further actions; its later rewards are 0 and
its termination / truncation flags stay set from the step it ended until the env is
reset (for the rest of the chunk, and in later chunks without `auto_reset`), so
`terminations[:, -1] | truncations[:, -1]` says whether the episode is over. An episode
ends by termination or by truncation, never both. With `use_rel_reward` the env pays
r_t - r_{t-1} (RLinf's relative reward, r_{-1} = 0 at the episode start): a success that
is held pays once. With `auto_reset`
the env is reset at the end of the chunk and `obs` is the new episode's first
observation; the last observation of the finished episode is in `infos["final_obs"]`
(full batch, rows valid where `infos["done"]`). `infos` also holds:
    done          (B,) bool   the episode ended in this chunk
    success       (B, C) bool per-step success
    episode       dict of (B,) tensors for envs whose episode ended in this chunk:
                  success_once, episode_len, return (rows valid where `done`)
    valid         (B,) bool   False for envs whose data must not be trained on (a crashed
                              worker was restarted); absent means all valid
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

Obs = dict[str, Any]
StepResult = tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]

# Metric names of the seeds.
EPISODE_METRICS = ("success_once", "episode_len", "return")


@runtime_checkable
class VecEnv(Protocol):
    num_envs: int  # B
    action_dim: int  # D: the env's real action dims
    max_episode_steps: int

    def reset(self, seed: int | None = None, group_size: int = 1) -> Obs:
        """Reset every env. Envs 0..G-1, G..2G-1, ... (groups of `group_size` consecutive
        envs) share one initial state, as GRPO needs."""

    def chunk_step(self, actions: torch.Tensor) -> StepResult:
        ...

    def close(self) -> None:
        ...
