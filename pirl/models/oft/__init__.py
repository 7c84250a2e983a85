"""OpenVLA-OFT as an RL policy: `build_oft_policy(actor.model, rollout.sampling_params)`.

Keys (the reference system's `model/openvla_oft.yaml`, flat under actor.model):
implement_version (rlinf | official), model_path, precision, value_type, action_dim,
num_action_chunks, use_proprio, proprio_dim, use_film, unnorm_key, center_crop,
max_prompt_length, num_images_in_input, add_value_head, is_lora, lora_rank,
gradient_checkpointing, attn_implementation; vocab_size / hidden_size / image_size are
checked against the model. pirl's own keys live in actor.model.oft (config_name preset,
attention, normalization, lora_targets, gripper, tokenizer_path, size overrides).
"""
from __future__ import annotations

import dataclasses

import torch

from pirl.config.schema import precision_of
from pirl.models.oft.action_tokenizer import NORMALIZATIONS, read_statistics, select_bounds
from pirl.models.oft.checkpoint import (
    CheckpointError, check_config, detect_format, load_weights, read_statistics_of, read_tokenizer,
)
from pirl.models.oft.configuration import OFTConfig, preset, replace_spec
from pirl.models.oft.lora import OFT_TOWER_PATTERNS, apply_oft_lora, enable_gradient_checkpointing
from pirl.models.oft.modeling import ATTN_IMPLEMENTATIONS, OFTModel
from pirl.models.oft.policy import OFTPolicy
from pirl.models.oft.processor import HashedWordEncoder, OFTProcessor, PromptTokenizer, SentencePieceEncoder
from pirl.models.oft.sampling import SamplingParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRIPPERS = ("none", "libero")
NO_NORMALIZATION = "none"  # no dataset statistics: actions and proprio are taken as normalized


def config_from_model_cfg(model_cfg) -> OFTConfig:
    """actor.model -> OFTConfig: the `oft.config_name` preset, its size overrides, then the
    flat keys. The reference's informational sizes must agree with the result."""
    oft = model_cfg.oft
    base = preset(oft.config_name)
    vision_over = list(oft.vision or [])
    if len(vision_over) > len(base.vision):
        raise ValueError(f"actor.model.oft.vision has {len(vision_over)} entries, the preset {len(base.vision)} towers")
    vision = tuple(replace_spec(v, dict(o)) for v, o in
                   zip(base.vision, vision_over + [{}] * (len(base.vision) - len(vision_over))))
    cfg = dataclasses.replace(
        base, vision=vision, llm=replace_spec(base.llm, dict(oft.llm or {})),
        action_dim=model_cfg.action_dim, num_action_chunks=model_cfg.num_action_chunks,
        num_images_in_input=model_cfg.num_images_in_input, variant=model_cfg.implement_version,
        attention=oft.attention, use_film=model_cfg.use_film, use_proprio=model_cfg.use_proprio is True,  # null: none
        proprio_dim=model_cfg.proprio_dim, max_prompt_length=model_cfg.max_prompt_length,
        add_value_head=model_cfg.add_value_head, value_type=model_cfg.value_type,
    )
    cfg.validate()
    declared = {"vocab_size": (model_cfg.vocab_size, cfg.tokenizer_vocab),
                "hidden_size": (model_cfg.hidden_size, cfg.llm.hidden_size),
                "image_size": (None if model_cfg.image_size is None else list(model_cfg.image_size),
                               [cfg.vision[0].image_size] * 2)}
    bad = [f"actor.model.{k} is {a!r} but the model has {b!r}" for k, (a, b) in declared.items()
           if a is not None and a != b]
    if bad:
        raise ValueError("; ".join(bad) + f" (preset actor.model.oft.config_name {oft.config_name!r})")
    return cfg


def sampling_from_cfg(sp) -> SamplingParams:
    if sp.repetition_penalty != 1.0:
        raise ValueError("rollout.sampling_params.repetition_penalty: parallel decoding repeats no tokens; "
                         f"only 1.0 is taken, got {sp.repetition_penalty}")
    params = SamplingParams(do_sample=sp.do_sample, temperature_train=sp.temperature_train,
                            temperature_eval=sp.temperature_eval, top_k=sp.top_k, top_p=sp.top_p)
    params.validate()
    return params


def check_oft(model_cfg, sampling_cfg) -> tuple[OFTConfig, SamplingParams]:
    """Every OFT key that can be checked without files or weights (config validation calls
    this before anything starts; the builder again)."""
    oft = model_cfg.oft
    choices = {"actor.model.precision": (precision_of(model_cfg), tuple(DTYPES)),
               "actor.model.oft.normalization": (oft.normalization, NORMALIZATIONS + (NO_NORMALIZATION,)),
               "actor.model.oft.gripper": (oft.gripper, GRIPPERS),
               "actor.model.attn_implementation": (model_cfg.attn_implementation, ATTN_IMPLEMENTATIONS)}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    unknown = sorted(set(oft.lora_targets) - set(OFT_TOWER_PATTERNS))
    if unknown or not oft.lora_targets:
        raise ValueError(f"actor.model.oft.lora_targets must be a non-empty subset of {sorted(OFT_TOWER_PATTERNS)}, "
                         f"got {list(oft.lora_targets)}")
    if model_cfg.lora_path is not None and not model_cfg.model_path:
        raise ValueError("actor.model.lora_path: an adapter needs its base model in actor.model.model_path")
    return config_from_model_cfg(model_cfg), sampling_from_cfg(sampling_cfg)


def build_oft_policy(model_cfg, sampling_cfg) -> OFTPolicy:
    """`actor.model` (model_type "openvla_oft") + `rollout.sampling_params` -> OFTPolicy."""
    cfg, sampling = check_oft(model_cfg, sampling_cfg)
    oft = model_cfg.oft
    path = model_cfg.model_path
    fmt = detect_format(path) if path else ""
    if path:
        check_config(path, fmt, cfg)  # before building a 7B model for nothing
    model = OFTModel(cfg, model_cfg.attn_implementation).to(DTYPES[precision_of(model_cfg)])
    statistics: dict = {}
    encoder: SentencePieceEncoder | HashedWordEncoder = HashedWordEncoder(cfg.tokenizer_vocab)
    if path:
        # An adapter folder is folded into the weights; with is_lora a fresh adapter (B = 0)
        # then trains on top, the same function the reference's continued adapter starts from.
        load_weights(model, path, fmt, model_cfg.lora_path)
        statistics = read_statistics_of(path, fmt)
        if not oft.tokenizer_path:
            encoder = read_tokenizer(path, fmt, cfg.tokenizer_vocab)
    if oft.statistics_path:
        statistics = read_statistics(oft.statistics_path)
    if oft.tokenizer_path:
        encoder = SentencePieceEncoder(oft.tokenizer_path)
    action_bounds = proprio_bounds = None
    unnorm_key = None
    if oft.normalization != NO_NORMALIZATION:
        if not statistics:
            raise ValueError(f"actor.model.oft.normalization {oft.normalization} needs dataset statistics, which "
                             f"{path or 'a randomly initialised model'} lacks: set actor.model.oft.statistics_path, "
                             "or normalization: none (actions and proprio taken as normalized)")
        unnorm_key, action_bounds, proprio_bounds = select_bounds(
            statistics, model_cfg.unnorm_key, oft.normalization, f"dataset statistics of {path or oft.statistics_path}",
            cfg.use_proprio)
    processor = OFTProcessor(cfg, PromptTokenizer(encoder, cfg.max_prompt_length), action_bounds, proprio_bounds,
                             center_crop=model_cfg.center_crop, gripper_binarize=oft.gripper == "libero")
    if model_cfg.is_lora:
        apply_oft_lora(model, model_cfg.lora_rank, tuple(oft.lora_targets))
    unused = set(model.unused_parameters())  # after LoRA: its adapters on unused blocks too
    for name, p in model.named_parameters():
        if name in unused:
            p.requires_grad_(False)  # never read by a forward: no gradient to reduce
    if model_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return OFTPolicy(model, processor, sampling, statistics, unnorm_key)


__all__ = ["OFTConfig", "OFTModel", "OFTPolicy", "OFTProcessor", "SamplingParams", "CheckpointError",
           "build_oft_policy", "config_from_model_cfg", "preset"]
