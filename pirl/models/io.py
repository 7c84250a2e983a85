"""pirl's own checkpoint format for flow policies: `model.safetensors` + `config.json`.

Loading is strict (nanoGPT's lesson): any missing, unexpected, mis-shaped or mis-typed
tensor is one error that lists them all, raised before a single weight is copied.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@contextlib.contextmanager
def atomic_dir(directory: str | Path):
    """Yield a sibling `<name>.tmp` folder to write a checkpoint into; on success it replaces
    `directory` whole, so a crash mid-write never leaves a half-written checkpoint there. An
    existing folder is replaced only if it is a checkpoint itself (holds model.safetensors)."""
    out = Path(directory)
    if out.exists() and any(out.iterdir()) and not (out / WEIGHTS).is_file():
        raise FileExistsError(f"{out} exists and is not a checkpoint (no {WEIGHTS}): refusing to replace it")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def save_policy(policy: nn.Module, directory: str | Path, config: dict) -> Path:
    """Write weights and the model config; the folder is written whole, then renamed."""
    with atomic_dir(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(directory)


def read_policy_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"actor.model.model_path: {directory} has no {CONFIG}")
    return json.loads(path.read_text())


def load_policy_weights(policy: nn.Module, directory: str | Path) -> None:
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"actor.model.model_path: {directory} has no {WEIGHTS}")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"actor.model.model_path: cannot read {path}: {e}") from e
    own = policy.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [f"{k}: checkpoint {tuple(tensors[k].shape)} {tensors[k].dtype} vs model {tuple(own[k].shape)} {own[k].dtype}"
           for k in sorted(set(own) & set(tensors))
           if tensors[k].shape != own[k].shape or tensors[k].dtype != own[k].dtype]
    if missing or unexpected or bad:
        raise ValueError(f"checkpoint {path} does not match the model:\n  missing: {missing}\n"
                         f"  unexpected: {unexpected}\n  mismatched: {bad}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k])


def read_json(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """A JSON file of a checkpoint; unreadable or malformed is `error` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise error(f"cannot read {path}: {e}") from e


def tensor_mismatches(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                      missing: list[str], unexpected: list[str]) -> list[str]:
    """One line per kind of problem (missing, unexpected, wrong shape, wrong dtype), each
    listing up to 20 tensor names. Floating tensors may change precision (bf16 checkpoints
    into an fp32 model); a non-float tensor where the model has a float one (or the
    reverse) is corruption."""
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    for k, v in tensors.items() if k in expected and v.shape != expected[k].shape)
    dtypes = sorted(f"{k}: checkpoint {v.dtype} vs model {expected[k].dtype}" for k, v in tensors.items()
                    if k in expected and v.dtype.is_floating_point != expected[k].dtype.is_floating_point)
    problems = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes),
                        ("wrong dtype", dtypes)):
        if items:
            problems.append(f"{len(items)} {name}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    return problems
