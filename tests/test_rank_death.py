"""A rank SIGKILLed mid-iteration (the OOM killer, a lost node): every other rank exits
non-zero within cluster.timeout_s with a message naming the dead rank, no process is left
behind, and the last complete checkpoint is intact and resumes. Launched as users do,
through launcher/run.sh (the DeepSpeed launcher), on 2 and on 4 ranks, colocated and
disaggregated (the victim holds a role the survivors wait on: the actor whose weights the
rollout waits for, the rollout whose actions the env waits for)."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30  # cluster.timeout_s of these runs: the bound on how long survivors may hang


# name -> (world size, cluster.component_placement, actor ranks, the rank SIGKILLed)
LAYOUTS = {
    "colocated-2": (2, "{'env,rollout,actor': all}", 2, 0),
    "colocated-4": (4, "{'env,rollout,actor': all}", 4, 2),
    "disaggregated-2": (2, "{'env,rollout': 0, actor: 1}", 1, 1),
    "disaggregated-4": (4, "{env: 0, rollout: 1, actor: 2-3}", 2, 1),
}


def _overrides(log_path: Path, world: int, placement: str, actor_ranks: int, *extra: str) -> list[str]:
    return ["env.train.total_num_envs=32", "env.eval.total_num_envs=4", f"cluster.component_placement={placement}",
            f"actor.global_batch_size={32 * actor_ranks}", "actor.micro_batch_size=32",
            f"cluster.num_gpus_per_node={world}", "runner.val_check_interval=0",
            "runner.eval_before_train=false", "actor.ds_config=ds_configs/zero2.json", "runner.save_interval=2",
            "runner.keep_last_n=2", f"cluster.timeout_s={TIMEOUT_S}", "runner.logger.experiment_name=exp",
            f"runner.logger.log_path={log_path}", *extra]


def _launch(tmp_path: Path, layout: str, *overrides: str) -> subprocess.Popen:
    world, placement, actor_ranks, _ = LAYOUTS[layout]
    hosts = tmp_path / "hosts"
    hosts.write_text(f"localhost slots={world}\n")
    env = dict(os.environ, PIRL_HOSTFILE=str(hosts), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen([str(ROOT / "launcher" / "run.sh"), "reach2d_ppo_flow_sde",
                             *_overrides(tmp_path, world, placement, actor_ranks, *overrides)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _ranks(launcher: subprocess.Popen, world: int) -> dict[int, psutil.Process]:
    """local rank -> its train.py process (DeepSpeed's launch.py passes --local_rank=N)."""
    found = {}
    for p in psutil.Process(launcher.pid).children(recursive=True):
        with_rank = [a for a in p.cmdline() if a.startswith("--local_rank=")]
        if "train.py" in " ".join(p.cmdline()) and with_rank:
            found[int(with_rank[0].split("=")[1])] = p
    assert sorted(found) == list(range(world)), found
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkilled_rank_stops_the_job_named_and_resumable(tmp_path, layout):
    world, _, _, victim = LAYOUTS[layout]
    root = tmp_path / "exp" / "checkpoints"
    proc = _launch(tmp_path, layout, "runner.max_epochs=1000")
    procs: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while not ((root / "latest").is_file() and (root / "latest").read_text() == "iter_000002"):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint at iteration 2"
            time.sleep(0.05)
        ranks = _ranks(proc, world)
        procs = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        time.sleep(0.5)  # into iteration 3
        dead_pid = ranks[victim].pid
        ranks[victim].send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=3 * TIMEOUT_S)
    finally:
        _kill_group(proc)
    assert proc.returncode != 0
    for r in range(world):  # named by the watchdog, or on the launcher's SIGTERM that follows the death
        if r != victim:
            named = rf"\[rank {r}\] pirl: stopping because (of SIGTERM, and )?rank {victim} \(pid {dead_pid} on "
            assert re.search(named, out), out[-4000:]
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, alive

    latest = (root / "latest").read_text()
    resumed = _launch(tmp_path, layout, "runner.resume_dir=auto", f"runner.max_epochs={int(latest[5:]) + 1}")
    try:
        out, _ = resumed.communicate(timeout=600)
    finally:
        _kill_group(resumed)
    assert resumed.returncode == 0, out[-4000:]
    assert f"resumed from {root / latest} at iteration {int(latest[5:])}" in out
    assert "skipping" not in out

