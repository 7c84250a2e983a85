"""Tiny OpenVLA-OFT (random weights) on real simulators through the launcher: PPO
iterations (parallel-decoded token actions, GAE with the value head, per-token ratios,
DeepSpeed update) on MetaWorld (2 ranks) and LIBERO (1 rank, two env workers) run to the
end with a finite loss. They show that the token policy drives the same pipeline as the
flow policies, not that it learns: the learning claims are tests/test_oft_training.py
(reach2d)."""
import os
from pathlib import Path

import pytest
from _proc import run_session
from test_sim_training import _check

pytestmark = [pytest.mark.sim, pytest.mark.dist]

ROOT = Path(__file__).resolve().parents[1]
# The OFT model group, its state width as the proprio token, per-token ratios (the seeds'
# OFT setting), cameras on: the towers read the main camera.
OFT = ("model@actor.model=openvla_oft_tiny", "algorithm.logprob_type=token_level")


def _launch(config: str, ranks: int, tmp_path: Path, *overrides: str, iterations: int = 1) -> str:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"localhost slots={ranks}\n")
    env = dict(os.environ, PIRL_HOSTFILE=str(hosts), PYTHONWARNINGS="ignore")
    cmd = [str(ROOT / "launcher" / "run.sh"), config, *OFT, f"runner.max_epochs={iterations}",
           "runner.val_check_interval=0", "runner.save_interval=0", f"runner.logger.log_path={tmp_path / 'logs'}",
           *overrides]
    proc = run_session(cmd, timeout=900, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_tiny_oft_metaworld_ppo_iteration_runs_two_ranks(tmp_path):
    # MetaWorld's Sawyer: 39-D state, 4-D actions
    _check(_launch("metaworld_reach_ppo_flow_mlp", 2, tmp_path, "actor.model.action_dim=4",
                   "actor.model.proprio_dim=39", "env.train.init_params.render=True"))


def test_tiny_oft_libero_ppo_iterations_run_one_rank(tmp_path):
    """One libero_spatial task, the main camera, 8-D state, 7-D actions, 2 PPO iterations.
    LIBERO's instructions run to 28 hashed-word tokens, past the tiny preset's 24 (sized for
    reach2d), so the prompt length is raised as a LIBERO config does."""
    _check(_launch("libero_quickstart_ppo_openpi", 1, tmp_path, "actor.model.action_dim=7",
                   "actor.model.proprio_dim=8", "actor.model.max_prompt_length=40", iterations=2), iterations=2)
