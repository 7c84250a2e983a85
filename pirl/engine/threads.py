"""CPU threads per rank, set in one place before any work starts.

Through the DeepSpeed launcher each rank would run torch with as many intra-op threads as
the machine has cores, so ranks on one host fight over them: a 2-rank tiny-π0 PPO iteration
on MetaWorld (16 envs x 100 steps, 64 px) took 19-22 s on 2 cores, 3.2-3.3 s with one thread
per rank (issue 10). Each rank gets its share of the host's cores: torch's intra-op threads,
and the same count in the environment for what runs beside torch and reads it there: env
worker processes (started after this), OpenMP / MKL / OpenBLAS pools, and Mesa's llvmpipe /
lavapipe software renderer (`LP_NUM_THREADS`), which starts one thread per core otherwise.

`cluster.threads_per_rank` overrides the share; train.py prints the choice at start.
"""
from __future__ import annotations

import os

import torch

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS")


def host_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Ranks on this host: torchrun's LOCAL_WORLD_SIZE, the DeepSpeed launcher's LOCAL_SIZE,
    SLURM's tasks per node; 1 for a plain process."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(key, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def threads_per_rank(requested: int | None) -> tuple[int, str]:
    """(threads, why): `requested` (cluster.threads_per_rank) when set, else the host's
    cores shared evenly over its ranks, at least one."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"cluster.threads_per_rank must be >= 1 or null, got {requested}")
        return requested, "cluster.threads_per_rank"
    cores, ranks = host_cores(), local_ranks()
    return max(1, cores // ranks), f"{cores} cores / {ranks} ranks on this host"


def apply_threads(n: int) -> None:
    """torch's intra-op pool, and the variables child processes and renderers read."""
    torch.set_num_threads(n)
    for key in THREAD_ENV_VARS:
        os.environ[key] = str(n)
