"""Process groups built once from the `Placement` (Megatron's parallel_state is the model).

    actor    the actor ranks: the DeepSpeed engine (ZeRO partitions, gradient all-reduce),
             the non-finite-gradient check, advantage normalisation, actor metrics
    env      the env ranks: episode metrics
    rollout  the rollout ranks: rollout metrics
    weights  the first actor rank and every rollout rank: weight broadcast after an update

Every rank creates every group in the same order (torch.distributed requires it), once,
before any work. Collectives of a component go to its group, never to WORLD by accident;
the few deliberate WORLD operations (the metric gather to the logging rank, checkpoint
barriers) say so where they are.

DeepSpeed calls collectives on WORLD in places (ZeRO-3's barriers at init, its per-forward
trace checks, save_checkpoint's barriers). When the actor ranks are not the whole world
(the fully disjoint layout), `scope_deepspeed_to` makes WORLD mean the actor group for
DeepSpeed's communication calls, as if the actor ranks were the only processes: world
ranks become actor-group ranks, group-less collectives run on the actor group.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pirl.engine.placement import COMPONENTS, Placement


@dataclass
class ProcessGroups:
    placement: Placement
    rank: int  # global rank of this process
    groups: dict[str, Any]  # component -> ProcessGroup (None: this rank is not a member, or no dist)
    weights_ranks: tuple[int, ...]  # first actor rank + rollout ranks, sorted

    @classmethod
    def build(cls, placement: Placement) -> ProcessGroups:
        """All ranks call this once, with the same placement."""
        initialized = dist.is_initialized()
        rank = dist.get_rank() if initialized else 0
        world = dist.get_world_size() if initialized else 1
        if world != placement.world_size:
            raise ValueError(f"placement is for {placement.world_size} ranks, the job has {world}")
        weights = tuple(sorted({placement.ranks("actor")[0], *placement.ranks("rollout")}))
        groups: dict[str, Any] = {}
        for name, ranks in [*((c, tuple(placement.ranks(c))) for c in COMPONENTS), ("weights", weights)]:
            g = dist.new_group(list(ranks)) if initialized and world > 1 else None
            groups[name] = g if rank in ranks else None
        return cls(placement, rank, groups, weights)

    def add_pair_groups(self, channels: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], Any]:
        """A two-rank group per point-to-point channel (kind, sender, receiver), in the given
        order on every rank. Each direction gets its own communicator: NCCL runs a group's
        sends and receives in one stream, so an env rank's second observation send would wait
        behind its first action receive, which waits for the rollout's send, which waits for
        that second send to be received: separate groups keep the directions independent.
        Returns the groups this rank is in (None without torch.distributed)."""
        out: dict[tuple[str, int, int], Any] = {}
        initialized = dist.is_initialized() and self.placement.world_size > 1
        for key in channels:
            _, a, b = key
            g = dist.new_group(sorted({a, b})) if initialized and a != b else None
            if self.rank in (a, b):
                out[key] = g
        return out

    # ---- membership ------------------------------------------------------------------------
    def has(self, component: str) -> bool:
        return self.rank in self.placement.ranks(component)

    def index(self, component: str) -> int:
        """This rank's position among the component's ranks (its seed and data index)."""
        return self.placement.ranks(component).index(self.rank)

    def size(self, component: str) -> int:
        return len(self.placement.ranks(component))

    def group(self, name: str):
        return self.groups[name]

    # ---- collectives on a component's group -----------------------------------------------
    def all_reduce(self, t: torch.Tensor, component: str, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce a (small, CPU) tensor over the component's group; a copy, never in place.
        Identity on a group of one or without torch.distributed."""
        if not self.has(component):
            raise RuntimeError(f"rank {self.rank} is not a {component} rank; it cannot reduce over that group")
        t = t.clone()
        if self.groups[component] is not None and self.size(component) > 1:
            dist.all_reduce(t, op=op, group=self.groups[component])
        return t

    def sum_over(self, component: str):
        """A reduce-sum function over the component's group (for pirl.algos' reduce_sum hooks)."""
        return functools.partial(self.all_reduce, component=component)

    # ---- DeepSpeed ---------------------------------------------------------------------------
    def actor_mpu(self) -> DataParallelMPU:
        return DataParallelMPU(self.groups["actor"], tuple(self.placement.ranks("actor")))

    @property
    def actor_is_world(self) -> bool:
        return len(self.placement.ranks("actor")) == self.placement.world_size


class DataParallelMPU:
    """DeepSpeed's `mpu` interface for pure data parallelism over one group: ZeRO partitions
    and all-reduces over the actor ranks only."""

    def __init__(self, group, ranks: tuple[int, ...]):
        self.group, self.ranks = group, ranks

    def get_data_parallel_group(self):
        return self.group

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.group) if self.group is not None else 0

    def get_data_parallel_world_size(self) -> int:
        return len(self.ranks)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.ranks)

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_group(self):
        return None


# DeepSpeed's communication functions that take a `group` (deepspeed.comm.comm, 0.19).
_DS_COMM = ("barrier", "monitored_barrier", "all_reduce", "all_reduce_coalesced", "inference_all_reduce", "broadcast",
            "broadcast_object_list", "all_gather", "all_gather_object", "reduce_scatter_fn", "reduce_scatter_tensor",
            "all_gather_into_tensor", "allgather_fn", "all_to_all_single", "all_to_all", "gather", "scatter", "reduce",
            "reduce_scatter", "all_gather_coalesced", "get_world_size", "get_rank")
_scoped_to: list[Any] = []


def _signature(f) -> inspect.Signature:
    """The real signature behind DeepSpeed's `timed_op` wrapper (it keeps it in a closure)."""
    for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
        if name == "func_signature":
            return cell.cell_contents
    return inspect.signature(f)


def scope_deepspeed_to(group) -> None:
    """Make DeepSpeed's WORLD the given group in this process: a group-less (or WORLD)
    collective runs on `group`, get_rank() / get_world_size() answer for it, and src / dst
    ranks given without a group are read as ranks within it. Idempotent for one group."""
    if _scoped_to:
        if _scoped_to[0] is not group:
            raise RuntimeError("DeepSpeed is already scoped to another process group in this process")
        return
    import deepspeed.comm as package
    import deepspeed.comm.comm as module

    for name in _DS_COMM:
        f = getattr(module, name, None)
        if f is None:
            continue
        sig = _signature(f)
        if "group" not in sig.parameters:
            continue

        @functools.wraps(f)
        def scoped(*args, _f=f, _sig=sig, **kwargs):
            bound = _sig.bind(*args, **kwargs)
            g = bound.arguments.get("group")
            if g is None or g is dist.GroupMember.WORLD:
                bound.arguments["group"] = group
                for key in ("src", "dst"):  # a "world" rank in DeepSpeed's view is a rank of the group
                    if bound.arguments.get(key) is not None:
                        bound.arguments[key] = dist.get_global_rank(group, bound.arguments[key])
            return _f(*bound.args, **bound.kwargs)

        setattr(module, name, scoped)
        if getattr(package, name, None) is f:
            setattr(package, name, scoped)
    _scoped_to.append(group)
