"""Chunk-level episode bookkeeping shared by every simulator adapter.

A simulator adapter is a `SingleEnv`: one env, numpy in and out, no batching. A `Backend`
holds B of them, in this process or in worker processes (`pirl.envs.vector`), and steps any
subset. `ChunkedVecEnv` turns a backend into the batched, chunked `VecEnv` of
`pirl.envs.base`: it owns every episode rule (seeds and GRPO groups, masking inside a chunk,
auto-reset, `ignore_terminations`, `max_episode_steps`, reward coefficient, relative
rewards, episode metrics, invalid rows after a worker restart, video frames).

Rendering happens only where the policy looks: once per env at the end of a chunk (and once
more for the final observation of an episode that ended inside it). Intermediate steps of a
chunk are physics only, so a chunk of C actions costs C physics steps and 1 render, and the
observations the policy sees are exactly those a render-every-step loop would give.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pirl.envs.base import Obs, StepResult

# Seeds of auto-reset episodes come from a SeedSequence over (base seed, env, episode):
# deterministic for a given `reset(seed)`, different for every env and episode.
_SEED_MOD = 2**31 - 1


class SingleEnv(Protocol):
    """One simulator instance. Observation dicts hold `state (S,) float32` and, when
    rendered, `main_image (H, W, 3) uint8` and `wrist_image (H, W, 3) uint8` (if the sim
    has a wrist camera)."""

    action_dim: int
    state_dim: int  # S
    task_name: str  # metric key of the task this env runs (e.g. reach-v3, PickCube-v1)
    task_description: str  # natural-language instruction given to the policy

    def reset(self, seed: int) -> None:
        """Start an episode whose initial state is a pure function of `seed`."""

    def step(self, action: np.ndarray) -> tuple:
        """Apply `action (D,)` in env units; return (sim reward, sim terminated, success), or
        (reward, terminated, success, extras) for a sim with more to say (CALVIN):
        extras["truncated"] (bool) is the sim's own time limit (it ends the episode as a
        truncation); every other key is a float episode statistic whose last value is
        reported in infos["episode"] (e.g. CALVIN's avg_len)."""

    def observe(self) -> dict[str, np.ndarray]:
        """Observation of the current state, images rendered."""

    def close(self) -> None:
        ...


@dataclass
class StepBatch:
    """What a backend returns for the n envs it stepped (numpy, rows follow `ids`)."""

    reward: np.ndarray  # (n,) float64 sim reward
    terminated: np.ndarray  # (n,) bool sim termination
    success: np.ndarray  # (n,) bool
    crashed: np.ndarray  # (n,) bool: the env's worker died; it was rebuilt and reset
    truncated: Optional[np.ndarray] = None  # (n,) bool sim time limit; None: none
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n,) float64 episode statistic


def collect_steps(outs: Sequence[Optional[tuple]]) -> StepBatch:
    """SingleEnv.step results of n envs -> a StepBatch; None marks an env whose worker
    crashed (zeros, crashed True)."""
    n = len(outs)
    reward, truncated = np.zeros(n), np.zeros(n, dtype=bool)
    terminated, success, crashed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    stats: dict[str, np.ndarray] = {}
    for j, out in enumerate(outs):
        if out is None:
            crashed[j] = True
            continue
        reward[j], terminated[j], success[j] = out[:3]
        extras = out[3] if len(out) > 3 else {}
        for key, value in extras.items():
            if key == "truncated":
                truncated[j] = bool(value)
            else:
                stats.setdefault(key, np.zeros(n))[j] = float(value)
    return StepBatch(reward=reward, terminated=terminated, success=success, crashed=crashed,
                     truncated=truncated, stats=stats)


class Backend(Protocol):
    num_envs: int
    action_dim: int
    state_dim: int
    task_names: list[str]  # (B,)
    restarts: int  # worker restarts so far

    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> None: ...

    def step(self, ids: Sequence[int], actions: np.ndarray) -> StepBatch: ...

    def observe(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]: ...

    def task_descriptions(self, ids: Sequence[int]) -> list[str]: ...

    def close(self) -> None: ...


class LocalBackend:
    """All envs in this process (state-cheap sims, or a GPU-batched sim wrapped per env)."""

    def __init__(self, envs: list[SingleEnv]):
        if not envs:
            raise ValueError("LocalBackend needs at least one env")
        self.envs = envs
        self.num_envs = len(envs)
        self.action_dim = envs[0].action_dim
        self.state_dim = envs[0].state_dim
        self.task_names = [e.task_name for e in envs]
        self.restarts = 0

    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> None:
        for i, s in zip(ids, seeds):
            self.envs[i].reset(int(s))

    def step(self, ids: Sequence[int], actions: np.ndarray) -> StepBatch:
        return collect_steps([self.envs[i].step(a) for i, a in zip(ids, actions)])

    def observe(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self.envs[i].observe() for i in ids]

    def task_descriptions(self, ids: Sequence[int]) -> list[str]:
        return [self.envs[i].task_description for i in ids]

    def close(self) -> None:
        for e in self.envs:
            e.close()


def group_seeds(base_seed: int, num_envs: int, group_size: int) -> np.ndarray:
    """(B,) reset seeds: envs g*G .. g*G+G-1 share seed base+g, so a GRPO group starts from
    one initial state; different groups start from different ones. Base seeds come from
    pirl.seeding (31-bit draws per rank, stage, iteration, epoch), so two ranks' ranges of
    B seeds do not meet."""
    if group_size < 1 or num_envs % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide num_envs={num_envs}"
        )
    return base_seed + np.arange(num_envs) // group_size


def episode_seed(base_seed: int, env_index: int, episode: int) -> int:
    """Seed of an auto-reset episode: a pure function of (base seed, env, episode index)."""
    state = np.random.SeedSequence([base_seed % _SEED_MOD, env_index, episode]).generate_state(1)
    return int(state[0] % _SEED_MOD)


def stack_obs(obs_list: list[dict[str, np.ndarray]], descriptions: list[str]) -> Obs:
    """Per-env dicts -> the protocol's batched observation (torch tensors)."""
    out: Obs = {
        "states": torch.from_numpy(np.stack([o["state"] for o in obs_list]).astype(np.float32)),
        "task_descriptions": list(descriptions),
    }
    for key, name in (("main_image", "main_images"), ("wrist_image", "wrist_images")):
        if key in obs_list[0]:
            out[name] = torch.from_numpy(np.stack([o[key] for o in obs_list]).astype(np.uint8))
    return out


class ChunkedVecEnv:
    """The `pirl.envs.base.VecEnv` protocol over any `Backend`.

    Rewards: per step r_t = reward_coef * (success_t if reward_mode == "sparse" else the sim's
    reward). With `use_rel_reward` the env pays r_t - r_{t-1} instead (RLinf's relative
    reward: a held success pays once, on its first step). Termination is the sim's
    (success for every adapter here) unless `ignore_terminations`; truncation at
    `max_episode_steps` env steps.
    """

    def __init__(
        self,
        backend: Backend,
        max_episode_steps: int,
        *,
        auto_reset: bool = True,
        ignore_terminations: bool = False,
        use_rel_reward: bool = False,
        reward_coef: float = 1.0,
        reward_mode: str = "sparse",
        seed: int = 0,
        video: Optional[Any] = None,
    ):
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if reward_mode not in ("sparse", "dense"):
            raise ValueError(f"env.*.reward_mode must be 'sparse' or 'dense', got {reward_mode!r}")
        self.backend = backend
        self.num_envs = backend.num_envs
        self.action_dim = backend.action_dim
        self.state_dim = backend.state_dim
        self.max_episode_steps = int(max_episode_steps)
        self.auto_reset = auto_reset
        self.ignore_terminations = ignore_terminations
        self.use_rel_reward = use_rel_reward
        self.reward_coef = float(reward_coef)
        self.reward_mode = reward_mode
        self.seed = int(seed)
        self.video = video
        self.task_names = list(backend.task_names)
        b = self.num_envs
        self._ep_step = np.zeros(b, dtype=np.int64)
        self._ep_return = np.zeros(b, dtype=np.float64)
        self._success_once = np.zeros(b, dtype=bool)
        self._prev_reward = np.zeros(b, dtype=np.float64)  # r_{t-1} for relative rewards
        self._term = np.zeros(b, dtype=bool)  # ended by termination, not yet reset
        self._trunc = np.zeros(b, dtype=bool)  # ended by truncation, not yet reset
        self._episode_index = np.zeros(b, dtype=np.int64)
        self._ep_stats: dict[str, np.ndarray] = {}  # name -> (B,) last value of a sim episode statistic
        self._was_reset = False

    # ----------------------------------------------------------------- reset
    def reset(self, seed: int | None = None, group_size: int = 1) -> Obs:
        """Reset every env; groups of `group_size` consecutive envs share an initial state."""
        if seed is not None:
            self.seed = int(seed)
        seeds = group_seeds(self.seed, self.num_envs, group_size)
        ids = list(range(self.num_envs))
        self.backend.reset(ids, seeds.tolist())
        self._clear_episodes(np.ones(self.num_envs, dtype=bool))
        self._episode_index[:] = 0
        self._was_reset = True
        obs = self._observe(ids)
        if self.video is not None:
            self.video.new_episode()  # one file per reset (e.g. per rollout epoch)
            self.video.add(obs, np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool), self._ep_step)
        return obs

    def _clear_episodes(self, mask: np.ndarray) -> None:
        self._ep_step[mask] = 0
        self._ep_return[mask] = 0.0
        self._success_once[mask] = False
        self._prev_reward[mask] = 0.0
        self._term[mask] = False
        self._trunc[mask] = False
        for values in self._ep_stats.values():
            values[mask] = 0.0

    def _observe(self, ids: Sequence[int]) -> Obs:
        descriptions = self.backend.task_descriptions(ids)
        return stack_obs(self.backend.observe(ids), descriptions)

    # ------------------------------------------------------------ chunk step
    def _shaped_reward(self, ids: np.ndarray, batch: StepBatch) -> np.ndarray:
        raw = batch.success.astype(np.float64) if self.reward_mode == "sparse" else batch.reward
        raw = self.reward_coef * raw
        if not self.use_rel_reward:
            return raw
        rel = raw - self._prev_reward[ids]
        self._prev_reward[ids] = raw
        return rel

    def chunk_step(self, actions: torch.Tensor) -> StepResult:
        """actions (B, C, D) float32 in env units -> (obs, rewards (B, C), terminations (B, C),
        truncations (B, C), infos); see pirl.envs.base for the meaning of each."""
        if not self._was_reset:
            raise RuntimeError("chunk_step called before reset()")
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self.action_dim:
            raise ValueError(
                f"actions must be (B={self.num_envs}, C, D={self.action_dim}), got {tuple(actions.shape)}"
            )
        act = actions.detach().to("cpu", torch.float32).numpy()  # (B, C, D)
        b, c_len = act.shape[:2]
        rewards = np.zeros((b, c_len), dtype=np.float32)
        terms = np.zeros((b, c_len), dtype=bool)
        truncs = np.zeros((b, c_len), dtype=bool)
        success = np.zeros((b, c_len), dtype=bool)
        valid = np.ones(b, dtype=bool)
        ended_before = self._term | self._trunc  # done in an earlier chunk (no auto_reset)
        active = ~ended_before
        for c in range(c_len):
            ids = np.flatnonzero(active)
            if ids.size:
                batch = self.backend.step(ids.tolist(), act[ids, c])
                r = self._shaped_reward(ids, batch)
                self._ep_step[ids] += 1
                self._ep_return[ids] += r
                self._success_once[ids] |= batch.success
                rewards[ids, c] = r
                success[ids, c] = batch.success
                for key, values in batch.stats.items():
                    self._ep_stats.setdefault(key, np.zeros(b))[ids] = values
                term = batch.terminated & (not self.ignore_terminations)
                trunc = (self._ep_step[ids] >= self.max_episode_steps) | batch.crashed
                if batch.truncated is not None:
                    trunc |= batch.truncated
                self._term[ids] |= term
                self._trunc[ids] |= trunc & ~term
                valid[ids[batch.crashed]] = False
                active[ids[term | trunc]] = False
            # done flags stay set for the rest of the chunk once an episode has ended
            terms[:, c] = self._term
            truncs[:, c] = self._trunc
        done = (self._term | self._trunc) & ~ended_before
        # float32 (B,) like the built-in reach2d env, so runners average them directly
        episode = {
            "success_once": torch.from_numpy(self._success_once.astype(np.float32)),
            "episode_len": torch.from_numpy(self._ep_step.astype(np.float32)),
            "return": torch.from_numpy(self._ep_return.astype(np.float32)),
            **{key: torch.from_numpy(values.astype(np.float32)) for key, values in self._ep_stats.items()},
        }
        all_ids = list(range(b))
        infos: dict[str, Any] = {
            "done": torch.from_numpy(done),
            "success": torch.from_numpy(success),
            "episode": episode,
            "valid": torch.from_numpy(valid),
            "restarts": self.backend.restarts,
        }
        steps_at_end = self._ep_step.copy()  # (B,) for the video, before auto-reset clears it
        # One render per env at the chunk end; envs that auto-reset render once more.
        raw_obs = self.backend.observe(all_ids)
        descriptions = self.backend.task_descriptions(all_ids)
        infos["final_obs"] = stack_obs(raw_obs, descriptions)
        if self.auto_reset and done.any():
            reset_ids = np.flatnonzero(done)
            self._episode_index[reset_ids] += 1
            seeds = [episode_seed(self.seed, int(i), int(self._episode_index[i])) for i in reset_ids]
            self.backend.reset(reset_ids.tolist(), seeds)
            self._clear_episodes(done)
            fresh = self.backend.observe(reset_ids.tolist())
            new_desc = self.backend.task_descriptions(reset_ids.tolist())
            for j, i in enumerate(reset_ids):
                raw_obs[i] = fresh[j]
                descriptions[i] = new_desc[j]
            obs = stack_obs(raw_obs, descriptions)
        else:
            obs = infos["final_obs"]
        if self.video is not None:
            frame_obs = infos["final_obs"]
            self.video.add(frame_obs, rewards.sum(axis=1), success.any(axis=1), steps_at_end)
        return obs, torch.from_numpy(rewards), torch.from_numpy(terms), torch.from_numpy(truncs), infos

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        self.backend.close()


def episode_metrics(infos: dict[str, Any], task_names: Sequence[str]) -> dict[str, float]:
    """`env/success_once`, `env/episode_len`, `env/return` (and the sim's episode statistics,
    e.g. `env/avg_len`) over the episodes that ended (and were valid) in one chunk step,
    overall and per task (`env/<task>/success_once` ...).
    Returns sums and counts so callers can aggregate over chunks: `env/<m>` is a mean over
    `env/num_episodes` episodes."""
    done = infos["done"].numpy() & infos["valid"].numpy()
    out: dict[str, float] = {"env/num_episodes": float(done.sum())}
    names = np.asarray(task_names)
    for metric in infos["episode"]:
        vals = infos["episode"][metric].numpy().astype(np.float64)
        out[f"env/{metric}"] = float(vals[done].mean()) if done.any() else math.nan
        for task in sorted(set(task_names)):
            sel = done & (names == task)
            if sel.any():
                out[f"env/{task}/{metric}"] = float(vals[sel].mean())
    out["env/restarts"] = float(infos.get("restarts", 0))
    return out


EnvFactory = Callable[[int], SingleEnv]  # env index -> a fresh SingleEnv
