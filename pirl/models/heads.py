"""Heads shared by the policies: critics (flow policies, token VLAs) and the learned-noise (flow_noise) head."""
from __future__ import annotations

from typing import cast

import torch
from torch import nn


class ValueHead(nn.Module):
    """features (B, W) -> value (B,) fp32. Last layer starts at zero so early critic noise
    does not swamp the first advantages."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        first, last = nn.Linear(width, hidden), nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(first, nn.GELU(), last)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(-1)


class NoiseHead(nn.Module):
    """hidden (..., W) -> per-element std (..., D) squashed into [lo, hi]
    (`noise_logvar_range`, read as std bounds as in the reference system's flow_noise)."""

    def __init__(self, width: int, out_dim: int, std_range: tuple[float, float]):
        super().__init__()
        lo, hi = float(std_range[0]), float(std_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"actor.model.openpi.noise_logvar_range must satisfy 0 < lo <= hi, got {std_range}")
        self.lo, self.hi = lo, hi
        self.proj = nn.Linear(width, out_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)  # starts at the middle of the range

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.proj(hidden).float())


class MLPValueHead(nn.Module):
    """features (B, W) -> values (B, out) fp32 through GELU layers of `hidden` widths and a
    bias-free last layer (the reference system's token-VLA critic; `out` is 1 per chunk
    or one per executed action). Kaiming init, last layer N(0, 0.02)."""

    def __init__(self, width: int, hidden: tuple = (512, 128), out: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        d = width
        for h in hidden:
            lin = nn.Linear(d, h)
            nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.GELU()]
            d = h
        last = nn.Linear(d, out, bias=False)
        nn.init.normal_(last.weight, std=0.02)
        self.mlp = nn.Sequential(*layers, last)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features.to(cast(nn.Linear, self.mlp[-1]).weight.dtype)).float()
