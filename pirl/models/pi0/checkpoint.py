"""Strict π0 / π0.5 checkpoint loading (openpi PyTorch, lerobot, pirl) and saving.

Every format is reduced to pirl's parameter names by an explicit key map; then the whole
checkpoint is validated (missing, unexpected, mis-shaped, wrong-dtype tensors, all listed
in one error) before a single tensor is copied, so a failed load leaves the model as it was.

Formats (a directory):
    pirl    model.safetensors + pirl_config.json (Pi0Config, tokenizer) + norm_stats.json
            [+ tokenizer.model, the SentencePiece file the model was trained with]
    openpi  model.safetensors + config.json + assets/<asset_id>/norm_stats.json
            (openpi's `paligemma_with_expert.*` names of transformers 4.53, SigLIP under
            `vision_tower.vision_model.`; the tied PaliGemma embedding may be stored only as
            `paligemma.lm_head.weight`; the transformers<4.52 layout is accepted too)
    lerobot model.safetensors + config.json with "type": "pi0" | "pi05"; names prefixed `model.`
The format is read from the files present, never guessed from the path string.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pirl.models.pi0.configuration import GEMMA_2B, GEMMA_300M, Pi0Config
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import NormStats, load_norm_stats, save_norm_stats
from pirl.models.pi0.tokenizer import ByteTokenizer, SentencePieceTokenizer, TextEncoder

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PIRL_CONFIG = "pirl_config.json"
NORM_STATS = "norm_stats.json"
TOKENIZER = "tokenizer.model"
BYTE_TOKENIZER = "byte"

PIRL, OPENPI, LEROBOT = "pirl", "openpi", "lerobot"
FORMATS = (PIRL, OPENPI, LEROBOT)

PG = "paligemma_with_expert.paligemma."
EMBED = PG + "model.language_model.embed_tokens.weight"
LM_HEAD = PG + "lm_head.weight"
# pirl-only parameters: an openpi / lerobot checkpoint never has them; they keep their init.
PIRL_ONLY = re.compile(r"^(value_head|noise_head)\.")
# Present in some exports, unused by the policy: dropped by name, never silently by pattern.
IGNORED = {"paligemma_with_expert.gemma_expert.lm_head.weight",
           "paligemma_with_expert.gemma_expert.model.embed_tokens.weight"}
# openpi / lerobot (transformers 4.5x) name -> pirl (transformers 5) name. transformers 5
# builds the SigLIP tower without the `vision_model.` level; first-match wins, in order.
OPENPI_TO_PIRL = (
    (PG + "model.vision_tower.vision_model.", PG + "model.vision_tower."),
    # transformers < 4.52 PaliGemma layout (openpi checkpoints converted before it)
    (PG + "language_model.model.", PG + "model.language_model."),
    (PG + "language_model.lm_head.", PG + "lm_head."),
    (PG + "vision_tower.vision_model.", PG + "model.vision_tower."),
    (PG + "multi_modal_projector.", PG + "model.multi_modal_projector."),
)
PIRL_TO_OPENPI = ((PG + "model.vision_tower.", PG + "model.vision_tower.vision_model."),)


def _rename(key: str, rules) -> str:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class CheckpointError(ValueError):
    pass


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    if not (path / WEIGHTS).is_file() and not (path / WEIGHTS_INDEX).is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS} (or {WEIGHTS_INDEX})")
    if (path / PIRL_CONFIG).is_file():
        return PIRL
    cfg = path / "config.json"
    if cfg.is_file():
        meta = _read_json(cfg)
        if meta.get("type") in ("pi0", "pi05"):
            return LEROBOT
        return OPENPI
    raise CheckpointError(f"checkpoint {path}: cannot tell its format: expected {PIRL_CONFIG} (pirl) or "
                          "config.json (openpi, or lerobot with type pi0/pi05)")


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors (or its shards); a truncated or corrupt file is an
    error naming the file."""
    path = Path(path)
    files = [path / WEIGHTS]
    if not files[0].is_file():
        index = _read_json(path / WEIGHTS_INDEX)
        files = [path / f for f in sorted(set(index.get("weight_map", {}).values()))]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {f} is truncated or corrupt: {e}") from e
    return out


def map_keys(tensors: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """Format's names -> pirl's names (explicit renames only)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"checkpoint format must be one of {FORMATS}, got {fmt!r}")
    out = {}
    for k, v in tensors.items():
        if fmt == LEROBOT:
            if not k.startswith("model."):
                raise CheckpointError(f"lerobot checkpoint key {k!r} lacks the 'model.' prefix")
            k = k[len("model."):]
        if fmt in (OPENPI, LEROBOT):
            k = _rename(k, OPENPI_TO_PIRL)
        if k in out:
            raise CheckpointError(f"checkpoint has two tensors for {k!r} (after renaming)")
        out[k] = v
    # Tied embedding: PaliGemma's lm_head is the token embedding. Use it when the embedding
    # itself was not saved; the model keeps one tensor for both.
    if LM_HEAD in out:
        head = out.pop(LM_HEAD)
        if EMBED not in out:
            out[EMBED] = head
        elif out[EMBED].shape != head.shape or not torch.equal(out[EMBED], head):
            raise CheckpointError(f"{LM_HEAD} and {EMBED} differ, but the model ties them")
    return out


def model_tensors(model: Pi0Model) -> dict[str, torch.Tensor]:
    """The model's own tensors by pirl name, each shared tensor once (lm_head is tied)."""
    return {k: v for k, v in model.state_dict().items() if k != LM_HEAD}


def validate(model: Pi0Model, tensors: dict[str, torch.Tensor], fmt: str) -> None:
    expected = model_tensors(model)
    missing = sorted(k for k in expected if k not in tensors and not (fmt != PIRL and PIRL_ONLY.match(k)))
    unexpected = sorted(k for k in tensors if k not in expected and k not in IGNORED)
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    for k, v in tensors.items() if k in expected and v.shape != expected[k].shape)
    # Floating tensors may change precision (openpi stores bf16 and fp32 side by side);
    # a non-float tensor where the model has a float one (or the reverse) is corruption.
    dtypes = sorted(f"{k}: checkpoint {v.dtype} vs model {expected[k].dtype}"
                    for k, v in tensors.items() if k in expected
                    and v.dtype.is_floating_point != expected[k].dtype.is_floating_point)
    problems = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes),
                        ("wrong dtype", dtypes)):
        if items:
            problems.append(f"{len(items)} {name}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    if problems:
        raise CheckpointError(f"{fmt} checkpoint does not match the model: " + "; ".join(problems))


def load_weights(model: Pi0Model, path: str | Path, fmt: str | None = None) -> str:
    """Strictly load a checkpoint directory into `model`; returns the format used."""
    fmt = fmt or detect_format(path)
    tensors = map_keys(read_tensors(path), fmt)
    validate(model, tensors, fmt)
    expected = model_tensors(model)
    with torch.no_grad():
        for k, v in tensors.items():
            if k in expected:
                expected[k].copy_(v.to(expected[k].dtype))
    return fmt


def find_norm_stats(path: str | Path, fmt: str, asset_id: str | None = None) -> dict[str, NormStats] | None:
    """pirl: norm_stats.json; openpi: assets/<asset_id>/norm_stats.json (the only one when
    asset_id is None; several without an asset_id is an error); lerobot: none (its stats
    live in its processor files)."""
    path = Path(path)
    if fmt == PIRL:
        p = path / NORM_STATS
        return load_norm_stats(p) if p.is_file() else None
    if fmt == OPENPI:
        found = sorted((path / "assets").glob(f"{asset_id or '*'}/{NORM_STATS}"))
        if len(found) > 1:
            raise CheckpointError(f"{path}/assets has several norm stats {[str(f.parent.name) for f in found]}: "
                                  "set actor.model.openpi.asset_id")
        return load_norm_stats(found[0]) if found else None
    return None


def read_config(path: str | Path, fmt: str | None = None) -> Pi0Config | None:
    """The Pi0Config a checkpoint declares (pirl), or None (openpi / lerobot: the run's
    config is the authority and the strict shape check catches a mismatch)."""
    fmt = fmt or detect_format(path)
    if fmt == PIRL:
        return Pi0Config.from_dict(_read_json(Path(path) / PIRL_CONFIG)["pi0_config"])
    return None


def save_pirl(model: Pi0Model, path: str | Path, norm_stats: dict[str, NormStats] | None = None,
              tensors: dict[str, torch.Tensor] | None = None, tokenizer: TextEncoder | None = None) -> None:
    """safetensors + pirl_config.json + norm_stats.json. `tensors` overrides the model's
    state (e.g. LoRA-merged weights). The prompt tokenizer is recorded so the checkpoint
    reloads without a tokenizer_path: a SentencePiece file is copied in as tokenizer.model,
    the byte tokenizer is named."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = tensors if tensors is not None else model_tensors(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS))
    meta = {"format": PIRL, "pi0_config": model.cfg.to_dict()}
    if isinstance(tokenizer, SentencePieceTokenizer):
        shutil.copyfile(tokenizer.path, path / TOKENIZER)
        meta["tokenizer"] = TOKENIZER
    elif isinstance(tokenizer, ByteTokenizer):
        meta["tokenizer"] = BYTE_TOKENIZER
    (path / PIRL_CONFIG).write_text(json.dumps(meta, indent=1))
    if norm_stats is not None:
        save_norm_stats(path / NORM_STATS, norm_stats)


def read_tokenizer(path: str | Path, fmt: str) -> TextEncoder | None:
    """The tokenizer a pirl checkpoint recorded, or None (openpi / lerobot checkpoints and
    pirl ones saved without it: the run must give tokenizer_path)."""
    if fmt != PIRL:
        return None
    name = _read_json(Path(path) / PIRL_CONFIG).get("tokenizer")
    if name == BYTE_TOKENIZER:
        return ByteTokenizer()
    if name is not None:
        return SentencePieceTokenizer(Path(path) / name)
    return None


def export_openpi(model: Pi0Model, path: str | Path, norm_stats: dict[str, NormStats] | None = None,
                  asset_id: str = "pirl", tensors: dict[str, torch.Tensor] | None = None) -> None:
    """openpi's PyTorch layout: model.safetensors (tied embedding stored as lm_head, no
    pirl heads), config.json, assets/<asset_id>/norm_stats.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = dict(tensors if tensors is not None else model_tensors(model))
    state = {k: v for k, v in state.items() if not PIRL_ONLY.match(k)}
    state[LM_HEAD] = state.pop(EMBED)
    state = {_rename(k, PIRL_TO_OPENPI): v for k, v in state.items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS))
    cfg = model.cfg
    meta = {
        "action_dim": cfg.action_dim, "action_horizon": cfg.action_horizon, "max_token_len": cfg.max_token_len,
        "pi05": cfg.pi05, "discrete_state_input": cfg.discrete_state_input,
        "paligemma_variant": "gemma_2b" if cfg.paligemma == GEMMA_2B else "custom",
        "action_expert_variant": "gemma_300m" if cfg.expert == GEMMA_300M else "custom",
        "precision": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    (path / "config.json").write_text(json.dumps(meta, indent=1))
    if norm_stats is not None:
        save_norm_stats(path / "assets" / asset_id / NORM_STATS, norm_stats)
