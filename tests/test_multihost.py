"""Two hosts (network namespaces with their own address and sshd, tests/virtual_cluster.py)
sharing this filesystem, as nodes share one: ZeRO-3 on 2 ranks per host, launched

1. by launcher/run.sh (its checks, then DeepSpeed's pdsh/ssh path; .deepspeed_env carries
   the accelerator, extension cache, gloo interface and PATH): it trains and logs;
2. by the literal `deepspeed --hostfile HOSTS train.py --config-name X`, resuming with
   runner.resume_dir=auto; a rank on the second host is SIGKILLed while the ranks write a
   checkpoint into the shared folder: every other rank, on both hosts, stops naming it;
3. by launcher/run.sh again: it resumes from the last complete checkpoint, written by
   ranks of both hosts, and saves over the half-written one.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from virtual_cluster import have_tools, virtual_hosts

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "reach2d_ppo_flow_sde"
TIMEOUT_S = 30  # cluster.timeout_s


@pytest.fixture
def cluster(tmp_path):
    missing = have_tools()
    if missing:
        pytest.fail(f"the cluster tier {missing}")
    with virtual_hosts(2, tmp_path / "cluster") as c:
        c.env["DS_ENV_FILE"] = str(tmp_path / "deepspeed_env")
        c.env["PIRL_HOSTFILE"] = str(c.hostfile(slots=2))
        c.env["OMP_NUM_THREADS"] = "1"
        c.env["PYTHONWARNINGS"] = "ignore"
        c.env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{c.env['PATH']}"
        yield c


def _overrides(log_path: Path) -> list[str]:
    return ["cluster.num_nodes=2", "cluster.num_gpus_per_node=2", "actor.ds_config=ds_configs/zero3.json",
            "env.train.total_num_envs=32", "env.eval.total_num_envs=8", "actor.micro_batch_size=8",
            "actor.global_batch_size=32", "env.train.init_params.success_radius=0.4",
            "env.train.init_params.speed=0.3", "actor.model.hidden_dim=512", "runner.val_check_interval=0",
            "runner.save_interval=1", "runner.keep_last_n=3", f"cluster.timeout_s={TIMEOUT_S}",
            "runner.logger.experiment_name=exp", f"runner.logger.log_path={log_path}"]


def _rank_pid(cluster, host: int, rank: int) -> int:
    """The train.py process of global rank `rank` in host's namespace."""
    pids = cluster.run(host, ["ip", "netns", "pids", cluster.namespaces[host]], timeout=30,
                       env=None).stdout.split()
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train.py" in cmd and f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no rank {rank} on host {host}")


def _left_behind(cluster) -> list[str]:
    """Processes other than sshd still in the hosts' namespaces."""
    out = []
    for i, ns in enumerate(cluster.namespaces):
        for pid in cluster.run(i, ["ip", "netns", "pids", ns], timeout=30, env=None).stdout.split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "sshd" not in cmd:
                out.append(f"{ns}: {pid} {cmd[:200]}")
    return out


def test_two_hosts_train_die_mid_save_and_resume(cluster, tmp_path):
    root = tmp_path / "exp" / "checkpoints"
    base = _overrides(tmp_path)

    # 1. launcher/run.sh over pdsh/ssh: trains and logs
    first = cluster.run(0, [str(ROOT / "launcher" / "run.sh"), CONFIG, *base, "runner.max_epochs=2"],
                        timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout + first.stderr
    assert "node1: success before:" in out and "after:" in out
    assert "node2: " in out  # ranks 2 and 3 ran on the second host, through pdsh
    ds_env = dict(line.split("=", 1) for line in Path(cluster.env["DS_ENV_FILE"]).read_text().splitlines())
    assert ds_env["GLOO_SOCKET_IFNAME"] == "eth0" and ds_env["DS_ACCELERATOR"] == "cpu"
    assert ds_env["PATH"] == cluster.env["PATH"] and "TORCH_EXTENSIONS_DIR" in ds_env
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "exp" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("actor/loss")] == [1, 2]
    manifest = json.loads((root / "iter_000002" / "manifest.json").read_text())
    assert manifest["world_size"] == 4
    assert {f"actor/actor/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)} <= set(manifest["files"])
    assert not _left_behind(cluster)

    # 2. the literal command, resuming, with the .deepspeed_env that `run.sh --write-env` writes;
    #    rank 3 (second host) dies while a checkpoint is written
    Path(cluster.env["DS_ENV_FILE"]).unlink()
    written = cluster.run(0, [str(ROOT / "launcher" / "run.sh"), "--write-env"], timeout=120, cwd=ROOT)
    assert written.returncode == 0 and dict(
        line.split("=", 1) for line in Path(cluster.env["DS_ENV_FILE"]).read_text().splitlines()) == ds_env
    literal = cluster.popen(0, ["deepspeed", "--hostfile", cluster.env["PIRL_HOSTFILE"], "train.py",
                                "--config-name", CONFIG, *base, "runner.max_epochs=1000", "runner.resume_dir=auto",
                                "runner.eval_before_train=false"],
                            cwd=ROOT, text=True, stdout=open(tmp_path / "literal.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (tmps := [p for p in root.glob("iter_*.tmp") if p.name != "iter_000002.tmp"]):
            assert literal.poll() is None, (tmp_path / "literal.log").read_text()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        victim = _rank_pid(cluster, 1, rank=3)
        os.kill(victim, signal.SIGKILL)
        literal.wait(timeout=3 * TIMEOUT_S)
    finally:
        if literal.poll() is None:
            literal.kill()
            literal.wait()
    log = (tmp_path / "literal.log").read_text()
    assert "resumed from" in log and "at iteration 2" in log
    assert literal.returncode != 0
    crashed = tmps[0]
    assert crashed.is_dir() and not crashed.with_suffix("").exists(), "the kill missed the save"
    for r in (0, 1, 2):  # named by the watchdog, or on the SIGTERM of rank 3's launcher
        assert re.search(rf"\[rank {r}\] pirl: stopping because (of SIGTERM, and )?rank 3 \(pid {victim} on ", log), \
            log[-4000:]
    assert not _left_behind(cluster)

    # 3. run.sh resumes from the newest complete checkpoint and saves over the half-written one
    latest = (root / "latest").read_text()
    iteration = int(crashed.name[5:11])
    assert latest == f"iter_{iteration - 1:06d}"
    third = cluster.run(0, [str(ROOT / "launcher" / "run.sh"), CONFIG, *base, "runner.resume_dir=auto",
                            f"runner.max_epochs={iteration}", "runner.eval_before_train=false"],
                        timeout=900, cwd=ROOT)
    out = third.stdout + third.stderr
    assert third.returncode == 0, out[-4000:]
    assert f"resumed from {root / latest} at iteration {iteration - 1}" in out and "skipping" not in out
    assert (root / f"iter_{iteration:06d}" / "manifest.json").is_file() and not crashed.exists()
    assert not _left_behind(cluster)

