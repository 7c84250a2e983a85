"""Validation of a composed, resolved config: ranges, choices, cross-field consistency,
placement, divisibility of the batch sizes and existing files. Runs before anything
starts; the first problem found raises one `ConfigError` naming the key.

Order of the checks (each stage assumes the previous passed): field ranges and choices
-> model / algorithm consistency -> placement -> env and batch divisibility -> paths.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

import pirl
from pirl.algos import registry
from pirl.engine.placement import Placement, PlacementError, format_ranks, pair_env_rollout
from pirl.envs import SIMULATORS, check_init_params

# The directory holding train.py, configs/ and ds_configs/: relative paths in a config
# are looked up in the working directory first, then here.
REPO_ROOT = Path(pirl.__file__).resolve().parents[1]

NOISE_METHODS = ("flow_sde", "flow_noise")
LOGPROB_TYPES = ("chunk_level", "action_level", "token_level")  # pirl.flow.chain
# Reward reductions, advantage estimators and losses are the registry's (pirl.algos.registry).
REWARD_TYPES = tuple(registry.REWARD_REDUCTIONS)
ADV_TYPES = tuple(registry.ADVANTAGE_ESTIMATORS)
LOSS_TYPES = tuple(registry.POLICY_LOSSES)
VALUE_LOSS_TYPES = ("huber", "mse")
LOSS_AGG_FUNCS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")  # pirl.algos.losses
# standard: bootstrap truncated episodes; always: every ended one (the reference's two);
# none: never (pirl's reach2d runs)
BOOTSTRAP_TYPES = ("standard", "always", "none")
REWARD_MODES = ("sparse", "dense")
KL_PENALTIES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")  # estimators of the reference
LOGGER_BACKENDS = ("tensorboard", "wandb", "swanlab")
WANDB_MODES = ("auto", "online", "offline", "disabled")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULERS = ("constant", "cosine")
MODEL_TYPES = ("flow_mlp", "openpi", "openvla_oft")
SIMULATOR_TYPES = SIMULATORS  # the adapters pirl.envs.make_env builds
TASK_TYPES = ("embodied",)
RESUME_AUTO = "auto"


class ConfigError(ValueError):
    """An invalid experiment config; the message names the key (and file) at fault."""


# ---------------------------------------------------------------------------- ranges

def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _probability(v: Any) -> bool:
    return 0.0 <= v <= 1.0


def _beta(v: Any) -> bool:
    return 0.0 <= v < 1.0


# (key, predicate, what the predicate demands); None values are skipped (Optional keys).
_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    *[(k, _positive, "a positive integer") for k in (
        "cluster.num_nodes", "cluster.num_gpus_per_node", "cluster.threads_per_rank",
        "runner.max_epochs", "runner.keep_last_n",
        "algorithm.update_epoch", "algorithm.group_size",
        *[f"env.{split}.{k}" for split in ("train", "eval") for k in (
            "total_num_envs", "rollout_epoch", "max_episode_steps", "max_steps_per_rollout_epoch",
            "group_size", "video_cfg.fps")],
        "rollout.pipeline_stage_num",
        "actor.micro_batch_size", "actor.global_batch_size",
        "actor.model.action_dim", "actor.model.num_action_chunks", "actor.model.num_steps",
        "actor.model.hidden_dim", "actor.model.num_layers", "actor.model.lora_rank",
        "actor.model.openpi.action_chunk", "actor.model.openpi.num_steps",
        "actor.model.openpi.action_env_dim", "actor.model.openpi.action_horizon",
        "actor.model.openpi.action_dim", "actor.model.openpi.num_images_in_input",
    )],
    *[(k, _non_negative, "a non-negative integer") for k in (
        "env.train.num_workers", "env.eval.num_workers",
    )],
    ("actor.optim.lr_warmup_steps", lambda v: v >= -1, ">= -1 (-1: none, the reference's default)"),
    *[(k, _positive, "> 0") for k in (
        "algorithm.clip_ratio_low", "algorithm.clip_ratio_high", "algorithm.huber_delta",
        "algorithm.value_clip", "actor.optim.lr",
        "actor.optim.value_lr", "actor.optim.adam_eps", "actor.optim.clip_grad",
        "cluster.timeout_s",
    )],
    *[(k, _non_negative, ">= 0") for k in (
        "algorithm.value_loss_coef", "algorithm.entropy_bonus", "env.train.reward_coef",
        "env.eval.reward_coef", "actor.optim.weight_decay", "actor.optim.min_lr",
        "actor.model.openpi.noise_level",
    )],
    *[(k, _probability, "in [0, 1]") for k in (
        "algorithm.gamma", "algorithm.gae_lambda", "algorithm.rewards_lower_bound",
        "algorithm.rewards_upper_bound",
    )],
    *[(k, _beta, "in [0, 1)") for k in ("actor.optim.adam_beta1", "actor.optim.adam_beta2")],
]

_CHOICES: list[tuple[str, tuple[str, ...]]] = [
    ("runner.task_type", TASK_TYPES),
    ("runner.logger.wandb_mode", WANDB_MODES),
    ("algorithm.adv_type", ADV_TYPES),
    ("algorithm.loss_type", LOSS_TYPES),
    ("algorithm.reward_type", REWARD_TYPES),
    ("algorithm.logprob_type", LOGPROB_TYPES),
    ("algorithm.value_loss_type", VALUE_LOSS_TYPES),
    ("algorithm.entropy_type", LOGPROB_TYPES),
    ("algorithm.loss_agg_func", LOSS_AGG_FUNCS),
    ("algorithm.bootstrap_type", BOOTSTRAP_TYPES),
    ("algorithm.kl_penalty", KL_PENALTIES),
    ("env.train.env_type", SIMULATOR_TYPES),
    ("env.eval.env_type", SIMULATOR_TYPES),
    ("env.train.reward_mode", REWARD_MODES),
    ("env.eval.reward_mode", REWARD_MODES),
    ("actor.model.model_type", MODEL_TYPES),
    ("actor.model.precision", PRECISIONS),
    ("actor.model.prediction", ("sample", "velocity")),  # pirl.models.flow_mlp.PREDICTIONS
    ("actor.model.openpi.noise_method", NOISE_METHODS),
    ("actor.optim.lr_scheduler", LR_SCHEDULERS),
]


def as_dict(node: Any, resolve: bool = False) -> dict:
    """A config mapping as a plain dict (interpolations kept unless `resolve`)."""
    out = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(out, dict):
        raise ConfigError(f"expected a mapping, got {out!r}")
    return out


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def check_fields(cfg: DictConfig) -> None:
    """Per-key ranges and choices."""
    for key, ok, demand in _RANGES:
        v = _get(cfg, key)
        if v is not None and not ok(v):
            raise ConfigError(f"{key}: {v!r} is not {demand}")
    for key, choices in _CHOICES:
        v = _get(cfg, key)
        if v not in choices:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(choices)}")
    backends = list(cfg.runner.logger.logger_backends)
    for b in backends:
        if b not in LOGGER_BACKENDS:
            raise ConfigError(f"runner.logger.logger_backends: {b!r} is not one of "
                              f"{', '.join(LOGGER_BACKENDS)}")
    if len(set(backends)) != len(backends):
        raise ConfigError(f"runner.logger.logger_backends: {backends} names a backend twice")
    steps = cfg.actor.optim.total_training_steps
    if steps != -1 and steps < 1:
        raise ConfigError(f"actor.optim.total_training_steps: {steps} must be -1 (derived) "
                          f"or a positive number of optimizer steps")
    c = cfg.algorithm.clip_ratio_c
    if c is not None and not c > 1.0:
        raise ConfigError(f"algorithm.clip_ratio_c: {c!r} must be > 1 (dual clip) or null")
    lo, hi = cfg.algorithm.rewards_lower_bound, cfg.algorithm.rewards_upper_bound
    if lo > hi:
        raise ConfigError(f"algorithm.rewards_lower_bound: {lo} is above "
                          f"algorithm.rewards_upper_bound ({hi})")
    rng = list(cfg.actor.model.openpi.noise_logvar_range)
    if (len(rng) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                 for x in rng) or not 0 < rng[0] <= rng[1]):
        raise ConfigError(f"actor.model.openpi.noise_logvar_range: {rng} must be two numbers "
                          f"[low, high] with 0 < low <= high")
    for key in ("actor.model.trainable", "actor.model.frozen"):
        for pattern in _get(cfg, key):
            try:
                re.compile(str(pattern))
            except re.error as e:
                raise ConfigError(f"{key}: {pattern!r} is not a valid regex ({e})") from None


# ------------------------------------------------------------------ consistency

def model_action_sizes(model_cfg) -> tuple[int, int]:
    """(H, D): actions the model predicts per chunk and its (padded) action dim.
    `openpi.action_horizon` / `openpi.action_dim` when set; null: flow_mlp predicts exactly
    the executed chunk in the env's dims, π0 the `openpi.config_name` preset's sizes."""
    op = model_cfg.openpi
    if model_cfg.model_type == "openpi":
        # Imported only for π0: its package pulls in transformers.
        from pirl.models.pi0.configuration import PRESETS

        if op.config_name not in PRESETS:
            raise ConfigError(f"actor.model.openpi.config_name: {op.config_name!r} is not one of "
                              f"{', '.join(sorted(PRESETS))}")
        base = PRESETS[op.config_name]
        return (op.action_horizon if op.action_horizon is not None else base.action_horizon,
                op.action_dim if op.action_dim is not None else base.action_dim)
    return (op.action_horizon if op.action_horizon is not None else model_cfg.num_action_chunks,
            op.action_dim if op.action_dim is not None else model_cfg.action_dim)


def check_model_and_algorithm(cfg: DictConfig) -> None:
    m, op, alg = cfg.actor.model, cfg.actor.model.openpi, cfg.algorithm
    horizon, model_dim = model_action_sizes(m)
    if m.num_action_chunks > horizon:
        src = f", from the {op.config_name} preset" if op.action_horizon is None else ""
        raise ConfigError(f"actor.model.num_action_chunks: {m.num_action_chunks} executed actions "
                          f"exceed actor.model.openpi.action_horizon ({horizon}{src})")
    if m.action_dim > model_dim:
        raise ConfigError(f"actor.model.action_dim: {m.action_dim} env action dims exceed "
                          f"actor.model.openpi.action_dim ({model_dim})")
    # The openpi block repeats three model sizes (the seeds interpolate them); two values
    # that disagree would make the env and the log-prob see different chunks.
    for sub, top in (("action_chunk", "num_action_chunks"), ("num_steps", "num_steps"),
                     ("action_env_dim", "action_dim")):
        if op[sub] != m[top]:
            raise ConfigError(
                f"actor.model.openpi.{sub}: {op[sub]} differs from actor.model.{top} "
                f"({m[top]}); leave it as ${{..{top}}}")
    est = registry.estimator(alg.adv_type)
    if est.needs_critic and (not registry.policy_loss(alg.loss_type).needs_critic or not m.add_value_head):
        critic_losses = [k for k, v in registry.POLICY_LOSSES.items() if v.needs_critic]
        raise ConfigError(
            f"algorithm.adv_type: {alg.adv_type} needs a critic: set algorithm.loss_type: "
            f"{' or '.join(critic_losses)} (is {alg.loss_type}) and actor.model.add_value_head: True "
            f"(is {m.add_value_head})")
    if est.needs_critic and m.model_type == "openpi" and not op.add_value_head:
        raise ConfigError(
            f"actor.model.openpi.add_value_head: False, but algorithm.adv_type {alg.adv_type} needs the "
            "critic and π0 reads this key; remove it (it follows actor.model.add_value_head)")
    if est.needs_critic and m.model_type == "openvla_oft" and m.value_type == "action_level":
        raise ConfigError(
            f"actor.model.value_type: action_level gives one value per executed action, but "
            f"algorithm.adv_type {alg.adv_type} with reward_type {alg.reward_type} scores one per chunk "
            f"step (pirl.algos.registry); set actor.model.value_type: chunk_level")
    if est.needs_groups:
        if alg.group_size < 2:
            raise ConfigError(f"algorithm.group_size: {alg.group_size}; GRPO compares "
                              f"episodes within a group and needs >= 2")
        n = cfg.env.train.total_num_envs
        if n % alg.group_size:
            raise ConfigError(f"env.train.total_num_envs: {n} is not a multiple of "
                              f"algorithm.group_size ({alg.group_size})")
        if cfg.env.train.group_size != alg.group_size:
            raise ConfigError(f"env.train.group_size: {cfg.env.train.group_size} differs from "
                              f"algorithm.group_size ({alg.group_size}); set it to "
                              f"${{algorithm.group_size}}")
        if not cfg.env.train.use_fixed_reset_state_ids:
            raise ConfigError("env.train.use_fixed_reset_state_ids: False, but GRPO compares the "
                              "episodes of a group, which must start from one reset state")
    for split in ("train", "eval"):
        e = cfg.env[split]
        problem = check_init_params(e.env_type, as_dict(e.init_params, resolve=True))
        if problem:
            raise ConfigError(f"env.{split}.init_params: {problem}")
        for key in ("max_episode_steps", "max_steps_per_rollout_epoch"):
            if e[key] % m.num_action_chunks:
                raise ConfigError(
                    f"env.{split}.{key}: {e[key]} is not a multiple of "
                    f"actor.model.num_action_chunks ({m.num_action_chunks})")


def eval_enabled(cfg: DictConfig) -> bool:
    r = cfg.runner
    return r.val_check_interval > 0 or r.eval_before_train or r.only_eval


# ------------------------------------------------------------------ layout

def placement_of(cfg: DictConfig, world_size: int) -> Placement:
    """`cluster.component_placement` for `world_size` ranks; errors name the key."""
    raw: Any = OmegaConf.to_container(cfg.cluster.component_placement, resolve=True)  # a mapping: the schema's type
    try:
        p = Placement.from_config(raw, world_size)
    except PlacementError as e:
        key = "cluster.component_placement" + (f".{e.key}" if e.key else "")
        hint = ""
        if e.key is not None and raw.get(e.key, "") is None:
            hint = ("; in a YAML flow mapping quote joined keys, {'env,rollout,actor': all}: "
                    "unquoted, the commas separate keys")
        if "placed twice" in e.detail:
            hint = ("; an override replaces the placement only when given whole, e.g. "
                    "cluster.component_placement='{env: 0-3, rollout: 4-7, actor: 0-7}'")
        size = "" if "world size" in e.detail else f" (world size {world_size})"
        raise ConfigError(f"{key}: {e.detail}{size}{hint}") from None
    if p.idle_ranks:
        raise ConfigError(
            f"cluster.component_placement: ranks {format_ranks(p.idle_ranks)} of the world "
            f"size {world_size} run no component; place them or launch fewer ranks")
    return p


def samples_per_rollout(cfg: DictConfig) -> int:
    """RL samples (chunk steps of one env) collected per training iteration."""
    e = cfg.env.train
    return (e.total_num_envs * e.rollout_epoch
            * (e.max_steps_per_rollout_epoch // cfg.actor.model.num_action_chunks))


def _check_pairing(p: Placement, per_stage: int, group_size: int, key: str) -> None:
    """Env ranks pair with rollout ranks (pirl.engine.placement.pair_env_rollout); when an
    env rank feeds several rollout ranks, the parts of a stage must hold whole groups."""
    try:
        links = pair_env_rollout(p, per_stage)
    except PlacementError as e:
        raise ConfigError(f"cluster.component_placement.{e.key}: {e.detail} ({key}: {per_stage} envs per "
                          f"env rank and stage)") from None
    part = links[0].env_cols[1] - links[0].env_cols[0]
    if part % group_size:
        raise ConfigError(f"{key}: each rollout rank gets {part} envs of a stage, not a multiple of the group "
                          f"size {group_size}; a group must not straddle rollout ranks")


def check_layout(cfg: DictConfig, world_size: int) -> Placement:
    """Everything that depends on the world size: placement, env split, batch split."""
    p = placement_of(cfg, world_size)
    stages = cfg.rollout.pipeline_stage_num
    env_ranks, rollout_ranks, actor_ranks = (len(p.ranks(c)) for c in ("env", "rollout", "actor"))
    splits = ["train"] + (["eval"] if eval_enabled(cfg) else [])
    for split in splits:
        n = cfg.env[split].total_num_envs
        for what, ranks in (("env", env_ranks), ("rollout", rollout_ranks)):
            if n % (ranks * stages):
                raise ConfigError(
                    f"env.{split}.total_num_envs: {n} is not a multiple of {what} ranks "
                    f"({ranks}) x rollout.pipeline_stage_num ({stages})")
        g = cfg.env[split].group_size
        per_stage = n // (env_ranks * stages)
        if per_stage % g:
            raise ConfigError(
                f"env.{split}.total_num_envs: {n} envs give {per_stage} per env rank and "
                f"pipeline stage, not a multiple of env.{split}.group_size ({g}); a group "
                f"must not straddle ranks or stages")
        _check_pairing(p, per_stage, g, f"env.{split}.total_num_envs")
    # trajectories (env columns x rollout epochs) split evenly over the actor ranks
    cols = cfg.env.train.total_num_envs * cfg.env.train.rollout_epoch
    if cols % actor_ranks:
        raise ConfigError(
            f"env.train.total_num_envs: {cfg.env.train.total_num_envs} envs x env.train.rollout_epoch "
            f"{cfg.env.train.rollout_epoch} = {cols} trajectories per iteration do not split evenly over "
            f"the {actor_ranks} actor ranks (cluster.component_placement.actor)")
    g = cfg.algorithm.group_size
    if registry.estimator(cfg.algorithm.adv_type).needs_groups and (cols // actor_ranks) % g:
        raise ConfigError(
            f"env.train.total_num_envs: {cols // actor_ranks} trajectories per actor rank are not a multiple of "
            f"algorithm.group_size ({g}); a GRPO group must not straddle actor ranks")
    mb, gb = cfg.actor.micro_batch_size, cfg.actor.global_batch_size
    if gb % (mb * actor_ranks):
        raise ConfigError(
            f"actor.global_batch_size: {gb} is not a multiple of actor.micro_batch_size "
            f"({mb}) x actor ranks ({actor_ranks})")
    n = samples_per_rollout(cfg)
    if n % gb:
        e = cfg.env.train
        raise ConfigError(
            f"actor.global_batch_size: {gb} does not divide the samples per rollout {n} "
            f"(env.train.total_num_envs {e.total_num_envs} x env.train.rollout_epoch "
            f"{e.rollout_epoch} x env.train.max_steps_per_rollout_epoch "
            f"{e.max_steps_per_rollout_epoch} / actor.model.num_action_chunks "
            f"{cfg.actor.model.num_action_chunks})")
    return p


# ------------------------------------------------------------------ paths

def find_path(value: str) -> Path | None:
    """An existing file or dir for `value`: absolute as is; relative against the working
    directory, then the repo root. None when neither exists."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None


def _require_path(cfg: DictConfig, key: str, what: str) -> Path:
    value = _get(cfg, key)
    found = find_path(str(value))
    if found is None:
        where = "" if Path(value).is_absolute() else f" (looked in {Path.cwd()} and {REPO_ROOT})"
        raise ConfigError(f"{key}: {what} {value!r} does not exist{where}")
    return found


def check_paths(cfg: DictConfig, check_files: bool = True) -> dict[str, Path]:
    """Files the run will open. Returns key -> absolute path for those that are set.
    `check_files=False` (--dry-run) skips the checkpoints, which may not be downloaded yet;
    the DeepSpeed JSON is always read."""
    found: dict[str, Path] = {}
    if cfg.actor.model.model_path is not None and check_files:
        found["actor.model.model_path"] = _require_path(cfg, "actor.model.model_path",
                                                        "checkpoint")
    resume = cfg.runner.resume_dir
    if resume is not None and resume != RESUME_AUTO and check_files:
        found["runner.resume_dir"] = _require_path(cfg, "runner.resume_dir",
                                                   "checkpoint directory")
    ds = _require_path(cfg, "actor.ds_config", "DeepSpeed config")
    try:
        parsed = json.loads(ds.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"actor.ds_config: {ds} is not a JSON file ({e})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"actor.ds_config: {ds} must hold a JSON object, got "
                          f"{type(parsed).__name__}")
    found["actor.ds_config"] = ds
    splits = ("train", "eval") if eval_enabled(cfg) else ("train",)
    for split in splits if check_files else ():  # the simulators' own folders
        env_cfg = cfg.env[split]
        if env_cfg.env_type == "calvin":  # the checkout, before any process starts
            from pirl.envs.calvin import find_calvin_root

            try:
                found[f"env.{split}.calvin_root"] = find_calvin_root(env_cfg.calvin_root,
                                                                     f"env.{split}.calvin_root").root
            except FileNotFoundError as e:
                raise ConfigError(str(e)) from None
        if env_cfg.env_type == "gsenv":  # its asset folder, every file checked (no torch import)
            from pirl.envs.gsenv.assets import check_assets

            try:
                found[f"env.{split}.init_params.assets_path"] = check_assets(env_cfg.init_params.get("assets_path")).root
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"env.{split}.init_params.assets_path: {err}") from None
    return found


def check_token_policy(cfg: DictConfig) -> None:
    """OpenVLA-OFT's keys and rollout.sampling_params, everything that needs no file."""
    if cfg.actor.model.model_type != "openvla_oft":
        return
    from pirl.models.oft import check_oft

    try:
        check_oft(cfg.actor.model, cfg.rollout.sampling_params)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def validate(cfg: DictConfig, world_size: int, check_files: bool = True) -> Placement:
    """All checks, for a job of `world_size` ranks; returns the placement."""
    check_fields(cfg)
    check_model_and_algorithm(cfg)
    check_token_policy(cfg)
    placement = check_layout(cfg, world_size)
    check_paths(cfg, check_files)
    return placement
