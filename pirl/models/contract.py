"""What a saved policy was trained for, and the check that an env config agrees with it.

A checkpoint written by `python -m pirl.sft` or exported at the end of an RL run records
its contract under "policy" in its meta file (train_meta.json for π0, config.json for
flow_mlp): denoising steps, executed chunk length, env action and state dims, model type,
simulator and task. `check_fits` compares it, and the norm stats the checkpoint carries,
with the config a run is about to use and raises one error naming every contradiction with
both values: the seeds warn that such mismatches silently ruin success.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

META_FILES = ("train_meta.json", "config.json")  # π0 / flow_mlp checkpoints keep their meta here


class PolicyMismatch(ValueError):
    pass


def policy_contract(cfg, state_dim: int) -> dict[str, Any]:
    """The contract of a policy built from `cfg` for an env with `state_dim` state dims."""
    from pirl.envs import task_spec

    m = cfg.actor.model
    split = cfg.env.train
    task = task_spec(split)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(task):
            task = OmegaConf.to_container(task)
    except ImportError:
        pass
    return {"model_type": str(m.model_type), "num_steps": int(m.openpi.num_steps),
            "action_chunk": int(m.openpi.action_chunk), "action_dim": int(m.openpi.action_env_dim),
            "state_dim": int(state_dim), "env_type": split.env_type, "task": task}


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict of a pirl policy checkpoint ({} when it records none)."""
    for name in META_FILES:
        f = Path(path) / name
        if f.is_file():
            meta = json.loads(f.read_text())
            if "policy" in meta:
                return meta
    return {}


def check_fits(checkpoint: str | Path, cfg, state_dim: int, norm_stats: Optional[dict] = None) -> None:
    """Raise PolicyMismatch if the checkpoint's contract or norm stats contradict `cfg` and
    the env's `state_dim`. A checkpoint that records no contract (an openpi or lerobot one)
    is checked on its norm stats only."""
    want = policy_contract(cfg, state_dim)
    have = read_checkpoint_meta(checkpoint).get("policy", {})
    keys = {"num_steps": "actor.model.num_steps", "action_chunk": "actor.model.num_action_chunks",
            "action_dim": "actor.model.action_dim", "state_dim": "the env's state dims",
            "model_type": "actor.model.model_type"}
    problems = [f"{name}: checkpoint {have[k]!r}, config {want[k]!r} ({name_of})"
                for k, name_of in keys.items() for name in [k] if k in have and have[k] != want[k]]
    if norm_stats is not None:
        for key, dim, where in (("state", state_dim, "the env's state dims"),
                                ("actions", want["action_dim"], "actor.model.action_dim")):
            stats = norm_stats.get(key)
            if stats is not None and stats.mean.shape[0] != dim:
                problems.append(f"norm stats {key}: checkpoint covers {stats.mean.shape[0]} dims, config {dim} ({where})")
    if problems:
        raise PolicyMismatch(f"checkpoint {checkpoint} does not fit this config:\n  " + "\n  ".join(problems))
