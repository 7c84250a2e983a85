"""The actor: a Policy (with its value head) trained under `deepspeed.initialize`.

The optimizer is ours (AdamW, a separate value-head learning rate, warmup + cosine), the
sharding, gradient accumulation and clipping DeepSpeed's, configured by one rendered JSON
(pirl/engine/ds_config.py). Which parameters train is a first-class input: regexes in
`actor.model.trainable` / `actor.model.frozen` (π0 freezes its VLM through them).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import deepspeed
import torch
from torch import nn

from pirl.engine.ds_config import render_ds_config, zero_stage
from pirl.models.policy import Policy

VALUE_HEAD_PATTERN = re.compile(r"(^|\.)value_head\.")

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


def select_trainable(model: nn.Module, trainable: list[str], frozen: list[str]) -> tuple[int, int]:
    """Narrow requires_grad by regexes (searched in parameter names): a parameter trains if
    the model builder left it trainable (π0's train_expert_only and LoRA freeze towers
    there), it matches `trainable` (empty: any name) and no `frozen` pattern. Never turns a
    frozen parameter back on. Returns (trainable count, total count) of elements."""
    pats_t = [re.compile(p) for p in trainable]
    pats_f = [re.compile(p) for p in frozen]
    n_train = n_total = 0
    for name, p in model.named_parameters():
        on = (p.requires_grad and (not pats_t or any(r.search(name) for r in pats_t))
              and not any(r.search(name) for r in pats_f))
        p.requires_grad_(on)
        n_total += p.numel()
        n_train += p.numel() if on else 0
    if n_train == 0:
        raise ValueError(f"actor.model.trainable={trainable} / frozen={frozen} leave no trainable parameter")
    return n_train, n_total


def trainable_names(model: nn.Module) -> set[str]:
    """Parameters that train (after `select_trainable`): what a weight sync sends."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def build_optimizer(model: nn.Module, optim_cfg) -> GuardedAdamW:
    """AdamW over trainable parameters; the value head gets `value_lr`."""
    policy: list[nn.Parameter] = []
    value: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (value if VALUE_HEAD_PATTERN.search(name) else policy).append(p)
    groups = [{"params": policy, "lr": float(optim_cfg.lr), "name": "policy"}]
    if value:
        groups.append({"params": value, "lr": float(optim_cfg.value_lr), "name": "value"})
    return GuardedAdamW(
        groups, lr=float(optim_cfg.lr), betas=(float(optim_cfg.adam_beta1), float(optim_cfg.adam_beta2)),
        eps=float(optim_cfg.adam_eps), weight_decay=float(optim_cfg.weight_decay),
    )


def lr_lambda(optim_cfg, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step s: linear warmup, then constant or cosine
    down to min_lr/lr at `total_steps`."""
    warmup = int(optim_cfg.lr_warmup_steps)
    kind = str(optim_cfg.lr_scheduler)
    floor = float(optim_cfg.min_lr) / float(optim_cfg.lr) if float(optim_cfg.lr) > 0 else 0.0
    if kind not in ("constant", "cosine"):
        raise ValueError(f"actor.optim.lr_scheduler must be constant or cosine, got {kind!r}")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f



class GuardedAdamW(torch.optim.AdamW):
    """AdamW that skips a step (weights and moments untouched) when any gradient on any
    rank is NaN/Inf. DeepSpeed calls it on whatever it holds: full parameters (ZeRO-0), or
    this rank's fp32 partitions (ZeRO-1/2, offload). ZeRO-3 already skips a step whose
    gradient norm is not finite before calling it; the guard covers the other stages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_steps = 0
        self.last_step_skipped = False
        self.group = None  # the actor ranks' process group (pirl.engine.groups); None: WORLD

    def _all_finite(self) -> bool:
        bad = torch.zeros(1)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    bad += 1
        if torch.distributed.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            bad = bad.to(device)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return bool(bad.item() == 0)

    @torch.no_grad()
    def step(self, closure=None):
        self.last_step_skipped = not self._all_finite()
        if self.last_step_skipped:
            self.skipped_steps += 1
            return None
        return super().step(closure)


class GuardedLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """Does not advance the schedule on a step the guarded optimizer skipped."""

    def step(self, epoch=None):
        if getattr(self.optimizer, "last_step_skipped", False):
            return
        super().step(epoch)


class ActorEngine:
    """Owns the DeepSpeed engine of the policy. `train_step` runs one optimizer step over a
    list of this rank's micro-batches (DeepSpeed steps at the accumulation boundary)."""

    def __init__(self, policy: nn.Module, actor_cfg, num_actor_ranks: int, total_steps: int, mpu=None):
        """`policy`: a Policy for RL; pirl.sft hands it its flow-matching objective module.
        `mpu` (pirl.engine.groups.DataParallelMPU) puts ZeRO's partitions and all-reduces on
        the actor ranks' group; None: on WORLD (a run where every rank is an actor)."""
        self.n_trainable, self.n_params = select_trainable(
            policy, list(actor_cfg.model.trainable), list(actor_cfg.model.frozen))
        self.ds_config = render_ds_config(actor_cfg, num_actor_ranks)
        self.grad_accum = int(self.ds_config["gradient_accumulation_steps"])
        optimizer = build_optimizer(policy, actor_cfg.optim)
        optimizer.group = mpu.get_data_parallel_group() if mpu is not None else None
        scheduler = GuardedLambdaLR(optimizer, lr_lambda(actor_cfg.optim, total_steps))
        self.client_optimizer = optimizer
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config, mpu=mpu)
        self.zero_stage = zero_stage(self.ds_config)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for NaN/Inf: by DeepSpeed (ZeRO-3 checks the gradient
        norm itself, fp16 checks overflow) or by the guarded optimizer (other stages)."""
        return int(self.engine.skipped_steps) + self.client_optimizer.skipped_steps

    @property
    def module(self) -> Policy:
        return self.engine.module

    def train_step(self, micro_batches: list[dict], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (DeepSpeed steps at the
        accumulation boundary). A non-finite loss or gradient on any rank makes the guarded
        optimizer skip the step on every rank; it is counted in actor/skipped_steps."""
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"train_step needs {self.grad_accum} micro-batches (gradient accumulation), "
                             f"got {len(micro_batches)}")
        self.engine.train()
        skipped_before = self.skipped_steps
        totals: dict[str, float] = {}
        for mb in micro_batches:
            loss, metrics = loss_fn(self.engine, mb)
            self.engine.backward(loss)
            self.engine.step()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(micro_batches)
        gn = self.engine.get_global_grad_norm()
        skipped = self.skipped_steps > skipped_before
        totals["actor/grad_norm"] = float(gn) if gn is not None and not skipped else float("nan")
        totals["actor/lr"] = float(self.client_optimizer.param_groups[0]["lr"])
        totals["actor/skipped_steps"] = float(self.skipped_steps)
        return totals

    # ---- weights for the rollout copy -----------------------------------------------------
    @torch.no_grad()
    def copy_weights_to(self, target: nn.Module, chunk_numel: int = 50_000_000) -> None:
        """Copy the (possibly ZeRO-3-sharded) policy weights into an unsharded replica,
        gathering at most ~chunk_numel elements at a time."""
        src = dict(self.engine.module.named_parameters())
        dst = dict(target.named_parameters())
        if src.keys() != dst.keys():
            raise RuntimeError("rollout replica and actor policy have different parameters")
        names = list(src)
        i = 0
        while i < len(names):
            chunk: list[str] = []
            n = 0
            while i < len(names) and (not chunk or n < chunk_numel):
                p = src[names[i]]
                chunk.append(names[i])
                n += getattr(p, "ds_numel", p.numel())
                i += 1
            params = [src[k] for k in chunk]
            if self.zero_stage == 3:
                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    for k in chunk:
                        dst[k].copy_(src[k].data.to(dst[k].device, dst[k].dtype))
            else:
                for k in chunk:
                    dst[k].copy_(src[k].data.to(dst[k].device, dst[k].dtype))
        dst_buffers = dict(target.named_buffers())
        for name, buf in self.engine.module.named_buffers():
            dst_buffers[name].copy_(buf)

    # ---- checkpoints ------------------------------------------------------------------
    def save(self, directory: str, client_state: dict) -> None:
        self.engine.save_checkpoint(directory, tag="actor", client_state=client_state)

    def load(self, directory: str) -> dict:
        _, client_state = self.engine.load_checkpoint(directory, tag="actor")
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed actor checkpoint under {directory}")
        return client_state
