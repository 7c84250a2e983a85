"""The one place a DeepSpeed config is rendered (DeepSpeed-Chat's get_train_ds_config idea).

The JSON files in ds_configs/ are the readable, tunable starting points. Values written
"auto" there are filled from the run's config here; a value set explicitly in the JSON
that contradicts the run's config is an error naming both, never a silent override.
"""
from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str) -> Path:
    """A config path: absolute, relative to the working directory, or to the repo root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def load_ds_json(path: str) -> dict:
    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"actor.ds_config: DeepSpeed config {path!r} not found (looked at {p})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"actor.ds_config: {p} is not valid JSON: {e}") from e


def _fill(ds: dict, key: str, value, source: str) -> None:
    """Set ds[key] = value where the JSON says "auto" or nothing; reject a contradiction."""
    cur = ds.get(key, "auto")
    if cur == "auto":
        ds[key] = value
    elif cur != value:
        raise ValueError(f"DeepSpeed config sets {key}={cur!r} but {source} gives {value!r}; "
                         f"write \"auto\" in the JSON or change {source}")


def render_ds_config(actor_cfg, num_actor_ranks: int) -> dict:
    """`actor` config section + actor world size -> the dict for deepspeed.initialize."""
    ds = load_ds_json(actor_cfg.ds_config)
    micro, glob = int(actor_cfg.micro_batch_size), int(actor_cfg.global_batch_size)
    if glob % (micro * num_actor_ranks):
        raise ValueError(f"actor.global_batch_size ({glob}) must be a multiple of actor.micro_batch_size "
                         f"({micro}) x actor ranks ({num_actor_ranks})")
    _fill(ds, "train_micro_batch_size_per_gpu", micro, "actor.micro_batch_size")
    _fill(ds, "train_batch_size", glob, "actor.global_batch_size")
    _fill(ds, "gradient_accumulation_steps", glob // (micro * num_actor_ranks), "the batch sizes")
    _fill(ds, "gradient_clipping", float(actor_cfg.optim.clip_grad), "actor.optim.clip_grad")
    precision = str(actor_cfg.model.precision)
    for name, want in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        section = ds.setdefault(name, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = want
        elif bool(section["enabled"]) != want:
            raise ValueError(f"DeepSpeed config {name}.enabled={section['enabled']} contradicts "
                             f"actor.model.precision={precision!r}")
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
