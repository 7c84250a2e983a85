"""OpenVLA-OFT's parallel decoding against a token-by-token decode of the same chunk.

One parallel pass decodes all C x D action tokens (OFT); the autoregressive baseline
(OpenVLA's decode, causal mask) runs the prefix once into a KV cache, then one forward per
action token. Both on CPU in fp32 with random weights; median of `--repeats` timed calls
after one warm-up.

    python bench/oft_decoding.py                      # oft_tiny and oft_mid, batch 1 and 16
    python bench/oft_decoding.py --configs oft_mid --batches 4 --repeats 5
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pirl.models.oft.configuration import CAUSAL, LlamaSpec, ViTSpec, preset  # noqa: E402
from pirl.models.oft.modeling import OFTModel  # noqa: E402
from pirl.models.oft.processor import pixel_values  # noqa: E402

# A mid size for a 2-core CPU: 224 px towers of 4 layers, a 6-layer Llama of width 512,
# the real chunk of 8 x 7 tokens and a 50-token prompt.
MID = dataclasses.replace(
    preset("openvla_7b"),
    vision=(ViTSpec("dinov2", 256, 4, 4, 1024, num_registers=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ViTSpec("siglip", 256, 4, 4, 1024)),
    llm=LlamaSpec(vocab_size=32064, hidden_size=512, intermediate_size=1376, num_layers=6, num_heads=8, num_kv_heads=8),
    add_value_head=False)
CONFIGS = {"oft_tiny": preset("oft_tiny"), "oft_mid": MID}


def _inputs(cfg, B: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.tokenizer_vocab, (B, cfg.max_prompt_length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids, dtype=torch.bool)
    S = cfg.vision[0].image_size
    images = torch.randint(0, 256, (B, cfg.num_images_in_input, 3, S, S), generator=g, dtype=torch.uint8)
    return ids, mask, pixel_values(images, cfg.vision)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(name: str, B: int, repeats: int) -> dict:
    cfg = dataclasses.replace(CONFIGS[name], attention=CAUSAL)  # the mask under which both agree
    torch.manual_seed(0)
    model = OFTModel(cfg).eval()
    ids, mask, px = _inputs(cfg, B)
    with torch.no_grad():
        parallel = _median_ms(lambda: model(ids, mask, px), repeats)
        stepwise = _median_ms(lambda: model.stepwise_logits(ids, mask, px), repeats)
    return {"config": name, "batch": B, "tokens": cfg.num_action_tokens, "parallel_ms": parallel,
            "stepwise_ms": stepwise, "speedup": stepwise / parallel}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=sorted(CONFIGS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"load average {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} threads")
    print("| config | batch | action tokens | parallel pass ms | token-by-token ms | speedup |")
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        for B in args.batches:
            r = measure(name, B, args.repeats)
            print(f"| {r['config']} | {r['batch']} | {r['tokens']} | {r['parallel_ms']:.1f} | {r['stepwise_ms']:.1f} "
                  f"| {r['speedup']:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
