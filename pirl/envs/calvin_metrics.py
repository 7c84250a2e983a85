"""CALVIN's long-horizon metrics and the protocol run that produces them.

A chain's result is its length: how many of its 5 subtasks were done in a row (0-5).
Over n chains:
    success at length k  = fraction of chains with length >= k       (k = 1..5)
    average length       = mean length = the sum of the five success rates
as calvin_agent's count_success / print_and_save report them (the seeds' CALVIN table:
Avg. Subtasks, Len-1 .. Len-5). Intervals (default 95%): Wilson score intervals for the
rates; for the average length the normal interval of a mean, mean +- z * s / sqrt(n)
(lengths are bounded in [0, 5], so the approximation is good at the protocol's n = 1000).
Per task: how often it succeeded when it was attempted (a chain attempts its tasks up to
and including the first failure).

`python -m pirl.eval` reports these for a CALVIN eval split (its episodes' reset seeds name
their chains); `run_chains` runs the protocol without a policy checkpoint: chain c of `get_sequences(num_sequences)` in env slot
c % B, B chains at a time, each until it completes, fails its subtask budget or reaches
max_episode_steps. The official ABC->D evaluation is 1000 chains on scene D
(env.eval.task_suite_name calvin_d) with `init_params.subtask_max_steps: 360`, validation instructions,
`max_episode_steps` >= 5 x 360, no auto-reset.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Optional
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pirl.envs.calvin_sequences import CHAIN_LENGTH, NUM_SEQUENCES, get_sequences
from pirl.eval import wilson_interval


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Normal interval of a mean: mean +- z * s / sqrt(n), s the sample std (n >= 2)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


@dataclass
class ChainResult:
    """CALVIN metrics over n chains."""

    num_chains: int
    success: list[float]  # (5,) success at chain length 1..5
    success_interval: list[tuple[float, float]]  # (5,) (low, high)
    avg_len: float  # mean chain length = sum(success)
    avg_len_interval: tuple[float, float]
    task_success: dict[str, tuple[int, int]]  # task -> (successes, attempts)
    confidence: float

    def metrics(self, prefix: str = "calvin") -> dict[str, float]:
        """Flat metric dict: <prefix>/avg_len, <prefix>/success_len_<k>, each with _low / _high."""
        out = {f"{prefix}/avg_len": self.avg_len, f"{prefix}/avg_len_low": self.avg_len_interval[0],
               f"{prefix}/avg_len_high": self.avg_len_interval[1], f"{prefix}/num_chains": float(self.num_chains)}
        for k, (rate, (low, high)) in enumerate(zip(self.success, self.success_interval), start=1):
            out[f"{prefix}/success_len_{k}"] = rate
            out[f"{prefix}/success_len_{k}_low"] = low
            out[f"{prefix}/success_len_{k}_high"] = high
        return out

    def table(self) -> str:
        """The seeds' CALVIN table row, with intervals, as markdown."""
        pct = int(round(self.confidence * 100))
        head = "| chains | Avg. Subtasks | " + " | ".join(f"Len-{k}" for k in range(1, CHAIN_LENGTH + 1)) + " |"
        rule = "|" + "---|" * (CHAIN_LENGTH + 2)
        cells = [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, (lo, hi) in zip(self.success, self.success_interval)]
        lo, hi = self.avg_len_interval
        row = f"| {self.num_chains} | {self.avg_len:.3f} [{lo:.3f}, {hi:.3f}] | " + " | ".join(cells) + " |"
        return f"{head}\n{rule}\n{row}\n\n{pct}% intervals: Wilson for the rates, normal for the average length."


def chain_metrics(lengths: Sequence[int], chains: Optional[Sequence[Sequence[str]]] = None,
                  confidence: float = 0.95) -> ChainResult:
    """Metrics of chain lengths (each in 0..5); `chains` (the task names of each chain, in
    the same order) adds per-task success counts."""
    arr = np.asarray(lengths, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"chain_metrics needs a non-empty list of chain lengths, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > CHAIN_LENGTH:
        raise ValueError(f"chain lengths must be in [0, {CHAIN_LENGTH}], got min {arr.min()} max {arr.max()}")
    n = int(arr.size)
    reached = [int((arr >= k).sum()) for k in range(1, CHAIN_LENGTH + 1)]
    task_success: dict[str, tuple[int, int]] = {}
    if chains is not None:
        if len(chains) != n:
            raise ValueError(f"chain_metrics: {len(chains)} chains for {n} lengths")
        wins: Counter = Counter()
        tries: Counter = Counter()
        for length, chain in zip(arr.tolist(), chains):
            for task in chain[:length]:
                wins[task] += 1
                tries[task] += 1
            if length < CHAIN_LENGTH:
                tries[chain[length]] += 1
        task_success = {t: (wins[t], tries[t]) for t in sorted(tries)}
    return ChainResult(
        num_chains=n,
        success=[r / n for r in reached],
        success_interval=[wilson_interval(r, n, NormalDist().inv_cdf(0.5 + confidence / 2)) for r in reached],
        avg_len=float(arr.mean()),
        avg_len_interval=mean_interval(arr.astype(np.float64), confidence),
        task_success=task_success,
        confidence=confidence,
    )


def chains_of_seeds(seeds: Sequence[int], num_sequences: int = NUM_SEQUENCES) -> list[tuple[str, ...]]:
    """The chain each reset seed ran (CalvinEnv.reset: chain seed % num_sequences)."""
    sequences = get_sequences(num_sequences)
    return [sequences[int(s) % num_sequences][1] for s in seeds]


ActFn = Callable[[dict[str, Any]], torch.Tensor]  # obs -> actions (B, C, D) in env units


def run_chains(env: Any, act: ActFn, num_chains: int = NUM_SEQUENCES, num_sequences: int = NUM_SEQUENCES,
               max_chunks: Optional[int] = None) -> tuple[list[int], list[tuple[str, ...]]]:
    """Run chains 0 .. num_chains-1 on a CALVIN VecEnv (pirl.envs.make_env with
    auto_reset False); returns (lengths, chains) in chain order.

    Env slot i of a batch starting at chain c resets with seed c + i, which CalvinEnv maps
    to chain (c + i) % num_sequences. A batch ends when every env's episode has ended."""
    if getattr(env, "auto_reset", False):
        raise ValueError("run_chains needs a VecEnv with auto_reset False (one chain per env and batch)")
    b = env.num_envs
    limit = max_chunks if max_chunks is not None else env.max_episode_steps  # a chunk is >= 1 env step
    lengths: list[int] = []
    for start in range(0, num_chains, b):
        obs = env.reset(seed=start, group_size=1)
        done = torch.zeros(b, dtype=torch.bool)
        length = torch.zeros(b)
        for _ in range(limit):
            obs, _, _, _, infos = env.chunk_step(act(obs))
            newly = infos["done"] & ~done
            length[newly] = infos["episode"]["avg_len"][newly]
            done |= infos["done"]
            if done.all():
                break
        if not done.all():
            raise RuntimeError(f"run_chains: envs {(~done).nonzero().flatten().tolist()} did not end in {limit} chunks")
        lengths.extend(int(x) for x in length[: min(b, num_chains - start)].tolist())
    return lengths, chains_of_seeds(range(num_chains), num_sequences)
