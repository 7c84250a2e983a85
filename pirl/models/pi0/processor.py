"""Env observations <-> π0 model tensors. Most π0 bugs are processor bugs, so every step is
a small function with its own test.

In (`__call__`): obs dict (pirl.envs.base) ->
    images       (B, NC, 3, S, S) fp32 in [-1, 1]   camera slots base / left wrist / right wrist
    image_masks  (B, NC) bool                       False for cameras the env lacks
    tokens       (B, L) long, token_masks (B, L) bool
    state        (B, D) fp32                        normalized, zero-padded to the model dim
    raw_state    (B, S_env) fp32                    env units, for delta actions on the way out
Out (`postprocess`): model actions (B, H, D) -> env actions (B, H, D_env): unnormalize,
absolute = delta + state on the delta dims, slice the env's dims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pirl.models.pi0.configuration import Pi0Config
from pirl.models.pi0.normalize import NormStats, normalize, unnormalize
from pirl.models.pi0.tokenizer import PromptTokenizer

# obs key -> camera slot (IMAGE_KEYS order); a slot with no key is masked out.
CAMERA_OBS_KEYS = ("main_images", "wrist_images", "extra_wrist_images")


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> fp32 (B, 3, size, size) in [0, 255]: keep aspect ratio,
    bilinear resize of the longer side to `size`, center zero-pad (openpi's resize_with_pad)."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2).float()
    H, W = x.shape[-2:]
    if (H, W) != (size, size):
        ratio = max(H, W) / size
        h, w = int(H / ratio), int(W / ratio)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 255)
        top, left = (size - h) // 2, (size - w) // 2
        x = F.pad(x, (left, size - w - left, top, size - h - top), value=0.0)
    return x


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> [-1, 1] (SigLIP's input range)."""
    return x / 127.5 - 1.0


# openpi's training augmentation (models_pytorch/preprocessing_pytorch.py), applied in
# [0, 1] pixel space: non-wrist cameras get a random crop of 95% of the side resized back and
# a rotation of U(-5°, 5°) (skipped under 0.1°, as openpi does); every camera then gets
# multiplicative brightness, contrast (about the image mean) and saturation (about the
# per-pixel channel mean), then a clamp to [0, 1]. One draw per camera per batch: every
# sample of a batch gets the same crop, angle and factors.
CROP_FRACTION = 0.95
MAX_ROTATION_DEG = 5.0
MIN_ROTATION_DEG = 0.1
BRIGHTNESS = (0.7, 1.3)
CONTRAST = (0.6, 1.4)
SATURATION = (0.5, 1.5)


@dataclass(frozen=True)
class AugmentDraw:
    """One batch's random augmentation parameters."""
    top: int  # crop offset, rows
    left: int  # crop offset, columns
    angle_deg: float  # rotation, degrees in [-MAX_ROTATION_DEG, MAX_ROTATION_DEG]
    brightness: float
    contrast: float
    saturation: float


def _uniform(lo_hi: tuple[float, float], generator: torch.Generator | None) -> float:
    lo, hi = lo_hi
    return lo + float(torch.rand((), generator=generator)) * (hi - lo)


def draw_augment(size: int, generator: torch.Generator | None = None) -> AugmentDraw:
    """Parameters for one batch of (size x size) images; draws from `generator` only."""
    slack = size - int(size * CROP_FRACTION)
    top, left = (int(v) for v in torch.randint(0, slack + 1, (2,), generator=generator))
    return AugmentDraw(top=top, left=left,
                       angle_deg=_uniform((-MAX_ROTATION_DEG, MAX_ROTATION_DEG), generator),
                       brightness=_uniform(BRIGHTNESS, generator), contrast=_uniform(CONTRAST, generator),
                       saturation=_uniform(SATURATION, generator))


def rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """(B, C, S, S) -> rotated about the centre, zeros outside (openpi's grid_sample
    rotation: output(p) = input(R·p) in normalized coordinates)."""
    B, _, H, W = x.shape
    a = torch.tensor(math.radians(angle_deg), dtype=torch.float32)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    grid = torch.stack([gx * a.cos() - gy * a.sin(), gx * a.sin() + gy * a.cos()], dim=-1)
    return F.grid_sample(x, grid[None].expand(B, H, W, 2).to(x.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def augment(x: torch.Tensor, draw: AugmentDraw, geometric: bool) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1] -> augmented, same range. `geometric` (crop + rotation) is
    for non-wrist cameras only; colour jitter applies to every camera."""
    S = x.shape[-1]
    x = x / 2.0 + 0.5
    if geometric:
        c = int(S * CROP_FRACTION)
        x = F.interpolate(x[:, :, draw.top:draw.top + c, draw.left:draw.left + c], size=(S, S), mode="bilinear",
                          align_corners=False)
        if abs(draw.angle_deg) > MIN_ROTATION_DEG:
            x = rotate(x, draw.angle_deg)
    x = x * draw.brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * draw.contrast + mean
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * draw.saturation
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


@dataclass
class ProcessorConfig:
    normalization: str = "zscore"  # zscore (π0) | quantile (π0.5) | minmax | identity, for stats without a mode
    delta_action_mask: tuple | None = None  # (D_env,) bool: env actions that are deltas to the state
    action_env_dim: int = 1
    train_augment: bool = False  # openpi's training augmentation (`augment`) while training
    num_images: int = len(CAMERA_OBS_KEYS)  # cameras fed (openpi.num_images_in_input); later slots masked


class Pi0Processor:
    def __init__(self, cfg: Pi0Config, tokenizer: PromptTokenizer, norm_stats: dict[str, NormStats] | None,
                 pcfg: ProcessorConfig):
        if norm_stats is not None:
            for key in ("state", "actions"):
                if key not in norm_stats:
                    raise ValueError(f"norm_stats.json lacks {key!r} (has {sorted(norm_stats)})")
        self.cfg, self.tokenizer, self.norm_stats, self.pcfg = cfg, tokenizer, norm_stats, pcfg
        self.training = False

    def images(self, obs: dict, generator: torch.Generator | None = None):
        """-> images (B, NC, 3, S, S) in [-1, 1], masks (B, NC) bool."""
        if "main_images" not in obs:
            raise ValueError(f"observation lacks 'main_images' (has {sorted(obs)})")
        S = self.cfg.vision.image_size
        B = len(obs["main_images"])
        slots, masks = [], []
        for i, (key, slot) in enumerate(zip(CAMERA_OBS_KEYS, self.cfg.image_keys)):
            img = obs.get(key) if i < self.pcfg.num_images else None
            if img is None:
                slots.append(torch.full((B, 3, S, S), -1.0))  # a black frame, masked out
                masks.append(torch.zeros(B, dtype=torch.bool))
                continue
            x = to_unit_range(resize_with_pad(torch.as_tensor(img), S))
            if self.training and self.pcfg.train_augment:
                x = augment(x, draw_augment(S, generator), geometric="wrist" not in slot)
            slots.append(x)
            masks.append(torch.ones(B, dtype=torch.bool))
        return torch.stack(slots, dim=1), torch.stack(masks, dim=1)

    def mode(self, key: str) -> str:
        """The normalization of norm_stats[key]: the mode its checkpoint declared, else the run's."""
        assert self.norm_stats is not None
        return self.norm_stats[key].mode or self.pcfg.normalization

    def state(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (B, S_env) -> normalized (B, S_env) fp32."""
        if self.norm_stats is None:
            return raw.float()
        return normalize(raw.float(), self.norm_stats["state"], self.mode("state"))

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions (..., D_env) -> model units (SFT targets); identity without stats."""
        if self.norm_stats is None:
            return actions.float()
        return normalize(actions, self.norm_stats["actions"], self.mode("actions"))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        D = self.cfg.action_dim
        if x.shape[-1] > D:
            raise ValueError(f"state has {x.shape[-1]} dims, more than the model's {D}")
        return F.pad(x, (0, D - x.shape[-1]))

    def __call__(self, obs: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if "states" not in obs:
            raise ValueError(f"observation lacks 'states' (has {sorted(obs)})")
        raw = torch.as_tensor(obs["states"]).float()
        images, image_masks = self.images(obs, generator)
        prompts = obs.get("task_descriptions") or [""] * raw.shape[0]
        norm_state = self.state(raw)
        tokens, token_masks = self.tokenizer(list(prompts), norm_state if self.tokenizer.discrete_state else None)
        return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks,
                "state": self.pad(norm_state), "raw_state": raw}

    def postprocess(self, actions: torch.Tensor, raw_state: torch.Tensor) -> torch.Tensor:
        """model actions (B, H, D) -> env actions (B, H, D_env) fp32."""
        a = actions.float()
        if self.norm_stats is not None:
            a = unnormalize(a, self.norm_stats["actions"], self.mode("actions"))
        a = a[..., : self.pcfg.action_env_dim]
        if self.pcfg.delta_action_mask is not None:
            m = torch.tensor(self.pcfg.delta_action_mask, dtype=torch.bool, device=a.device)
            if m.shape[0] != a.shape[-1]:
                raise ValueError(f"delta_action_mask has {m.shape[0]} entries, env actions have {a.shape[-1]}")
            n = min(raw_state.shape[-1], m.shape[0])
            offset = torch.zeros_like(a[:, 0])
            offset[:, :n] = torch.where(m[:n], raw_state[:, :n].float(), torch.zeros_like(offset[:, :n]))
            a = a + offset[:, None, :]
        return a

    def to_delta(self, actions: torch.Tensor, raw_state: torch.Tensor) -> torch.Tensor:
        """Absolute env actions (B, H, D_env) -> deltas on the masked dims (SFT data path)."""
        if self.pcfg.delta_action_mask is None:
            return actions
        m = torch.tensor(self.pcfg.delta_action_mask, dtype=torch.bool, device=actions.device)
        n = min(raw_state.shape[-1], m.shape[0])
        offset = torch.zeros_like(actions[:, 0])
        offset[:, :n] = torch.where(m[:n], raw_state[:, :n].float(), torch.zeros_like(offset[:, :n]))
        return actions - offset[:, None, :]
