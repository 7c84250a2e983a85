"""Smoke tests on real simulators through the launcher: one PPO iteration (rollout,
advantages, DeepSpeed update, eval) runs to the end with a finite loss. They show that the
pipeline runs, not that anything learns: the learning claims are in tests/test_learning.py
(reach2d), tests/test_pi0_training.py (tiny VLAs on reach2d) and the MetaWorld main job
(bench/quickstart.py, docs/benchmarks.md)."""
import math
import os
import re
from pathlib import Path

import pytest
from _proc import run_session

pytestmark = [pytest.mark.sim, pytest.mark.dist]

ROOT = Path(__file__).resolve().parents[1]


def _launch(config: str, hostfile: Path, log_path: Path, *overrides: str, iterations: int = 1) -> str:
    env = dict(os.environ, PIRL_HOSTFILE=str(hostfile), PYTHONWARNINGS="ignore")
    cmd = [str(ROOT / "launcher" / "run.sh"), config, f"runner.max_epochs={iterations}",
           "runner.val_check_interval=0", "runner.save_interval=0", f"runner.logger.log_path={log_path}", *overrides]
    proc = run_session(cmd, timeout=900, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _check(out: str, iterations: int = 1) -> None:
    """The run printed its eval before training and a finite loss for every iteration."""
    assert "success before:" in out
    for i in range(1, iterations + 1):
        loss = re.search(r"loss=([-0-9.e+nainf]+)", out.split(f"iter {i} |", 1)[1])
        assert loss and math.isfinite(float(loss.group(1))), f"iteration {i}"


def test_metaworld_ppo_iteration_runs_two_ranks(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    _check(_launch("metaworld_reach_ppo_flow_mlp", hosts, tmp_path / "logs"))


# ManiSkill's CPU backend runs one env per worker process and building one costs ~12 s of
# CPU here: 2 train envs (2 x 4 chunk steps = one batch of 8) and 1 eval env keep it short.
MANISKILL_SHORT = ("env.train.total_num_envs=2", "env.eval.total_num_envs=1", "env.train.max_episode_steps=16",
                   "env.eval.max_episode_steps=16", "actor.global_batch_size=8")


def test_maniskill_ppo_iteration_runs_one_rank(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n")
    _check(_launch("maniskill_pickcube_ppo_flow_mlp", hosts, tmp_path / "logs", *MANISKILL_SHORT))


def test_tiny_pi0_metaworld_ppo_iteration_runs_two_ranks(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    # MetaWorld's 39-D state pads into π0's action/state width
    _check(_launch("metaworld_reach_ppo_flow_mlp", hosts, tmp_path / "logs", "model@actor.model=pi0_tiny",
                   "actor.model.action_dim=4", "actor.model.openpi.action_dim=40", "env.train.init_params.render=True"))


def test_tiny_pi0_maniskill_ppo_iteration_runs_one_rank(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n")
    _check(_launch("maniskill_pickcube_ppo_flow_mlp", hosts, tmp_path / "logs", "model@actor.model=pi0_tiny",
                   "actor.model.action_dim=7", "actor.model.openpi.action_dim=48", "env.train.init_params.render=True",
                   *MANISKILL_SHORT, iterations=2), iterations=2)


def test_tiny_pi0_libero_ppo_iterations_run_one_rank(tmp_path):
    """One libero_spatial task, both cameras, 2 env workers, 2 PPO iterations."""
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n")
    _check(_launch("libero_quickstart_ppo_openpi", hosts, tmp_path / "logs", iterations=2), iterations=2)
