"""SLURM for real: slurmctld + one slurmd per host (network namespaces, tests/virtual_cluster.py)
with munge, configured in a temp folder, started and stopped by the test.

- launcher/slurm/multi_node.sbatch on 2 nodes x 1 task: trains, logs into a folder of
  its own, checkpoints (the uninterrupted reference);
- launcher/slurm/single_node.sbatch, 2 tasks, cancelled mid-run after its checkpoint at
  iteration 2; the same job submitted again, this time as
  launcher/slurm/multi_node_torchrun.sbatch (torchrun per node), resumes from that
  checkpoint and ends at the reference's iteration with bit-identical parameters.
"""
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from virtual_cluster import have_tools, slurm_cluster, virtual_hosts

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "launcher" / "slurm"
CONFIG = "reach2d_ppo_flow_sde"


@pytest.fixture
def slurm(tmp_path):
    missing = have_tools()
    if missing:
        pytest.fail(f"the cluster tier {missing}")
    with virtual_hosts(2, tmp_path / "cluster") as hosts, slurm_cluster(hosts) as s:
        s.env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PIRL_SLURM_LOGS=str(tmp_path / "slurm-logs"))
        yield s


def _args(log_path: Path) -> list[str]:
    return [CONFIG, "env.train.total_num_envs=16", "env.eval.total_num_envs=4", "actor.micro_batch_size=16",
            "actor.global_batch_size=32", "env.train.init_params.success_radius=0.4", "env.train.init_params.speed=0.3",
            "runner.val_check_interval=0", "runner.eval_before_train=false",
            "runner.max_epochs=4", "runner.save_interval=2", "runner.keep_last_n=3", "cluster.timeout_s=60",
            "runner.logger.experiment_name=exp", f"runner.logger.log_path={log_path}"]


def _job_logs(tmp_path: Path, job: int) -> Path:
    folder = tmp_path / "slurm-logs" / f"pirl-{job}"
    assert folder.is_dir(), sorted(p.name for p in (tmp_path / "slurm-logs").iterdir())
    return folder


def _job_ranks(job: int) -> list[int]:
    """pids of the job's train.py processes (this machine's: the nodes are namespaces)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"python" in cmd[0] and len(cmd) > 1 and cmd[1].endswith(b"train.py")
                and f"SLURM_JOB_ID={job}".encode() in env):
            found.append(int(proc.name))
    return found


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "actor" / "actor" / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def test_submit_cancel_resubmit_resumes_to_the_same_parameters(slurm, tmp_path):
    # the reference: 2 nodes, one task each, uninterrupted
    ref = slurm.sbatch("--nodes=2", "--ntasks-per-node=1", f"--output={tmp_path}/ref.out",
                       str(SLURM / "multi_node.sbatch"), *_args(tmp_path / "ref"), cwd=ROOT)
    slurm.wait(ref, timeout=600)
    logs = _job_logs(tmp_path, ref)
    batch = (logs / "batch.log").read_text()
    assert "on node[1-2], 2 ranks" in batch and f"job {ref} ended with status 0" in batch, batch[-3000:]
    assert "success after:" in (logs / "rank_0.log").read_text()
    assert (logs / "rank_1.log").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "ref" / "exp" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("actor/loss")] == [1, 2, 3, 4]

    # the same run on one node, cancelled after its checkpoint at iteration 2
    root = tmp_path / "run" / "exp" / "checkpoints"
    first = slurm.sbatch("--ntasks-per-node=2", f"--output={tmp_path}/first.out",
                         str(SLURM / "single_node.sbatch"), *_args(tmp_path / "run"), cwd=ROOT)
    deadline = time.monotonic() + 600
    while not ((root / "latest").is_file() and (root / "latest").read_text() == "iter_000002"):
        assert slurm.state(first), (_job_logs(tmp_path, first) / "batch.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    # Freeze the ranks first: an iteration takes a fraction of a second here, less than
    # scancel takes to reach them, so the cancel would otherwise land after the end.
    ranks = _job_ranks(first)
    assert len(ranks) == 2
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    slurm.cmd("scancel", str(first))
    slurm.wait(first, timeout=120)
    assert not (root / "iter_000004").exists(), "cancelled too late"

    # submitted again (here with torchrun per node): resumes from iteration 2
    again = slurm.sbatch("--nodes=1", f"--output={tmp_path}/again.out", str(SLURM / "multi_node_torchrun.sbatch"),
                         *_args(tmp_path / "run"), cwd=ROOT)
    slurm.wait(again, timeout=600)
    logs = _job_logs(tmp_path, again)
    node_log = (logs / "node_0.log").read_text()
    assert f"resumed from {root / 'iter_000002'} at iteration 2" in node_log, node_log[-3000:]
    assert f"job {again} ended with status 0" in (logs / "batch.log").read_text()
    final = root / "iter_000004"
    assert json.loads((final / "runner_rank0.json").read_text())["iteration"] == 4
    a, b = _weights(tmp_path / "ref" / "exp" / "checkpoints" / "iter_000004"), _weights(final)
    assert a.keys() == b.keys()
    mid = _weights(root / "iter_000002")
    assert max((a[k] - mid[k]).abs().max().item() for k in a) > 0  # it trained after the resume
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
