"""A run ends with exit status 0 after success, every time: 10 consecutive runs of a short
job through the DeepSpeed launcher on 2 ranks all exit 0, leave no process and no /dev/shm
all-reduce buffer behind (pirl.engine.dist.shutdown unlinks DeepSpeed's), and,
their stdout being a pipe, print one line per iteration and no redrawn progress bar."""
import os
import re
from pathlib import Path

import pytest
from _proc import run_session

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 2
SHORT = ["env.train.total_num_envs=8", "env.eval.total_num_envs=4", f"runner.max_epochs={ITERATIONS}",
         "runner.eval_before_train=False", "runner.val_check_interval=0", "runner.save_interval=0",
         "runner.save_policy=False", "actor.global_batch_size=16", "actor.micro_batch_size=8"]


# A run takes ~60 s at load 10. The limit catches a hang, not slowness: at load 20-40 with
# the memory full, a run's ranks were measured still importing DeepSpeed's ops inside
# init_distributed after 13 min (30 s of CPU), so 300 s cut healthy runs.
RUN_TIMEOUT_S = 900


def _processes_naming(marker: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(f"{pid}: {cmd[:200]}")
    return out


def _shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


def test_ten_consecutive_runs_exit_zero_and_leave_nothing(tmp_path):
    buffers_before = _shm_buffers()
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    env = dict(os.environ, PIRL_HOSTFILE=str(hosts))
    for run in range(10):
        log_path = tmp_path / f"run{run}"
        proc = run_session([str(ROOT / "launcher" / "run.sh"), "reach2d_learn_ppo_flow_sde", *SHORT,
                            f"runner.logger.log_path={log_path}", f"runner.seed={run}"], timeout=RUN_TIMEOUT_S,
                           cwd=ROOT, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"run {run} exited {proc.returncode}:\n{out[-3000:]}"
        assert "terminate called" not in out
        assert "\r" not in proc.stdout, "a progress bar was redrawn into a pipe"
        lines = re.findall(r"^iter (\d+) \|", proc.stdout, re.M)
        assert lines == [str(i) for i in range(1, ITERATIONS + 1)], proc.stdout[-2000:]
        assert not _processes_naming(str(log_path)), _processes_naming(str(log_path))
        assert _shm_buffers() <= buffers_before, f"run {run} left {sorted(_shm_buffers() - buffers_before)}"
