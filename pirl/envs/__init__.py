"""Env adapters behind one protocol (pirl/envs/base.py): reach2d (built in), ManiSkill3,
LIBERO, MetaWorld. `make_env` is the one entry the runner uses."""
from __future__ import annotations

SIMULATORS = ("reach2d", "maniskill", "libero", "metaworld")


def make_env(split_cfg, num_envs: int, seed: int, rank: int = 0):
    """An `env.train` / `env.eval` section -> a VecEnv of `num_envs` envs on this rank."""
    kind = str(split_cfg.simulator_type)
    extra = dict(split_cfg.extra or {})
    if kind == "reach2d":
        from pirl.envs.reach2d import Reach2DEnv

        return Reach2DEnv(num_envs, max_episode_steps=int(split_cfg.max_episode_steps),
                          image_size=int(split_cfg.image_size), auto_reset=bool(split_cfg.auto_reset),
                          ignore_terminations=bool(split_cfg.ignore_terminations),
                          use_rel_reward=bool(split_cfg.use_rel_reward), reward_coef=float(split_cfg.reward_coef),
                          seed=seed, **extra)
    raise ValueError(f"env.*.simulator_type must be one of {SIMULATORS}, got {kind!r}")
