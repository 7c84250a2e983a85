"""Strict π0 / π0.5 checkpoint loading (pirl, openpi PyTorch, openpi JAX, lerobot) and saving.

Every format is reduced to pirl's parameter names by an explicit key map; then the whole
checkpoint is validated (missing, unexpected, mis-shaped, wrong-dtype tensors, all listed
in one error) before a single tensor is copied, so a failed load leaves the model as it was.

Formats (a directory; docs/checkpoints.md has the table of what loads and exports):
    pirl       model.safetensors + pirl_config.json (Pi0Config, tokenizer) + norm_stats.json
               [+ tokenizer.model or tokenizer.json, the tokenizer the model was trained with]
    openpi     model.safetensors + config.json + assets/<asset_id>/norm_stats.json
               (openpi's `paligemma_with_expert.*` names of transformers 4.53, SigLIP under
               `vision_tower.vision_model.`; the tied PaliGemma embedding may be stored only as
               `paligemma.lm_head.weight`; the transformers<4.52 layout is accepted too)
    openpi_jax params/ (orbax, OCDBT) + assets/<asset_id>/norm_stats.json (checkpoint_jax.py)
    lerobot    config.json with "type": "pi0" | "pi05", model.safetensors with names prefixed
               `model.`, policy_{pre,post}processor files (checkpoint_lerobot.py)
The format is read from the files present, never guessed from the path string.

PaliGemma's lm_head is its token embedding (tied); π0 never generates text, so only the
embedding matters. lerobot unties them and fine-tunes only `embed_tokens`: where a
checkpoint holds both and they differ, the embedding is taken and a warning says so.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pirl.models.io import read_json, tensor_mismatches
from pirl.models.pi0 import checkpoint_lerobot as lerobot
from pirl.models.pi0.checkpoint_jax import OrbaxError, flatten_params, jax_to_pirl, params_dir, read_orbax
from pirl.models.pi0.configuration import GEMMA_2B, GEMMA_300M, Pi0Config
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import OPENPI as OPENPI_CONVENTION
from pirl.models.pi0.normalize import EPS, NormStats, load_norm_stats, save_norm_stats, to_convention
from pirl.models.pi0.tokenizer import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer, TextEncoder,
                                       load_tokenizer)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PIRL_CONFIG = "pirl_config.json"
NORM_STATS = "norm_stats.json"
TOKENIZER = "tokenizer.model"
HF_TOKENIZER = "tokenizer.json"
BYTE_TOKENIZER = "byte"

PIRL, OPENPI, LEROBOT, OPENPI_JAX = "pirl", "openpi", "lerobot", "openpi_jax"
FORMATS = (PIRL, OPENPI, LEROBOT, OPENPI_JAX)

PG = "paligemma_with_expert.paligemma."
EMBED = PG + "model.language_model.embed_tokens.weight"
LM_HEAD = PG + "lm_head.weight"
# pirl-only parameters: an openpi / lerobot checkpoint never has them; they keep their init.
PIRL_ONLY = re.compile(r"^(value_head|noise_head)\.")
# The action expert's LM head: openpi's and lerobot's models build it (GemmaForCausalLM) and
# their strict loaders expect it, though only embeddings ever enter the expert. pirl's expert
# has none: ignored on load, written as zeros on export.
EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
# Present in some exports, unused by the policy: dropped by name, never silently by pattern.
IGNORED = {EXPERT_LM_HEAD, "paligemma_with_expert.gemma_expert.model.embed_tokens.weight"}
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
VISION_LEVEL = ((PG + "model.vision_tower.vision_model.", PG + "model.vision_tower."),)


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
        if params_dir(path) is not None:
            return OPENPI_JAX
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS} (or {WEIGHTS_INDEX}), nor an orbax "
                              "params/ folder (openpi JAX)")
    if (path / PIRL_CONFIG).is_file():
        return PIRL
    cfg = path / "config.json"
    if cfg.is_file():
        meta = _read_json(cfg)
        if meta.get("type") in lerobot.TYPES:
            return LEROBOT
        return OPENPI
    raise CheckpointError(f"checkpoint {path}: cannot tell its format: expected {PIRL_CONFIG} (pirl) or "
                          "config.json (openpi, or lerobot with type pi0/pi05)")


def _read_json(p: Path) -> dict:
    return read_json(p, CheckpointError)


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
    if fmt not in (PIRL, OPENPI, LEROBOT):
        raise CheckpointError(f"safetensors checkpoint format must be one of pirl, openpi, lerobot, got {fmt!r}")
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
    return _tie_embedding(out)


def _tie_embedding(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tensor for the tied PaliGemma embedding: lm_head stands in only where the
    embedding was not saved; where both differ the embedding is taken (see module doc)."""
    if LM_HEAD in out:
        head = out.pop(LM_HEAD)
        if EMBED not in out:
            out[EMBED] = head
        elif out[EMBED].shape != head.shape or not torch.equal(out[EMBED], head):
            warnings.warn(f"{LM_HEAD} and {EMBED} differ (the VLM was fine-tuned with them untied); "
                          f"taking {EMBED}, the one π0 uses", stacklevel=3)
    return out


def checkpoint_tensors(path: str | Path, fmt: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by pirl name (names the key map could not place kept as found)."""
    if fmt == OPENPI_JAX:
        try:
            return _tie_embedding(jax_to_pirl(flatten_params(read_orbax(params_dir(path) or path))))
        except OrbaxError as e:
            raise CheckpointError(str(e)) from e
    return map_keys(read_tensors(path), fmt)


def canonical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module names -> pirl names, whatever transformers 5.x built: releases before 5.2x keep
    SigLIP's `vision_model.` level inside the vision tower, later ones drop it; pirl's names
    (and its checkpoints) never have it."""
    return {_rename(k, VISION_LEVEL): v for k, v in state.items() if k != LM_HEAD}


def model_tensors(model: Pi0Model) -> dict[str, torch.Tensor]:
    """The model's own tensors by pirl name, each shared tensor once (lm_head is tied)."""
    return canonical(model.state_dict())


def validate(model: Pi0Model, tensors: dict[str, torch.Tensor], fmt: str) -> None:
    expected = model_tensors(model)
    missing = sorted(k for k in expected if k not in tensors and not (fmt != PIRL and PIRL_ONLY.match(k)))
    unexpected = sorted(k for k in tensors if k not in expected and k not in IGNORED)
    problems = tensor_mismatches(expected, tensors, missing, unexpected)
    if problems:
        raise CheckpointError(f"{fmt} checkpoint does not match the model: " + "; ".join(problems))


def load_weights(model: Pi0Model, path: str | Path, fmt: str | None = None) -> str:
    """Strictly load a checkpoint directory into `model`; returns the format used."""
    fmt = fmt or detect_format(path)
    tensors = checkpoint_tensors(path, fmt)
    validate(model, tensors, fmt)
    expected = model_tensors(model)
    with torch.no_grad():
        for k, v in tensors.items():
            if k in expected:
                expected[k].copy_(v.to(expected[k].dtype))
    return fmt


def find_norm_stats(path: str | Path, fmt: str, asset_id: str | None = None) -> dict[str, NormStats] | None:
    """pirl: norm_stats.json; openpi (PyTorch and JAX): assets/<asset_id>/norm_stats.json
    (the only one when asset_id is None; several without an asset_id is an error; for a JAX
    checkpoint given as its params/ folder, the assets/ beside it); lerobot: its normalizer
    (state) and unnormalizer (actions) processor files."""
    path = Path(path)
    if fmt == PIRL:
        p = path / NORM_STATS
        return load_norm_stats(p) if p.is_file() else None
    if fmt == LEROBOT:
        try:
            return lerobot.read_processing(path, None).norm_stats
        except lerobot.LerobotError as e:
            raise CheckpointError(str(e)) from e
    if fmt in (OPENPI, OPENPI_JAX):
        if fmt == OPENPI_JAX and not (path / "assets").is_dir() and params_dir(path) == path:
            path = path.parent
        found = sorted((path / "assets").glob(f"{asset_id or '*'}/{NORM_STATS}"))
        if len(found) > 1:
            raise CheckpointError(f"{path}/assets has several norm stats {[str(f.parent.name) for f in found]}: "
                                  "set actor.model.openpi.asset_id")
        return load_norm_stats(found[0]) if found else None
    return None


def read_config(path: str | Path, fmt: str | None = None) -> Pi0Config | None:
    """The Pi0Config a pirl checkpoint declares, or None (the other formats declare parts
    of one: `check_run_config` compares those)."""
    fmt = fmt or detect_format(path)
    if fmt == PIRL:
        return Pi0Config.from_dict(_read_json(Path(path) / PIRL_CONFIG)["pi0_config"])
    return None


# Sizes no tensor shape reveals (a wrong horizon or prompt length would load silently):
# Pi0Config field -> the run config key that sets it.
RUN_KEYS = {"pi05": "actor.model.openpi.pi05", "action_horizon": "actor.model.openpi.action_horizon",
            "action_dim": "actor.model.openpi.action_dim", "max_token_len": "actor.model.openpi.max_token_len",
            "discrete_state_input": "actor.model.openpi.discrete_state_input"}


def check_run_config(cfg: Pi0Config, path: str | Path, fmt: str, action_env_dim: int | None = None) -> None:
    """Refuse a run config that contradicts what the checkpoint declares, naming both values:
    pirl_config.json, openpi's config.json (action_dim, action_horizon, max_token_len, pi05),
    lerobot's config.json (checkpoint_lerobot.check_config). openpi JAX checkpoints declare
    nothing (openpi keeps the config in code); the strict shape check still applies."""
    path = Path(path)
    if fmt == LEROBOT:
        try:
            lerobot.check_config(_read_json(path / "config.json"), cfg, action_env_dim, path / "config.json")
        except lerobot.LerobotError as e:
            raise CheckpointError(str(e)) from e
        return
    if fmt == PIRL:
        declared, where = Pi0Config.from_dict(_read_json(path / PIRL_CONFIG)["pi0_config"]).to_dict(), path / PIRL_CONFIG
    elif fmt == OPENPI and (path / "config.json").is_file():
        declared, where = _read_json(path / "config.json"), path / "config.json"
    else:
        return
    bad = [f"{k} {declared[k]!r} vs {key} {getattr(cfg, k)!r}" for k, key in RUN_KEYS.items()
           if k in declared and declared[k] != getattr(cfg, k)]
    if bad:
        raise CheckpointError(f"{where} contradicts the run config: " + "; ".join(bad))


def save_pirl(model: Pi0Model, path: str | Path, norm_stats: dict[str, NormStats] | None = None,
              tensors: dict[str, torch.Tensor] | None = None, tokenizer: TextEncoder | None = None) -> None:
    """safetensors + pirl_config.json + norm_stats.json. `tensors` overrides the model's
    state (e.g. LoRA-merged weights). The prompt tokenizer is recorded so the checkpoint
    reloads without a tokenizer_path: a SentencePiece file is copied in as tokenizer.model,
    the byte tokenizer is named."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = canonical(tensors) if tensors is not None else model_tensors(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS))
    meta = {"format": PIRL, "pi0_config": model.cfg.to_dict()}
    if isinstance(tokenizer, SentencePieceTokenizer):
        shutil.copyfile(tokenizer.path, path / TOKENIZER)
        meta["tokenizer"] = TOKENIZER
    elif isinstance(tokenizer, HFTokenizer):
        shutil.copyfile(tokenizer.path, path / HF_TOKENIZER)
        config = tokenizer.path.parent / "tokenizer_config.json"
        if config.is_file():
            shutil.copyfile(config, path / "tokenizer_config.json")
        meta["tokenizer"] = HF_TOKENIZER
    elif isinstance(tokenizer, ByteTokenizer):
        meta["tokenizer"] = BYTE_TOKENIZER
    (path / PIRL_CONFIG).write_text(json.dumps(meta, indent=1))
    if norm_stats is not None:
        save_norm_stats(path / NORM_STATS, norm_stats)


def read_tokenizer(path: str | Path, fmt: str) -> TextEncoder | None:
    """The tokenizer a checkpoint records: pirl's own copy (or the byte tokenizer's name),
    the one lerobot's policy_preprocessor.json names (a directory, or a hub id in the local
    Hugging Face cache), else None (openpi: the run must give tokenizer_path)."""
    if fmt == LEROBOT:
        try:
            name = lerobot.read_processing(path, None).tokenizer_name
            return load_tokenizer(name) if name else None
        except (lerobot.LerobotError, FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"lerobot checkpoint {path}: {e}") from e
    if fmt != PIRL:
        return None
    name = _read_json(Path(path) / PIRL_CONFIG).get("tokenizer")
    if name == BYTE_TOKENIZER:
        return ByteTokenizer()
    if name == HF_TOKENIZER:
        return HFTokenizer(Path(path) / name)
    if name is not None:
        return SentencePieceTokenizer(Path(path) / name)
    return None


def export_openpi(model: Pi0Model, path: str | Path, norm_stats: dict[str, NormStats] | None = None,
                  asset_id: str = "pirl", tensors: dict[str, torch.Tensor] | None = None) -> None:
    """openpi's PyTorch layout, every key its strict `safetensors.torch.load_model` expects:
    model.safetensors (tied embedding stored once, as lm_head, the way save_model writes it;
    the expert's unused lm_head as zeros; no pirl heads), config.json,
    assets/<asset_id>/norm_stats.json (openpi's formulas)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = _external_state(model, tensors)
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
        openpi_stats = {k: to_convention(v, OPENPI_CONVENTION, EPS) for k, v in norm_stats.items()}
        save_norm_stats(path / "assets" / asset_id / NORM_STATS, openpi_stats)


def _external_state(model: Pi0Model, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The tensors openpi's and lerobot's models have: pirl's heads dropped, the expert's
    LM head added (zeros, in the expert's dtype)."""
    state = canonical(tensors) if tensors is not None else model_tensors(model)
    state = {k: v for k, v in state.items() if not PIRL_ONLY.match(k)}
    e = model.cfg.expert
    ref = state[next(k for k in state if k.startswith("paligemma_with_expert.gemma_expert."))]
    state[EXPERT_LM_HEAD] = torch.zeros(e.vocab_size, e.width, dtype=ref.dtype)
    return state


def export_lerobot(model: Pi0Model, path: str | Path, norm_stats: dict[str, NormStats], *, state_dim: int,
                   action_env_dim: int, tokenizer_name: str | None = None,
                   cameras: tuple[str, ...] | None = None, delta_action_mask: tuple[bool, ...] | None = None,
                   tensors: dict[str, torch.Tensor] | None = None) -> None:
    """lerobot 0.6.1's folder, loadable by its strict `PI0Policy.from_pretrained` /
    `PI05Policy.from_pretrained` and its `PolicyProcessorPipeline.from_pretrained`:
    config.json, model.safetensors (`model.` prefix, lm_head and embed_tokens both written,
    the expert's lm_head as zeros), policy_{pre,post}processor json + stats. `norm_stats`
    must carry their mode (what the run normalized with); stats are rewritten for lerobot's
    formulas (normalize.to_convention). `cameras` are lerobot feature names, one per camera
    slot in order (default observation.images.<slot> for every slot). `tokenizer_name` is
    what lerobot's tokenizer step loads (default PaliGemma's hub id)."""
    for key in ("state", "actions"):
        if key not in norm_stats or norm_stats[key].mode is None:
            raise CheckpointError(f"export_lerobot: norm_stats[{key!r}] needs its mode (zscore, quantile, ...)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = _external_state(model, tensors)
    state[LM_HEAD] = state[EMBED].clone()  # lerobot keeps both, untied
    state = {"model." + _rename(k, PIRL_TO_OPENPI): v for k, v in state.items()}
    cams = list(cameras) if cameras is not None else [lerobot.IMAGE_PREFIX + k for k in model.cfg.image_keys]
    lerobot.write_folder(path, model.cfg, state, norm_stats, state_dim, action_env_dim, cams,
                         tokenizer_name or lerobot.PALIGEMMA_TOKENIZER, delta_action_mask, next(model.parameters()).dtype)
