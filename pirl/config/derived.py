"""Sizes that follow from a config and a world size, and the `--dry-run` report.

One RL sample = one chunk step of one env (DESIGN.md). Per training iteration:
    chunk steps per epoch    = env.train.max_steps_per_rollout_epoch / actor.model.num_action_chunks
    samples per rollout      = env.train.total_num_envs x env.train.rollout_epoch
                               x chunk steps per epoch
    grad-accumulation steps  = actor.global_batch_size / (actor.micro_batch_size x actor ranks)
    optimizer steps          = samples per rollout / actor.global_batch_size
                               x algorithm.update_epoch
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pirl.config.validate import ConfigError, check_layout, samples_per_rollout
from pirl.engine.placement import COMPONENTS, describe_layout, format_ranks


def world_size_of(cfg: DictConfig) -> int:
    """Ranks the config describes: cluster.num_nodes x cluster.num_gpus_per_node."""
    return cfg.cluster.num_nodes * cfg.cluster.num_gpus_per_node


def sizes_at(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """Derived sizes for `world_size` ranks; ConfigError when the layout does not fit."""
    p = check_layout(cfg, world_size)
    env, alg, actor = cfg.env.train, cfg.algorithm, cfg.actor
    stages = cfg.rollout.pipeline_stage_num
    n_env, n_rollout, n_actor = (len(p.ranks(c)) for c in COMPONENTS)
    samples = samples_per_rollout(cfg)
    return {
        "world_size": world_size,
        "placement": {c: format_ranks(p.ranks(c)) for c in COMPONENTS},
        "colocated": p.is_colocated,
        "env_ranks": n_env,
        "rollout_ranks": n_rollout,
        "actor_ranks": n_actor,
        "envs_per_env_rank": env.total_num_envs // n_env,
        "envs_per_stage": env.total_num_envs // (n_env * stages),  # per env rank and stage
        "rollout_batch": env.total_num_envs // (n_rollout * stages),  # obs per policy call
        "chunk_steps_per_epoch": env.max_steps_per_rollout_epoch // actor.model.num_action_chunks,
        "samples_per_rollout": samples,
        "samples_per_actor_rank": samples // n_actor,
        "grad_accum_steps": actor.global_batch_size // (actor.micro_batch_size * n_actor),
        "optimizer_steps_per_iteration": samples // actor.global_batch_size * alg.update_epoch,
        "layout": describe_layout(p, env.total_num_envs // n_env, stages, samples // n_actor),
    }


def derived_sizes(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """Sizes for the given `world_size` (top level; raises ConfigError if it does not fit)
    and, under "at_config_world_size", for cluster.num_nodes x cluster.num_gpus_per_node
    ({"world_size": N, "error": why} when the layout does not fit that world)."""
    out = sizes_at(cfg, world_size)
    config_ws = world_size_of(cfg)
    try:
        out["at_config_world_size"] = sizes_at(cfg, config_ws)
    except ConfigError as e:
        out["at_config_world_size"] = {"world_size": config_ws, "error": str(e)}
    return out


# (key in the sizes dict, row label, how it is computed)
_ROWS = [
    ("world_size", "world size", "ranks"),
    ("placement.env", "env ranks", "cluster.component_placement"),
    ("placement.rollout", "rollout ranks", "cluster.component_placement"),
    ("placement.actor", "actor ranks", "cluster.component_placement"),
    ("colocated", "colocated", "env, rollout, actor on the same ranks"),
    ("envs_per_env_rank", "envs per env rank", "total_num_envs / env ranks"),
    ("envs_per_stage", "envs per env rank per stage", "... / pipeline_stage_num"),
    ("rollout_batch", "obs per policy call", "total_num_envs / (rollout ranks x stages)"),
    ("chunk_steps_per_epoch", "chunk steps per rollout epoch",
     "max_steps_per_rollout_epoch / num_action_chunks"),
    ("samples_per_rollout", "samples per rollout", "envs x rollout_epoch x chunk steps"),
    ("samples_per_actor_rank", "samples per actor rank", "samples per rollout / actor ranks"),
    ("grad_accum_steps", "grad-accumulation steps", "global_batch / (micro_batch x actor ranks)"),
    ("optimizer_steps_per_iteration", "optimizer steps per iteration",
     "samples / global_batch x update_epoch"),
]


def _cell(sizes: dict[str, Any], key: str) -> str:
    if "error" in sizes:  # the layout does not fit this world: only its size is known
        return str(sizes["world_size"]) if key == "world_size" else "-"
    head, _, tail = key.partition(".")
    v = sizes[head][tail] if tail else sizes[head]
    if tail:  # a rank set: "0-3 (4)"
        return f"{v} ({sizes[tail + '_ranks']})"
    return str(v)


def format_dry_run(cfg: DictConfig, sizes: dict[str, Any]) -> str:
    """The resolved config as YAML, then a table of the derived sizes (one column for the
    given world size, a second for the config's when it differs)."""
    columns = [(f"given ({sizes['world_size']} ranks)", sizes)]
    other = sizes.get("at_config_world_size")
    if other is not None and other["world_size"] != sizes["world_size"]:
        nodes, gpus = cfg.cluster.num_nodes, cfg.cluster.num_gpus_per_node
        columns.append((f"config ({nodes} x {gpus} = {other['world_size']} ranks)", other))
    table = [["quantity", *(c[0] for c in columns), "from"]]
    for key, label, how in _ROWS:
        table.append([label, *(_cell(s, key) for _, s in columns), how])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"config world size: {s['error']}" for _, s in columns[1:] if "error" in s]
    return "\n".join([
        "# resolved config",
        OmegaConf.to_yaml(cfg, resolve=True).rstrip(),
        "",
        "# derived sizes",
        *lines,
        *notes,
        "",
        *sizes["layout"],
    ]) + "\n"
