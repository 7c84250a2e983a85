"""pirl.plan against what is allocated on CPU, for the tiny and mid π0 configs.

For each model and ZeRO stage, 2 ranks (torchrun, gloo) build the real policy and the
DeepSpeed actor and run one optimizer step under torch.profiler's memory accounting
(every allocation and free of the CPU allocator):
  model states  the tensors the rank holds after the step (every storage Python reaches:
                its parameters or partition, fp32 master weights, gradient partition and
                bucket, Adam moments); beside it glibc's count of all the bytes the process
                gained, Python objects included (host memory on a GPU)
  activations   the bytes one training forward (Policy.evaluate) leaves allocated for
                backward, per sample (slope between two micro-batch sizes)
  peak factor   the highest live bytes over forward + backward over those saved bytes
and the same quantities from the planner (meta device, no allocation).

    python bench/plan_memory.py                           # every model and stage, prints the table
    python bench/plan_memory.py --write docs/benchmarks.md   # replaces its "## Memory planner" section
    python bench/plan_memory.py --models pi0_tiny --stages 3 --json out.json
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Memory planner"
CONFIG = "reach2d_ppo_flow_sde"
MODELS = {  # overrides of the reach2d experiment that select each model size
    "pi0_tiny": ["model@actor.model=pi0_tiny"],
    "pi0_mid": ["model@actor.model=pi0_tiny", "actor.model.openpi.config_name=pi0_mid", "actor.model.openpi.action_horizon=16",
                "actor.model.openpi.max_token_len=48"],
    "pi05_mid": ["model@actor.model=pi05_tiny", "actor.model.openpi.config_name=pi05_mid", "actor.model.openpi.action_horizon=16",
                 "actor.model.openpi.max_token_len=64"],
}
WORLD = 2
MICRO = (2, 8)  # micro-batch sizes of the activation slope


def overrides(model: str, stage: int) -> list[str]:
    return [*MODELS[model], f"actor.ds_config=ds_configs/zero{stage}.json", f"cluster.num_gpus_per_node={WORLD}",
            "actor.micro_batch_size=8", "actor.global_batch_size=16"]


def _live_bytes(prof) -> tuple[int, int]:
    """(net, peak) bytes of the CPU allocator over a profiled region, in time order."""
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return live, peak


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out and not got back, every thread of the process:
    small blocks in its arenas plus mmapped large ones (where tensors of any size live)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    gc.collect()
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def live_tensor_bytes(exclude: list[torch.Tensor]) -> int:
    """Bytes of every distinct tensor storage reachable from Python (parameters, DeepSpeed's
    partitions, buffers and optimizer states), except those of `exclude`."""
    gc.collect()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in skip:
                seen[ptr] = storage.nbytes()
    return sum(seen.values())


def _batch(specs: dict, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for k, s in specs.items():
        if s.dtype.is_floating_point:
            out[k] = torch.randn((n, *s.shape), generator=gen).to(s.dtype)
        elif s.dtype == torch.bool:
            out[k] = torch.zeros((n, *s.shape), dtype=torch.bool)
        else:
            out[k] = torch.randint(1, 100, (n, *s.shape), generator=gen).to(s.dtype)
    return out


def _replay(policy, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    rep = _batch(policy.replay_spec(), n, gen)
    rep["step_mask"][:, 0] = True  # one stochastic step per sample (joint_logprob false)
    return rep


def worker(model: str, stage: int, out: str) -> None:
    """One rank: measure, then rank 0 writes {measured, planned} to `out`."""
    from torch.profiler import ProfilerActivity, profile  # noqa: I001

    import deepspeed

    from pirl.config import load_config
    from pirl.engine.actor import ActorEngine
    from pirl.engine.ds_config import render_ds_config
    from pirl.engine.dist import init_distributed
    from pirl.models import build_policy
    from pirl.plan import SETUPS, RankBytes, ds_json, model_stats, zero_bytes

    info = init_distributed()
    cfg = load_config(CONFIG, None, overrides(model, stage), world_size=WORLD)
    state_dim = 11  # reach2d
    gen = torch.Generator().manual_seed(info.rank)

    torch.manual_seed(0)
    policy = build_policy(cfg.actor.model, state_dim=state_dim).train()
    act = {}
    for n in MICRO:
        fi, rep = _batch(policy.input_spec(), n, gen), _replay(policy, n, gen)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            ev = policy.evaluate(fi, rep)
        saved, _ = _live_bytes(prof)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            (ev.logprob.sum() + ev.values.sum()).backward()
        _, back_peak = _live_bytes(prof)
        act[n] = (saved, saved + back_peak)
        policy.zero_grad(set_to_none=True)
        del ev

    param_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    mbs = []
    for _ in range(2):  # grad_accum = 16 / (8 x 2) = 1: one micro-batch a step
        mbs.append({"fi": _batch(policy.input_spec(), 8, gen), "rep": _replay(policy, 8, gen)})

    def loss_fn(engine, mb):
        ev = engine(mb["fi"], mb["rep"])
        loss = -ev.logprob.mean() + ev.values.square().mean()
        return loss, {}

    # A first engine over a one-parameter model imports and builds what any engine needs once
    # (modules, communication ops), outside the counts below.
    lin = torch.nn.Linear(1, 1, bias=False)
    warm, *_ = deepspeed.initialize(model=lin, optimizer=torch.optim.AdamW(lin.parameters()),
                                    config=render_ds_config(cfg.actor, WORLD))
    warm.backward(warm(torch.ones(8, 1)).sum())
    warm.step()
    del warm, lin
    inputs = [t for mb in mbs for part in mb.values() for t in part.values()]
    before_tensors, before_malloc = live_tensor_bytes(inputs), malloc_in_use()
    actor = ActorEngine(policy, cfg.actor, WORLD, total_steps=2)
    actor.train_step(mbs[:1], loss_fn)
    actor.train_step(mbs[1:], loss_fn)
    # what the rank holds between steps: every tensor storage Python can reach (on a GPU,
    # device memory), and glibc's count of every byte the process holds (host objects too)
    states = (param_bytes + live_tensor_bytes(inputs) - before_tensors,
              param_bytes + malloc_in_use() - before_malloc)

    gathered: list[tuple[int, int]] = [(0, 0)] * WORLD
    torch.distributed.all_gather_object(gathered, states)
    if info.rank == 0:
        stats = model_stats(cfg, state_dim)
        setup = next(s for s in SETUPS if s.stage == stage and not s.offload_optimizer)
        planned = RankBytes(stage, **zero_bytes(stats, setup, ds_json(setup), WORLD), act_per_sample=0.0,
                            act_fixed=0.0, rollout=0.0, kv_cache=0.0).resident
        (a_lo, _), (a_hi, p_hi) = act[MICRO[0]], act[MICRO[1]]
        Path(out).write_text(json.dumps({
            "model": model, "stage": stage, "params": stats.total, "trainable": stats.trainable,
            "measured_states": max(g[0] for g in gathered), "malloc_states": max(g[1] for g in gathered),
            "planned_states": planned,
            "measured_act_per_sample": (a_hi - a_lo) / (MICRO[1] - MICRO[0]),
            "planned_act_per_sample": stats.act_per_sample,
            "measured_peak_factor": p_hi / a_hi,
        }))


def run(model: str, stage: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                   TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
        from pirl.engine.dist import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
               str(free_port()), str(Path(__file__).resolve()), "--worker", model, str(stage), str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{model} ZeRO-{stage}: {proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def table(results: list[dict]) -> str:
    mib = 2**20
    rows = ["| model | params (trainable) | ZeRO | model states per rank: planned / tensors MiB | "
            "all malloc'd MiB | activations per sample: planned / measured MiB | backward peak / saved |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r['model']} | {r['params']:,} ({r['trainable']:,}) | {r['stage']} | "
            f"{r['planned_states'] / mib:.1f} / {r['measured_states'] / mib:.1f} "
            f"({r['planned_states'] / r['measured_states'] - 1:+.1%}) | {r['malloc_states'] / mib:.1f} | "
            f"{r['planned_act_per_sample'] / mib:.3f} / {r['measured_act_per_sample'] / mib:.3f} "
            f"({r['planned_act_per_sample'] / r['measured_act_per_sample'] - 1:+.1%}) | "
            f"{r['measured_peak_factor']:.2f} |")
    return "\n".join(rows)


def replace_section(doc: Path, body: str) -> None:
    text = doc.read_text()
    intro = ("`python bench/plan_memory.py --write docs/benchmarks.md`: `python -m pirl.plan` (meta device, "
             f"nothing allocated) against a real DeepSpeed actor on {WORLD} ranks (torchrun, gloo) after two "
             "optimizer steps on CPU. Model states: the tensor storages the rank holds (every one Python reaches; "
             "beside it glibc's count of every byte the process gained, Python objects included). Activations: "
             "torch.profiler's count of the bytes a training forward leaves allocated, slope between micro-batch "
             f"{MICRO[0]} and {MICRO[1]}; backward's peak over them.")
    new = f"{SECTION}\n\n{intro}\n\n{body}\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + new + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--stages", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--write", type=Path, default=None, help="markdown file whose Memory planner section to replace")
    args = ap.parse_args(argv)
    results = [run(m, s) for m in args.models for s in args.stages]
    body = table(results)
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write is not None:
        replace_section(args.write, body)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
