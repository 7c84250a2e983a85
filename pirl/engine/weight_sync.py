"""Weight sync: the actor's weights into every rollout replica after an update.

Only what training changes travels: trainable parameters and buffers (a frozen VLM is sent
once, at version 0, and never again; the reference system's patch syncer does the same).
They are gathered from the ZeRO-3 shards a bucket at a time (`GatheredParameters` over the
actor group) and, when some rollout rank is not an actor rank, broadcast from the first
actor rank over the weights group (pirl.engine.groups) in flat buckets of one dtype. A
rollout rank that is also an actor rank copies from its own gather. Each sync is stamped
with a version: a header (version, tensors, elements) goes first and the rollout checks
it against the next version it expects and its own tensor list, so a replica never runs
on a mix of two updates or on a different parameter set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pirl.engine.groups import ProcessGroups

BUCKET_BYTES = 256 << 20  # per broadcast; bounds the gathered (unsharded) bytes held at once


@dataclass(frozen=True)
class SyncPlan:
    """What travels in one sync: names in a fixed order, cut into buckets of one dtype."""

    names: tuple[str, ...]
    buckets: tuple[tuple[str, ...], ...]
    numel: int


def plan(module: nn.Module, trainable: set[str], full: bool, bucket_bytes: int = BUCKET_BYTES) -> SyncPlan:
    """Parameters named in `trainable` (all when `full`) and every buffer, in module order."""
    tensors: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in module.named_parameters() if full or n in trainable]
    tensors += list(module.named_buffers())
    buckets: list[tuple[str, ...]] = []
    cur: list[str] = []
    cur_bytes, cur_dtype = 0, None
    numel = 0
    for name, t in tensors:
        n = getattr(t, "ds_numel", t.numel())
        numel += n
        size = n * t.element_size()
        if cur and (t.dtype != cur_dtype or cur_bytes + size > bucket_bytes):
            buckets.append(tuple(cur))
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += size
        cur_dtype = t.dtype
    if cur:
        buckets.append(tuple(cur))
    return SyncPlan(tuple(n for n, _ in tensors), tuple(buckets), numel)


class WeightSync:
    """One per rank with an actor and / or rollout role. `actor_module` is the DeepSpeed
    engine's module on actor ranks (None elsewhere); `replica` the rollout policy on rollout
    ranks (None elsewhere); `trainable` the names the actor trains (the same set on every
    rank: pirl.engine.actor.trainable_names)."""

    def __init__(self, groups: ProcessGroups, actor_module: nn.Module | None, replica: nn.Module | None,
                 trainable: set[str], zero3: bool, device: torch.device, bucket_bytes: int = BUCKET_BYTES):
        self.groups, self.actor_module, self.replica = groups, actor_module, replica
        self.trainable, self.zero3, self.device, self.bucket_bytes = trainable, zero3, device, bucket_bytes
        p = groups.placement
        self.src = p.ranks("actor")[0]
        # every rollout rank also an actor rank: each copies from its own gather, no broadcast
        self.broadcast = not set(p.ranks("rollout")) <= set(p.ranks("actor"))
        self.version = -1  # last version sent (actor) or received (rollout)
        ref = actor_module if actor_module is not None else replica
        assert ref is not None, "WeightSync on a rank with neither an actor nor a rollout role"
        self._plans = {full: plan(ref, trainable, full, bucket_bytes) for full in (True, False)}

    @property
    def in_sync_group(self) -> bool:
        return self.groups.has("rollout") or self.groups.rank == self.src

    def sync(self, full: bool = False) -> dict[str, float]:
        """Every actor and rollout rank calls this at the same point. Version 0 (the first
        call) sends everything, later ones the trainable tensors. Returns metrics."""
        t0 = time.perf_counter()
        version = self.version + 1
        full = full or version == 0
        p = self._plans[full]
        self._header(version, p)
        src_params = _tensors(self.actor_module)
        dst = _tensors(self.replica)
        sent = 0
        for bucket in p.buckets:
            sent += self._bucket(bucket, src_params, dst)
        self.version = version
        return {"weights/version": float(version), "weights/sync_bytes": float(sent),
                "time/weight_sync": time.perf_counter() - t0}

    def _header(self, version: int, p: SyncPlan) -> None:
        """(version, tensors, elements) from the first actor rank; the rollout checks it."""
        h = torch.tensor([version, len(p.names), p.numel], dtype=torch.int64)
        if self.broadcast and self.in_sync_group and self.groups.group("weights") is not None:
            h = h.to(self.device)
            dist.broadcast(h, self.src, group=self.groups.group("weights"))
            h = h.cpu()
        if self.replica is not None:
            got = tuple(int(x) for x in h)
            expected = (self.version + 1, len(p.names), p.numel)
            if got != expected:
                raise RuntimeError(f"weight sync: the rollout expected version {expected[0]} with {expected[1]} tensors "
                                   f"({expected[2]} elements) and the actor sent {got}; actor and rollout disagree on "
                                   f"the model or missed a sync")

    @torch.no_grad()
    def _bucket(self, names: tuple[str, ...], src: dict, dst: dict) -> int:
        gather = self.actor_module is not None and self.zero3
        params = [src[n] for n in names if isinstance(src.get(n), nn.Parameter)] if gather else []
        ctx = _gathered(params) if gather else _nullcontext()
        with ctx:
            if not self.broadcast:  # every rollout rank is an actor rank: copy from the local gather
                if self.replica is not None:
                    for n in names:
                        dst[n].copy_(src[n].data.to(dst[n].device, dst[n].dtype))
                return 0
            if not self.in_sync_group:  # an actor rank that only took part in the gather
                return 0
            ref = src if self.groups.rank == self.src else dst
            dtype = ref[names[0]].dtype
            numels = [getattr(ref[n], "ds_numel", ref[n].numel()) for n in names]
            if self.groups.rank == self.src:
                flat = torch.cat([src[n].data.reshape(-1).to(self.device, dtype) for n in names])
            else:
                flat = torch.empty(sum(numels), dtype=dtype, device=self.device)
            dist.broadcast(flat, self.src, group=self.groups.group("weights"))
            if self.replica is not None:
                off = 0
                for n, k in zip(names, numels):
                    dst[n].copy_(flat[off:off + k].view_as(dst[n]))
                    off += k
            return flat.numel() * flat.element_size()


def _tensors(module: nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _gathered(params):
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
