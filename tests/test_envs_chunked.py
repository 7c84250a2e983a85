"""ChunkedVecEnv episode rules and WorkerBackend crash recovery, on a tiny pure-Python env,
checked against an independent step-by-step float64 reference of the documented rules."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl.envs.base import VecEnv
from pirl.envs.chunked import ChunkedVecEnv, LocalBackend, episode_metrics, episode_seed, group_seeds
from pirl.envs.vector import WorkerBackend

GOAL = 1.0


class LineEnv:
    """x moves by the action; success (and termination) once x >= GOAL."""

    action_dim = 1
    state_dim = 2

    def __init__(self, index: int, crash_marker: str | None = None, crash_step: int = -1):
        self.task_name = f"line{index % 2}"
        self.task_description = f"move right {index % 2}"
        self.crash_marker, self.crash_step = crash_marker, crash_step
        self.x, self.t = 0.0, 0

    def reset(self, seed: int) -> None:
        self.x, self.t = initial_x(seed), 0

    def step(self, action):
        self.t += 1
        if self.crash_marker and self.t == self.crash_step and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).touch()  # crash once, as a flaky simulator would
            raise RuntimeError("simulated simulator failure")
        self.x += float(action[0])
        success = self.x >= GOAL
        return -abs(GOAL - self.x), success, success

    def observe(self):
        return {"state": np.array([self.x, GOAL], dtype=np.float32),
                "main_image": np.full((4, 4, 3), int(self.x * 10) % 256, dtype=np.uint8)}

    def close(self) -> None:
        pass


def initial_x(seed: int) -> float:
    return (seed % 7) * 0.1


class LineFactory:
    def __init__(self, crash_marker=None, crash_step=-1):
        self.crash_marker, self.crash_step = crash_marker, crash_step

    def __call__(self, index: int) -> LineEnv:
        return LineEnv(index, self.crash_marker, self.crash_step)


def reference_rollout(actions, init_x, max_steps, reward_coef, rel, ignore_term, auto_reset, base_seed):
    """Plain per-env, per-step loop of the rules in pirl/envs/base.py, in float64.
    actions (T, B, C); returns per-chunk lists of rewards, terms, truncs, dones, states."""
    b = actions.shape[1]
    x = np.array(init_x, dtype=np.float64)
    t = np.zeros(b, int)
    prev = np.zeros(b)
    ended = np.zeros(b, bool)
    term_flag = np.zeros(b, bool)
    trunc_flag = np.zeros(b, bool)
    episode = np.zeros(b, int)
    out = []
    for chunk in actions:
        rew = np.zeros((b, chunk.shape[1]))
        terms = np.zeros((b, chunk.shape[1]), bool)
        truncs = np.zeros((b, chunk.shape[1]), bool)
        done = np.zeros(b, bool)
        for i in range(b):
            if ended[i]:
                terms[i], truncs[i] = term_flag[i], trunc_flag[i]
                continue
            for c in range(chunk.shape[1]):
                if not done[i]:
                    x[i] += chunk[i, c]
                    t[i] += 1
                    success = x[i] >= GOAL
                    r = reward_coef * float(success)
                    rew[i, c] = r - prev[i] if rel else r
                    prev[i] = r
                    term_flag[i] = success and not ignore_term
                    trunc_flag[i] = (t[i] >= max_steps) and not term_flag[i]
                    done[i] = term_flag[i] or trunc_flag[i]
                terms[i, c], truncs[i, c] = term_flag[i], trunc_flag[i]
        state_end = x.copy()
        for i in np.flatnonzero(done):
            if auto_reset:
                episode[i] += 1
                x[i] = initial_x(episode_seed(base_seed, i, episode[i]))
                t[i], prev[i], term_flag[i], trunc_flag[i] = 0, 0.0, False, False
            else:
                ended[i] = True
        out.append((rew, terms, truncs, done, state_end, x.copy()))
    return out


@pytest.mark.parametrize("rel,ignore_term,auto_reset", [(False, False, True), (True, False, True),
                                                        (False, True, True), (False, False, False)])
def test_chunk_rules_match_reference(rel, ignore_term, auto_reset):
    b, c, t_chunks, max_steps, coef, seed = 6, 3, 5, 7, 2.5, 11
    rng = np.random.default_rng(3)
    actions = rng.uniform(-0.05, 0.35, size=(t_chunks, b, c))
    env = ChunkedVecEnv(LocalBackend([LineEnv(i) for i in range(b)]), max_steps, auto_reset=auto_reset,
                        ignore_terminations=ignore_term, use_rel_reward=rel, reward_coef=coef, seed=seed)
    assert isinstance(env, VecEnv)
    obs = env.reset(group_size=2)
    init = [initial_x(s) for s in group_seeds(seed, b, 2)]
    np.testing.assert_allclose(obs["states"][:, 0].numpy(), init, atol=1e-6)
    ref = reference_rollout(actions, init, max_steps, coef, rel, ignore_term, auto_reset, seed)
    for k in range(t_chunks):
        obs, rew, term, trunc, infos = env.chunk_step(torch.from_numpy(actions[k]).float()[..., None])
        r_rew, r_term, r_trunc, r_done, r_end, r_next = ref[k]
        assert rew.dtype == torch.float32 and rew.shape == (b, c)
        np.testing.assert_allclose(rew.numpy(), r_rew, atol=1e-5)
        np.testing.assert_array_equal(term.numpy(), r_term)
        np.testing.assert_array_equal(trunc.numpy(), r_trunc)
        np.testing.assert_array_equal(infos["done"].numpy(), r_done)
        np.testing.assert_allclose(infos["final_obs"]["states"][:, 0].numpy(), r_end, atol=1e-5)
        np.testing.assert_allclose(obs["states"][:, 0].numpy(), r_next, atol=1e-5)
        assert infos["valid"].all()
    env.close()


def test_episode_metrics_per_task():
    env = ChunkedVecEnv(LocalBackend([LineEnv(i) for i in range(4)]), 3, seed=0)
    env.reset()
    # envs 0, 1 reach the goal in 2 steps; envs 2, 3 stand still and are truncated at step 3
    act = torch.tensor([0.6, 0.6, 0.0, 0.0]).view(4, 1, 1).expand(4, 3, 1).contiguous()
    _, rew, _, _, infos = env.chunk_step(act)
    m = episode_metrics(infos, env.task_names)
    assert m["env/num_episodes"] == 4
    assert m["env/success_once"] == pytest.approx(0.5)
    assert m["env/episode_len"] == pytest.approx((2 + 2 + 3 + 3) / 4)
    assert m["env/return"] == pytest.approx(0.5)
    assert m["env/line0/success_once"] == pytest.approx(0.5) and m["env/line1/success_once"] == pytest.approx(0.5)
    np.testing.assert_array_equal(rew.numpy(), [[0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]])


def test_bad_actions_and_group_size_raise():
    env = ChunkedVecEnv(LocalBackend([LineEnv(i) for i in range(4)]), 3)
    with pytest.raises(ValueError, match="group_size"):
        env.reset(group_size=3)
    env.reset()
    with pytest.raises(ValueError, match=r"actions must be \(B=4, C, D=1\)"):
        env.chunk_step(torch.zeros(4, 2, 2))


def test_worker_exception_restarts_and_marks_invalid(tmp_path):
    marker = str(tmp_path / "crashed")
    backend = WorkerBackend(LineFactory(marker, crash_step=2), num_envs=4, num_workers=2)
    env = ChunkedVecEnv(backend, 50, seed=3)
    try:
        env.reset()
        act = torch.full((4, 3, 1), 0.01)
        _, _, _, trunc, infos = env.chunk_step(act)
        # every env's step 2 raises until the marker exists: the first worker to step raises
        crashed = ~infos["valid"]
        assert crashed.sum() >= 1 and backend.restarts >= 1
        assert infos["done"][crashed].all() and trunc[crashed, -1].all()
        m = episode_metrics(infos, env.task_names)
        assert m["env/num_episodes"] == 0 and m["env/restarts"] == backend.restarts
        obs, _, _, _, infos = env.chunk_step(act)  # the run goes on
        assert infos["valid"].all() and obs["states"].shape == (4, 2)
    finally:
        env.close()


class FailingBuildFactory(LineFactory):
    """Builds every env but `bad`, whose simulator fails to start."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad = bad

    def __call__(self, index: int) -> LineEnv:
        if index == self.bad:
            raise RuntimeError(f"cannot build env {index}")
        return super().__call__(index)


def test_failed_worker_start_names_the_error_and_leaves_no_process():
    import multiprocessing as mp

    from pirl.envs.vector import WorkerCrash

    with pytest.raises(WorkerCrash, match="cannot build env 1"):
        WorkerBackend(FailingBuildFactory(bad=1), num_envs=3, num_workers=3)
    assert mp.active_children() == []


def test_worker_killed_restarts():
    backend = WorkerBackend(LineFactory(), num_envs=2, num_workers=2)
    env = ChunkedVecEnv(backend, 50, seed=3)
    try:
        env.reset()
        old = backend.worker_pids()
        backend.kill_worker(1)
        _, _, _, _, infos = env.chunk_step(torch.full((2, 2, 1), 0.01))
        np.testing.assert_array_equal(infos["valid"].numpy(), [True, False])
        assert backend.restarts == 1 and backend.worker_pids()[1] != old[1]
    finally:
        env.close()
