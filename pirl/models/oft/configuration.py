"""Sizes and switches of OpenVLA-OFT, kept apart from the modules (lerobot's split).

A Prismatic VLA: a fused vision backbone (DINOv2 ViT-L/14 with 4 registers and SigLIP
So400m/14, patch features of the second-to-last block concatenated per patch), a 3-layer
MLP projector into Llama-2 7B, and 256 action bins mapped onto the last 256 ids of the
Llama tokenizer (OpenVLA). OFT decodes the whole chunk in one pass over placeholder
action positions (Kim et al. 2025, "Fine-Tuning VLAs: Optimizing Speed and Success").

Presets (`actor.model.oft.config_name`):
    openvla_7b   the published sizes (7,541,237,184 parameters in the HF checkpoint)
    oft_tiny     widths 32-64, 2 decoder layers, 28 px images (tests, reach2d learning)

Variants (`actor.model.implement_version`, the reference system's key):
    rlinf     RLinf's LIBERO / ManiSkill checkpoints: sequence ends with the action
              placeholders (no stop token), no FiLM, no proprio.
    official  moojink/openvla-oft: a stop token after the placeholders, optional FiLM in
              the vision blocks and a proprio token after the patches; FiLM and proprio
              weights live in separate `*--<step>_checkpoint.pt` files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RLINF, OFFICIAL = "rlinf", "official"
VARIANTS = (RLINF, OFFICIAL)
# Attention among the sequence's valid tokens. "bidirectional" is OFT's (its transformers
# fork replaces Llama's causal mask by "attend to every non-pad token"); "causal" is
# OpenVLA's autoregressive mask, under which a token-by-token decode gives the same
# logits as the one parallel pass.
BIDIRECTIONAL, CAUSAL = "bidirectional", "causal"
ATTENTION_MODES = (BIDIRECTIONAL, CAUSAL)
# value_type (the reference system's key): one value per chunk, or one per executed action.
CHUNK_LEVEL, ACTION_LEVEL = "chunk_level", "action_level"
VALUE_TYPES = (CHUNK_LEVEL, ACTION_LEVEL)
DINOV2, SIGLIP = "dinov2", "siglip"

# Llama-2's SentencePiece special ids and the ids OpenVLA adds.
BOS_ID, STOP_ID = 1, 2  # <s>, </s> (OFT's stop token)


@dataclass(frozen=True)
class ViTSpec:
    """One timm ViT of the fused backbone, built from transformers' encoder layers."""

    kind: str  # dinov2 (class token, registers, layer scale) | siglip (no prefix tokens, MAP head)
    hidden_size: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 14
    image_size: int = 224
    num_registers: int = 0  # DINOv2 register tokens
    layerscale_init: float = 1e-5  # DINOv2's LayerScale init (timm init_values)
    norm_eps: float = 1e-6  # timm ViT LayerNorm eps
    mean: tuple = (0.5, 0.5, 0.5)  # input normalization of this tower (timm data config)
    std: tuple = (0.5, 0.5, 0.5)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches that the features drop (class + registers)."""
        return 1 + self.num_registers if self.kind == DINOV2 else 0


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int  # embedding rows: tokenizer vocabulary + pad_to_multiple_of rows
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-6
    max_position_embeddings: int = 2048


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV2_L = ViTSpec(DINOV2, 1024, 24, 16, 4096, num_registers=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
SIGLIP_SO400M = ViTSpec(SIGLIP, 1152, 27, 16, 4304)
LLAMA2_7B = LlamaSpec(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                      num_kv_heads=32)

DINOV2_TINY = ViTSpec(DINOV2, 32, 3, 2, 64, image_size=28, num_registers=2, layerscale_init=0.1,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)
SIGLIP_TINY = ViTSpec(SIGLIP, 48, 3, 2, 96, image_size=28)
LLAMA_TINY = LlamaSpec(vocab_size=576, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=256)


@dataclass(frozen=True)
class OFTConfig:
    vision: tuple = (DINOV2_L, SIGLIP_SO400M)  # featurizer, fused_featurizer (one tower: not fused)
    llm: LlamaSpec = LLAMA2_7B
    pad_to_multiple_of: int = 64  # embedding rows added past the tokenizer's vocabulary
    n_action_bins: int = 256
    action_dim: int = 7  # D: tokens per action
    num_action_chunks: int = 8  # C: actions per chunk decoded in parallel
    num_images_in_input: int = 1  # cameras: main, then wrist(s)
    variant: str = RLINF
    attention: str = BIDIRECTIONAL
    use_film: bool = False  # official: FiLM of every vision block by the mean prompt embedding
    use_proprio: bool = False  # official: a proprio token after the patches
    proprio_dim: int = 8
    max_prompt_length: int = 50  # prompt tokens incl. <s> and the final "▁", left-padded
    add_value_head: bool = True
    value_type: str = ACTION_LEVEL
    value_hidden: tuple = (512, 128)  # critic MLP widths (the reference system's ValueHead)

    @property
    def tokenizer_vocab(self) -> int:
        """Llama's vocabulary without the padding rows: action ids are its last 256."""
        return self.llm.vocab_size - self.pad_to_multiple_of

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer_vocab  # OpenVLA's "<PAD>" is the first added row

    @property
    def num_action_tokens(self) -> int:
        return self.num_action_chunks * self.action_dim

    @property
    def num_patches(self) -> int:
        """Vision tokens per sample (all cameras), + 1 for the proprio token."""
        return self.vision[0].num_patches * self.num_images_in_input + int(self.use_proprio)

    @property
    def vision_dim(self) -> int:
        return sum(v.hidden_size for v in self.vision)

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"actor.model.implement_version must be one of {VARIANTS}, got {self.variant!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"actor.model.oft.attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.value_type not in VALUE_TYPES:
            raise ValueError(f"actor.model.value_type must be one of {VALUE_TYPES}, got {self.value_type!r}")
        if self.variant == RLINF and (self.use_film or self.use_proprio):
            raise ValueError("use_film / use_proprio exist only in the official variant "
                             "(actor.model.implement_version: official)")
        if not 1 <= len(self.vision) <= 2:
            raise ValueError(f"the vision backbone has one or two towers, got {len(self.vision)}")
        if len({(v.image_size, v.patch_size) for v in self.vision}) != 1:
            raise ValueError("fused vision towers must agree on image_size and patch_size (same patch grid)")
        if self.num_images_in_input > 1 and len(self.vision) != 2:
            raise ValueError("several cameras need the fused (two-tower) backbone, as in OpenVLA-OFT")
        if self.tokenizer_vocab <= self.n_action_bins:
            raise ValueError(f"tokenizer vocabulary {self.tokenizer_vocab} must exceed n_action_bins "
                             f"{self.n_action_bins}: action ids are its last bins")
        if self.llm.hidden_size % self.llm.num_heads or self.llm.num_heads % self.llm.num_kv_heads:
            raise ValueError("llm: hidden_size must divide into num_heads, num_heads into num_kv_heads")
        needed = self.max_prompt_length + self.num_patches + self.num_action_tokens + 1
        if needed > self.llm.max_position_embeddings:
            raise ValueError(f"sequence of {needed} tokens exceeds max_position_embeddings "
                             f"{self.llm.max_position_embeddings}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OFTConfig:
        d = dict(d)
        d["vision"] = tuple(ViTSpec(**{**v, "mean": tuple(v["mean"]), "std": tuple(v["std"])}) for v in d["vision"])
        d["llm"] = LlamaSpec(**d["llm"])
        d["value_hidden"] = tuple(d["value_hidden"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"OFT config has unknown fields {unknown}")
        return cls(**d)


PRESETS = {
    "openvla_7b": OFTConfig(),
    "oft_tiny": OFTConfig(vision=(DINOV2_TINY, SIGLIP_TINY), llm=LLAMA_TINY, action_dim=2, num_action_chunks=4,
                          max_prompt_length=24, value_hidden=(32, 16)),
}


def preset(name: str) -> OFTConfig:
    if name not in PRESETS:
        raise ValueError(f"actor.model.oft.config_name must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def replace_spec(spec, overrides: dict | None):
    """A frozen spec with some fields replaced; unknown fields are an error naming them."""
    if not overrides:
        return spec
    known = {f.name for f in dataclasses.fields(spec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {type(spec).__name__} fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(spec, **overrides)


__all__ = ["OFTConfig", "ViTSpec", "LlamaSpec", "PRESETS", "preset", "replace_spec"]
