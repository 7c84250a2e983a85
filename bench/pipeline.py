"""Rollout throughput of the engine: env steps per second of the collect phase (envs step,
the policy samples; no training), against the bare simulator.

    python bench/pipeline.py                      # every case below, prints a markdown table
    python bench/pipeline.py --cases pipeline --repeats 3 --envs 8 --size 64

Cases, MetaWorld reach-v3 rendering its camera at --size px (a real simulator with a real
image cost), chunks of 4 actions, one thread per rank (cluster.threads_per_rank=1):
    bare        the simulator alone: make_env + chunk_step with random actions, one process
    colocated   1 rank: env, rollout (and actor) in one process, in-process channels
    hybrid      2 ranks: env 0, rollout 1, actor 0-1; gloo point-to-point between env and rollout
for the cheap flow_mlp (reads the state) and the tiny π0 (reads the image: a policy whose
forward costs about what the simulator's step does), with rollout.pipeline_stage_num S = 1
and 2. "pipeline" is the S=2 / S=1 speedup of the hybrid layout with the tiny π0; "fraction"
is the engine's env steps/s over the bare simulator's.

Each case runs train.py's driver under torchrun (bench/pipeline.py --worker), times
`--repeats` collect phases after one warm-up, and reports their median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "metaworld_reach_ppo_flow_mlp"
# π0 pads MetaWorld's 39-D state and 4-D actions to its width of 40
POLICIES = {"flow_mlp": [],
            "pi0_tiny": ["model@actor.model=pi0_tiny", "actor.model.openpi.action_dim=40", "actor.model.action_dim=4"]}
LAYOUTS = {"colocated": (1, "{'env,rollout,actor': all}"), "hybrid": (2, "{env: 0, rollout: 1, actor: 0-1}")}
CHUNK, CHUNK_STEPS = 4, 10


def overrides(args, policy: str, ranks: int, placement: str, stages: int) -> list[str]:
    n = args.envs
    return [*POLICIES[policy], f"cluster.num_gpus_per_node={ranks}", f"cluster.component_placement={placement}",
            "cluster.threads_per_rank=1", f"rollout.pipeline_stage_num={stages}",
            f"env.train.total_num_envs={n}", f"env.eval.total_num_envs={n}",
            f"env.train.init_params.camera_heights={args.size}", f"env.train.init_params.camera_widths={args.size}",
            f"env.train.max_episode_steps={CHUNK * CHUNK_STEPS}", "env.train.init_params.render=True",
            "env.train.num_workers=0", "actor.model.num_action_chunks=4",
            f"actor.global_batch_size={n * CHUNK_STEPS}", f"actor.micro_batch_size={n * CHUNK_STEPS // ranks}",
            "runner.val_check_interval=0", "runner.eval_before_train=False"]


def worker(args) -> None:
    """Inside torchrun: build the driver, time collect phases, rank 0 prints JSON."""
    from pirl.config import load_config
    from pirl.driver import Driver
    from pirl.engine.dist import init_distributed
    from pirl.engine.threads import apply_threads

    apply_threads(1)
    cfg = load_config(CONFIG, None, [*json.loads(args.worker), f"runner.logger.log_path={args.run_log}"],
                      int(os.environ.get("WORLD_SIZE", "1")))
    d = Driver(cfg, init_distributed())
    d.sync_weights()
    times, inference = [], []
    for i in range(args.repeats + 1):
        _, m = d.collect()
        m = d.gather(m)  # the rollout rank's inference time to rank 0 (the others get {})
        if i and d.dist.rank == 0:  # the first builds render contexts and warms the caches
            times.append(m["time/rollout"])
            inference.append(m.get("time/rollout_inference", float("nan")))
        d.iteration += 1
    d.close()
    if d.dist.rank == 0:
        steps = cfg.env.train.total_num_envs * cfg.env.train.max_steps_per_rollout_epoch
        print("RESULT " + json.dumps({"env_steps_per_s": steps / statistics.median(times),
                                      "inference_s": statistics.median(inference)}), flush=True)


def bare(args) -> float:
    """The simulator alone: the same envs in one process, random actions."""
    import torch

    from pirl.config import load_config
    from pirl.engine.threads import apply_threads
    from pirl.envs import make_env

    apply_threads(1)
    cfg = load_config(CONFIG, None, overrides(args, "flow_mlp", 1, LAYOUTS["colocated"][1], 1), 1)
    env = make_env(cfg.env.train, args.envs, seed=0)
    gen = torch.Generator().manual_seed(0)
    try:
        env.reset()
        times = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            for _ in range(CHUNK_STEPS):
                env.chunk_step(torch.rand(args.envs, CHUNK, env.action_dim, generator=gen) * 2 - 1)
            if i:
                times.append(time.perf_counter() - t0)
    finally:
        env.close()
    return args.envs * CHUNK * CHUNK_STEPS / statistics.median(times)


def launch(args, policy: str, layout: str, stages: int) -> dict:
    ranks, placement = LAYOUTS[layout]
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    with tempfile.TemporaryDirectory() as log:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(29400 + (os.getpid() % 500)), str(Path(__file__).resolve()), "--repeats", str(args.repeats),
               "--run-log", log, "--worker", json.dumps(overrides(args, policy, ranks, placement, stages))]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{policy} {layout} S={stages} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", type=int, default=8, help="envs per env rank")
    p.add_argument("--size", type=int, default=64, help="rendered image side, px")
    p.add_argument("--repeats", type=int, default=3, help="timed collect phases per case (median)")
    p.add_argument("--cases", nargs="+", default=["pipeline", "fraction"], choices=["pipeline", "fraction"])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--run-log", help=argparse.SUPPRESS)  # not --log: torchrun would take it for its --log-dir
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    load = os.getloadavg()[0]
    base = bare(args)
    rows: list[tuple] = [("bare simulator", "-", "-", "-", base, 1.0, None)]
    plan = []
    if "fraction" in args.cases:
        plan += [(pol, lay, s) for pol in POLICIES for lay in LAYOUTS for s in (1, 2)]
    if "pipeline" in args.cases:
        plan += [("pi0_tiny", "hybrid", s) for s in (1, 2)]
    seen: dict = {}
    for pol, lay, s in plan:
        if (pol, lay, s) not in seen:
            seen[(pol, lay, s)] = launch(args, pol, lay, s)
            r = seen[(pol, lay, s)]
            rows.append((pol, lay, str(s), f"{r['inference_s']:.3f}",
                         r["env_steps_per_s"], r["env_steps_per_s"] / base, None))
            print(f"{pol:9s} {lay:10s} S={s}: {r['env_steps_per_s']:8.1f} env steps/s "
                  f"({r['env_steps_per_s'] / base:.2f} of bare)", flush=True)
    print(f"\nMetaWorld reach-v3, {args.envs} envs per env rank, {args.size} px, chunks of {CHUNK}; "
          f"load average at start {load:.1f}\n")
    print("| policy | layout | stages | policy s per collect | env steps/s | of bare |")
    print("|---|---|---|---|---|---|")
    for pol, lay, s, inf, sps, frac, _ in rows:
        print(f"| {pol} | {lay} | {s} | {inf} | {sps:.1f} | {frac:.2f} |")
    if ("pi0_tiny", "hybrid", 1) in seen and ("pi0_tiny", "hybrid", 2) in seen:
        speedup = seen[("pi0_tiny", "hybrid", 2)]["env_steps_per_s"] / seen[("pi0_tiny", "hybrid", 1)]["env_steps_per_s"]
        print(f"\npipeline speedup, tiny π0 hybrid, S=2 over S=1: {speedup:.2f}x")


if __name__ == "__main__":
    main()
