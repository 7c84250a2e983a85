"""Channels between workers: in-process (same rank) or torch.distributed point-to-point
(gloo on CPU, NCCL on GPU).

A channel carries messages of one kind, each a dict name -> tensor over a fixed universe of
names both ends know (`KINDS`); tensors travel as tensors (no pickling). Every message is a
small int64 header (which names are present, their dtype and shape) followed by one
isend per tensor; the receiver reads the header, allocates, and irecv's into place. Sends are
asynchronous: a channel keeps its in-flight sends and waits for them before the next send,
so at most one message per channel is in flight and its tensors stay alive until delivered.

An in-process channel hands the message object over as is: the colocated layout pays no
encoding, copy or transfer.

Env observations cross as tensors too: instructions are UTF-8 bytes in a (B, TEXT_BYTES)
uint8 tensor (`encode_text` / `decode_text`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

TEXT_BYTES = 512  # instruction bytes per env (UTF-8, zero padded)
MAX_DIMS = 6
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int32,
           torch.int64, torch.bool)
OBS_KEYS = ("states", "main_images", "wrist_images", "extra_wrist_images", "task_tokens")


def encode_text(texts: list[str]) -> torch.Tensor:
    """list of B strings -> (B, TEXT_BYTES) uint8, zero padded."""
    out = torch.zeros(len(texts), TEXT_BYTES, dtype=torch.uint8)
    for i, t in enumerate(texts):
        b = t.encode("utf-8")
        if len(b) > TEXT_BYTES or b"\0" in b:
            raise ValueError(f"instruction {t[:60]!r}... has {len(b)} UTF-8 bytes (at most {TEXT_BYTES}, no NUL) "
                             f"and cannot be sent to a rollout rank")
        if b:
            out[i, : len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    return out


def decode_text(tokens: torch.Tensor) -> list[str]:
    rows = tokens.cpu().numpy()
    return [bytes(r).rstrip(b"\0").decode("utf-8") for r in rows]


# ---- the env <-> rollout messages --------------------------------------------------------------
@dataclass
class EnvOutput:
    """What an env rank sends a rollout rank for one pipeline stage after a chunk step (or at
    an epoch start, with the step fields None): observations (pirl/envs/base.py) and the
    step's results, b envs."""

    obs: dict[str, Any]
    rewards: torch.Tensor | None = None  # (b, C) fp32
    dones: torch.Tensor | None = None  # (b, C) bool, flags stay set to the chunk end
    truncations: torch.Tensor | None = None  # (b, C) bool
    success: torch.Tensor | None = None  # (b, C) bool, per env step
    valid: torch.Tensor | None = None  # (b,) bool
    final_obs: dict[str, Any] | None = None  # last obs of ended episodes (truncation bootstrap only)

    @property
    def num_envs(self) -> int:
        return len(self.obs["states"])

    def step(self) -> dict[str, torch.Tensor]:
        """The chunk step's results (rewards, dones, truncations, success, valid)."""
        out = {k: getattr(self, k) for k in STEP_KEYS}
        missing = [k for k, v in out.items() if v is None]
        if missing:
            raise ValueError(f"env message without the step fields {missing}: an epoch's first message was "
                             f"read as a step's answer")
        return out

    def rows(self, lo: int, hi: int) -> EnvOutput:
        """Envs [lo, hi): the part a rollout rank serves."""
        def cut(d):
            return None if d is None else {k: v[lo:hi] for k, v in d.items()}
        step = {k: None if getattr(self, k) is None else getattr(self, k)[lo:hi] for k in STEP_KEYS}
        return EnvOutput(obs=cut(self.obs), final_obs=cut(self.final_obs), **step)

    @staticmethod
    def cat(parts: list[EnvOutput]) -> EnvOutput:
        """Join the parts of several env ranks into one rollout batch."""
        if len(parts) == 1:
            return parts[0]

        def join(ds):
            if ds[0] is None:
                return None
            return {k: torch.cat([d[k] for d in ds]) if torch.is_tensor(ds[0][k]) else sum((list(d[k]) for d in ds), [])
                    for k in ds[0]}
        step = {k: None if getattr(parts[0], k) is None else torch.cat([getattr(p, k) for p in parts])
                for k in STEP_KEYS}
        return EnvOutput(obs=join([p.obs for p in parts]), final_obs=join([p.final_obs for p in parts]), **step)


STEP_KEYS = ("rewards", "dones", "truncations", "success", "valid")


def _obs_to_named(prefix: str, obs: dict[str, Any] | None, out: dict[str, torch.Tensor]) -> None:
    if obs is None:
        return
    unknown = set(obs) - set(OBS_KEYS) - {"task_descriptions"}
    if unknown:
        raise ValueError(f"observation keys {sorted(unknown)} cannot cross ranks; known: {OBS_KEYS}")
    for k, v in obs.items():
        if k == "task_descriptions":
            out[f"{prefix}.task_tokens"] = encode_text(list(v))
        else:
            out[f"{prefix}.{k}"] = torch.as_tensor(v)


def _obs_from_named(prefix: str, named: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    obs: dict[str, Any] = {}
    for k in OBS_KEYS:
        v = named.get(f"{prefix}.{k}")
        if v is not None:
            obs["task_descriptions" if k == "task_tokens" else k] = decode_text(v) if k == "task_tokens" else v
    return obs or None


def env_output_to_named(m: EnvOutput) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    _obs_to_named("obs", m.obs, out)
    for k in STEP_KEYS:
        if getattr(m, k) is not None:
            out[k] = getattr(m, k)
    _obs_to_named("final", m.final_obs, out)
    return out


def env_output_from_named(named: dict[str, torch.Tensor]) -> EnvOutput:
    obs = _obs_from_named("obs", named)
    assert obs is not None, "an env message always carries observations"
    return EnvOutput(obs=obs, final_obs=_obs_from_named("final", named), **{k: named.get(k) for k in STEP_KEYS})


# Message kinds: name universe and the p2p tag (gloo matches tags; NCCL keeps per-pair order).
KINDS: dict[str, tuple[tuple[str, ...], int]] = {
    "env_output": ((*(f"obs.{k}" for k in OBS_KEYS), *STEP_KEYS, *(f"final.{k}" for k in OBS_KEYS)), 11),
    "actions": (("actions",), 12),
}


def trajectory_kind(names: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """Rollout -> actor: the buffer's fields in wire order (pirl.data.RolloutSchema.fields)."""
    return names, 13


# ---- transports ----------------------------------------------------------------------------------
class LocalChannel:
    """Same process: the message object itself, first in, first out."""

    def __init__(self):
        self.queue: deque = deque()

    def send(self, msg: Any) -> None:
        self.queue.append(msg)

    def recv(self) -> Any:
        if not self.queue:
            raise RuntimeError("in-process channel is empty: a worker received before its peer sent "
                               "(the driver's step order is broken)")
        return self.queue.popleft()

    def flush(self) -> None:
        pass


def _header(named: dict[str, torch.Tensor], universe: tuple[str, ...]) -> torch.Tensor:
    """(len(universe), 3 + MAX_DIMS) int64: present, dtype code, ndim, dims."""
    unknown = set(named) - set(universe)
    if unknown:
        raise ValueError(f"message fields {sorted(unknown)} are not in this channel's universe {universe}")
    h = torch.zeros(len(universe), 3 + MAX_DIMS, dtype=torch.int64)
    for i, name in enumerate(universe):
        t = named.get(name)
        if t is None:
            continue
        if t.dim() > MAX_DIMS or t.dtype not in _DTYPES:
            raise ValueError(f"message field {name}: {t.dtype} with {t.dim()} dims cannot be sent")
        h[i, 0], h[i, 1], h[i, 2] = 1, _DTYPES.index(t.dtype), t.dim()
        h[i, 3:3 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return h


def _wire(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Contiguous, on the transport's device; bool as uint8 (NCCL has no bool)."""
    t = t.detach()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.to(device).contiguous()


class P2PChannel:
    """torch.distributed point-to-point to one peer, for one message kind. Keep the channel
    alive and `flush` it before dropping it: its in-flight sends hold the tensors."""

    def __init__(self, peer: int, universe: tuple[str, ...], tag: int, device: torch.device | str = "cpu",
                 to_named=None, from_named=None, group=None):
        """`group`: the channel's own two-rank group (ProcessGroups.add_pair_groups); None: WORLD.
        `peer` is a global rank either way."""
        self.peer, self.universe, self.tag, self.device = peer, universe, tag, torch.device(device)
        self.group = group
        self.to_named = to_named or (lambda m: m)
        self.from_named = from_named or (lambda d: d)
        self._inflight: list = []

    def flush(self) -> None:
        for work, _ in self._inflight:
            self._wait(work)
        self._inflight = []

    @staticmethod
    def _wait(work) -> None:
        assert work is not None, "p2p op outside the default group"
        work.wait()

    def send(self, msg: Any) -> None:
        self.flush()
        named = self.to_named(msg)
        header = _header(named, self.universe)
        tensors = [header.to(self.device)] + [_wire(named[n], self.device) for n in self.universe if n in named]
        for t in tensors:
            self._inflight.append((dist.isend(t, self.peer, group=self.group, tag=self.tag), t))

    def recv(self) -> Any:
        header = torch.empty(len(self.universe), 3 + MAX_DIMS, dtype=torch.int64, device=self.device)
        self._wait(dist.irecv(header, self.peer, group=self.group, tag=self.tag))
        header = header.cpu()
        bufs, works = {}, []
        for i, name in enumerate(self.universe):
            present, code, ndim = (int(x) for x in header[i, :3])
            if not present:
                continue
            dtype = _DTYPES[code]
            shape = tuple(int(x) for x in header[i, 3:3 + ndim])
            buf = torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=self.device)
            works.append(dist.irecv(buf, self.peer, group=self.group, tag=self.tag))
            bufs[name] = (buf, dtype)
        for w in works:
            self._wait(w)
        return self.from_named({n: b.bool() if dt == torch.bool else b for n, (b, dt) in bufs.items()})


def env_channel(peer: int, device, group=None) -> P2PChannel:
    """env -> rollout: EnvOutput messages."""
    universe, tag = KINDS["env_output"]
    return P2PChannel(peer, universe, tag, device, env_output_to_named, env_output_from_named, group)


def action_channel(peer: int, device, group=None) -> P2PChannel:
    """rollout -> env: actions (b, C, D_env) fp32."""
    universe, tag = KINDS["actions"]
    return P2PChannel(peer, universe, tag, device, lambda a: {"actions": a}, lambda d: d["actions"], group)
