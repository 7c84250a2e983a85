"""State / action normalization: openpi's `norm_stats.json` and lerobot's normalizer stats.

File layout (openpi): {"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...],
"q99": [...]}, "actions": {...}}}. pirl adds, only where they differ from openpi's defaults,
"min"/"max", "mode" (the mode the stats were saved for) and "convention"/"eps". Stats may
cover fewer dims than the model's padded dim D: only the first len(stats) dims are
transformed, padding passes through.

Modes (`normalization`): "zscore" (π0 default), "quantile" (π0.5 default, q01/q99),
"minmax" (min/max), "identity". lerobot calls them MEAN_STD, QUANTILES, MIN_MAX, IDENTITY.

Conventions (whose formulas, so a loaded model sees exactly the numbers it was trained on):
    openpi   zscore (x − mean) / (std + ε), inverse x·(std + ε) + mean;
             quantile / minmax 2·(x − lo) / (hi − lo + ε) − 1, inverse likewise; ε = 1e-6
    lerobot  zscore (x − mean) / (std + ε), inverse x·std + mean;
             quantile / minmax 2·(x − lo) / d − 1 with d = hi − lo, ε where d == 0; ε = 1e-8
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ZSCORE, QUANTILE, MINMAX, IDENTITY = "zscore", "quantile", "minmax", "identity"
NORM_MODES = (ZSCORE, QUANTILE, MINMAX, IDENTITY)
OPENPI, LEROBOT = "openpi", "lerobot"
CONVENTIONS = (OPENPI, LEROBOT)
EPS = 1e-6  # openpi's guard against zero spread
LEROBOT_EPS = 1e-8  # lerobot's NormalizerProcessorStep default
_BOUNDS = {QUANTILE: ("q01", "q99"), MINMAX: ("min", "max")}


@dataclass(frozen=True)
class NormStats:
    mean: torch.Tensor  # (N,) fp32
    std: torch.Tensor
    q01: torch.Tensor | None = None
    q99: torch.Tensor | None = None
    min: torch.Tensor | None = None
    max: torch.Tensor | None = None
    mode: str | None = None  # the mode these stats were saved for; None: the run's openpi.normalization
    convention: str = OPENPI
    eps: float = EPS

    def to_json(self) -> dict:
        d: dict = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        for k in ("q01", "q99", "min", "max"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k).tolist()
        if self.mode is not None:
            d["mode"] = self.mode
        if (self.convention, self.eps) != (OPENPI, EPS):
            d.update(convention=self.convention, eps=self.eps)
        return d


def _stats_from_json(d: dict, where: str) -> NormStats:
    for key in ("mean", "std"):
        if key not in d:
            raise ValueError(f"{where}: missing {key!r}; expected keys mean, std, q01, q99")
    t = {k: torch.tensor(d[k], dtype=torch.float32)
         for k in ("mean", "std", "q01", "q99", "min", "max") if d.get(k) is not None}
    n = t["mean"].shape
    for k, v in t.items():
        if v.dim() != 1 or v.shape != n:
            raise ValueError(f"{where}.{k}: expected a 1-D list of {n[0]} numbers, got shape {tuple(v.shape)}")
    mode, convention = d.get("mode"), d.get("convention", OPENPI)
    if mode is not None and mode not in NORM_MODES:
        raise ValueError(f"{where}.mode: expected one of {NORM_MODES}, got {mode!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"{where}.convention: expected one of {CONVENTIONS}, got {convention!r}")
    return NormStats(**t, mode=mode, convention=convention, eps=float(d.get("eps", EPS)))


def compute_norm_stats(x: torch.Tensor) -> NormStats:
    """Samples (N, D) -> per-dim mean, std, 1% and 99% quantiles, min and max (openpi
    computes the same over the SFT dataset; exact quantiles here, where openpi bins a histogram)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"norm stats need samples (N >= 2, D), got shape {tuple(x.shape)}")
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0)
    return NormStats(x.mean(0).float(), x.std(0).float(), q[0].float(), q[1].float(), x.min(0).values.float(),
                     x.max(0).values.float())


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


def to_convention(stats: NormStats, convention: str, eps: float) -> NormStats:
    """The same transform written for another convention's formulas: exact for quantile /
    minmax and for the zscore forward; the zscore inverse differs by ε_lerobot·|x| (1e-8·|x|),
    since lerobot's inverse has no ε."""
    if (stats.convention, stats.eps) == (convention, eps):
        return stats
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    # zscore: both conventions divide by std + ε in the forward pass.
    std = stats.std + stats.eps - eps
    bounds = {}
    for lo, hi in _BOUNDS.values():
        if getattr(stats, lo) is None:
            continue
        width = _width(getattr(stats, lo), getattr(stats, hi), stats.convention, stats.eps)
        new_hi = getattr(stats, lo) + width - (eps if convention == OPENPI else 0.0)
        bounds[hi] = new_hi
    return replace(stats, std=std, convention=convention, eps=eps, **bounds)


def _width(lo: torch.Tensor, hi: torch.Tensor, convention: str, eps: float) -> torch.Tensor:
    d = hi - lo
    return d + eps if convention == OPENPI else torch.where(d == 0, torch.full_like(d, eps), d)


def _check(stats: NormStats, mode: str) -> None:
    if mode not in NORM_MODES:
        raise ValueError(f"normalization must be one of {NORM_MODES}, got {mode!r}")
    if mode in _BOUNDS and getattr(stats, _BOUNDS[mode][0]) is None:
        lo, hi = _BOUNDS[mode]
        raise ValueError(f"{mode} normalization needs {lo}/{hi} in the norm stats")


def _transform(x: torch.Tensor, stats: NormStats, mode: str, inverse: bool) -> torch.Tensor:
    _check(stats, mode)
    if mode == IDENTITY:
        return x.float()
    n = stats.mean.shape[0]
    head, tail = x[..., :n].float(), x[..., n:].float()
    dev = x.device
    if mode == ZSCORE:
        mean = stats.mean.to(dev)
        with_eps = stats.convention == OPENPI or not inverse  # lerobot's inverse has no ε
        std = (stats.std + (stats.eps if with_eps else 0.0)).to(dev)
        head = head * std + mean if inverse else (head - mean) / std
    else:
        lo_key, hi_key = _BOUNDS[mode]
        lo = getattr(stats, lo_key).to(dev)
        width = _width(lo, getattr(stats, hi_key).to(dev), stats.convention, stats.eps)
        head = (head + 1.0) / 2.0 * width + lo if inverse else 2.0 * (head - lo) / width - 1.0
    return torch.cat([head, tail], dim=-1)


def normalize(x: torch.Tensor, stats: NormStats, mode: str) -> torch.Tensor:
    """x (..., N') with N' >= N stats dims -> same shape; dims beyond N untouched."""
    return _transform(x, stats, mode, inverse=False)


def unnormalize(x: torch.Tensor, stats: NormStats, mode: str) -> torch.Tensor:
    """Inverse of `normalize` on the first N dims."""
    return _transform(x, stats, mode, inverse=True)
