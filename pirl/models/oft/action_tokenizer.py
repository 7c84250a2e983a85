"""OpenVLA's action tokens and its dataset statistics.

Tokens: each normalized action dim in [-1, 1] falls into one of `n_bins` = 256 uniform
bins (edges linspace(-1, 1, 256), numpy's digitize -> d in 1..256) and becomes the
Llama id V − d, so the action ids are the last 256 of the tokenizer's vocabulary V.
pirl stores the index j = id − (V − 256) in [0, 256): the column of the action logits.
De-tokenization goes to bin centres: centre[clip(256 − 1 − j, 0, 254)] (there are 255
centres; j = 0 and j = 1 both decode to the last one, as in OpenVLA).

Statistics: `dataset_statistics.json` maps an `unnorm_key` (dataset name) to
{"action": {"q01", "q99", "min", "max", "mask", ...}, "proprio": {...}}. OpenVLA-OFT
normalizes with the 1% / 99% quantiles (BOUNDS_Q99) or min / max (BOUNDS):
n = 2·(x − lo)/(hi − lo + 1e-8) − 1, clipped to [-1, 1], only where `mask` is true
(the gripper dim usually passes through).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

DATASET_STATISTICS = "dataset_statistics.json"
BOUNDS_Q99, BOUNDS = "bounds_q99", "bounds"
NORMALIZATIONS = (BOUNDS_Q99, BOUNDS)
SPREAD_EPS = 1e-8  # OpenVLA's guard against a zero spread (hi == lo)


class ActionTokenizer:
    """Normalized actions <-> bin indices j in [0, n_bins) (pure, float64 edges)."""

    def __init__(self, n_bins: int = 256):
        self.n_bins = n_bins
        self.edges = torch.linspace(-1.0, 1.0, n_bins, dtype=torch.float64)  # (n_bins,)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2.0  # (n_bins - 1,)

    def tokenize(self, normalized: torch.Tensor) -> torch.Tensor:
        """(..., D) in about [-1, 1] -> (..., D) int64 bin indices j."""
        x = normalized.double().clamp(-1.0, 1.0)
        # bucketize(right=True) is numpy's digitize: d with edges[d-1] <= x < edges[d]
        d = torch.bucketize(x, self.edges.to(x.device), right=True)  # 1..n_bins
        return (self.n_bins - d).long()

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) bin indices j -> (..., D) fp32 bin centres."""
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.n_bins):
            raise ValueError(f"action tokens must lie in [0, {self.n_bins}), got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        idx = (self.n_bins - 1 - tokens).clamp(0, self.n_bins - 2)
        return self.centers.to(tokens.device)[idx].float()


@dataclass(frozen=True)
class Bounds:
    """Per-dim normalization bounds of one array (action or proprio)."""

    low: torch.Tensor  # (D,) fp64
    high: torch.Tensor  # (D,) fp64
    mask: torch.Tensor  # (D,) bool: normalize this dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Env units (..., D) -> [-1, 1] (fp32)."""
        xd = x.double()
        n = (2.0 * (xd - self.low.to(x.device)) / (self.high - self.low + SPREAD_EPS).to(x.device) - 1.0).clamp(-1, 1)
        return torch.where(self.mask.to(x.device), n, xd).float()

    def unnormalize(self, n: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (..., D) -> env units (fp32)."""
        nd = n.double()
        x = 0.5 * (nd + 1.0) * (self.high - self.low + SPREAD_EPS).to(n.device) + self.low.to(n.device)
        return torch.where(self.mask.to(n.device), x, nd).float()


def _bounds(entry: dict, normalization: str, where: str) -> Bounds:
    lo_key, hi_key = ("q01", "q99") if normalization == BOUNDS_Q99 else ("min", "max")
    for k in (lo_key, hi_key):
        if k not in entry:
            raise ValueError(f"{where}: missing {k!r} (normalization {normalization} needs {lo_key}/{hi_key})")
    low = torch.tensor(entry[lo_key], dtype=torch.float64)
    high = torch.tensor(entry[hi_key], dtype=torch.float64)
    mask = torch.tensor(entry.get("mask", [True] * low.numel()), dtype=torch.bool)
    if low.dim() != 1 or high.shape != low.shape or mask.shape != low.shape:
        raise ValueError(f"{where}: {lo_key}, {hi_key} and mask must be 1-D lists of one length, got "
                         f"{tuple(low.shape)}, {tuple(high.shape)}, {tuple(mask.shape)}")
    return Bounds(low, high, mask)


def read_statistics(path: str | Path) -> dict:
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read dataset statistics {path}: {e}") from e
    if not isinstance(stats, dict) or not stats:
        raise ValueError(f"{path}: expected {{unnorm_key: {{'action': ..., 'proprio': ...}}}}")
    return stats


def resolve_unnorm_key(stats: dict, unnorm_key: str | None, where: str) -> str:
    """The reference system's rule: the key itself, else `<key>_no_noops`; None only when
    the statistics hold one dataset."""
    if unnorm_key is None:
        if len(stats) != 1:
            raise ValueError(f"{where} holds statistics of {sorted(stats)}: set actor.model.unnorm_key")
        return next(iter(stats))
    for key in (unnorm_key, f"{unnorm_key}_no_noops"):
        if key in stats:
            return key
    raise ValueError(f"actor.model.unnorm_key {unnorm_key!r} is not in {where}; it has {sorted(stats)}")


def select_bounds(stats: dict, unnorm_key: str | None, normalization: str, where: str,
                  with_proprio: bool) -> tuple[str, Bounds, Bounds | None]:
    """-> (resolved key, action bounds, proprio bounds or None)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"actor.model.oft.normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    key = resolve_unnorm_key(stats, unnorm_key, where)
    entry = stats[key]
    if "action" not in entry:
        raise ValueError(f"{where}[{key!r}] has no 'action' statistics")
    action = _bounds(entry["action"], normalization, f"{where}[{key!r}].action")
    proprio = None
    if with_proprio:
        if "proprio" not in entry:
            raise ValueError(f"{where}[{key!r}] has no 'proprio' statistics, which use_proprio needs")
        proprio = _bounds(entry["proprio"], normalization, f"{where}[{key!r}].proprio")
    return key, action, proprio


def compute_statistics(actions: torch.Tensor, proprio: torch.Tensor | None = None) -> dict:
    """Demonstrations (N, D) [+ proprio (N, P)] -> one dataset's entry in OpenVLA's format
    (exact quantiles; the gripper-style mask is all True)."""
    def entry(x: torch.Tensor) -> dict:
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"statistics need samples (N >= 2, D), got shape {tuple(x.shape)}")
        x = x.double()
        q = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0)
        return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).values.tolist(),
                "max": x.max(0).values.tolist(), "q01": q[0].tolist(), "q99": q[1].tolist(),
                "mask": [True] * x.shape[1]}
    out = {"action": entry(actions), "num_transitions": int(actions.shape[0])}
    if proprio is not None:
        out["proprio"] = entry(proprio)
    return out
