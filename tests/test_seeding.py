"""Seeds from one place (pirl.seeding): no two envs of a run start from the same initial
state unless a GRPO group asks for it, over env ranks, pipeline stages, iterations and
rollout epochs; eval envs replay the same episodes at every eval."""
import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs.chunked import ChunkedVecEnv, LocalBackend
from pirl.envs.reach2d import Reach2DEnv
from pirl.seeding import generator_for, seed_for
from pirl.workers.env_worker import reset_seed

torch.set_num_threads(1)
RANKS, STAGES, ENVS = 4, 2, 16


class SeedEnv:
    """Initial state = a continuous function of the reset seed, as a simulator's would be."""

    action_dim, state_dim, task_name, task_description = 1, 2, "t", "t"

    def reset(self, seed: int) -> None:
        self.s = np.random.default_rng(seed).standard_normal(2).astype(np.float32)

    def step(self, action):
        return 0.0, False, False

    def observe(self):
        return {"state": self.s}

    def close(self) -> None:
        pass


def _reach2d(n):
    return Reach2DEnv(n, render=False)


def _chunked(n):
    return ChunkedVecEnv(LocalBackend([SeedEnv() for _ in range(n)]), 8)


def initial_states(make, split, group, iterations=(0, 1), epochs=(0, 1)):
    """(rank, stage, iteration, epoch, env) -> initial state row, as the env workers reset them."""
    cfg = EnvSplitConfig(seed=5 if split == "train" else 100_000, group_size=group)
    out = {}
    for r in range(RANKS):
        for s in range(STAGES):
            env = make(ENVS)
            for it in iterations:
                for ep in epochs:
                    obs = env.reset(seed=reset_seed(cfg, split, r, s, it, ep), group_size=group)
                    for i in range(ENVS):
                        out[(r, s, it, ep, i)] = tuple(obs["states"][i].tolist())
    return out


@pytest.mark.parametrize("make", [_reach2d, _chunked], ids=["reach2d", "chunked"])
def test_no_two_training_envs_share_an_initial_state(make):
    states = initial_states(make, "train", group=1)
    assert len(set(states.values())) == len(states) == RANKS * STAGES * 2 * 2 * ENVS


@pytest.mark.parametrize("make", [_reach2d, _chunked], ids=["reach2d", "chunked"])
def test_grpo_groups_share_their_state_and_only_theirs(make):
    G = 4
    states = initial_states(make, "train", group=G)
    by_state: dict = {}
    for key, st in states.items():
        by_state.setdefault(st, set()).add(key[:4] + (key[4] // G,))  # the key of the env's group
    assert all(len(groups) == 1 for groups in by_state.values())  # one state never spans two groups
    assert len(by_state) == len(states) // G  # and each group has its own


@pytest.mark.parametrize("make", [_reach2d, _chunked], ids=["reach2d", "chunked"])
def test_eval_envs_are_distinct_and_the_same_at_every_eval(make):
    states = initial_states(make, "eval", group=1)
    first = {k: v for k, v in states.items() if k[2:4] == (0, 0)}
    assert len(set(first.values())) == len(first) == RANKS * STAGES * ENVS  # 128 distinct episodes
    for (r, s, _it, _ep, i), v in states.items():
        assert v == first[(r, s, 0, 0, i)]  # every eval replays them


def test_seed_for_is_a_pure_function_of_its_arguments():
    a = seed_for(7, "rollout", 1, 2, 3, 4)
    assert a == seed_for(7, "rollout", 1, 2, 3, 4) and 0 <= a < 2**31 - 1
    others = {seed_for(7, "rollout", 1, 2, 3, 5), seed_for(7, "rollout", 1, 2, 4, 4), seed_for(7, "rollout", 1, 3, 3, 4),
              seed_for(7, "rollout", 2, 2, 3, 4), seed_for(7, "env", 1, 2, 3, 4), seed_for(8, "rollout", 1, 2, 3, 4)}
    assert a not in others and len(others) == 6
    g1, g2 = generator_for(1, "actor", 0), generator_for(1, "actor", 0)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    with pytest.raises(ValueError, match="unknown seed stream 'critic'"):
        seed_for(1, "critic")
