"""Every seed of a run from one place: numpy's SeedSequence over (base seed, stream,
component rank, pipeline stage, iteration, rollout epoch).

A stream names what the seed drives: initial states of training envs ("env"), of eval envs
("eval_env"), rollout sampling noise ("rollout"), eval sampling noise ("eval_rollout"),
minibatch shuffling ("actor"). Distinct tuples give independent 31-bit seeds, so no two envs
of a run start from the same state unless a GRPO group asks for it (tests/test_seeding.py),
whatever the number of env ranks, stages or envs per stage. Before this module eval resets
used `eval.seed + 7 * rank` plus the env index: with 64 eval envs per rank, ranks 0 and 1
shared 57 of their 64 initial states.

`rank` is the rank's index within its component (0..n-1 over `cluster.component_placement`),
not its global rank, so a layout change that keeps the component's size keeps its seeds.
"""
from __future__ import annotations

import numpy as np
import torch

STREAMS = ("env", "eval_env", "rollout", "eval_rollout", "actor")
SEED_MOD = 2**31 - 1  # simulators take a signed 32-bit seed


def seed_for(base: int, stream: str, rank: int = 0, stage: int = 0, iteration: int = 0, epoch: int = 0) -> int:
    """A seed in [0, 2^31 - 1) that is a pure function of its arguments."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; streams: {', '.join(STREAMS)}")
    if min(rank, stage, iteration, epoch) < 0:
        raise ValueError(f"seed_for: negative index in rank={rank} stage={stage} iteration={iteration} epoch={epoch}")
    entropy = [int(base) % SEED_MOD, STREAMS.index(stream), rank, stage, iteration, epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % SEED_MOD)


def generator_for(base: int, stream: str, rank: int = 0, stage: int = 0, iteration: int = 0,
                  epoch: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded by `seed_for` (CPU draws are the same on every device)."""
    return torch.Generator().manual_seed(seed_for(base, stream, rank, stage, iteration, epoch))
