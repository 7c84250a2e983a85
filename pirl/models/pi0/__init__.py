"""π0 / π0.5 as RL policies: `build_pi0_policy(actor.model)` -> FlowPolicy."""
from __future__ import annotations

import torch

from pirl.flow import FlowSpec
from pirl.models.pi0.checkpoint import detect_format, find_norm_stats, load_weights, read_config, read_tokenizer
from pirl.models.pi0.configuration import Pi0Config, _get, config_from_model_cfg, preset
from pirl.models.pi0.lora import apply_lora, freeze_vlm
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import QUANTILE, ZSCORE, load_norm_stats
from pirl.models.pi0.policy import Pi0Policy
from pirl.models.pi0.processor import Pi0Processor, ProcessorConfig
from pirl.models.pi0.tokenizer import ByteTokenizer, PromptTokenizer, SentencePieceTokenizer, TextEncoder

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

    Keys beyond the schema, read with defaults: openpi.tokenizer_path (SentencePiece file;
    when null, the tokenizer a pirl checkpoint recorded, or a byte tokenizer when there is
    no model_path), openpi.norm_stats_path,
    openpi.asset_id, openpi.normalization (zscore | quantile; default by pi05),
    openpi.delta_action_mask (list of bools over env action dims), openpi.train_augment,
    openpi.lora_targets (default ["vlm"]), openpi.checkpoint_format (pirl | openpi |
    lerobot; default from the files)."""
    op = model_cfg.openpi
    cfg = config_from_model_cfg(model_cfg)
    path = _get(model_cfg, "model_path", None)
    fmt = ""  # checkpoint format, set when there is a model_path
    if path:
        fmt = _get(op, "checkpoint_format", None) or detect_format(path)
        saved = read_config(path, fmt)
        if saved is not None and saved.pi05 != cfg.pi05:
            raise ValueError(f"{path} holds a {'π0.5' if saved.pi05 else 'π0'} model but actor.model.openpi.pi05 "
                             f"is {cfg.pi05}")
    dtype_name = str(_get(model_cfg, "precision", "fp32"))
    if dtype_name not in DTYPES:
        raise ValueError(f"actor.model.precision must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    model = Pi0Model(cfg).to(DTYPES[dtype_name])
    norm_stats = None
    if path:
        load_weights(model, path, fmt)
        norm_stats = find_norm_stats(path, fmt, _get(op, "asset_id", None))
    stats_path = _get(op, "norm_stats_path", None)
    if stats_path:
        norm_stats = load_norm_stats(stats_path)

    tok_path = _get(op, "tokenizer_path", None)
    encoder: TextEncoder | None
    if tok_path:
        encoder = SentencePieceTokenizer(tok_path)
    elif path:
        encoder = read_tokenizer(path, fmt)
        if encoder is None:
            raise ValueError(f"actor.model.openpi.tokenizer_path is required: the {fmt} checkpoint {path} records no "
                             "tokenizer (give PaliGemma's paligemma_tokenizer.model)")
    else:
        encoder = ByteTokenizer()
    tokenizer = PromptTokenizer(encoder, cfg.max_token_len, cfg.discrete_state_input, cfg.paligemma.vocab_size)
    spec = flow_spec_from_cfg(model_cfg)
    delta = _get(op, "delta_action_mask", None)
    pcfg = ProcessorConfig(
        normalization=str(_get(op, "normalization", QUANTILE if cfg.pi05 else ZSCORE)),
        delta_action_mask=tuple(bool(x) for x in delta) if delta is not None else None,
        action_env_dim=spec.action_env_dim,
        train_augment=bool(_get(op, "train_augment", False)),
    )
    processor = Pi0Processor(cfg, tokenizer, norm_stats, pcfg)

    if bool(_get(op, "train_expert_only", False)):
        freeze_vlm(model)
    if bool(_get(model_cfg, "is_lora", False)):
        apply_lora(model, int(_get(model_cfg, "lora_rank", 8)), tuple(_get(op, "lora_targets", ["vlm"])))
    if bool(_get(model_cfg, "gradient_checkpointing", False)):
        model.paligemma_with_expert.gradient_checkpointing = True
    return Pi0Policy(model, processor, spec, state_dim)


__all__ = ["Pi0Config", "Pi0Model", "Pi0Policy", "Pi0Processor", "build_pi0_policy", "flow_spec_from_cfg", "preset"]
