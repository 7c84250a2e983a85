"""Env steps per second of each simulator through pirl's env protocol (make_env + chunk_step).

    python bench/envs.py                       # all sims, 128 and 224 px, 1 and 2 workers
    python bench/envs.py --sims libero --sizes 128 --workers 1 --chunks 6

For each simulator: state-only (no rendering) and rendered at each size, with 1 and N
worker processes (one env per worker). An env step is one action in one env; a chunk of
`--chunk` actions renders once at its end (what the policy sees). For LIBERO and CALVIN
a `baseline` row renders both cameras at every step (chunk 1; LIBERO with its own render
settings, fast_render off), the way each runs as installed. Prints a markdown table.

    CALVIN_ROOT=/path/to/calvin python bench/envs.py --sims calvin --sizes 200   # a mees/calvin checkout
"""
from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("MUJOCO_GL", "egl")

TASKS = {"metaworld": "pick-place-v3", "maniskill": "PickCube-v1", "libero": "libero_spatial:0",
         "calvin": "calvin_d"}  # calvin: the checkout from $CALVIN_ROOT
ACTION_SCALE = {"metaworld": 1.0, "maniskill": 1.0, "libero": 0.3, "calvin": 1.0}


def measure(sim: str, size: int, workers: int, render: bool, chunk: int, chunks: int,
            fast_render: bool = True) -> float:
    """Env steps per second over `chunks` chunk steps of `workers` envs (after one warm-up)."""
    from pirl.config.schema import EnvSplitConfig
    from pirl.envs import make_env

    params: dict = {"render": render}
    if sim == "maniskill":
        params |= {"id": TASKS[sim], "sim_backend": "cpu", "sensor_configs": {"width": size, "height": size}}
    else:
        params |= {"camera_heights": size, "camera_widths": size}
    if sim == "libero":
        params["fast_render"] = fast_render
    cfg = EnvSplitConfig(env_type=sim, task_suite_name=None if sim == "maniskill" else TASKS[sim],
                         max_episode_steps=10_000, num_workers=workers, init_params=params)
    env = make_env(cfg, workers, seed=0)
    try:
        env.reset()
        gen = torch.Generator().manual_seed(0)
        act = lambda: (torch.rand(workers, chunk, env.action_dim, generator=gen) * 2 - 1) * ACTION_SCALE[sim]
        env.chunk_step(act())  # warm-up: first renders build GL / Vulkan state
        start = time.perf_counter()
        for _ in range(chunks):
            env.chunk_step(act())
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return workers * chunk * chunks / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", nargs="+", default=["metaworld", "maniskill", "libero"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--chunk", type=int, default=5, help="actions per chunk (one render per chunk)")
    p.add_argument("--chunks", type=int, default=8, help="timed chunk steps per case")
    args = p.parse_args()
    rows: list[tuple[str, str, str, int, int, float]] = []  # sim, observation, px, workers, chunk, steps/s
    for sim in args.sims:
        for w in args.workers:
            cases = [("state", 64, False, args.chunk, True)]
            cases += [("rgb", s, True, args.chunk, True) for s in args.sizes]
            if sim in ("libero", "calvin"):  # both render at every step as installed
                cases += [("rgb baseline", s, True, 1, False) for s in args.sizes]
            for mode, size, render, chunk, fast in cases:
                chunks = args.chunks * (args.chunk if chunk == 1 else 1)
                sps = measure(sim, size, w, render, chunk, chunks, fast_render=fast)
                row = (sim, mode, "-" if not render else str(size), w, chunk, sps)
                rows.append(row)
                print(f"{sim:10s} {mode:13s} {row[2]:>4s} px  workers {w}  chunk {chunk}: {sps:8.1f} env steps/s",
                      flush=True)
    print("\n| simulator | observation | px | workers | chunk | env steps/s |")
    print("|---|---|---|---|---|---|")
    for sim, mode, px, w, chunk, sps in rows:
        print(f"| {sim} | {mode} | {px} | {w} | {chunk} | {sps:.1f} |")


if __name__ == "__main__":
    main()
