"""LoRA (peft), full fine-tuning and gradient checkpointing for OpenVLA-OFT.

`actor.model.oft.lora_targets` picks the towers that get adapters; the default is the
reference system's (every linear layer of the vision towers, projectors, Llama and its
lm_head, alpha = r, Gaussian A and zero B). Base weights of the chosen towers freeze; the
critic always trains. Regexes over full module names (a bare `q_proj` would also match
the vision towers).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from pirl.models.pi0.lora import apply_lora

TOWER = r"vision_backbone\.(?:featurizer|fused_featurizer)\."
OFT_TOWER_PATTERNS = {
    "decoder": r"language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
    "lm_head": r"language_model\.lm_head",
    "vision": TOWER + r"blocks\.\d+\.(attention\.[qkvo]_proj|self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
    "projector": r"projector\.fc[123]|proprio_projector\.fc[12]",
}
OFT_TOWER_PREFIX: dict[str, str | tuple[str, ...]] = {
    "decoder": "language_model.model.",
    "lm_head": "language_model.lm_head.",
    "vision": "vision_backbone.",
    "projector": ("projector.", "proprio_projector."),
}
DEFAULT_TARGETS = ("decoder", "lm_head", "vision", "projector")


def apply_oft_lora(model: nn.Module, rank: int, targets=DEFAULT_TARGETS) -> nn.Module:
    return apply_lora(model, rank, tuple(targets), alpha=rank, patterns=OFT_TOWER_PATTERNS,
                      prefixes=OFT_TOWER_PREFIX, init="gaussian")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute every transformers layer (Llama and both vision towers) in backward,
    non-reentrant (ZeRO-3 and frozen inputs need it), as PreTrainedModel's
    gradient_checkpointing_enable does for one HF model."""
    fn = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            setattr(m, "_gradient_checkpointing_func", fn)  # noqa: B010 (a method slot, not a tensor)
            m.gradient_checkpointing = True
