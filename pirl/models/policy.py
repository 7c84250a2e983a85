"""The policy interface every flow VLA implements (flow_mlp now, π0 / π0.5 next).

Two roles, as in verl's BasePPOActor: *sample* a chunk for the rollout and *evaluate*
stored chains for the PPO update. Observations go through `preprocess` once; the
resulting tensors (`forward_inputs`) are what the rollout buffer stores and what
`evaluate` re-reads, so the actor never sees raw env observations.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pirl.flow import FlowSpec


@dataclass
class ChunkSample:
    actions: torch.Tensor  # (B, C, D_env) fp32, env units: what the env executes
    chains: torch.Tensor  # (B, K+1, H, D) fp32, model units; chains[:, 0] is noise (t=1)
    step_mask: torch.Tensor  # (B, K) bool, stochastic transitions
    logprob: torch.Tensor  # (B, C, D_env) fp32, element log-probs of executed actions only
    values: torch.Tensor  # (B,) fp32, critic estimate of the observation (0 without a head)
    forward_inputs: dict[str, torch.Tensor]  # batch-first tensors `evaluate` needs again


class ChunkEval(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 must see the output tensors to hook backward."""

    logprob: torch.Tensor  # (B, C, D_env) fp32
    entropy: torch.Tensor  # (B, C, D_env) fp32, Gaussian entropy of the scored transitions
    values: torch.Tensor  # (B,) fp32


class FlowPolicy(nn.Module, abc.ABC):
    """A flow-matching action policy with a critic. Subclasses set `self.spec`."""

    spec: FlowSpec

    @abc.abstractmethod
    def preprocess(self, obs: dict) -> dict[str, torch.Tensor]:
        """Env observation dict (main_images, states, task_descriptions, ...) -> model tensors."""

    @abc.abstractmethod
    def sample(self, forward_inputs: dict[str, torch.Tensor], mode: str = "train",
               generator: torch.Generator | None = None) -> ChunkSample:
        """Sample one action chunk. mode="train": stochastic steps chosen per `spec`;
        mode="eval": deterministic ODE sampling (step_mask all False, logprob zero)."""

    @abc.abstractmethod
    def evaluate(self, forward_inputs: dict[str, torch.Tensor], chains: torch.Tensor,
                 step_mask: torch.Tensor) -> ChunkEval:
        """Re-score stored chains with gradients: log-probs, entropy and values."""

    def forward(self, forward_inputs: dict[str, torch.Tensor], chains: torch.Tensor,
                step_mask: torch.Tensor) -> ChunkEval:
        """The training forward is `evaluate`: DeepSpeed engines call `forward`."""
        return self.evaluate(forward_inputs, chains, step_mask)

    @abc.abstractmethod
    def value(self, forward_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) critic estimate, used to bootstrap truncated episodes."""

    @abc.abstractmethod
    def sft_loss(self, forward_inputs: dict[str, torch.Tensor], actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar supervised flow-matching loss (pirl.flow.matching) of demonstrated chunks
        actions (B, C, D_env) in env units, over the demonstrated elements only."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path, meta: dict | None = None) -> Path:
        """Write a checkpoint that `actor.model.model_path` loads back into the same config."""
