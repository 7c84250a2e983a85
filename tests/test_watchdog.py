"""pirl.engine.watchdog on plain gloo ranks (no DeepSpeed): a hung rank is named after
half of cluster.timeout_s by its heartbeat, a rank that raises is named with its error,
a killed one by its pid; the survivors exit EXIT_PEER_STOPPED."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pirl.engine.dist import free_port
from pirl.engine.watchdog import EXIT_PEER_STOPPED, _proc_start

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist" / "watched_ranks.py"


def _start(world: int, timeout_s: float, *args: str) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(timeout_s), *args], cwd=ROOT, env=env,
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:  # every rank registered with the watchdog
        assert p.stdout is not None and "watching" in p.stdout.readline()
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_hung_rank_is_named_by_its_heartbeat():
    procs = _start(3, 6.0)
    os.kill(procs[1].pid, signal.SIGSTOP)  # alive (its pid checks out) but silent
    try:
        results = _finish([procs[0], procs[2]], timeout=60)
    finally:
        procs[1].kill()
        procs[1].wait()
    for code, err in results:
        assert code == EXIT_PEER_STOPPED, err[-2000:]
        assert f"stopping because rank 1 (pid {procs[1].pid} on " in err
        assert "sent no heartbeat for 3 s (cluster.timeout_s=6)" in err, err[-2000:]


def test_rank_that_raises_is_named_with_its_error():
    procs = _start(2, 30.0, "raise")
    (code0, err0), (code1, err1) = _finish(procs, timeout=60)
    assert code1 == 1 and "ValueError: boom at step 5" in err1
    assert code0 == EXIT_PEER_STOPPED, err0[-2000:]
    assert f"[rank 0] pirl: stopping because rank 1 (pid {procs[1].pid} on " in err0
    assert "failed: ValueError: boom at step 5" in err0


def test_killed_rank_is_named_by_its_pid_and_no_one_blames_the_store():
    procs = _start(3, 30.0)
    start = _proc_start(procs[2].pid)
    assert start is not None
    procs[2].kill()  # and not reaped while the others watch: a zombie is as dead as a gone process
    while _proc_start(procs[2].pid) is not None:
        time.sleep(0.01)
    assert Path(f"/proc/{procs[2].pid}/stat").read_text().split(") ")[1][0] == "Z"
    results = _finish([procs[0], procs[1]], timeout=60)
    procs[2].wait()
    for code, err in results:
        assert code == EXIT_PEER_STOPPED, err[-2000:]
        assert f"stopping because rank 2 (pid {procs[2].pid} on " in err and "its process is gone" in err
