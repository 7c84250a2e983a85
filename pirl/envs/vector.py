"""Envs in worker processes, for simulators that allow one env per process (ManiSkill3's CPU
backend) or whose stepping should use more cores (MuJoCo rendering on CPU).

`WorkerBackend` is a `pirl.envs.chunked.Backend`: env i lives in worker i % num_workers.
Each call fans one command out to the workers that hold the envs it names, then gathers
the replies, so workers step in parallel. A worker that raises, dies or does not answer
within `timeout_s` is killed and started again: its envs are rebuilt and reset, the step
reports them `crashed` (ChunkedVecEnv then ends their episodes and marks the rows invalid)
and `restarts` counts it. The run goes on.

Workers start with the "spawn" method: simulators hold GL / Vulkan contexts and threads
that do not survive fork.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from multiprocessing.connection import Connection
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from pirl.envs.chunked import SingleEnv, StepBatch, collect_steps, episode_seed

# Seeds for an env rebuilt after a crash: far from the seeds episodes use.
_RECOVERY_SEED_BASE = 1_000_003


def _worker_main(conn: Connection, factory: Callable[[int], SingleEnv], env_ids: list[int]) -> None:
    """Runs in the worker: builds its envs, then serves commands until 'close'."""
    envs: dict[int, SingleEnv] = {}
    try:
        for i in env_ids:
            envs[i] = factory(i)
        conn.send(("ok", {i: (e.task_name, e.task_description, e.action_dim, e.state_dim) for i, e in envs.items()}))
    except Exception:  # reported to the parent, which raises it with the worker's traceback
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, payload = conn.recv()
        except EOFError:
            break
        if cmd == "close":
            break
        try:
            conn.send(("ok", _serve(envs, cmd, payload)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    for e in envs.values():
        e.close()


def _serve(envs: dict[int, SingleEnv], cmd: str, payload: Any) -> Any:
    if cmd == "reset":
        for i, s in payload:
            envs[i].reset(int(s))
        return {i: envs[i].task_description for i, _ in payload}
    if cmd == "step":  # with the instruction, which a step may change (CALVIN's next subtask)
        return {i: (envs[i].step(a), envs[i].task_description) for i, a in payload}
    if cmd == "observe":
        return {i: envs[i].observe() for i in payload}
    if cmd == "crash":  # test hook: the worker dies as a segfaulting simulator would
        import os

        os._exit(1)
    raise ValueError(f"unknown worker command {cmd!r}")


EnvMeta = tuple[str, str, int, int]  # (task_name, task_description, action_dim, state_dim)


class WorkerCrash(RuntimeError):
    pass


class _Worker:
    """One env process. Construction only starts it; `wait_ready` waits for its envs to be
    built, so a backend starts all its workers before waiting on any and their simulator
    imports and scene builds overlap."""

    def __init__(self, ctx, factory, env_ids: list[int], timeout_s: float):
        self.env_ids = env_ids
        self.timeout_s = timeout_s
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, factory, env_ids), daemon=True)
        self.proc.start()
        child.close()

    def wait_ready(self) -> dict[int, EnvMeta]:
        """Blocks until the envs are built; their metadata by env index."""
        return self.recv(timeout_s=max(self.timeout_s, 600.0))  # building a sim can be slow

    def send(self, cmd: str, payload: Any) -> None:
        try:
            self.conn.send((cmd, payload))
        except (BrokenPipeError, OSError) as exc:
            raise WorkerCrash(f"worker pid {self.proc.pid} is gone: {exc}") from exc

    def recv(self, timeout_s: float | None = None) -> Any:
        wait = self.timeout_s if timeout_s is None else timeout_s
        if not self.conn.poll(wait):
            raise WorkerCrash(f"worker pid {self.proc.pid} did not answer within {wait:.0f} s")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerCrash(f"worker pid {self.proc.pid} died (exit code {self.proc.exitcode})") from exc
        if status == "error":
            raise WorkerCrash(f"worker pid {self.proc.pid} raised:\n{payload}")
        return payload

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        self.kill()


class WorkerBackend:
    """B envs spread over `num_workers` processes (env i in worker i % num_workers)."""

    def __init__(
        self,
        factory: Callable[[int], SingleEnv],
        num_envs: int,
        num_workers: int,
        timeout_s: float = 300.0,
        max_restarts: int = 100,
    ):
        if num_workers < 1 or num_workers > num_envs:
            raise ValueError(f"env num_workers must be in [1, num_envs={num_envs}], got {num_workers}")
        self._ctx = mp.get_context("spawn")
        self._factory = factory
        self.num_envs = num_envs
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        self._owner = [i % num_workers for i in range(num_envs)]
        self._workers = [
            _Worker(self._ctx, factory, [i for i in range(num_envs) if self._owner[i] == w], timeout_s)
            for w in range(num_workers)
        ]
        meta: dict[int, EnvMeta] = {}
        try:
            for w in self._workers:
                meta.update(w.wait_ready())
        except WorkerCrash:
            for w in self._workers:  # no half-built backend keeps processes alive
                w.kill()
            raise
        self.task_names = [meta[i][0] for i in range(num_envs)]
        self._descriptions = [meta[i][1] for i in range(num_envs)]
        self.action_dim = meta[0][2]
        self.state_dim = meta[0][3]
        self._seeds = [0] * num_envs  # last reset seed of each env
        self._pending_crash = np.zeros(num_envs, dtype=bool)  # crashed outside a step

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def kill_worker(self, index: int) -> None:
        """Test hook: make worker `index` exit abruptly, as a crashing simulator does."""
        self._workers[index].send("crash", None)
        self._workers[index].proc.join(timeout=30)

    # ------------------------------------------------------------- fan-out
    def _split(self, ids: Sequence[int], items: Sequence[Any]) -> dict[int, list]:
        per: dict[int, list] = {}
        for i, it in zip(ids, items):
            per.setdefault(self._owner[i], []).append(it)
        return per

    def _call(self, cmd: str, per_worker: dict[int, list]) -> tuple[dict[int, Any], list[int]]:
        """Send to every worker in `per_worker`, gather replies; returns (merged replies,
        indices of workers that crashed; those were restarted and their envs reset)."""
        sent, crashed = [], []
        for w, payload in per_worker.items():
            try:
                self._workers[w].send(cmd, payload)
                sent.append(w)
            except WorkerCrash:
                crashed.append(w)
        merged: dict[int, Any] = {}
        for w in sent:
            try:
                merged.update(self._workers[w].recv())
            except WorkerCrash:
                crashed.append(w)
        for w in crashed:
            self._restart(w)
        return merged, crashed

    def _restart(self, w: int) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"env workers restarted {self.restarts} times (max {self.max_restarts}); giving up")
        old = self._workers[w]
        old.kill()
        self._workers[w] = _Worker(self._ctx, self._factory, old.env_ids, self.timeout_s)
        self._workers[w].wait_ready()
        seeds = [(i, episode_seed(_RECOVERY_SEED_BASE + self._seeds[i], i, self.restarts)) for i in old.env_ids]
        self._workers[w].send("reset", seeds)
        desc = self._workers[w].recv()
        for i in old.env_ids:
            self._descriptions[i] = desc[i]
            self._pending_crash[i] = True

    # ------------------------------------------------------------ protocol
    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> None:
        for i, s in zip(ids, seeds):
            self._seeds[i] = int(s)
        merged, crashed = self._call("reset", self._split(ids, list(zip(ids, seeds))))
        for i, d in merged.items():
            self._descriptions[i] = d
        if crashed:  # the rebuilt envs were reset with recovery seeds; retry the real ones
            retry = [i for i in ids if self._owner[i] in crashed]
            self.reset(retry, [self._seeds[i] for i in retry])
        self._pending_crash[list(ids)] = False

    def step(self, ids: Sequence[int], actions: np.ndarray) -> StepBatch:
        merged, crashed = self._call("step", self._split(ids, list(zip(ids, actions))))
        outs: list = []
        for i in ids:
            if self._pending_crash[i] or i not in merged:
                outs.append(None)
                self._pending_crash[i] = False
            else:
                out, self._descriptions[i] = merged[i]
                outs.append(out)
        return collect_steps(outs)

    def observe(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        merged, crashed = self._call("observe", self._split(ids, list(ids)))
        if crashed:  # rebuilt and reset; observe the fresh state (step reports the crash)
            retry = [i for i in ids if i not in merged]
            more, _ = self._call("observe", self._split(retry, retry))
            merged.update(more)
        return [merged[i] for i in ids]

    def task_descriptions(self, ids: Sequence[int]) -> list[str]:
        return [self._descriptions[i] for i in ids]

    def close(self) -> None:
        for w in self._workers:
            w.close()
