"""Benchmark the flow-step kernels: Triton vs eager torch vs torch.compile.

    python bench/kernels.py                 # GPU: time every size; CPU: correctness only
    python bench/kernels.py --full          # the whole π0 grid (B 64-2048, H 5/10/50)
    python bench/kernels.py --markdown      # also print the table as markdown rows

Ops, at π0 rollout / training sizes (action dim D=32, K denoising steps, δ = 1/K):
    denoise    the rollout's fused step: x_next and its log-density (flow_sde, flow_noise)
    logprob    the actor's fused log-prob, chunk_level, forward + backward (∂v, ∂std)

Bytes are the traffic each op must move at least (every operand read once, every result
written once); achieved bandwidth = bytes / time, compared with a measured device-to-device
copy (read + write of 1 GiB). Targets on an H100/H200: Triton ≥ 3x eager on both ops and
≥ 60% of the copy bandwidth. Without a GPU the script checks the Triton kernels against the
torch reference under TRITON_INTERPRET=1 at small sizes and says that no GPU was found.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from pirl.flow import FLOW_NOISE, FLOW_SDE
from pirl.kernels import reference as R

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
ACTION_DIM = 32
QUICK_SIZES = [(64, 50), (512, 50), (2048, 50), (2048, 5)]  # (batch B, horizon H)
FULL_SIZES = [(B, H) for B in (64, 256, 512, 1024, 2048) for H in (5, 10, 50)]
NUM_STEPS = (4, 10)
COPY_BYTES = 1 << 30


# ---- inputs and the three implementations -------------------------------------------------
def make_inputs(B, H, D, K, dtype, device, seed=0):
    """x_t, v, x_next, t (on the K-step grid, one sample at t=1), noise, stochastic flags and
    a learned std in [0.08, 0.16], like a π0 rollout step."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(B, H, D, generator=g, device=device).to(dtype)
    v = torch.randn(B, H, D, generator=g, device=device).to(dtype)
    noise = torch.randn(B, H, D, generator=g, device=device).to(dtype)
    k = torch.randint(0, K, (B,), generator=g, device=device)
    k[0] = 0
    t = 1.0 - k.float() / K
    std = (0.08 + 0.08 * torch.rand(B, H, D, generator=g, device=device)).to(dtype)
    x_next = (x.float() - v.float() / K + 0.1 * noise.float()).to(dtype)
    stochastic = torch.rand(B, generator=g, device=device) < 0.5
    return dict(x=x, v=v, noise=noise, t=t, std=std, x_next=x_next, stochastic=stochastic)


def denoise_fns(method, K, a, inp):
    from pirl.kernels import flow_step

    def eager():
        return R.denoise_step(inp["x"], inp["v"], inp["t"], 1.0 / K, inp["noise"], inp["stochastic"], method, a,
                              inp["std"])

    compiled_ref = torch.compile(R.denoise_step, dynamic=False)

    def compiled():
        return compiled_ref(inp["x"], inp["v"], inp["t"], 1.0 / K, inp["noise"], inp["stochastic"], method, a,
                            inp["std"])

    def triton():
        return flow_step.denoise_step(inp["x"], inp["v"], inp["t"], 1.0 / K, inp["noise"], inp["stochastic"],
                                      method, a, inp["std"])

    return {"eager": eager, "compile": compiled, "triton": triton}


def logprob_fns(method, K, a, inp):
    """Forward + backward of Σ w·logprob + Σ w'·entropy at chunk_level; the gradients are
    those the actor needs (v, and the learned std under flow_noise)."""
    from pirl.kernels.autograd import flow_step_logprob as fused

    B = inp["x"].shape[0]
    v = inp["v"].detach().clone().requires_grad_()
    std = inp["std"].detach().clone().requires_grad_(method == FLOW_NOISE)
    leaves = [v, std] if method == FLOW_NOISE else [v]
    g = torch.Generator(device=v.device).manual_seed(1)
    w_lp, w_ent = torch.randn(B, generator=g, device=v.device), torch.randn(B, generator=g, device=v.device)
    compiled_ref = torch.compile(R.flow_step_logprob, dynamic=False)

    def run(fn):
        def step():
            lp, ent = fn(inp["x"], v, inp["x_next"], inp["t"], 1.0 / K, method, a, std, None, None, R.CHUNK_LEVEL)
            return torch.autograd.grad((w_lp * lp).sum() + (w_ent * ent).sum(), leaves)
        return step

    return {"eager": run(R.flow_step_logprob), "compile": run(compiled_ref), "triton": run(fused)}


def op_bytes(op, method, B, H, D, dtype):
    """Least traffic: every operand read once, every result written once."""
    n, ib = B * H * D, torch.tensor([], dtype=dtype).element_size()
    with_std = method == FLOW_NOISE
    if op == "denoise":  # read x, v, noise (+ std), t, flags; write x_next, logprob (fp32)
        return n * (3 * ib + (ib if with_std else 0) + 8) + B * 5
    # forward: read x, v, x_next (+ std), t; write chunk logprob, entropy (B,) fp32
    fwd = n * (3 + with_std) * ib + B * 12
    # backward: read them again and the (B,) output grads; write ∂v (+ ∂std) in the input dtype
    bwd = n * (3 + with_std) * ib + B * 12 + n * (1 + with_std) * ib
    return fwd + bwd


# ---- GPU timing ---------------------------------------------------------------------------
def copy_bandwidth(device) -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write counted)."""
    from triton.testing import do_bench

    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=500)
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def max_err(a, b) -> float:
    """Largest error of any output relative to that output's largest reference entry."""
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp(min=1e-30)).item()
               for x, y in zip(a, b))


def allow_recompiles(limit: int = 4096) -> None:
    """torch.compile specialises on every shape, dtype, method and δ of the grid; past
    dynamo's default recompile limit (8) it would silently run eager and the "compile"
    column would lie."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, limit)


def bench_gpu(args):
    from triton.testing import do_bench

    allow_recompiles()
    device = torch.device("cuda")
    copy_gbs = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device)
    print(f"device: {name}; torch {torch.__version__}; device-to-device copy: {copy_gbs:.0f} GB/s")
    sizes = FULL_SIZES if args.full else QUICK_SIZES
    header = ("op", "method", "dtype", "B", "H", "K", "MB", "eager us", "compile us", "triton us",
              "x eager", "x compile", "triton GB/s", "% copy", "rel err")
    rows = []
    for op in args.ops:
        for method in (FLOW_SDE, FLOW_NOISE):
            for dname in args.dtypes:
                for B, H in sizes:
                    for K in NUM_STEPS:
                        inp = make_inputs(B, H, ACTION_DIM, K, DTYPES[dname], device)
                        fns = (denoise_fns if op == "denoise" else logprob_fns)(method, K, 0.5, inp)
                        err = max_err(fns["triton"](), fns["eager"]())
                        us = {k: 1e3 * do_bench(f, warmup=25, rep=100) for k, f in fns.items()}
                        nbytes = op_bytes(op, method, B, H, ACTION_DIM, DTYPES[dname])
                        gbs = nbytes / (us["triton"] * 1e-6) / 1e9
                        rows.append((op, method, dname, B, H, K, f"{nbytes / 1e6:.2f}", f"{us['eager']:.1f}",
                                     f"{us['compile']:.1f}", f"{us['triton']:.1f}",
                                     f"{us['eager'] / us['triton']:.2f}", f"{us['compile'] / us['triton']:.2f}",
                                     f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.0f}", f"{err:.1e}"))
                        print("  ".join(str(c) for c in rows[-1]), flush=True)
    print_targets(rows)
    if args.markdown:
        print()
        print(f"Card: {name}, copy {copy_gbs:.0f} GB/s, command: `{' '.join(sys.argv)}`")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |")


def print_targets(rows) -> None:
    """The issue's targets: ≥ 3x eager everywhere, ≥ 60% of copy bandwidth where the op is
    big enough to be bandwidth-bound (the largest B·H of the grid; small sizes are launch-bound)."""
    for op in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == op]
        speedups = [float(r[10]) for r in mine]
        biggest = max(r[3] * r[4] for r in mine)
        pct = [float(r[13]) for r in mine if r[3] * r[4] == biggest]
        print(f"{op}: x eager {min(speedups):.2f}-{max(speedups):.2f} (target >= 3: "
              f"{'met' if min(speedups) >= 3 else 'NOT met'}); % copy at B*H={biggest}: "
              f"{min(pct):.0f}-{max(pct):.0f} (target >= 60: {'met' if min(pct) >= 60 else 'NOT met'})")


# ---- CPU: correctness only ----------------------------------------------------------------
CPU_SIZES = [(3, 5), (4, 50)]


def check_cpu(args) -> int:
    """Triton (interpreted) vs the torch reference, every op / method / dtype, small sizes."""
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels read it at launch (pirl.kernels.flow_step)
    print("no GPU found: timing skipped; checking the Triton kernels against the torch reference "
          "under TRITON_INTERPRET=1 on CPU")
    # Relative to each output's scale: fp32 rounding order; bf16 gradients are stored in bf16
    # (one rounding, 2^-8 relative).
    tol = {"fp32": 1e-5, "bf16": 1e-2}
    failures = 0
    for op in args.ops:
        for method in (FLOW_SDE, FLOW_NOISE):
            for dname in args.dtypes:
                for B, H in CPU_SIZES:
                    K = NUM_STEPS[0]
                    inp = make_inputs(B, H, ACTION_DIM, K, DTYPES[dname], torch.device("cpu"))
                    fns = (denoise_fns if op == "denoise" else logprob_fns)(method, K, 0.5, inp)
                    err = max_err(fns["triton"](), fns["eager"]())
                    ok = err <= tol[dname]
                    failures += not ok
                    print(f"{op:8s} {method:10s} {dname:5s} B={B:<4d} H={H:<3d} D={ACTION_DIM} K={K}  "
                          f"max |triton - torch| / max |torch| = {err:.1e}  {'ok' if ok else 'FAIL'}")
    print("all correct" if not failures else f"{failures} checks FAILED")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the whole size grid (GPU)")
    p.add_argument("--ops", nargs="+", default=["denoise", "logprob"], choices=["denoise", "logprob"])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--markdown", action="store_true", help="also print a markdown table (GPU)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        return check_cpu(args)
    bench_gpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
