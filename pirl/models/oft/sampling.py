"""The token distribution of the action bins: `rollout.sampling_params` -> filtered logits,
draws, log-probs and entropies. Pure functions of (..., n_bins) fp32 logits.

The filtered logits define the policy: rollout draws from them and the actor re-scores the
stored tokens under the same filter (temperature_train, top_k, top_p), so for unchanged
weights the two log-probs are equal. Filtered-out bins get -inf (probability exactly 0).
top_k / top_p follow transformers' TopKLogitsWarper / TopPLogitsWarper: top_k keeps the k
largest logits (ties at the k-th kept); top_p keeps the smallest set of most probable bins
whose mass reaches top_p (at least one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """`rollout.sampling_params` (the reference system's keys)."""

    do_sample: bool = True  # False: greedy (argmax) in train and eval
    temperature_train: float = 1.0  # > 0
    temperature_eval: float = 1.0  # <= 0: greedy eval
    top_k: int = -1  # <= 0: off
    top_p: float = 1.0  # in (0, 1]; 1: off

    def validate(self) -> None:
        if self.do_sample and self.temperature_train <= 0:
            raise ValueError(f"rollout.sampling_params.temperature_train must be > 0 when do_sample, got "
                             f"{self.temperature_train}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.sampling_params.top_p must be in (0, 1], got {self.top_p}")

    def greedy(self, mode: str) -> bool:
        return not self.do_sample or (mode == "eval" and self.temperature_eval <= 0)

    def temperature(self, mode: str) -> float:
        return self.temperature_train if mode == "train" else self.temperature_eval


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """(..., V) -> fp32 (..., V): logits / temperature with bins outside top-k / top-p at -inf."""
    x = logits.float() / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1.0 - top_p
        drop_sorted[..., -1] = False  # the most probable bin always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def draw(filtered: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One bin per row of (..., V) filtered logits -> (...) int64."""
    probs = filtered.softmax(-1).reshape(-1, filtered.shape[-1])
    dev = generator.device if generator is not None else probs.device
    out = torch.multinomial(probs.to(dev), 1, generator=generator)
    return out.reshape(filtered.shape[:-1]).to(filtered.device)


def token_logprob(filtered: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) (...) fp32 under the filtered distribution (-inf for a filtered-out bin)."""
    return filtered.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def token_entropy(filtered: torch.Tensor) -> torch.Tensor:
    """−Σ p log p (...) fp32 over the kept bins (filtered bins contribute 0, not NaN)."""
    logp = filtered.log_softmax(-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
