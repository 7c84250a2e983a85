"""lerobot's π0 / π0.5 checkpoint folder (lerobot 0.6.1's `save_pretrained` + its processor
pipelines), read and written.

A lerobot folder holds
    config.json                      PI0Config / PI05Config ("type": "pi0" | "pi05", chunk_size,
                                     max_state_dim, max_action_dim, tokenizer_max_length,
                                     image_resolution, input/output features, normalization_mapping)
    model.safetensors                openpi's PyTorch names prefixed `model.`, both the PaliGemma
                                     `lm_head` and `embed_tokens` (untied), the expert's unused lm_head
    policy_preprocessor.json         steps: ..., tokenizer_processor {tokenizer_name, max_length},
                                     relative_actions_processor {enabled, exclude_joints, action_names},
                                     normalizer_processor {eps, features, norm_map} + its state_file
    policy_preprocessor_step_<i>_normalizer_processor.safetensors   "<feature>.<stat>" tensors
    policy_postprocessor.json        unnormalizer_processor + policy_postprocessor_step_0_...safetensors

What pirl takes from it: the run config is checked against config.json (`check_config`);
state stats from the preprocessor's normalizer, action stats from the postprocessor's
unnormalizer, both with lerobot's formulas (pirl.models.pi0.normalize, convention
"lerobot"); the tokenizer the preprocessor names; the relative-action mask.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pirl.models.io import read_json
from pirl.models.pi0.configuration import GEMMA_2B, GEMMA_300M, Pi0Config
from pirl.models.pi0.normalize import (IDENTITY, LEROBOT, LEROBOT_EPS, MINMAX, QUANTILE, ZSCORE, NormStats,
                                       to_convention)

CONFIG = "config.json"
PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor.json", "policy_postprocessor.json"
TYPES = {"pi0": False, "pi05": True}  # lerobot policy type -> pi05
STATE, ACTION = "observation.state", "action"
IMAGE_PREFIX = "observation.images."
# lerobot NormalizationMode -> pirl mode (QUANTILE10 has no pirl counterpart).
MODES = {"MEAN_STD": ZSCORE, "QUANTILES": QUANTILE, "MIN_MAX": MINMAX, "IDENTITY": IDENTITY}
LEROBOT_MODES = {v: k for k, v in MODES.items()}
# The tokenizer every lerobot π0 / π0.5 preprocessor names: PaliGemma's.
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
# pirl's camera slots (Pi0Config.image_keys) are fed base, wrist, second wrist.
SLOT_IS_WRIST = (False, True, True)


class LerobotError(ValueError):
    pass


def image_features(meta: dict) -> list[str]:
    """The VISUAL input features in lerobot's order, then its empty cameras (masked)."""
    names = [k for k, f in meta.get("input_features", {}).items() if f.get("type") == "VISUAL"]
    empty = [f"{IMAGE_PREFIX}empty_camera_{i}" for i in range(int(meta.get("empty_cameras", 0)))]
    return names + [e for e in empty if e not in names]  # lerobot also lists them in input_features


def check_config(meta: dict, cfg: Pi0Config, action_env_dim: int | None, where: Path) -> None:
    """Refuse a run config that contradicts lerobot's config.json, naming both values."""
    if meta.get("type") not in TYPES:
        raise LerobotError(f"{where}: type {meta.get('type')!r} is not a π0 policy (expected one of {sorted(TYPES)})")
    res = meta.get("image_resolution", [224, 224])
    checks = [
        ("type", meta["type"], "actor.model.openpi.pi05", cfg.pi05, TYPES[meta["type"]] == cfg.pi05),
        ("chunk_size", meta.get("chunk_size"), "actor.model.openpi.action_horizon", cfg.action_horizon, None),
        ("max_action_dim", meta.get("max_action_dim"), "actor.model.openpi.action_dim", cfg.action_dim, None),
        ("max_state_dim", meta.get("max_state_dim"), "actor.model.openpi.action_dim", cfg.action_dim, None),
        ("tokenizer_max_length", meta.get("tokenizer_max_length"), "actor.model.openpi.max_token_len",
         cfg.max_token_len, None),
        ("image_resolution", list(res), "actor.model.openpi.vision.image_size", cfg.vision.image_size,
         list(res) == [cfg.vision.image_size] * 2),
    ]
    action = meta.get("output_features", {}).get(ACTION)
    if action is not None and action_env_dim is not None:
        checks.append(("output_features.action.shape", action["shape"][0], "actor.model.action_dim",
                       action_env_dim, None))
    bad = [f"{k} {v!r} vs {rk} {rv!r}" for k, v, rk, rv, ok in checks
           if v is not None and not (ok if ok is not None else v == rv)]
    cams = image_features(meta)
    if len(cams) > len(cfg.image_keys):
        bad.append(f"{len(cams)} cameras {cams} vs {len(cfg.image_keys)} camera slots {list(cfg.image_keys)}")
    elif not all("empty_camera" in c or ("wrist" in c.lower()) == w for c, w in zip(cams, SLOT_IS_WRIST)):
        bad.append(f"camera order {cams} vs pirl's slots {list(cfg.image_keys[: len(cams)])} "
                   "(fed from obs main_images, wrist_images, extra_wrist_images)")
    if bad:
        raise LerobotError(f"{where} contradicts the run config: " + "; ".join(bad))


def _step(pipeline: dict, registry_name: str) -> dict | None:
    return next((s for s in pipeline.get("steps", []) if s.get("registry_name") == registry_name), None)


def _stats(path: Path, step: dict, feature: str, where: str) -> NormStats | None:
    """One feature's NormStats from a (un)normalizer step, with its declared mode."""
    cfg = step["config"]
    ftype = cfg.get("features", {}).get(feature, {}).get("type")
    if ftype is None:
        return None
    mode_name = cfg.get("norm_map", {}).get(ftype, "IDENTITY")
    if mode_name not in MODES:
        raise LerobotError(f"{where}: normalization {mode_name} of {feature} is not supported by pirl "
                           f"(supported: {sorted(MODES)})")
    state_file = path / step["state_file"]
    try:
        flat = load_file(str(state_file))
    except Exception as e:  # safetensors raises several types for a bad file
        raise LerobotError(f"{state_file} is truncated or corrupt: {e}") from e
    t = {k.rsplit(".", 1)[1]: v.float() for k, v in flat.items() if k.rsplit(".", 1)[0] == feature}
    mode = MODES[mode_name]
    if mode == IDENTITY:
        n = next(iter(t.values())).shape[0] if t else 0
        t.setdefault("mean", torch.zeros(n))
        t.setdefault("std", torch.ones(n))
    missing = [k for k in {ZSCORE: ("mean", "std"), QUANTILE: ("q01", "q99"), MINMAX: ("min", "max")}.get(mode, ())
               if k not in t]
    if missing:
        raise LerobotError(f"{state_file}: {mode_name} normalization of {feature} needs {missing}, "
                           f"has {sorted(t)}")
    n = next(iter(t.values())).shape[0]
    return NormStats(mean=t.get("mean", torch.zeros(n)), std=t.get("std", torch.ones(n)), q01=t.get("q01"),
                     q99=t.get("q99"), min=t.get("min"), max=t.get("max"), mode=mode, convention=LEROBOT,
                     eps=float(cfg.get("eps", LEROBOT_EPS)))


@dataclass(frozen=True)
class Processing:
    """What a lerobot folder's processor files say."""
    norm_stats: dict[str, NormStats] | None  # {"state", "actions"}, lerobot convention
    tokenizer_name: str | None  # hub id or directory (tokenizer_processor.tokenizer_name)
    delta_action_mask: tuple[bool, ...] | None  # relative actions: True where action -= state


def read_processing(path: str | Path, action_env_dim: int | None) -> Processing:
    path = Path(path)
    pre_file, post_file = path / PREPROCESSOR, path / POSTPROCESSOR
    if not pre_file.is_file():
        return Processing(None, None, None)
    pre = read_json(pre_file, LerobotError)
    post = read_json(post_file, LerobotError) if post_file.is_file() else {}
    tok = _step(pre, "tokenizer_processor")
    norm, unnorm = _step(pre, "normalizer_processor"), _step(post, "unnormalizer_processor")
    stats = None
    if norm is not None:
        state = _stats(path, norm, STATE, str(pre_file))
        action_step, action_file = (unnorm, post_file) if unnorm is not None else (norm, pre_file)
        actions = _stats(path, action_step, ACTION, str(action_file))
        if state is None or actions is None:
            raise LerobotError(f"{pre_file}: the normalizer has no {STATE if state is None else ACTION} feature")
        stats = {"state": state, "actions": actions}
    rel = _step(pre, "relative_actions_processor")
    mask = None
    if rel is not None and rel["config"].get("enabled"):
        n = action_env_dim or len(rel["config"].get("action_names") or [])
        mask = relative_mask(n, rel["config"].get("exclude_joints") or [], rel["config"].get("action_names"))
    return Processing(stats, tok["config"].get("tokenizer_name") if tok else None, mask)


def relative_mask(n: int, exclude: list[str], names: list[str] | None) -> tuple[bool, ...]:
    """lerobot's relative-action mask: every dim relative except those whose action name
    contains an excluded joint name (case-insensitive); all dims without names."""
    tokens = [str(e).lower() for e in exclude if e]
    if not tokens or names is None:
        return (True,) * n
    mask = [not any(t in str(name).lower() for t in tokens) for name in names[:n]]
    return tuple(mask + [True] * (n - len(mask)))


# ---- export --------------------------------------------------------------------------
def _features(cams: list[str], S: int, state_dim: int, action_dim: int) -> tuple[dict, dict]:
    inputs = {c: {"type": "VISUAL", "shape": [3, S, S]} for c in cams}
    inputs[STATE] = {"type": "STATE", "shape": [state_dim]}
    return inputs, {ACTION: {"type": "ACTION", "shape": [action_dim]}}


def _variant(spec, standard, name: str, role: str) -> str:
    if spec != standard:
        warnings.warn(f"lerobot 0.6.1 builds only gemma_2b / gemma_300m: this model's {role} differs from "
                      f"{name}, so lerobot loads the export only with its sizes patched", stacklevel=3)
    return name


def write_folder(path: Path, cfg: Pi0Config, tensors: dict[str, torch.Tensor], norm_stats: dict[str, NormStats],
                 state_dim: int, action_dim: int, cameras: list[str], tokenizer_name: str,
                 delta_action_mask: tuple[bool, ...] | None, dtype: torch.dtype) -> None:
    """config.json, model.safetensors (names already lerobot's) and both processor pipelines."""
    S = cfg.vision.image_size
    inputs, outputs = _features(cameras, S, state_dim, action_dim)
    modes = {k: v.mode or "" for k, v in norm_stats.items()}  # export_lerobot has checked they are set
    norm_map = {"VISUAL": "IDENTITY", "STATE": LEROBOT_MODES[modes["state"]], "ACTION": LEROBOT_MODES[modes["actions"]]}
    names = None
    if delta_action_mask is not None:  # lerobot names the absolute dims; "absolute" is excluded
        names = [f"{'absolute' if not m else 'relative'}_{i}" for i, m in enumerate(delta_action_mask)]
    meta = {
        "type": "pi05" if cfg.pi05 else "pi0", "n_obs_steps": 1, "input_features": inputs,
        "output_features": outputs, "device": "cpu", "use_amp": False,
        "paligemma_variant": _variant(cfg.paligemma, GEMMA_2B, "gemma_2b", "VLM"),
        "action_expert_variant": _variant(cfg.expert, GEMMA_300M, "gemma_300m", "action expert"),
        "dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
        "chunk_size": cfg.action_horizon, "n_action_steps": cfg.action_horizon,
        "max_state_dim": cfg.action_dim, "max_action_dim": cfg.action_dim,
        "use_relative_actions": delta_action_mask is not None, "relative_exclude_joints": ["absolute"],
        "action_feature_names": names, "image_resolution": [S, S], "empty_cameras": 0,
        "normalization_mapping": norm_map, "tokenizer_max_length": cfg.max_token_len,
    }
    (path / CONFIG).write_text(json.dumps(meta, indent=4))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path / "model.safetensors"))

    lerobot = {k: to_convention(v, LEROBOT, LEROBOT_EPS) for k, v in norm_stats.items()}
    flat: dict[str, torch.Tensor] = {}
    for key, feature in (("state", STATE), ("actions", ACTION)):
        s = lerobot[key]
        for stat in ("mean", "std", "q01", "q99", "min", "max"):
            if getattr(s, stat) is not None:
                flat[f"{feature}.{stat}"] = getattr(s, stat).float().clone()  # own storage: safetensors refuses shared
    features = {**inputs, **outputs}
    norm_cfg = {"eps": LEROBOT_EPS, "features": features, "norm_map": norm_map}
    rel = {"enabled": delta_action_mask is not None, "exclude_joints": ["absolute"], "action_names": names}
    tok = {"max_length": cfg.max_token_len, "task_key": "task", "padding_side": "right", "padding": "max_length",
           "truncation": True, "tokenizer_name": tokenizer_name}
    # The step order of lerobot's make_pi0_pre_post_processors / make_pi05_pre_post_processors.
    head: list[tuple[str, dict[str, Any]]] = [("rename_observations_processor", {"rename_map": {}}),
                                              ("to_batch_processor", {})]
    device: tuple[str, dict[str, Any]] = ("device_processor", {"device": "cpu", "float_dtype": None})
    if cfg.pi05:
        steps = head + [("relative_actions_processor", rel), ("normalizer_processor", norm_cfg),
                        ("pi05_prepare_state_tokenizer_processor_step", {}), ("tokenizer_processor", tok), device]
    else:
        steps = head + [("pi0_new_line_processor", {}), ("tokenizer_processor", tok), device,
                        ("relative_actions_processor", rel), ("normalizer_processor", norm_cfg)]
    pre_steps = []
    for i, (name, config) in enumerate(steps):
        entry: dict[str, Any] = {"registry_name": name, "config": config}
        if name == "normalizer_processor":
            entry["state_file"] = f"policy_preprocessor_step_{i}_normalizer_processor.safetensors"
            save_file(flat, str(path / entry["state_file"]))
        pre_steps.append(entry)
    (path / PREPROCESSOR).write_text(json.dumps({"name": "policy_preprocessor", "steps": pre_steps}, indent=2))
    unnorm_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    save_file(flat, str(path / unnorm_file))
    post_steps = [{"registry_name": "unnormalizer_processor",
                   "config": {"eps": LEROBOT_EPS, "features": outputs, "norm_map": norm_map}, "state_file": unnorm_file},
                  {"registry_name": "absolute_actions_processor", "config": {"enabled": delta_action_mask is not None}},
                  {"registry_name": device[0], "config": device[1]}]
    (path / POSTPROCESSOR).write_text(json.dumps({"name": "policy_postprocessor", "steps": post_steps}, indent=2))
