"""ZeRO-3 per-rank bytes of the π0 actor against 1/N of the model, N = 2 and 4.

    python bench/zero_memory.py                         # pi0_tiny and pi0_mid, N = 2 and 4
    python bench/zero_memory.py --configs pi0_mid --ranks 4

Each case starts N gloo ranks (torchrun), builds the π0 actor exactly as the actor worker does
(pirl.engine.actor.ActorEngine over ds_configs/zero3.json, the whole model trained so every
parameter has master weights and Adam moments) and counts on every rank:
    parameters    the rank's partitions (ds_tensor), plus the small parameters ZeRO-3 keeps
                  whole on every rank (below stage3_param_persistence_threshold)
    optimizer     fp32 master partitions + Adam exp_avg / exp_avg_sq
and prints the largest rank's bytes over (model bytes / N). `--threshold 0` partitions every
parameter (no persistent ones).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(config: str, threshold: int | None, out: Path) -> None:
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from pirl.config.schema import PirlConfig
    from pirl.engine.actor import ActorEngine
    from pirl.engine.dist import init_distributed
    from pirl.engine.offload import ActorOffload
    from pirl.models import build_policy

    info = init_distributed()
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    if threshold is not None:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = threshold
    ds_path = out / f"zero3_{info.rank}.json"
    ds_path.write_text(json.dumps(ds))
    cfg = OmegaConf.merge(OmegaConf.structured(PirlConfig), {"actor": {
        "ds_config": str(ds_path), "micro_batch_size": 1, "global_batch_size": info.world_size,
        "model": {"model_type": "openpi", "action_dim": 7, "num_action_chunks": 4,
                  "openpi": {"config_name": config, "action_horizon": 4, "action_dim": 32, "train_expert_only": False}}}})
    torch.manual_seed(0)
    policy = build_policy(cfg.actor.model, state_dim=8)
    model_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    n_params = sum(p.numel() for p in policy.parameters())  # before ZeRO-3 empties the module's tensors
    actor = ActorEngine(policy, cfg.actor, info.world_size, total_steps=1)
    states = ActorOffload(actor.engine).state_tensors()
    # lp_params: the rank's partitions; ds_persist marks the small parameters kept whole on every rank
    partitions = sum(t.numel() * t.element_size() for t in states["lp_params"])
    persistent = sum(p.numel() * p.element_size() for p in actor.module.parameters() if p.__dict__["ds_persist"])
    hp = sum(t.numel() * t.element_size() for t in states["hp_params"])
    mine = torch.tensor([partitions + persistent, partitions, persistent, hp], dtype=torch.float64)
    parts = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(parts, mine)
    if info.rank == 0:
        print("RESULT " + json.dumps({"model_bytes": model_bytes, "ranks": [p.tolist() for p in parts],
                                      "params": n_params}), flush=True)


def run(config: str, n: int, threshold: int | None) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(29900 + n + (os.getpid() % 90)), str(Path(__file__).resolve()), "--worker", config, tmp,
               str(-1 if threshold is None else threshold)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} on {n} ranks failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        t = int(sys.argv[4])
        worker(sys.argv[2], None if t < 0 else t, Path(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["pi0_tiny", "pi0_mid"])
    p.add_argument("--ranks", nargs="+", type=int, default=[2, 4])
    p.add_argument("--threshold", type=int, default=None, help="stage3_param_persistence_threshold (default: the shipped JSON's)")
    args = p.parse_args()
    print("| model | params | ranks | model MiB / N | largest rank: params MiB (partitions + persistent) | ratio | "
          "fp32 master MiB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    mib = 2**20
    for config in args.configs:
        for n in args.ranks:
            r = run(config, n, args.threshold)
            share = r["model_bytes"] / n
            worst = max(r["ranks"], key=lambda x: x[0])
            hp = max(x[3] for x in r["ranks"])
            print(f"| {config} | {r['params'] / 1e6:.2f}M | {n} | {share / mib:.2f} | {worst[0] / mib:.2f} "
                  f"({worst[1] / mib:.2f} + {worst[2] / mib:.2f}) | {worst[0] / share:.3f} | {hp / mib:.2f} | "
                  f"{hp / share:.3f} |", flush=True)


if __name__ == "__main__":
    main()
