"""Freezing and LoRA for π0 (`train_expert_only`, `is_lora`, `lora_rank`); the LoRA helpers
take any model's tower tables (OpenVLA-OFT passes its own).

LoRA goes through peft with a regex over full module names, because a bare
`target_modules=["q_proj", ...]` also matches SigLIP's attention. `lora_targets` picks the
towers that get adapters: "vlm" (Gemma 2B layers), "expert" (action expert layers),
"vision" (SigLIP layers). Base weights of those towers are frozen; adapters train.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

PG = r"paligemma_with_expert\.paligemma\.model\."
TOWER_PATTERNS = {
    "vlm": PG + r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
    "expert": r"paligemma_with_expert\.gemma_expert\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
    "vision": PG + r"vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
}
TOWER_PREFIX = {
    "vlm": "paligemma_with_expert.paligemma.model.language_model.",
    "expert": "paligemma_with_expert.gemma_expert.",
    "vision": "paligemma_with_expert.paligemma.model.vision_tower.",
}


def lora_pattern(targets, patterns: Mapping[str, str] = TOWER_PATTERNS) -> str:
    unknown = sorted(set(targets) - set(patterns))
    if unknown or not targets:
        raise ValueError(f"lora_targets must be a non-empty subset of {sorted(patterns)}, got {list(targets)}")
    return "|".join(f"(?:{patterns[t]})" for t in targets)


def freeze_vlm(model: nn.Module) -> None:
    """train_expert_only: SigLIP, projector and Gemma 2B stop training."""
    vlm: nn.Module = model.paligemma_with_expert.paligemma  # type: ignore[union-attr,assignment]
    for p in vlm.parameters():
        p.requires_grad_(False)


def apply_lora(model: nn.Module, rank: int, targets=("vlm",), alpha: int | None = None,
               patterns: Mapping[str, str] = TOWER_PATTERNS,
               prefixes: Mapping[str, str | tuple[str, ...]] = TOWER_PREFIX,
               init: bool | Literal["gaussian"] = True) -> nn.Module:
    """Inject LoRA adapters (in place) into the chosen towers' linear layers and freeze those
    towers' base weights. `patterns` / `prefixes` name a model's towers (π0's by default:
    OpenVLA-OFT passes its own); `init` is peft's init_lora_weights (B = 0 either way, so
    the adapted model starts equal to the base). Returns the model."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {rank}")
    pattern = lora_pattern(targets, patterns)
    if not any(re.fullmatch(pattern, n) for n, _ in model.named_modules()):
        raise ValueError(f"LoRA pattern for {list(targets)} matched no module")
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=pattern,
                     lora_dropout=0.0, bias="none", init_lora_weights=init)
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        if any(name.startswith(prefixes[t]) for t in targets):
            p.requires_grad_("lora_" in name)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State with every LoRA layer folded into its base weight (W + s·B·A) and the peft
    names removed, i.e. the plain model's keys (for save/export)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    lora = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = t.detach().clone()
    for name, m in lora.items():
        for adapter in m.active_adapters:
            a: torch.Tensor = m.lora_A[adapter].weight  # type: ignore[assignment]  # an nn.Linear's
            b: torch.Tensor = m.lora_B[adapter].weight  # type: ignore[assignment]
            out[name + ".weight"] = out[name + ".weight"] + m.scaling[adapter] * (b.float() @ a.float()).to(a.dtype)
    return out
