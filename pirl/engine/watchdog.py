"""When a rank dies, every other rank stops within `cluster.timeout_s`, naming it.

Without this, the survivors of a SIGKILLed rank (the OOM killer, a lost node) either
fail with a bare gloo "Connection closed by peer" traceback or hang in the next
collective until the backend's timeout (NCCL's default is 30 minutes), and nothing says
which rank went first. Here every rank runs a daemon thread that talks to the job's
rendezvous store (a client of the TCPStore at MASTER_ADDR:MASTER_PORT that every launcher
sets up: DeepSpeed's and SLURM's env:// on rank 0, torchrun's in its agent):

- it registers its host, pid and process start time, and beats (`hb/<rank>` += 1) every
  POLL_S;
- it checks the pids of the ranks on its own machine (same boot and pid namespace):
  a SIGKILLed peer is seen within POLL_S, zombie or gone;
- it watches the heartbeat of the next rank, (rank + 1) % world: a rank on another
  machine that stops beating for half of `timeout_s` (dead host, hung, SIGSTOPped) is
  declared, before the collectives' own timeout (`timeout_s`) can end a survivor with a
  bare backend error;
- the first verdict is written once to the store (`verdict`, compare-and-set) and every
  rank that reads it prints it and exits with EXIT_PEER_STOPPED. If the store itself
  stops answering, its host is the one that died (rank 0, unless torchrun's agent hosts it).

A rank whose main thread raises first waits EXCEPTION_GRACE_S for a verdict (a failed
collective is usually the consequence of a peer's death, not the cause); without one it
publishes its own failure, which its peers then report. A clean end is collective
(`stop`), so a rank that finishes early is never mistaken for a dead one.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch

POLL_S = 0.25  # seconds between beats, pid checks and verdict checks: 3 store ops a rank
# A failing collective raises at once on the survivors of a SIGKILLed peer; give the
# same-machine pid check (POLL_S) time to name the real culprit before blaming ourselves.
EXCEPTION_GRACE_S = 3.0
HEARTBEAT_FRACTION = 0.5  # silence of timeout_s * this declares a rank: before collectives time out
EXIT_PEER_STOPPED = 75  # EX_TEMPFAIL: this rank was fine; the job can resume from its checkpoint


@dataclass(frozen=True)
class RankInfo:
    rank: int
    host: str  # hostname, for messages
    machine: str  # boot id + pid namespace: ranks with equal `machine` can check each other's pids
    pid: int
    start: int  # process start time (clock ticks since boot): guards against pid reuse


def _machine_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"


def _proc_start(pid: int) -> int | None:
    """Start time of a live (not zombie) process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its launcher
        return None
    return int(fields[19])


def _describe(info: RankInfo) -> str:
    return f"rank {info.rank} (pid {info.pid} on {info.host})"


class RankWatchdog:
    def __init__(self, rank: int, world_size: int, timeout_s: float, hint: str = ""):
        self.rank, self.world, self.timeout_s, self.hint = rank, world_size, timeout_s, hint
        self.addr = os.environ["MASTER_ADDR"]
        self.port = int(os.environ["MASTER_PORT"])
        self.agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        self.hosts_store = rank == 0 and not self.agent_store  # env:// rendezvous: rank 0 serves it
        self.store = torch.distributed.PrefixStore("pirl/watchdog/", torch.distributed.TCPStore(
            self.addr, self.port, is_master=False, timeout=timedelta(seconds=timeout_s), wait_for_workers=False))
        self.me = RankInfo(rank, socket.gethostname(), _machine_id(), os.getpid(), _proc_start(os.getpid()) or 0)
        self.peers: dict[int, RankInfo] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Collective: register, wait for every rank's registration, start watching."""
        self.store.set(f"info/{self.rank}", json.dumps(asdict(self.me)))
        self.store.add(f"hb/{self.rank}", 1)
        keys = [f"info/{r}" for r in range(self.world)]
        self.store.wait(keys)
        self.peers = {r: RankInfo(**json.loads(v)) for r, v in enumerate(self.store.multi_get(keys))}
        self._thread = threading.Thread(target=self._loop, name="pirl-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Collective clean end: after it no rank reports another."""
        self._stopping.set()
        self.store.set(f"exit/{self.rank}", "ok")
        torch.distributed.barrier()
        if self._thread is not None:
            self._thread.join()

    def fail(self, exc: BaseException) -> None:
        """This rank's main thread raised: wait for a peer's verdict (or find a dead peer
        here), else publish this rank's failure for the others to report."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + EXCEPTION_GRACE_S
        try:
            while time.monotonic() < deadline:
                verdict = self._read_verdict()
                if verdict is not None and verdict["rank"] != self.rank:
                    self._stop_for(verdict["text"])
                peer = self._dead_local_peer()
                if peer is not None:
                    self._declare(peer.rank, f"{_describe(peer)} died: its process is gone")
                time.sleep(POLL_S)
            summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
            self._publish(self.rank, f"{_describe(self.me)} failed: {summary}")
            if self.hosts_store:
                self._linger()
        except Exception as e:
            self._store_lost(e)

    # ---- the watching thread ---------------------------------------------------------------
    def _loop(self) -> None:
        nbr = (self.rank + 1) % self.world
        last_beat, changed_at = -1, time.monotonic()
        while not self._stopping.wait(POLL_S):
            try:
                self.store.add(f"hb/{self.rank}", 1)
                verdict = self._read_verdict()
                if verdict is not None:
                    self._stop_for(verdict["text"])
                peer = self._dead_local_peer()
                if peer is not None:
                    self._declare(peer.rank, f"{_describe(peer)} died: its process is gone")
                beat = int(self.store.get(f"hb/{nbr}"))
                now = time.monotonic()
                if beat != last_beat:
                    last_beat, changed_at = beat, now
                elif now - changed_at > self.timeout_s * HEARTBEAT_FRACTION and not self._exited(nbr):
                    self._declare(nbr, f"{_describe(self.peers[nbr])} sent no heartbeat for {now - changed_at:.0f} s "
                                       f"(cluster.timeout_s={self.timeout_s:g}): dead, hung or unreachable")
            except Exception as e:
                if self._stopping.is_set():
                    return
                self._store_lost(e)

    def _store_lost(self, err: Exception) -> None:
        """The store stopped answering: so did the process that hosted it. Name a dead
        peer on this machine if there is one (the store's host is then usually that peer)."""
        peer = self._dead_local_peer(store=False)
        if peer is not None:
            self._declare(peer.rank, f"{_describe(peer)} died: its process is gone")
        host = "torchrun's agent" if self.agent_store else _describe(self.peers.get(0, self.me))
        first = str(err).splitlines()[0] if str(err) else ""
        self._stop_for(f"the rendezvous store at {self.addr}:{self.port}, hosted by {host}, stopped answering "
                       f"({type(err).__name__}: {first}): {'its host is lost' if self.agent_store else 'rank 0 died'}")

    def _exited(self, rank: int) -> bool:
        return bool(self.store.check([f"exit/{rank}"]))

    def _dead_local_peer(self, store: bool = True) -> RankInfo | None:
        """A rank on this machine whose process is gone without a clean stop (store=False:
        without asking the store whether it stopped cleanly)."""
        for peer in self.peers.values():
            if (peer.rank != self.rank and peer.machine == self.me.machine and _proc_start(peer.pid) != peer.start
                    and not (store and self._exited(peer.rank))):
                return peer
        return None

    def _read_verdict(self) -> dict | None:
        if not self.store.check(["verdict"]):
            return None
        return json.loads(self.store.get("verdict"))

    def _publish(self, rank: int, text: str) -> None:
        """First verdict wins: it is what every rank reports."""
        self.store.compare_set("verdict", "", json.dumps({"rank": rank, "text": text}))

    def _declare(self, rank: int, text: str) -> None:
        """Publish a verdict and stop on the first one published (maybe another rank's)."""
        with contextlib.suppress(Exception):  # the store may be gone with the dead rank
            self._publish(rank, text)
            text = self._read_verdict()["text"]  # type: ignore[index]
        self._stop_for(text)

    def _linger(self) -> None:
        """The store lives in this process: keep it up until the other survivors have read
        the verdict (each acknowledges), or EXCEPTION_GRACE_S."""
        deadline = time.monotonic() + EXCEPTION_GRACE_S
        while time.monotonic() < deadline and self.store.add("acks", 0) < self.world - 2:
            time.sleep(POLL_S / 5)

    def _stop_for(self, text: str) -> None:
        """Print why and end this process now: the main thread may sit in a collective
        that never returns, so no exception could reach it."""
        with contextlib.suppress(Exception):
            if self.hosts_store:
                self._linger()
            else:
                self.store.add("acks", 1)
        with self._lock:
            # One write, on a line of its own: ranks share the launcher's output (and a progress bar
            # may be half drawn), so a print()'s separate writes could interleave.
            sys.stderr.write(f"\n[rank {self.rank}] pirl: stopping because {text}. {self.hint}".rstrip() + "\n")
            sys.stderr.flush()
            for child in multiprocessing.active_children():  # env workers die with us
                child.kill()
            sys.stdout.flush()
            os._exit(EXIT_PEER_STOPPED)

    def on_sigterm(self, signum, frame) -> None:
        """SIGTERM comes from a launcher stopping the other ranks of a host after one exited
        (DeepSpeed's launch.py, torchrun) or from the scheduler stopping them all (scancel,
        preemption). Either way, name a peer of this machine that exited before without a
        clean stop or a SIGTERM of its own; else end as SIGTERM does."""
        self._stopping.set()
        try:
            self.store.set(f"exit/{self.rank}", "SIGTERM")
            peer = self._dead_local_peer()
        except Exception:  # the store is gone with the process that hosted it
            peer = self._dead_local_peer(store=False)
        if peer is not None:
            self._stop_for(f"of SIGTERM, and {_describe(peer)} had exited before it")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def watch_ranks(rank: int, world_size: int, timeout_s: float, hint: str = "",
                agreed: tuple[type[BaseException], ...] = ()) -> Iterator[RankWatchdog | None]:
    """Run the body with a watchdog (world size > 1). A clean end stops it on every rank;
    so does an exception of an `agreed` type, which every rank raises together (e.g. a
    damaged checkpoint all ranks checked): nobody is reported, the exception propagates."""
    if world_size == 1:
        yield None
        return
    dog = RankWatchdog(rank, world_size, timeout_s, hint)
    dog.start()
    previous = signal.signal(signal.SIGTERM, dog.on_sigterm)
    try:
        yield dog
    except agreed:
        dog.stop()
        raise
    except BaseException as e:
        dog.fail(e)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    dog.stop()
