"""State / action normalization from openpi's `norm_stats.json`.

File layout (openpi): {"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...],
"q99": [...]}, "actions": {...}}}. Stats may cover fewer dims than the model's padded
dim D: only the first len(stats) dims are transformed, padding passes through.

Modes (`normalization`): "zscore" (π0 default) (x − mean) / (std + ε);
"quantile" (π0.5 default) 2·(x − q01) / (q99 − q01 + ε) − 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

ZSCORE, QUANTILE = "zscore", "quantile"
NORM_MODES = (ZSCORE, QUANTILE)
EPS = 1e-6  # openpi's guard against zero spread


@dataclass(frozen=True)
class NormStats:
    mean: torch.Tensor  # (N,) fp32
    std: torch.Tensor
    q01: torch.Tensor | None = None
    q99: torch.Tensor | None = None

    def to_json(self) -> dict:
        d = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.q01 is not None and self.q99 is not None:
            d.update(q01=self.q01.tolist(), q99=self.q99.tolist())
        return d


def _stats_from_json(d: dict, where: str) -> NormStats:
    for key in ("mean", "std"):
        if key not in d:
            raise ValueError(f"{where}: missing {key!r}; expected keys mean, std, q01, q99")
    t = {k: torch.tensor(d[k], dtype=torch.float32) for k in ("mean", "std", "q01", "q99") if d.get(k) is not None}
    n = t["mean"].shape
    for k, v in t.items():
        if v.dim() != 1 or v.shape != n:
            raise ValueError(f"{where}.{k}: expected a 1-D list of {n[0]} numbers, got shape {tuple(v.shape)}")
    return NormStats(t["mean"], t["std"], t.get("q01"), t.get("q99"))


def compute_norm_stats(x: torch.Tensor) -> NormStats:
    """Samples (N, D) -> per-dim mean, std, 1% and 99% quantiles (openpi computes the same
    over the SFT dataset; exact quantiles here, where openpi bins a histogram)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"norm stats need samples (N >= 2, D), got shape {tuple(x.shape)}")
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0)
    return NormStats(x.mean(0).float(), x.std(0).float(), q[0].float(), q[1].float())


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """norm_stats.json -> {"state": NormStats, "actions": NormStats, ...}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read norm stats {path}: {e}") from e
    if "norm_stats" not in raw or not isinstance(raw["norm_stats"], dict):
        raise ValueError(f"{path}: expected a top-level 'norm_stats' object with 'state' and 'actions'")
    return {k: _stats_from_json(v, f"{path}:norm_stats.{k}") for k, v in raw["norm_stats"].items()}


def save_norm_stats(path: str | Path, stats: dict[str, NormStats]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"norm_stats": {k: v.to_json() for k, v in stats.items()}}, indent=1))


def _check(stats: NormStats, mode: str) -> None:
    if mode not in NORM_MODES:
        raise ValueError(f"normalization must be one of {NORM_MODES}, got {mode!r}")
    if mode == QUANTILE and stats.q01 is None:
        raise ValueError("quantile normalization needs q01/q99 in norm_stats.json")


def _quantiles(stats: NormStats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(q01, q99) on `device`; quantile mode only (`_check` has ensured they exist)."""
    assert stats.q01 is not None and stats.q99 is not None
    return stats.q01.to(device), stats.q99.to(device)


def normalize(x: torch.Tensor, stats: NormStats, mode: str) -> torch.Tensor:
    """x (..., N') with N' >= N stats dims -> same shape; dims beyond N untouched."""
    _check(stats, mode)
    n = stats.mean.shape[0]
    head, tail = x[..., :n].float(), x[..., n:].float()
    if mode == ZSCORE:
        head = (head - stats.mean.to(x.device)) / (stats.std.to(x.device) + EPS)
    else:
        lo, hi = _quantiles(stats, x.device)
        head = 2.0 * (head - lo) / (hi - lo + EPS) - 1.0
    return torch.cat([head, tail], dim=-1)


def unnormalize(x: torch.Tensor, stats: NormStats, mode: str) -> torch.Tensor:
    """Inverse of `normalize` on the first N dims."""
    _check(stats, mode)
    n = stats.mean.shape[0]
    head, tail = x[..., :n].float(), x[..., n:].float()
    if mode == ZSCORE:
        head = head * (stats.std.to(x.device) + EPS) + stats.mean.to(x.device)
    else:
        lo, hi = _quantiles(stats, x.device)
        head = (head + 1.0) / 2.0 * (hi - lo + EPS) + lo
    return torch.cat([head, tail], dim=-1)
