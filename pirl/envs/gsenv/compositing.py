"""Layer compositing with premultiplied colour (what the rasterizers return).

A layer is (rgb (..., H, W, 3) premultiplied by its alpha, alpha (..., H, W, 1)). `over`
puts a front layer on a back one, and equals rendering both splat sets in one depth-sorted
pass whenever every front splat is nearer than every back splat along each pixel's ray:
then the front's transmittance multiplies everything behind it. GSEnv's table is such a
back layer (everything in the scene stands on it, and the camera looks down at it), which
is why it can be rendered once and cached.
"""
from __future__ import annotations

import torch


def over(front_rgb: torch.Tensor, front_alpha: torch.Tensor, back_rgb: torch.Tensor,
         back_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Porter-Duff "over" for premultiplied layers (broadcasting over leading dims)."""
    keep = 1.0 - front_alpha
    return front_rgb + keep * back_rgb, front_alpha + keep * back_alpha


def onto_background(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Premultiplied layer over an opaque background image (H, W, 3) in [0, 1] -> (..., H, W, 3)."""
    return rgb + (1.0 - alpha) * background


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] -> uint8 (rounded, clamped)."""
    return (rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
