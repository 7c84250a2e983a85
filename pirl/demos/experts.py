"""Scripted experts, recorded through pirl's own env pipeline.

reach2d: heads straight for the named target; plans a whole chunk open loop, so its
demonstrations come as chunk samples directly (`reach2d_demos`).

MetaWorld: the per-task scripted policies MetaWorld ships (`metaworld.policies`), closed
loop on the 39-D state. They are run through `make_env` (the run's env section, rendering
and image orientation included) one action per chunk step, so every frame is observed as
the RL run observes a chunk's start; `chunk_episodes` then cuts the frames into chunks.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pirl.demos import Demonstrations, Episode
from pirl.envs.reach2d import Reach2DEnv

# ---- reach2d ---------------------------------------------------------------------------


def expert_chunk(env: Reach2DEnv, chunk: int, noise: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, 2) actions of the scripted expert: head straight for the named target, at
    full speed until the last step, which lands on it; `noise` adds N(0, noise²) per
    element (an imperfect demonstrator). Plans the chunk open loop from the current state."""
    pos = env.pos.clone()
    goal = env._goal_pos()
    actions = []
    for _ in range(chunk):
        d = goal - pos  # (B, 2)
        dist = d.norm(dim=1, keepdim=True)
        a = d / dist.clamp(min=1e-6) * (dist / env.speed).clamp(max=1.0)
        if noise > 0:
            a = a + noise * torch.randn(a.shape, generator=generator)
        a = a.clamp(-1.0, 1.0)
        pos = (pos + env.speed * a).clamp(-1.0, 1.0)
        actions.append(a)
    return torch.stack(actions, dim=1)


def _select(obs: dict, rows: torch.Tensor) -> dict:
    """The rows (bool (B,)) of every observation entry (tensors and lists)."""
    idx = rows.nonzero().flatten()
    return {k: v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()] for k, v in obs.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) if torch.is_tensor(parts[0][k]) else sum((p[k] for p in parts), [])
            for k in parts[0]}


def collect_demos(env: Reach2DEnv, episodes_per_env: int, chunk: int, noise: float = 0.0,
                  seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Run the expert for `episodes_per_env` full episodes of every env (each episode is one
    reset). Returns the observations (states (N, S), main_images (N, H, W, 3) when
    rendered, task_descriptions) and the action chunks (N, C, 2), one row per chunk step
    taken before the episode ended."""
    gen = torch.Generator().manual_seed(seed)
    n_chunks = env.max_episode_steps // chunk
    observations, actions = [], []
    for ep in range(episodes_per_env):
        obs = env.reset(seed=seed * 1_000 + ep)
        live = torch.ones(env.num_envs, dtype=torch.bool)
        for _ in range(n_chunks):
            a = expert_chunk(env, chunk, noise, gen)
            observations.append(_select(obs, live))
            actions.append(a[live])
            obs, _, _, _, info = env.chunk_step(a)
            live &= ~info["done"]
            if not bool(live.any()):
                break
    return _concat(observations), torch.cat(actions)


def reach2d_demos(split, episodes_per_env: int, num_envs: int, chunk: int, noise: float, seed: int) -> Demonstrations:
    env = Reach2DEnv(num_envs, max_episode_steps=split.max_episode_steps, auto_reset=False,
                     seed=seed, **dict(split.init_params))
    obs, actions = collect_demos(env, episodes_per_env, chunk, noise, seed)
    return Demonstrations(obs, actions, list(obs["task_descriptions"]), episodes_per_env * num_envs)


# ---- MetaWorld -------------------------------------------------------------------------

# MetaWorld's policy class names follow the task names except for these.
_METAWORLD_POLICY_NAMES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def metaworld_expert(task_name: str):
    """MetaWorld's scripted policy of a task: `.get_action(obs (39,)) -> (4,)`."""
    import metaworld.policies as policies

    name = _METAWORLD_POLICY_NAMES.get(task_name)
    if name is None:
        stem = task_name[:-3] if task_name.endswith("-v3") else task_name
        name = "Sawyer" + "".join(w.capitalize() for w in stem.split("-")) + "V3Policy"
    if not hasattr(policies, name):
        raise ValueError(f"MetaWorld ships no scripted policy {name} for task {task_name!r}")
    return getattr(policies, name)()


def _plain_split(split) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(split):
            plain = OmegaConf.to_container(split, resolve=True)
            assert isinstance(plain, dict)
            return {str(k): v for k, v in plain.items()}
    except ImportError:
        pass
    return dict(split)


def record_metaworld_experts(split, episodes_per_task: int, num_envs: int, seed: int,
                             noise: float = 0.0, seed_offset: int = 0) -> tuple[list[Episode], int]:
    """Run MetaWorld's scripted policies in the `split` env section (tasks, image size,
    camera, rendering as configured; episodes end at success or max_episode_steps) until
    every task has `episodes_per_task` successful episodes. Env i runs task i % num_tasks;
    every episode starts from its own reset seed (seed_offset + k, k = 0, 1, ...), so ranks
    recording shares of one data set pass disjoint offsets. `noise` adds N(0, noise²) to
    the executed (and recorded) actions. Returns the episodes and how many failed (dropped)."""
    from pirl.envs import make_env, task_spec
    from pirl.envs.metaworld import resolve_tasks

    _, names = resolve_tasks(task_spec(split))
    cfg = _plain_split(split) | {"auto_reset": False, "ignore_terminations": False, "group_size": 1}
    num_envs = max(len(names), num_envs - num_envs % len(names))
    env = make_env(cfg, num_envs, seed=seed_offset)
    experts = {n: metaworld_expert(n) for n in names}
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    per_task = {n: 0 for n in names}
    failed = 0
    max_rounds = 4 * math.ceil(episodes_per_task * len(names) / num_envs) + 4
    try:
        for r in range(max_rounds):
            if min(per_task.values()) >= episodes_per_task:
                break
            obs = env.reset(seed=seed_offset + r * num_envs)
            frames: list[list[dict]] = [[] for _ in range(num_envs)]
            live = np.ones(num_envs, dtype=bool)
            success = np.zeros(num_envs, dtype=bool)
            for _ in range(env.max_episode_steps):
                states = obs["states"].numpy()
                acts = np.stack([experts[env.task_names[i]].get_action(states[i]) for i in range(num_envs)])
                if noise > 0:
                    acts = acts + noise * rng.standard_normal(acts.shape)
                acts = np.clip(acts, -1.0, 1.0).astype(np.float32)
                for i in np.flatnonzero(live).tolist():
                    frames[i].append({"state": states[i], "action": acts[i], "desc": obs["task_descriptions"][i],
                                      **{k: obs[k][i].numpy() for k in ("main_images", "wrist_images") if k in obs}})
                obs, _, _, _, info = env.chunk_step(torch.from_numpy(acts)[:, None])
                ended = info["done"].numpy() & live
                success[ended] = info["episode"]["success_once"].numpy()[ended] > 0
                live &= ~ended
                if not live.any():
                    break
            for i in range(num_envs):
                task = env.task_names[i]
                if not success[i]:
                    failed += 1
                elif per_task[task] < episodes_per_task:
                    per_task[task] += 1
                    episodes.append(_episode(frames[i], task))
    finally:
        env.close()
    short = {n: c for n, c in per_task.items() if c < episodes_per_task}
    if short:
        raise RuntimeError(f"MetaWorld's scripted experts succeeded too rarely within "
                           f"max_episode_steps={env.max_episode_steps}: got {short} of {episodes_per_task} episodes")
    return episodes, failed


def _episode(frames: list[dict], task: str) -> Episode:
    def stack(key):
        return np.stack([f[key] for f in frames]) if key in frames[0] else None

    return Episode(states=stack("state").astype(np.float32), actions=stack("action").astype(np.float32),
                   task_description=frames[0]["desc"], task_name=task,
                   main_images=stack("main_images"), wrist_images=stack("wrist_images"))
