"""Rasterizers of 3D Gaussians: gsplat's CUDA one, and pirl's own in torch for the CPU.

Both take world-space Gaussians with their colours already evaluated and return the
premultiplied colour and the alpha of each pixel, composited front to back:

    C(p) = Σ_i c_i α_i(p) T_i(p),   T_i = Π_{j<i} (1 − α_j),   A(p) = 1 − T_final(p)

over the splats sorted by camera depth. The torch rasterizer follows gsplat's "classic"
EWA rules (gsplat 1.5.3, `ProjectionEWA3DGSFused.cu` / `RasterizeToPixels3DGSFwd.cu`) so
that the two agree to float rounding:

  * projection: Σ2d = J W Σ Wᵀ Jᵀ with the perspective Jacobian J at the mean, whose x/z
    and y/z are clamped to 1.3x the field of view (far off-screen splats do not blow up),
    plus `eps2d` = 0.3 px² on the diagonal (a splat covers at least ~1 pixel);
  * culling: depth outside (near, far), det Σ2d <= 0, opacity < 1/255, or the
    opacity-aware box (extent min(3.33, sqrt(2 ln(255 o))) σ per axis) off the image;
  * a splat is tested at the pixels of its box (gsplat: of the 16x16 tiles the box touches,
    the same result: outside the box alpha < 1/255);
  * per pixel, centre (j + 0.5, i + 0.5): α = min(0.999, o·exp(−½ dᵀ Σ2d⁻¹ d)); splats with
    α < 1/255 are skipped; the pixel stops (that splat excluded) once T would fall to 1e-4.

gsplat is an optional dependency (`pip install -e ".[gs]"`): on a CPU-only torch its
first call fails to JIT-build its CUDA sources, so it is imported only when used, on CUDA.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
ALPHA_MAX = 0.999  # a single splat never makes a pixel fully opaque
T_MIN = 1e-4  # a pixel whose transmittance would fall to this is done
EPS2D = 0.3  # px² added to the projected covariance (gsplat's default eps2d)
EXTENT = 3.33  # box half-size in standard deviations (gsplat)
TILE = 16  # gsplat's tile size
NEAR, FAR = 0.01, 1e10

BACKENDS = ("auto", "torch", "gsplat")


class Projected(NamedTuple):
    means2d: torch.Tensor  # (N, 2) pixels
    conics: torch.Tensor  # (N, 3) upper triangle (a, b, c) of Σ2d⁻¹
    depths: torch.Tensor  # (N,) camera z
    radii: torch.Tensor  # (N, 2) int64 box half-sizes in pixels; 0 = culled


def project(means: torch.Tensor, covs: torch.Tensor, opacities: torch.Tensor, viewmat: torch.Tensor,
            K: torch.Tensor, width: int, height: int, near: float = NEAR, far: float = FAR,
            eps2d: float = EPS2D) -> Projected:
    """EWA projection of N world Gaussians: means (N, 3), covs (N, 3, 3), opacities (N,)."""
    r, t = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ r.T + t  # (N, 3) camera frame
    cc = r @ covs @ r.T  # (N, 3, 3)
    x, y, z = mc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    z_safe = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    tx = z_safe * torch.clamp(x / z_safe, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = z_safe * torch.clamp(y / z_safe, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2,
                       zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1).reshape(-1, 2, 3)
    cov2d = jac @ cc @ jac.transpose(-1, -2)
    a = cov2d[:, 0, 0] + eps2d
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)
    extent = torch.clamp(torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)), max=EXTENT)
    radii = torch.stack([torch.ceil(extent * a.clamp_min(0).sqrt()), torch.ceil(extent * c.clamp_min(0).sqrt())], -1)
    valid = (det > 0) & (z > near) & (z < far) & (opacities >= ALPHA_MIN)
    valid &= (means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
    valid &= (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height)
    valid &= (radii > 0).all(-1)
    radii = torch.where(valid[:, None], radii, torch.zeros_like(radii)).long()
    return Projected(means2d, conics, z, radii)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along dim 0. On the CPU index_select is faster than advanced indexing, which
    was the largest cost of a frame: 160x120 frames went from 250 to 149 ms (same process,
    alternating, load 11) with it and the per-splat values packed into one gather."""
    return torch.index_select(x, 0, index)


def box_pixels(proj: Projected, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (pixel, splat) pair whose pixel centre lies in the splat's box. Returns pixel
    ids (M,) = row * width + column and splat ids (M,), int64, in no particular order.

    Outside its box a splat's alpha is below 1/255 (the box bounds the ellipse where it
    reaches 1/255), so gsplat, which tests a splat in every pixel of the 16x16 tiles the box
    touches, skips exactly the pairs left out here."""
    m2d, rad = proj.means2d, proj.radii.to(proj.means2d.dtype)
    lo = torch.ceil(m2d - rad - 0.5).long()  # first pixel whose centre j + 0.5 >= m - r
    hi = torch.floor(m2d + rad - 0.5).long()  # last pixel whose centre <= m + r
    x0, x1 = lo[:, 0].clamp(0, width), (hi[:, 0] + 1).clamp(0, width)
    y0, y1 = lo[:, 1].clamp(0, height), (hi[:, 1] + 1).clamp(0, height)
    wx = x1 - x0
    count = wx * (y1 - y0) * (proj.radii > 0).all(-1)  # (N,) pixels per splat; culled: 0
    ids = torch.nonzero(count, as_tuple=True)[0]
    box = _take(torch.stack([x0, y0, wx, count], -1), ids)  # (n, 4)
    count = box[:, 3]
    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), count)  # (M,) which splat
    first = torch.cumsum(count, 0) - count
    per_pair = _take(torch.cat([box[:, :3], first[:, None]], -1), owner)  # (M, 4) x0, y0, wx, first
    local = torch.arange(owner.numel(), device=ids.device) - per_pair[:, 3]  # index inside the splat's box
    pix = (per_pair[:, 1] + local // per_pair[:, 2]) * width + per_pair[:, 0] + local % per_pair[:, 2]
    return pix, _take(ids, owner)


def rasterize_torch(means: torch.Tensor, covs: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
                    viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, *, near: float = NEAR,
                    far: float = FAR, eps2d: float = EPS2D) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: means (N, 3), covs (N, 3, 3), colors (N, D), opacities (N,) world-space ->
    premultiplied colour (H, W, D) and alpha (H, W, 1).

    All (pixel, splat) pairs at once: transmittances are prefix products along each
    pixel's front-to-back list, taken as segmented sums of log(1 − α) in float64."""
    dtype, dev = means.dtype, means.device
    n = len(opacities)
    viewmat, K = viewmat.to(dev, dtype), K.to(dev, dtype)
    proj = project(means, covs, opacities, viewmat, K, width, height, near, far, eps2d)
    pix, g = box_pixels(proj, width, height)  # (M,), (M,)
    per_splat = _take(torch.cat([proj.means2d, proj.conics, opacities[:, None]], -1), g)  # (M, 6)
    dx = per_splat[:, 0] - (pix % width).to(dtype) - 0.5
    dy = per_splat[:, 1] - torch.div(pix, width, rounding_mode="floor").to(dtype) - 0.5
    sigma = 0.5 * (per_splat[:, 2] * dx * dx + per_splat[:, 4] * dy * dy) + per_splat[:, 3] * dx * dy
    alpha = torch.clamp(per_splat[:, 5] * torch.exp(-sigma), max=ALPHA_MAX)
    hit = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_MIN), as_tuple=True)[0]  # the pairs gsplat does not skip
    pix, g, alpha = _take(pix, hit), _take(g, hit), _take(alpha, hit)
    # Sort by pixel, then front to back: depth ranks are unique, so one integer key does both.
    rank = torch.empty(n, dtype=torch.int64, device=dev)
    rank[torch.argsort(proj.depths, stable=True)] = torch.arange(n, device=dev)
    order = torch.argsort(pix * n + _take(rank, g))
    pix, g, alpha = _take(pix, order), _take(g, order), _take(alpha, order).double()
    log_keep = torch.log1p(-alpha)  # (M,) log(1 − α)
    csum = torch.cumsum(log_keep, 0)
    new_pixel = torch.ones_like(pix, dtype=torch.bool)
    new_pixel[1:] = pix[1:] != pix[:-1]
    seg_start = torch.cummax(torch.where(new_pixel, torch.arange(pix.numel(), device=dev), 0), 0).values
    before = csum - log_keep - _take(csum - log_keep, seg_start)  # Σ over nearer splats of the pixel
    t_before = torch.exp(before)
    # T never increases along a pixel's list, so "T after this splat > T_MIN" keeps a prefix:
    # exactly the splats composited before the pixel stops (the one that would end it excluded).
    weight = (alpha * t_before * (t_before * (1.0 - alpha) > T_MIN)).to(dtype)  # (M,)
    d = colors.shape[-1]
    out = torch.zeros(height * width, d + 1, dtype=dtype, device=dev)
    rgba = torch.cat([colors, torch.ones_like(colors[:, :1])], -1)  # alpha accumulates as a channel
    out.index_add_(0, pix, _take(rgba, g) * weight[:, None])
    out = out.reshape(height, width, d + 1)
    return out[..., :d].contiguous(), out[..., d:].contiguous()


class Rasterizer(Protocol):
    name: str

    def __call__(self, means: torch.Tensor, covs: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
                 viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched: means (B, N, 3), covs (B, N, 3, 3), colors (B, N, 3), opacities (N,),
        viewmat (4, 4), K (3, 3) -> premultiplied rgb (B, H, W, 3), alpha (B, H, W, 1)."""


class TorchRasterizer:
    """pirl's rasterizer: any device, one image at a time; for tests and small images."""

    name = "torch"

    def __call__(self, means, covs, colors, opacities, viewmat, K, width, height):
        outs = [rasterize_torch(means[b], covs[b], colors[b], opacities, viewmat, K, width, height)
                for b in range(means.shape[0])]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


class GsplatRasterizer:
    """gsplat's CUDA rasterizer, all B images in one call (gsplat's batch dimensions)."""

    name = "gsplat"

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("the gsplat rasterizer needs CUDA; use env.*.init_params.render_backend: torch on a CPU")
        try:
            from gsplat import rasterization
        except ImportError as e:
            raise ImportError(f"gsplat is not installed or does not build here ({e}); install the gs extra: "
                              f"pip install -e '.[gs]' (needs a CUDA torch)") from e
        self._rasterization = rasterization

    def __call__(self, means, covs, colors, opacities, viewmat, K, width, height):
        b = means.shape[0]
        device = means.device
        rgb, alpha, _ = self._rasterization(
            means=means.float().contiguous(), quats=None, scales=None, covars=covs.float().contiguous(),
            opacities=opacities.float().to(device).expand(b, -1).contiguous(), colors=colors.float().contiguous(),
            viewmats=viewmat.float().to(device).expand(b, 1, 4, 4).contiguous(),
            Ks=K.float().to(device).expand(b, 1, 3, 3).contiguous(),
            width=width, height=height, near_plane=NEAR, far_plane=FAR, eps2d=EPS2D, sh_degree=None,
            packed=False, tile_size=TILE, rasterize_mode="classic", render_mode="RGB",
        )
        return rgb[:, 0], alpha[:, 0]  # (B, 1, H, W, 3) -> (B, H, W, 3)


def make_rasterizer(backend: str, device: torch.device) -> Rasterizer:
    """`env.*.init_params.render_backend`: auto (gsplat on a CUDA device, else torch), torch, gsplat."""
    if backend not in BACKENDS:
        raise ValueError(f"env.*.init_params.render_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return TorchRasterizer()
    return GsplatRasterizer()
