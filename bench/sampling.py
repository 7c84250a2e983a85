"""Rollout sampling of π0 / π0.5: cached prefix vs recomputing the prefix at every step.

cached:     one VLM pass over [images | language] into a read-only KV cache, then K
            expert-only passes over the suffix (state + H actions).
recompute:  K joint passes over prefix + suffix (what a cache-less implementation does).

Ideal speedup from token counts alone (every token costs the same):
    K·(P + S) / (P + K·S)        P prefix tokens, S suffix tokens.
Prefix tokens are dearer in practice (wider VLM, SigLIP on the images), so a measured
speedup can beat it; per-pass overhead at tiny widths pulls it below.

    python bench/sampling.py --config pi0_tiny --batch 16 --steps 10
    python bench/sampling.py --config pi0_mid --batch 4 --steps 10
Prints one markdown row per config (docs/benchmarks.md, "## π0 sampling").
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pirl.models.pi0.configuration import preset
from pirl.models.pi0.modeling import Pi0Model


Prefix = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images, image_masks, tokens, token_masks


def make_inputs(cfg, B: int, gen: torch.Generator) -> tuple[Prefix, torch.Tensor, torch.Tensor]:
    S, L = cfg.vision.image_size, cfg.max_token_len
    images = torch.rand(B, len(cfg.image_keys), 3, S, S, generator=gen) * 2 - 1
    image_masks = torch.ones(B, len(cfg.image_keys), dtype=torch.bool)
    tokens = torch.randint(1, cfg.paligemma.vocab_size, (B, L), generator=gen)
    token_masks = torch.ones(B, L, dtype=torch.bool)
    state = torch.randn(B, cfg.action_dim, generator=gen)
    noise = torch.randn(B, cfg.action_horizon, cfg.action_dim, generator=gen)
    return (images, image_masks, tokens, token_masks), state, noise


@torch.no_grad()
def sample_cached(model: Pi0Model, prefix: Prefix, state, noise, K: int) -> torch.Tensor:
    _, kv, pad = model.prefix_forward(*prefix)
    x = noise
    for k in range(K):
        t = torch.full((x.shape[0],), 1.0 - k / K)
        x = x - model.velocity(model.suffix_forward(kv, pad, state, x, t)) / K
    return x


@torch.no_grad()
def sample_recompute(model: Pi0Model, prefix: Prefix, state, noise, K: int) -> torch.Tensor:
    x = noise
    for k in range(K):
        t = torch.full((x.shape[0],), 1.0 - k / K)
        _, so, _ = model.joint_forward(*prefix, state, x, t)
        x = x - model.velocity(so) / K
    return x


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(config: str, batch: int, steps: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    cfg = preset(config)
    model = Pi0Model(cfg).eval()
    prefix, state, noise = make_inputs(cfg, batch, gen)
    P = len(cfg.image_keys) * cfg.vision.num_tokens + cfg.max_token_len
    S = cfg.action_horizon + (0 if cfg.pi05 else 1)
    a = sample_cached(model, prefix, state, noise, steps)
    b = sample_recompute(model, prefix, state, noise, steps)
    t_cached = timed(lambda: sample_cached(model, prefix, state, noise, steps), repeats)
    t_recompute = timed(lambda: sample_recompute(model, prefix, state, noise, steps), repeats)
    g = cfg.paligemma
    bytes_per = torch.finfo(next(model.parameters()).dtype).bits // 8
    cache_bytes = 2 * g.depth * g.num_kv_heads * P * g.head_dim * bytes_per
    ideal = steps * (P + S) / (P + steps * S)
    speedup = t_recompute / t_cached
    return {"config": config, "batch": batch, "K": steps, "P": P, "S": S,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "cached_ms": 1e3 * t_cached, "recompute_ms": 1e3 * t_recompute, "speedup": speedup,
            "ideal": ideal, "fraction_of_ideal": speedup / ideal, "cache_kib_per_sample": cache_bytes / 1024,
            "max_action_diff": (a - b).abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["pi0_tiny", "pi0_mid"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="denoising steps K")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (timings on a shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| config | params (M) | batch | K | P | S | cached (ms) | recompute (ms) | speedup | ideal "
          "| speedup / ideal | KV cache / sample (KiB) | max |Δa| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.config:
        r = run(name, args.batch, args.steps, args.repeats)
        print(f"| {r['config']} | {r['params_M']:.2f} | {r['batch']} | {r['K']} | {r['P']} | {r['S']} "
              f"| {r['cached_ms']:.1f} | {r['recompute_ms']:.1f} | {r['speedup']:.2f} | {r['ideal']:.2f} "
              f"| {r['fraction_of_ideal']:.2f} | {r['cache_kib_per_sample']:.1f} | {r['max_action_diff']:.1e} |")


if __name__ == "__main__":
    main()
