"""GSEnv's image: moving foreground splats (robot links, objects) over a cached table layer
over a background photo.

Per step: M_g = P_g · C_g for every foreground group (pirl.envs.gsenv.transforms), splats
placed by it, colours from their SH with the view direction taken into each capture frame,
one rasterizer call for all B envs, then compositing (pirl.envs.gsenv.compositing). The table
is static: with `cache_table` it is rasterized once at construction and reused (it lies
behind everything, so the layered result equals one joint pass); without, its splats join
the foreground's depth-sorted pass every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pirl.envs.gsenv import compositing, transforms
from pirl.envs.gsenv.camera import Camera
from pirl.envs.gsenv.rasterize import Rasterizer
from pirl.envs.gsenv.splats import Splats, sh_to_rgb


@dataclass
class SplatCloud:
    """Splats in their capture frames, grouped by the rigid body that carries them."""

    means: torch.Tensor  # (N, 3)
    covs: torch.Tensor  # (N, 3, 3)
    opacities: torch.Tensor  # (N,)
    sh: torch.Tensor  # (N, K, 3)
    group: torch.Tensor  # (N,) int64 in [0, G)

    @classmethod
    def from_splats(cls, s: Splats, means: torch.Tensor | None = None, covs: torch.Tensor | None = None) -> SplatCloud:
        """One group; `means` / `covs` replace the splats' own (an aligned copy)."""
        return cls(s.means if means is None else means, s.covariances() if covs is None else covs, s.opacities, s.sh,
                   torch.zeros(len(s), dtype=torch.int64))

    @classmethod
    def merge(cls, clouds: list[SplatCloud]) -> SplatCloud:
        """Cloud i becomes group i, in order; SH zero-padded to the highest degree."""
        if not clouds:
            raise ValueError("SplatCloud.merge needs at least one cloud")
        k = max(c.sh.shape[1] for c in clouds)
        return cls(torch.cat([c.means for c in clouds]), torch.cat([c.covs for c in clouds]),
                   torch.cat([c.opacities for c in clouds]),
                   torch.cat([torch.nn.functional.pad(c.sh, (0, 0, 0, k - c.sh.shape[1])) for c in clouds]),
                   torch.cat([torch.full((len(c.means),), i, dtype=torch.int64) for i, c in enumerate(clouds)]))

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    def to(self, device: torch.device) -> SplatCloud:
        return SplatCloud(self.means.to(device), self.covs.to(device), self.opacities.to(device),
                          self.sh.to(device), self.group.to(device))

    def world(self, transforms_: torch.Tensor, cam_center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """transforms (B, G, 4, 4) capture -> world -> means (B, N, 3), covs (B, N, 3, 3),
        colours (B, N, 3)."""
        means, covs = transforms.place(self.means, self.covs, self.group, transforms_)
        if self.sh.shape[1] == 1:  # view-independent: one colour per splat
            colors = sh_to_rgb(self.sh, None).expand(transforms_.shape[0], -1, -1)
        else:
            colors = sh_to_rgb(self.sh[None], transforms.view_dirs(self.means, self.group, transforms_, cam_center))
        return means, covs, colors


class GSRenderer:
    def __init__(self, foreground: SplatCloud, capture: torch.Tensor, table: SplatCloud, background: torch.Tensor,
                 camera: Camera, rasterizer: Rasterizer, device: torch.device | str = "cpu", cache_table: bool = True,
                 render_bs: int | None = None):
        """foreground: G groups, capture (G, 4, 4) their capture transforms C_g; table: one
        static group, already in the world; background (H, W, 3) float in [0, 1] at the
        camera's resolution; render_bs: envs per rasterizer call (None: all B at once; fewer
        bound the rasterizer's memory, the seeds' gs_kwargs.render_bs)."""
        if render_bs is not None and render_bs < 1:
            raise ValueError(f"env.*.init_params.render_bs must be >= 1 or null, got {render_bs}")
        if tuple(background.shape) != (camera.height, camera.width, 3):
            raise ValueError(f"background is {tuple(background.shape)}, the camera renders "
                             f"{camera.height}x{camera.width}")
        if capture.shape != (foreground.num_groups, 4, 4):
            raise ValueError(f"capture transforms {tuple(capture.shape)} do not match the "
                             f"{foreground.num_groups} foreground groups")
        self.device = torch.device(device)
        self.camera = camera
        self.rasterizer = rasterizer
        self.splats = foreground.to(self.device)
        self.capture = capture.to(self.device, torch.float32)
        self.table = table.to(self.device)
        self.background = background.to(self.device, torch.float32)
        self._viewmat = camera.viewmat().to(self.device, torch.float32)
        self._K = camera.K.to(self.device, torch.float32)
        self._center = camera.center.to(self.device, torch.float32)
        self.cache_table = cache_table
        self.render_bs = render_bs
        self._table_layer = self._render_table() if cache_table else None

    @property
    def num_groups(self) -> int:
        return self.splats.num_groups

    def _rasterize(self, means, covs, colors, opacities):
        """(B, N, ...) world splats -> (B, H, W, 3), (B, H, W, 1), in calls of render_bs envs."""
        step = self.render_bs or means.shape[0]
        outs = [self.rasterizer(means[i:i + step], covs[i:i + step], colors[i:i + step], opacities, self._viewmat,
                                self._K, self.camera.width, self.camera.height) for i in range(0, means.shape[0], step)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _render_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        identity = torch.eye(4, device=self.device)[None, None]
        means, covs, colors = self.table.world(identity, self._center)
        return self._rasterize(means, covs, colors, self.table.opacities)  # (1, H, W, 3), (1, H, W, 1)

    def _placed(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = poses.to(self.device, torch.float32) @ self.capture  # (B, G, 4, 4) capture -> world
        return self.splats.world(m, self._center)

    @torch.no_grad()
    def foreground(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving splats alone: premultiplied rgb (B, H, W, 3) and alpha (B, H, W, 1)."""
        return self._rasterize(*self._placed(poses), self.splats.opacities)

    @torch.no_grad()
    def render(self, poses: torch.Tensor) -> torch.Tensor:
        """poses (B, G, 4, 4): P_g, world <- local frame of each foreground group, now ->
        images (B, H, W, 3) uint8."""
        if poses.ndim != 4 or poses.shape[1:] != (self.num_groups, 4, 4):
            raise ValueError(f"poses must be (B, {self.num_groups}, 4, 4), got {tuple(poses.shape)}")
        if self._table_layer is None:
            means, covs, colors = self._placed(poses)
            identity = torch.eye(4, device=self.device).expand(poses.shape[0], 1, 4, 4)
            t_means, t_covs, t_colors = self.table.world(identity, self._center)
            rgb, alpha = self._rasterize(torch.cat([means, t_means], 1), torch.cat([covs, t_covs], 1),
                                         torch.cat([colors, t_colors], 1),
                                         torch.cat([self.splats.opacities, self.table.opacities]))
        else:
            rgb, alpha = compositing.over(*self.foreground(poses), *self._table_layer)
        return compositing.to_uint8(compositing.onto_background(rgb, alpha, self.background)).cpu()
