"""reach2d, the built-in task: observation layout, seeds, group resets, chunk stepping
against a float64 re-implementation of the dynamics, auto-reset, termination masks and
the rendered view."""
from __future__ import annotations

import pytest
import torch

from pirl.envs.reach2d import ARENA, COLOURS, RGB, Reach2DEnv

torch.set_num_threads(1)


def env_of(n=8, **kw):
    kw.setdefault("render", False)
    return Reach2DEnv(n, **kw)


def split_state(states: torch.Tensor, n_targets: int):
    """states (B, 2 + 3N) -> agent (B, 2), targets relative to the agent (B, N, 2), goal (B,)."""
    agent = states[:, :2]
    rel = states[:, 2:2 + 2 * n_targets].reshape(-1, n_targets, 2)
    onehot = states[:, 2 + 2 * n_targets:]
    return agent, rel, onehot.argmax(dim=1)


def reference_chunk(pos, goal_xy, actions, speed, radius, max_steps, elapsed):
    """float64 re-derivation of one chunk for one env that starts active: returns
    (positions after each executed step, rewards, terminated, truncated) lists."""
    out_pos, rew, term, trunc = [], [], [], []
    p = pos.double().clone()
    for a in actions.double():
        p = (p + speed * a.clamp(-1, 1)).clamp(-1, 1)
        elapsed += 1
        hit = bool((p - goal_xy.double()).norm() < radius)
        out_pos.append(p.clone())
        rew.append(float(hit))
        term.append(hit)
        trunc.append((not hit) and elapsed >= max_steps)
        if hit or elapsed >= max_steps:
            break
    return out_pos, rew, term, trunc


def test_observation_shapes_and_layout():
    env = Reach2DEnv(6, num_targets=3, image_size=32, seed=1)
    obs = env.reset()
    assert env.state_dim == 2 + 3 * 3 and env.action_dim == 2
    assert obs["states"].shape == (6, env.state_dim) and obs["states"].dtype == torch.float32
    assert obs["main_images"].shape == (6, 32, 32, 3) and obs["main_images"].dtype == torch.uint8
    agent, rel, goal = split_state(obs["states"], 3)
    assert torch.equal(agent, env.pos)
    assert torch.allclose(rel, env.targets - env.pos[:, None])  # egocentric target vectors
    assert torch.equal(goal, env.goal)
    assert obs["states"][:, 8:].sum(dim=1).eq(1).all()  # one-hot goal colour
    for text, g in zip(obs["task_descriptions"], env.goal.tolist()):
        assert text == f"move to the {COLOURS[g]} target"
    assert (env.pos.abs() <= ARENA).all() and (env.targets.abs() <= ARENA).all()


def test_seeds_repeat_and_differ():
    a = env_of(16, seed=3).reset()["states"]
    b = env_of(16, seed=3).reset()["states"]
    c = env_of(16, seed=4).reset()["states"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    env = env_of(16, seed=99)
    assert torch.equal(env.reset(seed=3)["states"], a)  # reset(seed) reseeds


def test_group_resets_share_initial_state():
    env = env_of(12, seed=5)
    states = env.reset(group_size=4)["states"].reshape(3, 4, -1)
    assert torch.equal(states, states[:, :1].expand_as(states))  # members equal
    assert not torch.equal(states[0, 0], states[1, 0])  # groups differ
    with pytest.raises(ValueError, match="group_size 5 must divide the env count 12"):
        env.reset(group_size=5)


def test_chunk_step_matches_float64_reference():
    torch.manual_seed(0)
    speed, radius, max_steps = 0.3, 0.2, 8
    env = env_of(64, speed=speed, success_radius=radius, max_episode_steps=max_steps, seed=7,
                 auto_reset=False)
    env.reset()
    elapsed = [0] * 64
    done_before = torch.zeros(64, dtype=torch.bool)
    n_term = n_trunc = 0
    for _ in range(3):
        pos0, goal_xy = env.pos.clone(), env._goal_pos().clone()
        actions = torch.randn(64, 4, 2) * 1.2  # some beyond [-1, 1]: clamped
        _, rew, term, trunc, info = env.chunk_step(actions)
        for i in range(64):
            if done_before[i]:  # ended in an earlier chunk, not reset: flags stay set, nothing runs
                assert rew[i].sum() == 0 and (term[i].all() or trunc[i].all())
                continue
            ps, r, te, tr = reference_chunk(pos0[i], goal_xy[i], actions[i], speed, radius, max_steps, elapsed[i])
            n = len(ps)
            elapsed[i] += n
            assert torch.allclose(env.pos[i].double(), ps[-1], atol=1e-6)
            assert rew[i, :n].tolist() == r and rew[i, n:].sum() == 0
            assert term[i, :n].tolist() == te and trunc[i, :n].tolist() == tr
            # after the end nothing runs and the flags stay set (pirl.envs.base)
            assert term[i, n:].eq(te[-1]).all() and trunc[i, n:].eq(tr[-1]).all()
            assert bool(info["done"][i]) == (te[-1] or tr[-1])
        done_before |= info["done"]
        assert torch.equal(info["episode"]["success_once"].bool(), env.succeeded)
        n_term += int(term.any(dim=1).sum())
        n_trunc += int(trunc.any(dim=1).sum())
    assert n_term > 0 and n_trunc > 0  # both endings were exercised


def test_success_terminates_and_auto_reset_starts_fresh_episode():
    env = env_of(4, speed=0.3, success_radius=0.2, max_episode_steps=16, seed=2)
    env.reset()
    goal_dir = env._goal_pos() - env.pos  # (B, 2)
    # Env 0 walks straight at its goal; the others stand still.
    steps = torch.zeros(4, 8, 2)
    unit = goal_dir[0] / goal_dir[0].norm()
    steps[0, :] = unit / unit.abs().max()  # full speed along the larger axis, inside [-1, 1]
    before = env.state_dict()
    obs, rew, term, trunc, info = env.chunk_step(steps)
    assert info["done"][0] and term[0].any() and info["episode"]["success_once"][0] == 1.0
    k = int(term[0].float().argmax())
    assert k + 1 == info["episode"]["episode_len"][0]
    # float64: the first step whose position lies inside the success radius
    p, goal = before["pos"][0].double(), before["targets"][0, before["goal"][0]].double()
    first_hit = None
    for i in range(8):
        p = (p + 0.3 * steps[0, i].double()).clamp(-1, 1)
        if first_hit is None and (p - goal).norm() < 0.2:
            first_hit = i
    assert first_hit == k
    assert rew[0, k] == 1.0 and rew[0].sum() == 1.0
    # auto-reset: env 0 restarts (new state, counters cleared); the final obs is kept
    assert "final_obs" in info
    assert not torch.equal(obs["states"][0], info["final_obs"]["states"][0])
    assert env.elapsed[0] == 0 and not env.succeeded[0] and env.ret[0] == 0
    # the standing envs were untouched
    assert torch.equal(env.pos[1:], before["pos"][1:]) and not info["done"][1:].any()


def test_truncation_and_ignore_terminations():
    env = env_of(3, max_episode_steps=6, ignore_terminations=True, auto_reset=False, seed=1,
                 success_radius=2.0)  # every position is a success
    env.reset()
    _, rew, term, trunc, info = env.chunk_step(torch.zeros(3, 4, 2))
    assert not term.any() and not trunc.any() and rew.sum() == 12  # reward every step
    _, rew, term, trunc, info = env.chunk_step(torch.zeros(3, 4, 2))
    # steps 5 and 6 run, then the time limit; the last two chunk slots are padding
    assert trunc[:, 1:].all() and not trunc[:, 0].any() and not term.any()
    assert rew[:, :2].eq(1).all() and rew[:, 2:].eq(0).all()
    assert info["done"].all() and info["episode"]["episode_len"].eq(6).all()
    assert info["episode"]["return"].eq(6).all()


def test_rel_reward_pays_once():
    env = env_of(2, max_episode_steps=8, ignore_terminations=True, use_rel_reward=True,
                 success_radius=2.0, reward_coef=0.5, seed=0)
    env.reset()
    _, rew, *_ = env.chunk_step(torch.zeros(2, 4, 2))
    assert rew[:, 0].eq(0.5).all() and rew[:, 1:].eq(0).all()


def test_bad_actions_and_targets_are_rejected():
    env = env_of(2)
    env.reset()
    with pytest.raises(ValueError, match=r"reach2d expects actions \(B=2, C, 2\)"):
        env.chunk_step(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="num_targets must be in"):
        Reach2DEnv(2, num_targets=7)


def test_render_draws_targets_and_agent():
    env = Reach2DEnv(2, image_size=64, seed=4, success_radius=0.15)
    env.reset()
    img = env.render()
    S = 64
    for b in range(2):
        for i in range(env.num_targets):
            x, y = env.targets[b, i].tolist()
            col, row = int((x + 1) / 2 * S), int((1 - y) / 2 * S)  # row 0 is y = +1
            pix = img[b, row, col]
            agent_near = (env.pos[b] - env.targets[b, i]).norm() < 0.1
            if not agent_near:
                assert torch.equal(pix, RGB[i]), (b, i)
        x, y = env.pos[b].tolist()
        assert torch.equal(img[b, int((1 - y) / 2 * S), int((x + 1) / 2 * S)], torch.tensor([255, 255, 255], dtype=torch.uint8))
        # a pixel far from every disc and the agent is background
        coords = (torch.arange(S) + 0.5) / S * 2 - 1
        gy, gx = torch.meshgrid(-coords, coords, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).double()
        pts = torch.cat([env.targets[b], env.pos[b][None]]).double()
        far = ((grid[:, :, None] - pts).norm(dim=-1) > 0.25).all(dim=-1)
        assert far.any() and (img[b][far] == 24).all()


def test_state_dict_round_trip_continues_identically():
    a = env_of(8, seed=11)
    a.reset()
    a.chunk_step(torch.randn(8, 4, 2))
    saved = a.state_dict()
    acts = torch.randn(8, 4, 2)
    ra = a.chunk_step(acts)
    b = env_of(8, seed=0)
    b.load_state_dict(saved)
    rb = b.chunk_step(acts)
    assert torch.equal(ra[0]["states"], rb[0]["states"]) and torch.equal(ra[1], rb[1])
