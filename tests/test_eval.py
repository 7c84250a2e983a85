"""python -m pirl.eval: Wilson intervals and the per-task split against hand-computed
values, distinct initial states across waves and ranks, the before/after table, and the
refusals of a checkpoint that contradicts the env config (each value named)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pirl.config import load_config
from pirl.eval import (EpisodeResult, Report, compare_table, episode_counts, markdown_table, run_episodes, summarize,
                       wilson_interval)
from pirl.models import build_policy
from pirl.models.contract import PolicyMismatch, check_fits, policy_contract

ROOT = Path(__file__).resolve().parents[1]


def test_wilson_interval_hand_computed():
    # p = 0.7, n = 10, z = 1.96: center (0.7 + 0.19207) / 1.38415, half 1.96·sqrt(0.021 + 0.0096037) / 1.38415
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.39677, abs=1e-4) and hi == pytest.approx(0.89222, abs=1e-4)
    lo, hi = wilson_interval(0, 8)  # z² / (n + z²) = 3.8415 / 11.8415
    assert lo == 0.0 and hi == pytest.approx(0.32441, abs=1e-4)
    lo, hi = wilson_interval(8, 8)
    assert lo == pytest.approx(1 - 0.32441, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(1, 2)  # center 0.5, half 1.96·sqrt(0.125 + 0.24009) / 2.92073
    assert lo == pytest.approx(0.5 - 0.40546, abs=1e-4) and hi == pytest.approx(0.5 + 0.40546, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_per_task_split_and_first_n_episodes():
    # task a: 3 of 4 succeed (lengths 10, 20, 30 and a failure at 50); b: 1 of 2; a 5th "a" comes late
    res = [EpisodeResult("a", True, 10, 0, 0), EpisodeResult("b", False, 50, 1, 1), EpisodeResult("a", True, 20, 2, 2),
           EpisodeResult("b", True, 40, 3, 3), EpisodeResult("a", False, 50, 4, 4), EpisodeResult("a", True, 30, 5, 5),
           EpisodeResult("a", False, 50, 6, 6)]
    rep = summarize(res, per_task=4)
    a, b = rep.tasks["a"], rep.tasks["b"]
    assert (a.episodes, a.successes, a.success_rate) == (4, 3, 0.75)
    assert a.episode_len_mean == pytest.approx(27.5) and a.episode_len_success_mean == pytest.approx(20.0)
    assert (b.episodes, b.successes) == (2, 1) and b.episode_len_mean == pytest.approx(45.0)
    assert (rep.overall.episodes, rep.overall.successes) == (6, 4)
    assert rep.overall.ci95 == pytest.approx(wilson_interval(4, 6))
    assert a.ci95[0] == pytest.approx(0.30064, abs=1e-4) and a.ci95[1] == pytest.approx(0.95441, abs=1e-4)
    table = markdown_table(rep)
    assert "| a | 4 | 75.0 | [30.1, 95.4] | 27.5 | 20.0 |" in table
    assert "| **overall** | 6 | 66.7 |" in table
    again = Report.from_json(json.loads(json.dumps(rep.to_json())))
    after = summarize([EpisodeResult("a", True, 5, 0, 0), EpisodeResult("b", True, 5, 1, 1)])
    cmp = compare_table(again, after)
    assert "| a | 75.0 | [30.1, 95.4] | 100.0 | [20.7, 100.0] | +25.0 |" in cmp
    assert "| **overall** | 66.7 |" in cmp and "+33.3 |" in cmp


def test_episode_counts_per_wave():
    assert episode_counts(5, 2, world=2) == [6, 4]  # envs 0, 2, 4 run task 0; 1, 3 task 1; two ranks
    assert episode_counts(1, 2, world=1) == [1, 0]


class _Recorder:
    """Wraps a VecEnv and keeps the observation every episode starts from."""

    def __init__(self, env):
        self.env, self.starts = env, []
        self.num_envs, self.max_episode_steps = env.num_envs, env.max_episode_steps

    def reset(self, seed=None, group_size=1):
        obs = self.env.reset(seed=seed, group_size=group_size)
        self.starts += [s.clone() for s in obs["states"]]
        return obs

    def chunk_step(self, actions):
        return self.env.chunk_step(actions)

    def close(self):
        self.env.close()


def _flow_mlp(cfg, state_dim):
    torch.manual_seed(0)
    return build_policy(cfg.actor.model, state_dim=state_dim).eval()


def test_eval_episodes_start_from_distinct_states_across_waves_and_ranks():
    from pirl.envs.reach2d import Reach2DEnv

    cfg = load_config("reach2d_learn_ppo_flow_sde")
    results, starts = [], []
    for rank in range(2):  # two ranks' shares, as the launcher would run them
        env = _Recorder(Reach2DEnv(3, max_episode_steps=16, auto_reset=False, render=False,
                                   **{k: v for k, v in dict(cfg.env.eval.init_params).items() if k != "render"}))
        policy = _flow_mlp(cfg, env.env.state_dim)
        with torch.no_grad():
            results += run_episodes(policy, env, ["reach2d"], per_task=10, chunk=4, base_seed=100, rank=rank,
                                    world=2, sampling="ode")
        starts += env.starts
    assert len(results) == 12  # ceil(10 / 6) = 2 waves of 3 envs on each of 2 ranks
    assert len({r.seed for r in results}) == 12 and len({r.order for r in results}) == 12
    states = torch.stack(starts)
    dist = torch.cdist(states, states) + torch.eye(len(states))
    assert dist.min() > 1e-3  # no two episodes start alike
    assert summarize(results, per_task=10).tasks["reach2d"].episodes == 10


def _save_flow_mlp_checkpoint(tmp_path, cfg, state_dim=11):
    policy = _flow_mlp(cfg, state_dim)
    return policy.save_pretrained(tmp_path / "ckpt", {"policy": policy_contract(cfg, state_dim)})


@pytest.mark.parametrize("override, named", [
    ("actor.model.num_steps=2", "num_steps: checkpoint 1, config 2"),
    ("actor.model.num_action_chunks=2", "action_chunk: checkpoint 4, config 2"),
])
def test_checkpoint_contradicting_the_config_is_refused(override, named, tmp_path):
    cfg = load_config("reach2d_learn_ppo_flow_sde")
    ckpt = _save_flow_mlp_checkpoint(tmp_path, cfg)
    check_fits(ckpt, cfg, 11)  # the config it was made with fits
    other = load_config("reach2d_learn_ppo_flow_sde", overrides=[override, "env.train.max_episode_steps=16"])
    with pytest.raises(PolicyMismatch, match=named):
        check_fits(ckpt, other, 11)
    with pytest.raises(PolicyMismatch, match="state_dim: checkpoint 11, config 9"):
        check_fits(ckpt, cfg, 9)


def test_norm_stats_of_other_dims_are_refused(tmp_path):
    from pirl.models.pi0.normalize import NormStats

    cfg = load_config("metaworld_quickstart_ppo_openpi")
    stats = {"state": NormStats(torch.zeros(39), torch.ones(39)), "actions": NormStats(torch.zeros(7), torch.ones(7))}
    with pytest.raises(PolicyMismatch, match=r"norm stats actions: checkpoint covers 7 dims, config 4"):
        check_fits(tmp_path, cfg, 39, stats)
    stats["state"] = NormStats(torch.zeros(8), torch.ones(8))
    with pytest.raises(PolicyMismatch, match=r"norm stats state: checkpoint covers 8 dims, config 39"):
        check_fits(tmp_path, cfg, 39, stats)


@pytest.mark.dist
def test_eval_cli_refuses_a_mismatched_checkpoint_before_any_env(tmp_path):
    cfg = load_config("reach2d_learn_ppo_flow_sde")
    ckpt = _save_flow_mlp_checkpoint(tmp_path, cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pirl.eval", "--config-name", "reach2d_learn_ppo_flow_sde",
                           "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval"), "actor.model.num_steps=3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "num_steps: checkpoint 1, config 3" in proc.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.dist
def test_eval_cli_report_on_reach2d(tmp_path):
    cfg = load_config("reach2d_learn_ppo_flow_sde")
    ckpt = _save_flow_mlp_checkpoint(tmp_path, cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pirl.eval", "--config-name", "reach2d_learn_ppo_flow_sde",
                           "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval"), "--episodes", "40",
                           "env.eval.total_num_envs=16", "--sampling", "sde"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert rep["overall"]["episodes"] == 40 and rep["meta"]["sampling"] == "sde"
    k = rep["overall"]["successes"]
    assert rep["overall"]["ci95"] == pytest.approx(list(wilson_interval(k, 40)))
    assert "| **overall** | 40 |" in (tmp_path / "eval" / "eval.md").read_text()
