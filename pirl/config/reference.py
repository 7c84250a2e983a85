"""Keys of the reference system (RLinf) that pirl does its own way, or not at all.

pirl reads the reference system's experiment YAML as written. Three kinds of its keys
need more than the schema (pirl/config/schema.py):

* mapped: the reference's key for something pirl does differently is translated onto
  pirl's key with a one-line notice (`ConfigNotice`), e.g. FSDP's sharding strategy onto
  a DeepSpeed ZeRO stage. A mapped key that contradicts the pirl key it maps onto, both
  given, is an error naming both.
* taken as given: a schema key whose feature pirl lacks is accepted with the value that
  describes what pirl does (`kl_beta: 0.0`, `use_step_penalty: False`, ...); any other
  value is refused by name, with what pirl offers instead (`RESTRICTED`).
* informational: Ray worker-group names and similar keys that change nothing in either
  system; accepted and documented in the schema.

Nothing is silently ignored. configs/README.md lists all of them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf


class ConfigNotice(UserWarning):
    """A reference-system key read in pirl's own terms (printed once, on rank 0)."""


class ReferenceKeyError(ValueError):
    """A reference-system key pirl cannot honour; `key` names it (for the file lookup)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def notice(message: str) -> None:
    warnings.warn(message, ConfigNotice, stacklevel=3)


# ------------------------------------------------------------------ mapped sections

# FSDP sharding strategy -> the DeepSpeed config with the same partitioning: no_shard
# replicates parameters, gradients and optimizer state (DDP; ZeRO stage 0), shard_grad_op
# partitions gradients and optimizer state (stage 2), full_shard everything (stage 3).
SHARDING_TO_DS_CONFIG = {
    "no_shard": "ds_configs/zero0.json",
    "shard_grad_op": "ds_configs/zero2.json",
    "full_shard": "ds_configs/zero3.json",
}
FSDP_CPU_OFFLOAD_DS_CONFIG = "ds_configs/zero3_offload.json"  # full_shard + cpu_offload
FSDP_STRATEGIES = ("fsdp", "fsdp2")
# FSDP's own tuning knobs with the values the reference system ships (its
# hybrid_engines/fsdp.yaml): there they change nothing pirl could honour; any other value
# is refused, with DeepSpeed's own settings (actor.ds_config) named instead.
FSDP_TUNING_DEFAULTS = {
    "offload_pin_memory": False,
    "reshard_after_forward": True,
    "enable_gradient_accumulation": True,
    "forward_prefetch": False,
    "limit_all_gathers": False,
    "backward_prefetch": None,
    "use_orig_params": False,
    "use_liger_kernel": False,
    "amp_autocast.enabled": False,
    "amp_autocast.precision": "bf16",
    "grad_scaler.enabled": False,
}
DTYPE_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
               "fp32": "fp32", "float32": "fp32"}
WEIGHT_SYNCER_TYPES = ("patch", "bucket")
TRAINING_BACKENDS = ("fsdp",)  # the reference's name for its data-parallel trainer


@dataclass
class Mapping:
    """What the reference sections of one config map onto: pirl key -> (value, source key)."""

    targets: dict[str, tuple[Any, str]]

    def set(self, key: str, value: Any, source: str) -> None:
        old = self.targets.get(key)
        if old is not None and old[0] != value:
            raise ReferenceKeyError(source, f"{source} maps {key} to {value!r}, but {old[1]} maps it "
                                            f"to {old[0]!r}")
        self.targets[key] = (value, source)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _map_fsdp(fsdp: dict, m: Mapping) -> None:
    """actor.fsdp_config -> actor.ds_config, actor.model.precision,
    actor.model.gradient_checkpointing."""
    root = "actor.fsdp_config"
    flat = _flat(fsdp)
    known = {"strategy", "sharding_strategy", "gradient_checkpointing", "cpu_offload",
             "mixed_precision.param_dtype", "mixed_precision.reduce_dtype",
             "mixed_precision.buffer_dtype", *FSDP_TUNING_DEFAULTS}
    for key in flat:
        if key not in known:
            raise ReferenceKeyError(f"{root}.{key}", f"unknown key {root}.{key}: pirl maps "
                                    f"{', '.join(sorted(known))} of the reference's FSDP config")
    strategy = flat.get("strategy")
    if strategy is not None and strategy not in FSDP_STRATEGIES:
        raise ReferenceKeyError(f"{root}.strategy", f"{root}.strategy: {strategy!r} is not one of "
                                f"{', '.join(FSDP_STRATEGIES)}; pirl trains with DeepSpeed ZeRO (actor.ds_config)")
    sharding = flat.get("sharding_strategy")
    offload = bool(flat.get("cpu_offload") or False)
    if sharding is not None:
        if sharding not in SHARDING_TO_DS_CONFIG:
            raise ReferenceKeyError(
                f"{root}.sharding_strategy",
                f"{root}.sharding_strategy: {sharding!r} has no DeepSpeed counterpart here; pirl "
                f"maps {', '.join(f'{k} -> {v}' for k, v in SHARDING_TO_DS_CONFIG.items())} "
                f"(or set actor.ds_config)")
        ds = SHARDING_TO_DS_CONFIG[sharding]
        if offload:
            if sharding != "full_shard":
                raise ReferenceKeyError(f"{root}.cpu_offload", f"{root}.cpu_offload: True needs "
                                        f"sharding_strategy full_shard (ZeRO-3 offload), got {sharding!r}")
            ds = FSDP_CPU_OFFLOAD_DS_CONFIG
        m.set("actor.ds_config", ds, f"{root}.sharding_strategy")
    elif offload:
        m.set("actor.ds_config", FSDP_CPU_OFFLOAD_DS_CONFIG, f"{root}.cpu_offload")
    if flat.get("gradient_checkpointing") is not None:
        m.set("actor.model.gradient_checkpointing", bool(flat["gradient_checkpointing"]),
              f"{root}.gradient_checkpointing")
    dtypes = {}
    for part in ("param_dtype", "reduce_dtype", "buffer_dtype"):
        value = flat.get(f"mixed_precision.{part}")
        if value is None:
            continue
        if str(value) not in DTYPE_NAMES:
            raise ReferenceKeyError(f"{root}.mixed_precision.{part}",
                                    f"{root}.mixed_precision.{part}: {value!r} is not one of "
                                    f"{', '.join(DTYPE_NAMES)}")
        dtypes[part] = DTYPE_NAMES[str(value)]
    if len(set(dtypes.values())) > 1:
        raise ReferenceKeyError(f"{root}.mixed_precision",
                                f"{root}.mixed_precision: {dtypes} differ; DeepSpeed keeps parameters, "
                                f"gradient reduction and buffers in one precision (actor.model.precision)")
    if dtypes:
        part = next(iter(dtypes))
        m.set("actor.model.precision", dtypes[part], f"{root}.mixed_precision.{part}")
    for key, default in FSDP_TUNING_DEFAULTS.items():
        if key in flat and flat[key] != default:
            raise ReferenceKeyError(
                f"{root}.{key}", f"{root}.{key}: {flat[key]!r} tunes FSDP, which pirl does not run "
                f"(only {default!r} is taken); tune DeepSpeed in actor.ds_config (ds_configs/*.json)")


def _map_sections(ref: dict, m: Mapping, notices: list[str]) -> None:
    """Every reference-only section of a resolved config -> mapping and notices."""
    actor = ref.get("actor", {})
    if "fsdp_config" in actor:
        _map_fsdp(actor["fsdp_config"] or {}, m)
        notices.append("actor.fsdp_config: pirl trains with DeepSpeed ZeRO; mapped "
                       + ", ".join(f"{src} -> {key}={val}" for key, (val, src) in sorted(m.targets.items()))
                       if m.targets else "actor.fsdp_config: pirl trains with DeepSpeed ZeRO (actor.ds_config)")
    backend = actor.get("training_backend")
    if backend is not None:
        if backend not in TRAINING_BACKENDS:
            raise ReferenceKeyError("actor.training_backend",
                                    f"actor.training_backend: {backend!r}; pirl trains with DeepSpeed "
                                    f"ZeRO only (the reference's {', '.join(TRAINING_BACKENDS)} maps onto it)")
        notices.append(f"actor.training_backend: {backend} -> DeepSpeed ZeRO (actor.ds_config)")
    syncer = ref.get("weight_syncer")
    if syncer is not None:
        kind = (syncer or {}).get("type")
        if kind is not None and kind not in WEIGHT_SYNCER_TYPES:
            raise ReferenceKeyError("weight_syncer.type", f"weight_syncer.type: {kind!r} is not one of "
                                    f"{', '.join(WEIGHT_SYNCER_TYPES)}")
        notices.append("weight_syncer: pirl sends the actor's trainable tensors to the rollout replica "
                       "after every update (pirl/engine); weight_syncer.* settings are not read")
    for section, flag, instead in (
            ("reward", "use_reward_model", "rewards come from the env (env.<split>.reward_mode)"),
            ("critic", "use_critic_model", "the critic is the policy's value head (actor.model.add_value_head)")):
        node = ref.get(section)
        if node is None:
            continue
        for key, value in _flat(node).items():
            if key != flag:
                raise ReferenceKeyError(f"{section}.{key}", f"unknown key {section}.{key}: pirl reads only "
                                        f"{section}.{flag} (False): {instead}")
            if value:
                raise ReferenceKeyError(f"{section}.{flag}", f"{section}.{flag}: True; pirl has no separate "
                                        f"{section} model: {instead}")


# Top-level sections and actor / actor.optim keys that exist only in the reference system.
REFERENCE_SECTIONS = ("weight_syncer", "reward", "critic", "trainer")
REFERENCE_ACTOR_KEYS = ("fsdp_config", "training_backend")
REFERENCE_OPTIM_KEYS = ("min_lr_rate", "num_cycles", "lr_warmup_steps_ratio")
COSINE_HALF_CYCLE = 0.5  # transformers' num_cycles of a cosine from lr down to the floor: pirl's schedule


def split_reference(cfg: DictConfig) -> DictConfig:
    """Remove the reference-only sections from `cfg` (in place); returns them as a config
    attached to nothing, interpolations intact."""
    out: dict[str, Any] = {}
    for key in REFERENCE_SECTIONS:
        if key in cfg:
            out[key] = cfg[key]
            del cfg[key]
    actor = cfg.get("actor")
    if isinstance(actor, DictConfig):
        for key in REFERENCE_ACTOR_KEYS:
            if key in actor:
                out.setdefault("actor", {})[key] = actor[key]
                del actor[key]
        optim = actor.get("optim")
        for key in REFERENCE_OPTIM_KEYS if isinstance(optim, DictConfig) else ():
            if key in optim:
                out.setdefault("actor", {}).setdefault("optim", {})[key] = optim[key]
                del optim[key]
    return OmegaConf.create(out)


def map_reference(ref: DictConfig, full: DictConfig, given: Callable[[str], bool]) -> list[str]:
    """Map the reference-only sections `ref` (from `split_reference`) onto pirl keys of
    `full` (untyped, in place). Values resolve against `full` (the seeds interpolate
    `${actor.model.precision}` into FSDP's mixed precision). `given(key)` tells whether
    the user's files or overrides set a pirl key; a mapped value that contradicts one is an
    error naming both. Returns the notices (one line each)."""
    if not len(ref):
        return []
    tmp = OmegaConf.merge(full, ref)
    assert isinstance(tmp, DictConfig)
    nested: dict[str, Any] = {}
    for key in map(str, ref):
        if key == "actor":
            nested["actor"] = {str(k): _plain(tmp.actor[k]) for k in ref.actor}
        else:
            nested[key] = _plain(tmp[key])
    m = Mapping({})
    notices: list[str] = []
    _map_sections(nested, m, notices)
    _map_optim(nested.get("actor", {}).get("optim") or {}, tmp.actor.optim.lr, m, notices)
    for key, (value, source) in m.targets.items():
        current = OmegaConf.select(full, key)
        if given(key) and current != value:
            raise ReferenceKeyError(source, f"{source} maps to {key}={value!r}, but {key} is set to "
                                            f"{current!r}; remove one of the two")
        OmegaConf.update(full, key, value, merge=False)
    if "trainer" in nested:
        notices.append(_map_legacy_trainer(nested["trainer"], full))
    return notices


def _map_optim(optim: dict, lr: float, m: Mapping, notices: list[str]) -> None:
    """The reference's scheduler keys: min_lr_rate -> actor.optim.min_lr (a fraction of lr);
    num_cycles and lr_warmup_steps_ratio only where they describe pirl's schedule."""
    root = "actor.optim"
    if optim.get("min_lr_rate") is not None:
        rate = optim["min_lr_rate"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ReferenceKeyError(f"{root}.min_lr_rate", f"{root}.min_lr_rate: {rate!r} is not in [0, 1]")
        floor = float(f"{rate * lr:.6g}")  # 0.1 x 5e-6 is 5e-07, not 5.000000000000001e-07
        m.set(f"{root}.min_lr", floor, f"{root}.min_lr_rate")
        notices.append(f"{root}.min_lr_rate {rate} -> {root}.min_lr {floor:g} (of lr {lr:g})")
    if optim.get("num_cycles", COSINE_HALF_CYCLE) != COSINE_HALF_CYCLE:
        raise ReferenceKeyError(f"{root}.num_cycles", f"{root}.num_cycles: {optim['num_cycles']!r}; pirl's cosine "
                                f"runs once from lr down to min_lr (the reference's {COSINE_HALF_CYCLE})")
    if optim.get("lr_warmup_steps_ratio", 0) not in (0, 0.0, None):
        raise ReferenceKeyError(f"{root}.lr_warmup_steps_ratio", f"{root}.lr_warmup_steps_ratio: "
                                f"{optim['lr_warmup_steps_ratio']!r}; give the warmup as {root}.lr_warmup_steps")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# The OpenVLA seed's old `trainer.logger.wandb` block: an alias of runner.logger, applied
# on top of it (as the reference system's older versions read it).
LEGACY_WANDB_KEYS = ("enable", "project_name", "experiment_name")


def _map_legacy_trainer(trainer: Any, full: DictConfig) -> str:
    for key in _flat(trainer):
        if not key.startswith("logger.wandb."):
            raise ReferenceKeyError(f"trainer.{key}", f"unknown key trainer.{key}: pirl has no `trainer` "
                                    f"section; only the old trainer.logger.wandb block is read, as an "
                                    f"alias of runner.logger")
        sub = key[len("logger.wandb."):]
        if sub not in LEGACY_WANDB_KEYS:
            raise ReferenceKeyError(f"trainer.{key}", f"unknown key trainer.{key}; the old block knows "
                                    f"{', '.join(LEGACY_WANDB_KEYS)} (use runner.logger for the rest)")
    block = trainer["logger"]["wandb"]
    log = full.runner.logger
    for key in ("project_name", "experiment_name"):
        if key in block:
            if not isinstance(block[key], str):
                raise ReferenceKeyError(f"trainer.logger.wandb.{key}",
                                        f"trainer.logger.wandb.{key}: expected a string, got {block[key]!r}")
            log[key] = block[key]
    if "enable" in block:
        if not isinstance(block["enable"], bool):
            raise ReferenceKeyError("trainer.logger.wandb.enable", "trainer.logger.wandb.enable: expected a "
                                    f"bool (True/False), got {block['enable']!r}")
        backends = [b for b in log.logger_backends if b != "wandb"]
        log.logger_backends = backends + (["wandb"] if block["enable"] else [])
    return ("trainer.logger.wandb is the old spelling: read as runner.logger.logger_backends (wandb "
            "added or removed), runner.logger.project_name and runner.logger.experiment_name")


# ------------------------------------------------------------------ taken as given

@dataclass(frozen=True)
class Restricted:
    """A schema key pirl takes only where `ok(value, cfg)`; `instead` says what pirl offers."""

    key: str
    ok: Callable[[Any, DictConfig], bool]
    instead: str


def _is(expected: Any) -> Callable[[Any, DictConfig], bool]:
    return lambda v, cfg: v == expected


def _same_as(other: str) -> Callable[[Any, DictConfig], bool]:
    return lambda v, cfg: v is None or v == OmegaConf.select(cfg, other)


SPLITS = ("train", "eval")
RESTRICTED: list[Restricted] = [
    Restricted("runner.ckpt_path", _is(None),
               "pirl loads weights from actor.model.model_path (pirl, openpi or lerobot folders) and "
               "resumes runs from runner.resume_dir"),
    Restricted("algorithm.kl_beta", _is(0.0),
               "pirl has no reference-policy KL penalty; PPO's ratio clip (clip_ratio_low / high) "
               "bounds the update"),
    Restricted("actor.optim.critic_warmup_steps", _is(0),
               "pirl trains actor and critic together from the first iteration"),
    Restricted("actor.model.use_proprio",
               lambda v, cfg: v is None or v or cfg.actor.model.model_type == "openvla_oft",
               "π0 and flow_mlp always read the robot state"),
    Restricted("actor.model.model_name", _same_as("actor.model.model_type"),
               "actor.model.model_type chooses the model"),
    Restricted("actor.model.openpi.noise_anneal", _is(False),
               "pirl keeps actor.model.openpi.noise_level fixed over training"),
    Restricted("actor.model.openpi.use_dsrl", _is(False),
               "pirl fine-tunes the flow policy itself (Flow-SDE / Flow-Noise PPO or GRPO)"),
    Restricted("actor.model.openpi.value_vlm_mode", _is("mean_token"),
               "pirl's value_after_vlm critic reads the mean of the valid prefix outputs"),
    Restricted("rollout.generation_backend", _is("huggingface"),
               "pirl's rollout replica samples with the policy's own torch code"),
    Restricted("rollout.recompute_logprobs", _is(False),
               "the rollout replica's log-probs are the PPO old log-probs (the weights are synced "
               "before every rollout)"),
    Restricted("rollout.model.model_path", _same_as("actor.model.model_path"),
               "the rollout replica is the actor's weights (set actor.model.model_path)"),
    Restricted("rollout.model.precision", _same_as("actor.model.precision"),
               "the rollout replica runs in actor.model.precision"),
    Restricted("env.enable_offload", _is(False), "simulators stay on their env ranks"),
    Restricted("env.eval.rollout_epoch", _is(1),
               "pirl's eval runs one episode per eval env: raise env.eval.total_num_envs"),
    *[r for split in SPLITS for r in (
        Restricted(f"env.{split}.use_ordered_reset_state_ids", _is(False),
                   "pirl draws reset states from the env seed (env.<split>.seed)"),
        Restricted(f"env.{split}.specific_reset_id", _is(None),
                   "one LIBERO task: task_suite_name '<suite>:<task index>'"),
        Restricted(f"env.{split}.use_step_penalty", _is(False),
                   "rewards are the env's (reward_mode, use_rel_reward, reward_coef)"),
        Restricted(f"env.{split}.reset_gripper_open", _is(True),
                   "LIBERO resets settle with the gripper open"),
        Restricted(f"env.{split}.enable_offload", _is(False), "simulators stay on their env ranks"),
    )],
]


def check_restricted(cfg: DictConfig) -> Optional[tuple[str, str]]:
    """(key, message) of the first key outside what pirl takes, else None."""
    for r in RESTRICTED:
        value = OmegaConf.select(cfg, r.key)
        if not r.ok(value, cfg):
            return r.key, f"{r.key}: {value!r} is not taken by pirl: {r.instead}"
    return None


def reference_notices(cfg: DictConfig) -> list[str]:
    """Notices for taken keys that have no effect here, so nothing is silently ignored."""
    out = []
    if cfg.algorithm.reward_coef != 1.0:
        out.append(f"algorithm.reward_coef: {cfg.algorithm.reward_coef} scales nothing (neither in the "
                   f"reference system); env.train.reward_coef ({cfg.env.train.reward_coef}) scales rewards")
    opt = cfg.actor.optim
    if opt.lr_scheduler == "cosine" and opt.total_training_steps > 0:
        out.append(f"actor.optim.total_training_steps: {opt.total_training_steps} optimizer steps (the reference "
                   f"system counts iterations there; -1 derives the horizon from runner.max_epochs)")
    if cfg.rollout.unnorm_key is not None and cfg.actor.model.model_type in ("flow_mlp", "openpi"):
        out.append(f"rollout.unnorm_key: {cfg.rollout.unnorm_key!r} is an OpenVLA statistics key; "
                   f"{cfg.actor.model.model_type} normalizes with its own norm stats")
    return out
