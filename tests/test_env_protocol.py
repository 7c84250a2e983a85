"""The one episode protocol (pirl/envs/base.py), checked on every env: an ended env runs no
further actions, its flags stay set until it is reset, an episode ends by termination or
truncation (never both), `infos["done"]` marks the chunk it ended in, and relative rewards
telescope to the last step's reward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs import make_env
from pirl.envs.chunked import ChunkedVecEnv, LocalBackend

torch.set_num_threads(1)
B, CHUNK, MAX_STEPS, CHUNKS = 4, 3, 5, 5  # 5 steps do not fill whole chunks: episodes end inside one


class StepEnv:
    """x += action; success while x >= 0.5, lost again below (so a held success can end)."""

    action_dim, state_dim, task_name, task_description = 1, 1, "step", "reach 0.5"

    def reset(self, seed: int) -> None:
        self.x = (seed % 5) * 0.1

    def step(self, action):
        self.x += float(action[0])
        return 0.0, self.x >= 0.5, self.x >= 0.5

    def observe(self):
        return {"state": np.array([self.x], dtype=np.float32)}

    def close(self) -> None:
        pass


def _reach2d(**kw):
    from pirl.envs.reach2d import Reach2DEnv

    return Reach2DEnv(B, max_episode_steps=MAX_STEPS, speed=0.3, success_radius=0.5, render=False, seed=3, **kw)


def _step_env(**kw):
    return ChunkedVecEnv(LocalBackend([StepEnv() for _ in range(B)]), MAX_STEPS, seed=3, **kw)


def _name(settings: dict) -> str:
    return ",".join(k for k, v in settings.items() if v) or "no_auto_reset"


# env_type -> (task_suite_name, init_params); ManiSkill names its task in init_params.id
SIMS = {"metaworld": ("reach-v3", {"camera_heights": 32, "camera_widths": 32}),
        "maniskill": (None, {"id": "PickCube-v1", "sim_backend": "cpu", "sensor_configs": {"width": 32, "height": 32}}),
        "libero": ("libero_spatial:0", {"camera_heights": 32, "camera_widths": 32})}


@pytest.fixture(scope="module")
def sim_backends():
    """One simulator build per module: every setting wraps the same backend in its own
    ChunkedVecEnv (the class that owns the protocol for every simulator adapter)."""
    built: dict = {}

    def get(kind):
        if kind not in built:
            task, params = SIMS[kind]
            cfg = EnvSplitConfig(env_type=kind, task_suite_name=task, max_episode_steps=MAX_STEPS,
                                 init_params={"render": False, **params})
            built[kind] = make_env(cfg, 2, seed=3).backend
        return built[kind]

    yield get
    for backend in built.values():
        backend.close()


SETTINGS = [dict(auto_reset=True), dict(auto_reset=False), dict(auto_reset=True, use_rel_reward=True),
            dict(auto_reset=True, ignore_terminations=True, use_rel_reward=True)]
SIM = pytest.mark.sim
# Every setting on the cheap envs; ManiSkill and LIBERO resets cost seconds each on CPU, so
# they run the no-auto-reset setting: the other settings are ChunkedVecEnv's own rules, the
# same for every simulator adapter, and run here on the "chunked" env and MetaWorld.
CASES = ([pytest.param(_reach2d, s, id=f"reach2d-{_name(s)}") for s in SETTINGS]
         + [pytest.param(_step_env, s, id=f"chunked-{_name(s)}") for s in SETTINGS]
         + [pytest.param("metaworld", s, id=f"metaworld-{_name(s)}", marks=SIM) for s in SETTINGS]
         + [pytest.param(k, SETTINGS[1], id=f"{k}-{_name(SETTINGS[1])}", marks=SIM) for k in ("maniskill", "libero")])


def check_protocol(env, settings: dict, seed: int = 0) -> dict[str, int]:
    """Runs CHUNKS chunk steps of random actions; asserts the protocol; counts endings."""
    g = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    n = env.num_envs
    ended = torch.zeros(n, dtype=torch.bool)  # over and not reset (auto_reset off)
    counts = {"terminated": 0, "truncated": 0}
    for _ in range(CHUNKS):
        actions = torch.rand(n, CHUNK, env.action_dim, generator=g) * 2 - 1
        _, rew, term, trunc, infos = env.chunk_step(actions)
        assert rew.shape == term.shape == trunc.shape == (n, CHUNK) and rew.dtype == torch.float32
        over = term | trunc
        assert not (term & trunc).any()  # one ending per episode
        for i in range(n):
            if ended[i]:  # still over from an earlier chunk: flags set throughout, nothing runs
                assert over[i].all() and rew[i].eq(0).all() and not infos["done"][i]
                continue
            hits = over[i].nonzero().flatten()
            if hits.numel() == 0:
                assert not infos["done"][i]
                continue
            e = int(hits[0])
            assert over[i, e:].all()  # set from the ending step on
            assert term[i, e:].eq(term[i, e]).all() and trunc[i, e:].eq(trunc[i, e]).all()
            assert rew[i, e + 1:].eq(0).all()  # no action runs after the end
            assert infos["done"][i]
            if settings.get("use_rel_reward"):  # r_t - r_{t-1} telescopes to the last step's reward
                last = float(infos["success"][i, e]) * getattr(env, "reward_coef", 1.0)
                assert abs(float(infos["episode"]["return"][i]) - last) < 1e-5
            counts["terminated" if term[i, e] else "truncated"] += 1
        if not settings.get("auto_reset", True):
            ended |= infos["done"]
    return counts


@pytest.mark.parametrize("build, settings", CASES)
def test_episode_protocol(build, settings, request):
    if isinstance(build, str):  # a simulator: its shared backend under this setting
        env = ChunkedVecEnv(request.getfixturevalue("sim_backends")(build), MAX_STEPS, seed=3, **settings)
        counts = check_protocol(env, settings)
    else:
        env = build(**settings)
        try:
            counts = check_protocol(env, settings)
        finally:
            env.close()
    assert counts["truncated"] > 0  # 5-step episodes always end inside the budget
