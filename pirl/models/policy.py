"""The policy interface every RL policy implements: flow VLAs (flow_mlp, π0 / π0.5) and
token VLAs (OpenVLA-OFT) alike.

Two roles, as in verl's BasePPOActor: *sample* a chunk for the rollout and *evaluate*
it again, with gradients, for the update. Observations go through `preprocess` once; the
resulting tensors (`forward_inputs`) and what the sample must remember (`replay`: a flow
policy's denoising chain, a token policy's action tokens) are declared by
`input_spec()` / `replay_spec()` and stored in the rollout buffer (pirl.data). The buffer,
the workers and the algorithms never look inside either.

Log-probs (`ActionSample.logprob`, `ChunkEval.logprob`) are fp32 element log-probs of the
executed actions only, (B, C, D_env): a flow policy's Gaussian transition per element, a
token policy's one token per action dim. `algorithm.logprob_type` reduces them to one ratio
per chunk, per action or per element (pirl.flow.chain.reduce_logprob).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pirl.data.buffer import FieldSpec
from pirl.flow import FlowSpec


@dataclass
class ActionSample:
    actions: torch.Tensor  # (B, C, D_env) fp32, env units: what the env executes
    logprob: torch.Tensor  # (B, C, D_env) fp32, element log-probs of the executed actions only
    values: torch.Tensor  # (B,) or (B, C) (`value_shape`) fp32, critic estimate (0 without a head)
    replay: dict[str, torch.Tensor]  # per `replay_spec()`: what `evaluate` needs back
    forward_inputs: dict[str, torch.Tensor]  # per `input_spec()`: batch-first model tensors


class ChunkEval(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 must see the output tensors to hook backward."""

    logprob: torch.Tensor  # (B, C, D_env) fp32
    entropy: torch.Tensor  # (B, C, D_env) fp32
    values: torch.Tensor  # (B,) or (B, C) fp32


class Policy(nn.Module, abc.ABC):
    """An RL policy with a critic. `value_shape` is () for one value per chunk step, (C,)
    for one per executed action (`value_type: action_level`)."""

    value_shape: tuple[int, ...] = ()

    @abc.abstractmethod
    def input_spec(self) -> dict[str, FieldSpec]:
        """name -> per-sample (shape, dtype) of every tensor `preprocess` returns."""

    @abc.abstractmethod
    def replay_spec(self) -> dict[str, FieldSpec]:
        """name -> per-sample (shape, dtype) of `ActionSample.replay`."""

    @abc.abstractmethod
    def preprocess(self, obs: dict) -> dict[str, torch.Tensor]:
        """Env observation dict (main_images, states, task_descriptions, ...) -> model tensors."""

    @abc.abstractmethod
    def sample(self, forward_inputs: dict[str, torch.Tensor], mode: str = "train",
               generator: torch.Generator | None = None) -> ActionSample:
        """Sample one action chunk. mode="train": stochastic, log-probs of what was drawn;
        mode="eval": deterministic (log-probs zero)."""

    @abc.abstractmethod
    def evaluate(self, forward_inputs: dict[str, torch.Tensor], replay: dict[str, torch.Tensor]) -> ChunkEval:
        """Re-score stored samples with gradients: log-probs, entropy and values."""

    def forward(self, forward_inputs: dict[str, torch.Tensor], replay: dict[str, torch.Tensor]) -> ChunkEval:
        """The training forward is `evaluate`: DeepSpeed engines call `forward`."""
        return self.evaluate(forward_inputs, replay)

    @abc.abstractmethod
    def value(self, forward_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Critic estimate (B, *value_shape), used to bootstrap truncated episodes."""

    @abc.abstractmethod
    def sft_loss(self, forward_inputs: dict[str, torch.Tensor], actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar supervised loss of demonstrated chunks actions (B, C, D_env) in env units,
        over the demonstrated elements only."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path, meta: dict | None = None) -> Path:
        """Write a checkpoint that `actor.model.model_path` loads back into the same config."""


class FlowPolicy(Policy):
    """A flow-matching action policy. Subclasses set `self.spec` (the stochastic chain) and
    `self.chain_shape` = (H, D), the model's action horizon and dims. Its replay is the
    denoising chain and which of its transitions were stochastic."""

    spec: FlowSpec
    chain_shape: tuple[int, int]

    def replay_spec(self) -> dict[str, FieldSpec]:
        K = self.spec.num_steps
        return {
            "chains": FieldSpec((K + 1, *self.chain_shape), torch.float32,
                                "denoising chain, model units; [0] is the noise at t=1, [K] the action"),
            "step_mask": FieldSpec((K,), torch.bool, "transitions that were stochastic (scored)"),
        }
