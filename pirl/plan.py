"""Accelerator memory per rank, and the DeepSpeed config that fits: `python -m pirl.plan`.

    python -m pirl.plan --config-name X [key=value ...] --world-size 16 --memory-gb 80 [--write ds.json]

From the experiment config (model, placement, batch sizes, env counts) and the world
size: the bytes each rank holds for the actor's parameters, gradients and optimizer
states under ZeRO-2 and ZeRO-3 with and without CPU offload, the activations one
training sample adds, the rollout replica and its KV cache; the largest
`actor.micro_batch_size` that fits each setup; the chosen setup written as a ds_config
JSON for `actor.ds_config`.

Where the numbers come from:
- parameters: the model built on the meta device (every tensor, trainable or frozen as
  the builder and actor.model.trainable / frozen leave it; no memory is allocated);
- activations: the actor's training forward (`Policy.evaluate`) run on the meta device,
  adding up what autograd saves for backward; backward's transient tensors are covered by
  ACTIVATION_PEAK_FACTOR;
- ZeRO's partitions and buffers: DeepSpeed 0.19's rules (stage 2: every rank holds all
  parameters and 1/W of the fp32 master weights, gradients and Adam moments, plus one
  gradient bucket; stage 3: 1/W of the parameters too, except those under
  stage3_param_persistence_threshold, plus the gathered working set);
- KV cache: π0's prefix (image and prompt tokens) per rollout sample.
bench/plan_memory.py checks them against what DeepSpeed allocates on CPU.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GIB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, fp32, per trainable element
# Peak of backward over what the forward saved: backward holds the saved tensors and,
# layer by layer, the gradients of the activations. bench/plan_memory.py measures 1.02
# (pi0_tiny) to 1.13 (pi05_mid) on CPU; the margin is for the sizes it cannot run here.
ACTIVATION_PEAK_FACTOR = 1.25
# Kept free: the allocator's fragmentation, the CUDA context, NCCL's buffers.
RESERVE_FRACTION = 0.10
RESERVE_BYTES = 2 * GIB


@dataclass(frozen=True)
class Setup:
    name: str
    stage: int
    offload_optimizer: bool  # fp32 master weights, their gradients and Adam moments in host memory
    offload_param: bool  # ZeRO-3 parameter partitions in host memory (gathered to the device per layer)
    base_json: str  # the ds_configs/ file it starts from


SETUPS = (
    Setup("zero2", 2, False, False, "ds_configs/zero2.json"),
    Setup("zero3", 3, False, False, "ds_configs/zero3.json"),
    Setup("zero2+offload_optimizer", 2, True, False, "ds_configs/zero2.json"),
    Setup("zero3+offload_optimizer", 3, True, False, "ds_configs/zero3.json"),
    Setup("zero3+offload_optimizer+offload_param", 3, True, True, "ds_configs/zero3_offload.json"),
)


# ------------------------------------------------------------------ the model, on meta

@dataclass(frozen=True)
class ModelStats:
    sizes: tuple[tuple[int, bool], ...]  # (numel, trainable) of every parameter tensor
    largest_module: int  # parameters of the largest module without children (a gathered layer)
    param_bytes: int  # bytes per parameter element (actor.model.precision)
    act_per_sample: float  # bytes the training forward saves per sample (slope)
    act_fixed: float  # and independently of the batch (intercept)
    kv_per_sample: int  # rollout KV cache bytes per sample (0 for models without one)

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.sizes)

    @property
    def trainable(self) -> int:
        return sum(n for n, t in self.sizes if t)


class _MetaScalars(TorchDispatchMode):
    """Answers the data-dependent scalars a meta forward asks for (`bool(mask.all())`) with
    True: flow policies then take their one-stochastic-step path, joint_logprob False."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


def _meta_batch(specs: dict, batch: int) -> dict[str, torch.Tensor]:
    return {k: torch.empty((batch, *s.shape), dtype=s.dtype, device="meta") for k, s in specs.items()}


def saved_activation_bytes(policy, batch: int) -> int:
    """Bytes autograd keeps from one training forward (`evaluate`) of `batch` samples:
    every distinct storage saved for backward or returned, parameters and inputs excluded."""
    inputs, replay = _meta_batch(policy.input_spec(), batch), _meta_batch(policy.replay_spec(), batch)
    known = {t.untyped_storage()._cdata for t in [*policy.parameters(), *inputs.values(), *replay.values()]}
    held: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in known:
            held[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _MetaScalars():
        out = policy.evaluate(inputs, replay)
    for t in out:
        key = t.untyped_storage()._cdata
        if key not in known:
            held.setdefault(key, t.untyped_storage().nbytes())
    return sum(held.values())


def kv_cache_per_sample(policy) -> int:
    """π0's rollout caches the prefix (image tokens of every camera slot + prompt tokens):
    K and V per layer, (kv_heads, prefix, head_dim) each, in the model's dtype."""
    from pirl.models.pi0.policy import Pi0Policy

    if not isinstance(policy, Pi0Policy):
        return 0
    cfg = policy.model.cfg
    prefix = len(cfg.image_keys) * cfg.vision.num_tokens + policy.processor.tokenizer.max_len
    g = cfg.paligemma
    elem = next(policy.model.parameters()).element_size()
    return 2 * g.depth * g.num_kv_heads * g.head_dim * prefix * elem


def model_stats(cfg, state_dim: int) -> ModelStats:
    """Build `actor.model` on the meta device and trace its training forward."""
    from pirl.engine.actor import select_trainable
    from pirl.models import build_policy

    with torch.device("meta"):
        policy = build_policy(cfg.actor.model, state_dim=state_dim)
    select_trainable(policy, list(cfg.actor.model.trainable), list(cfg.actor.model.frozen))
    policy.train()
    a1, a2 = saved_activation_bytes(policy, 1), saved_activation_bytes(policy, 2)
    leaves = [m for m in policy.modules() if not list(m.children())]
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in leaves), default=0)
    return ModelStats(
        sizes=tuple((p.numel(), p.requires_grad) for p in policy.parameters()),
        largest_module=largest,
        param_bytes=DTYPE_BYTES[cfg.actor.model.precision],
        act_per_sample=float(a2 - a1), act_fixed=float(2 * a1 - a2),
        kv_per_sample=kv_cache_per_sample(policy),
    )


# ------------------------------------------------------------------ bytes per rank

@dataclass
class RankBytes:
    """Device bytes of one rank (zero_bytes' keys, plus the rollout side)."""

    stage: int
    params: float
    gathered: float
    grads: float
    bucket: float
    optimizer: float
    host: float
    act_per_sample: float  # saved by the training forward, per micro-batch sample
    act_fixed: float
    rollout: float  # the rollout replica (colocated: on every actor rank too)
    kv_cache: float  # the replica's KV cache for this rank's rollout batch

    @property
    def resident(self) -> float:
        """What the actor holds between steps: ZeRO-2 allocates its fp32 gradient partition
        and bucket for each step (bench/plan_memory.py: the measured ZeRO-2 states are the
        planned ones less exactly that partition), ZeRO-3 keeps both."""
        return self.params + self.optimizer + (self.grads + self.bucket if self.stage == 3 else 0.0)

    def training(self, micro: int) -> float:
        act = (self.act_fixed + self.act_per_sample * micro) * ACTIVATION_PEAK_FACTOR
        return self.params + self.gathered + self.grads + self.bucket + self.optimizer + act

    def peak(self, micro: int, colocated: bool, offload_actor: bool, offload_rollout: bool) -> float:
        """The larger of the training and the rollout phase. Colocated, each phase also
        holds the other component's model unless it is offloaded (actor.enable_offload,
        rollout.enable_offload)."""
        if not colocated:
            return self.training(micro)
        during_train = self.training(micro) + (0.0 if offload_rollout else self.rollout)
        during_rollout = self.rollout + self.kv_cache + (0.0 if offload_actor else self.resident)
        return max(during_train, during_rollout)


def zero_bytes(stats: ModelStats, setup: Setup, ds: dict, world: int) -> dict[str, float]:
    """Bytes per rank of an actor of `world` ranks: `params` (this rank's), `gathered`
    (ZeRO-3: full layers being computed, transient), `grads` (fp32 gradient partition),
    `bucket` (the gradient reduction bucket: ZeRO-2 allocates it for each backward, ZeRO-3
    keeps it), `optimizer` (fp32 master weights + Adam moments), `host` (what offloading
    moves to host memory)."""
    p = stats.param_bytes
    z = ds.get("zero_optimization", {})
    bucket = float(z.get("reduce_bucket_size", 5e8)) * p if z.get("contiguous_gradients", True) else 0.0
    t_part = math.ceil(stats.trainable / world)
    out = {"gathered": 0.0, "grads": float(t_part * FP32), "bucket": bucket,
           "optimizer": float(t_part * FP32 * (1 + ADAM_MOMENTS)), "host": 0.0}
    if setup.stage == 2:
        out["params"] = float(stats.total * p)
    else:
        threshold = int(z.get("stage3_param_persistence_threshold", 1e5))
        persistent = sum(n for n, _ in stats.sizes if n <= threshold)
        partitioned = sum(math.ceil(n / world) for n, _ in stats.sizes if n > threshold)
        # + lp_param_buffer: ZeRO-3's contiguous copy of the trainable partitions
        out["params"] = float((persistent + partitioned + t_part) * p)
        live = min(stats.total, int(z.get("stage3_prefetch_bucket_size", 5e7)) + stats.largest_module)
        out["gathered"] = float(live * p)
    if setup.offload_optimizer:
        out["host"] += out["optimizer"] + out["grads"]
        out["optimizer"] = out["grads"] = 0.0
    if setup.offload_param:
        out["host"] += out["params"]
        out["params"] = 0.0
    return out


def ds_json(setup: Setup, micro: int | None = None) -> dict:
    from pirl.engine.ds_config import load_ds_json

    ds = copy.deepcopy(load_ds_json(setup.base_json))
    z = ds.setdefault("zero_optimization", {})
    z["stage"] = setup.stage
    if setup.offload_optimizer:
        z["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        ds["zero_force_ds_cpu_optimizer"] = False  # pirl's own AdamW runs on the offloaded partition
    else:
        z.pop("offload_optimizer", None)
    if setup.offload_param:
        z["offload_param"] = {"device": "cpu", "pin_memory": True}
    else:
        z.pop("offload_param", None)
    if micro is not None:
        ds["train_micro_batch_size_per_gpu"] = micro
    return ds


@dataclass
class Row:
    setup: Setup
    bytes: RankBytes
    micro: int  # largest valid actor.micro_batch_size that fits (0: none)
    peak: float  # at that micro-batch (at 1 when none fits)
    room: int  # samples per micro-batch the memory holds, batch divisibility aside


def plan(cfg, world: int, memory_bytes: float) -> tuple[ModelStats, list[Row]]:
    from pirl.config.validate import placement_of
    from pirl.envs import make_env

    placement = placement_of(cfg, world)
    actor_ranks = len(placement.ranks("actor"))
    rollout_ranks = len(placement.ranks("rollout"))
    env = make_env(cfg.env.train, 1, seed=0, rank=0)
    state_dim = env.state_dim
    env.close()
    stats = model_stats(cfg, state_dim)
    envs_per_rollout_rank = cfg.env.train.total_num_envs // rollout_ranks
    rollout_batch = envs_per_rollout_rank // cfg.rollout.pipeline_stage_num
    global_batch = cfg.actor.global_batch_size
    micros = [m for m in range(1, global_batch // actor_ranks + 1) if global_batch % (m * actor_ranks) == 0]
    budget = memory_bytes * (1 - RESERVE_FRACTION) - RESERVE_BYTES
    colocated = placement.is_colocated
    rows = []
    for setup in SETUPS:
        rb = RankBytes(setup.stage, **zero_bytes(stats, setup, ds_json(setup), actor_ranks),
                       act_per_sample=stats.act_per_sample, act_fixed=stats.act_fixed,
                       rollout=float(stats.total * stats.param_bytes),
                       kv_cache=float(stats.kv_per_sample * rollout_batch))
        peaks = {m: rb.peak(m, colocated, cfg.actor.enable_offload, cfg.rollout.enable_offload) for m in micros}
        fitting = [m for m in micros if peaks[m] <= budget]
        best = max(fitting, default=0)
        peak_of = lambda m, rb=rb: rb.peak(m, colocated, cfg.actor.enable_offload, cfg.rollout.enable_offload)  # noqa: E731
        lo, hi = 0, 1
        while peak_of(hi) <= budget and hi < 1 << 24:  # peak grows linearly in the micro-batch
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if peak_of(mid) <= budget else (lo, mid)
        rows.append(Row(setup, rb, best, peaks[best] if best else peaks[micros[0]], lo))
    return stats, rows


def choose(rows: list[Row], want: int) -> Row | None:
    """The first setup (least communication and offload traffic first) that fits the
    requested micro-batch; else the one fitting the largest micro-batch; None if none fits."""
    for row in rows:
        if row.micro >= want:
            return row
    fitting = [r for r in rows if r.micro > 0]
    return max(fitting, key=lambda r: r.micro) if fitting else None


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}"


def format_table(stats: ModelStats, rows: list[Row], memory_bytes: float) -> str:
    lines = [
        f"parameters {stats.total:,} ({stats.trainable:,} trainable), {stats.param_bytes} bytes each; "
        f"activations {stats.act_per_sample / 2**20:.1f} MiB per training sample "
        f"(x{ACTIVATION_PEAK_FACTOR:g} at backward's peak); KV cache {stats.kv_per_sample / 2**20:.2f} MiB per "
        f"rollout sample; budget {(memory_bytes * (1 - RESERVE_FRACTION) - RESERVE_BYTES) / GIB:.1f} of "
        f"{memory_bytes / GIB:.1f} GiB",
        f"{'setup (GiB per rank)':40s} {'params':>8s} {'gather':>8s} {'grads':>8s} {'bucket':>8s} {'optim':>8s} "
        f"{'act/smp':>8s} {'rollout':>8s} {'kv':>8s} {'host':>8s} {'micro':>6s} {'peak':>8s} {'room':>6s}",
    ]
    for r in rows:
        b = r.bytes
        lines.append(f"{r.setup.name:40s} {_gib(b.params)} {_gib(b.gathered)} {_gib(b.grads)} {_gib(b.bucket)} "
                     f"{_gib(b.optimizer)} "
                     f"{_gib(b.act_per_sample)} {_gib(b.rollout)} {_gib(b.kv_cache)} {_gib(b.host)} "
                     f"{r.micro if r.micro else '-':>6} {_gib(r.peak)} {r.room:>6}")
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    """The per-setup rows as a markdown table (GiB per rank), for docs/multinode.md."""
    head = ("| setup | params | gathered | grads | bucket | optimizer | act. per sample | rollout | KV cache | "
            "host | largest micro-batch | peak | room (samples) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        b = r.bytes
        cells = [b.params, b.gathered, b.grads, b.bucket, b.optimizer, b.act_per_sample, b.rollout, b.kv_cache, b.host]
        lines.append(f"| {r.setup.name} | " + " | ".join(f"{c / GIB:.2f}" for c in cells)
                     + f" | {r.micro or '-'} | {r.peak / GIB:.1f} | {r.room} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pirl.config import ConfigError, build_arg_parser, load_config

    parser = build_arg_parser(prog="python -m pirl.plan")
    parser.add_argument("--memory-gb", type=float, required=True, help="accelerator memory per rank, GB (1e9 bytes)")
    parser.add_argument("--write", type=Path, default=None, help="write the chosen ds_config JSON here")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_intermixed_args(argv)
    try:
        # The micro-batch asked for is a wish here, not a constraint: the config is checked
        # for the world size with micro-batch 1 and the planner picks the size.
        want = load_config(args.config_name, args.config_path, args.overrides, world_size=1).actor.micro_batch_size
        cfg = load_config(args.config_name, args.config_path, [*args.overrides, "actor.micro_batch_size=1"],
                          world_size=args.world_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from pirl.config import world_size_of

    world = args.world_size or world_size_of(cfg)
    memory = args.memory_gb * 1e9
    stats, rows = plan(cfg, world, memory)
    print(format_table(stats, rows, memory))
    if args.markdown:
        print(format_markdown(rows))
    row = choose(rows, want)
    if row is None:
        print(f"nothing fits in {args.memory_gb:g} GB per rank at world size {world}: more ranks, a smaller "
              f"model (LoRA, actor.model.trainable) or rollout.pipeline_stage_num", file=sys.stderr)
        return 1
    print(f"chosen: {row.setup.name}, actor.micro_batch_size={row.micro} (peak {row.peak / GIB:.2f} GiB per rank)")
    if args.write is not None:
        args.write.write_text(json.dumps(ds_json(row.setup, row.micro), indent=2) + "\n")
        print(f"wrote {args.write}: run with actor.ds_config={args.write} actor.micro_batch_size={row.micro}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
