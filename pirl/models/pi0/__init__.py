"""π0 / π0.5 as RL policies: `build_pi0_policy(actor.model)` -> FlowPolicy."""
from __future__ import annotations

from pathlib import Path

import torch

from pirl.flow import FlowSpec
from pirl.models.pi0.checkpoint import (FORMATS, LEROBOT, check_run_config, detect_format, find_norm_stats, load_weights,
                                       read_tokenizer)
from pirl.models.pi0.checkpoint_lerobot import read_processing
from pirl.models.pi0.configuration import DELTA_ACTION_MASKS, Pi0Config, _get, config_from_model_cfg, preset
from pirl.models.pi0.lora import apply_lora, freeze_vlm
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import QUANTILE, ZSCORE, load_norm_stats
from pirl.models.pi0.policy import Pi0Policy
from pirl.models.pi0.processor import CAMERA_OBS_KEYS, Pi0Processor, ProcessorConfig
from pirl.models.pi0.tokenizer import ByteTokenizer, PromptTokenizer, SentencePieceTokenizer, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flow_spec_from_cfg(model_cfg) -> FlowSpec:
    op = model_cfg.openpi
    return FlowSpec(
        num_steps=int(_get(op, "num_steps", _get(model_cfg, "num_steps", 4))),
        noise_method=str(_get(op, "noise_method", "flow_sde")),
        noise_level=float(_get(op, "noise_level", 0.5)),
        joint_logprob=bool(_get(op, "joint_logprob", False)),
        action_chunk=int(_get(op, "action_chunk", _get(model_cfg, "num_action_chunks", 1))),
        action_env_dim=int(_get(op, "action_env_dim", _get(model_cfg, "action_dim", 1))),
    )


def build_pi0_policy(model_cfg, state_dim: int | None = None) -> Pi0Policy:
    """`actor.model` (model_type "openpi") -> Pi0Policy; `state_dim` is the env's (the
    rollout buffer stores raw states of that size).

    Keys beyond the schema, read with defaults: openpi.tokenizer_path (SentencePiece file,
    or a tokenizer directory; when null, the tokenizer the checkpoint records, or a byte
    tokenizer when there is no model_path), openpi.norm_stats_path,
    openpi.asset_id, openpi.normalization (zscore | quantile | minmax | identity; default
    what the checkpoint's stats declare, else by pi05), openpi.delta_action_mask (list of
    bools over env action dims; default a lerobot checkpoint's relative actions),
    openpi.train_augment, openpi.lora_targets (default ["vlm"]), openpi.checkpoint_format
    (pirl | openpi | openpi_jax | lerobot; default from the files). A run config that
    contradicts the checkpoint's declared sizes, normalization or relative actions is refused."""
    op = model_cfg.openpi
    cfg = config_from_model_cfg(model_cfg)
    spec = flow_spec_from_cfg(model_cfg)
    path = _get(model_cfg, "model_path", None)
    fmt = None
    # Everything the checkpoint declares is read and checked before the model is built.
    if path:
        fmt = _get(op, "checkpoint_format", None) or detect_format(path)
        if fmt not in FORMATS:
            raise ValueError(f"actor.model.openpi.checkpoint_format must be one of {FORMATS}, got {fmt!r}")
        check_run_config(cfg, path, fmt, spec.action_env_dim)
    dtype_name = str(_get(model_cfg, "precision", "fp32"))
    if dtype_name not in DTYPES:
        raise ValueError(f"actor.model.precision must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    normalization = _get(op, "normalization", None)
    norm_stats = _norm_stats(op, path, fmt, normalization)
    delta = _delta_action_mask(op, path, fmt, spec.action_env_dim)
    tokenizer = PromptTokenizer(_encoder(op, path, fmt), cfg.max_token_len, cfg.discrete_state_input,
                                cfg.paligemma.vocab_size)
    model = Pi0Model(cfg).to(DTYPES[dtype_name])
    if path:
        load_weights(model, path, fmt)
    pcfg = ProcessorConfig(
        normalization=str(normalization or (QUANTILE if cfg.pi05 else ZSCORE)),
        delta_action_mask=delta,
        action_env_dim=spec.action_env_dim,
        train_augment=bool(_get(op, "train_augment", False)),
        num_images=_get(op, "num_images_in_input", len(CAMERA_OBS_KEYS)),
    )
    processor = Pi0Processor(cfg, tokenizer, norm_stats, pcfg)

    if bool(_get(op, "train_expert_only", False)):
        freeze_vlm(model)
    if bool(_get(model_cfg, "is_lora", False)):
        apply_lora(model, int(_get(model_cfg, "lora_rank", 8)), tuple(_get(op, "lora_targets", ["vlm"])))
    if bool(_get(model_cfg, "gradient_checkpointing", False)):
        model.paligemma_with_expert.gradient_checkpointing = True
    return Pi0Policy(model, processor, spec, state_dim)


def _norm_stats(op, path, fmt, normalization):
    """The checkpoint's stats, or openpi.norm_stats_path's; a mode the run sets must be the
    one they were saved for."""
    stats_path = _get(op, "norm_stats_path", None)
    norm_stats = load_norm_stats(stats_path) if stats_path else (
        find_norm_stats(path, fmt, _get(op, "asset_id", None)) if path else None)
    if normalization and norm_stats is not None:
        for key, st in norm_stats.items():
            if st.mode is not None and st.mode != normalization:
                raise ValueError(f"actor.model.openpi.normalization {normalization!r} contradicts the norm stats "
                                 f"of {key!r} ({stats_path or path}), saved for {st.mode!r}")
    return norm_stats


def _delta_action_mask(op, path, fmt, env_dim: int):
    # The openpi training config's own transform (pi0_libero's delta arm actions) unless set.
    delta = _get(op, "delta_action_mask", DELTA_ACTION_MASKS.get(str(_get(op, "config_name", ""))))
    delta = tuple(bool(x) for x in delta) if delta is not None else None
    if fmt != LEROBOT:
        return delta
    saved = read_processing(path, env_dim).delta_action_mask
    if delta is not None and saved is not None and delta != saved:
        raise ValueError(f"actor.model.openpi.delta_action_mask {list(delta)} contradicts the relative actions "
                         f"of {path} {list(saved)}")
    return delta if delta is not None else saved


def _encoder(op, path, fmt):
    tok_path = _get(op, "tokenizer_path", None)
    if tok_path:
        return load_tokenizer(tok_path) if Path(tok_path).is_dir() else SentencePieceTokenizer(tok_path)
    if not path:
        return ByteTokenizer()
    encoder = read_tokenizer(path, fmt)
    if encoder is None:
        raise ValueError(f"actor.model.openpi.tokenizer_path is required: the {fmt} checkpoint {path} records no "
                         "tokenizer (give PaliGemma's paligemma_tokenizer.model)")
    return encoder


__all__ = ["Pi0Config", "Pi0Model", "Pi0Policy", "Pi0Processor", "build_pi0_policy", "flow_spec_from_cfg", "preset"]
