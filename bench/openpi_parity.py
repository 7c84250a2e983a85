"""One-off: pirl's openpi export loaded by openpi's own PyTorch π0 (PI0Pytorch) with openpi's
own strict loader, and its velocity / ODE actions against pirl's. Not in CI: openpi's model
needs transformers 4.53.2 patched with the `transformers_replace` files of openpi's
repository (not on PyPI), so two environments take part: pirl's writes the export, its
inputs and pirl's outputs; openpi's loads and compares.

    .venv/bin/python bench/openpi_parity.py write /tmp/openpi_parity
    OPENPI_SRC=<copy of openpi's repository> VENV=.cache/openpi-venv bash -c '
      python3.11 -m venv $VENV &&
      $VENV/bin/pip install torch==2.13.0 transformers==4.53.2 jax flax jaxtyping==0.2.36 beartype einops \
          pillow safetensors sentencepiece &&
      cp -r $OPENPI_SRC/src/openpi/models_pytorch/transformers_replace/* \
          $VENV/lib/python3.11/site-packages/transformers/ &&
      $VENV/bin/python bench/openpi_parity.py check /tmp/openpi_parity'

openpi hard-codes the PaliGemma sizes like lerobot; they are patched in `check` to the
parity sizes (widths 64 / 32, 8 heads of 8, a 2-layer SigLIP of width 32, 512 tokens).
openpi's sample_actions resizes images to 224 px, so its Euler loop is run over its own
embed_prefix / denoise_step on the 28 px inputs, with a fresh prefix cache at every step.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path

import safetensors.torch
import torch

V, S, H, B, K = 512, 28, 6, 3, 10
VLM = dict(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8)
EXPERT = dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8)
VISION = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, image_size=S)
KINDS = ("pi0", "pi05")


def write(out: Path) -> None:
    """pirl's side: a random tiny model per kind, its openpi export, fixed inputs, and pirl's
    velocity along pirl's own 10-step Euler trajectory."""
    from pirl.models.pi0.checkpoint import export_openpi
    from pirl.models.pi0.configuration import GemmaSpec, SiglipSpec, preset
    from pirl.models.pi0.modeling import Pi0Model

    for kind in KINDS:
        base = preset(f"{kind}_tiny")
        cfg = dataclasses.replace(base, paligemma=GemmaSpec(**VLM, vocab_size=V), expert=GemmaSpec(**EXPERT, vocab_size=V),
                                  vision=SiglipSpec(**VISION), action_dim=32, action_horizon=H, add_value_head=False)
        g = torch.Generator().manual_seed(0)
        model = Pi0Model(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
        export_openpi(model, out / kind)
        L = cfg.max_token_len
        io = {"images": torch.rand(B, 3, 3, S, S, generator=g) * 2 - 1,
              "image_masks": torch.tensor([[True, True, False], [True, False, False], [True, True, False]]),
              "tokens": torch.randint(1, V, (B, L), generator=g),
              "token_masks": torch.arange(L)[None] < torch.tensor([L, 5, 9])[:, None],
              "state": torch.randn(B, 32, generator=g), "noise": torch.randn(B, H, 32, generator=g)}
        xs, vs = [], []
        with torch.no_grad():
            _, kv, pad = model.prefix_forward(io["images"], io["image_masks"], io["tokens"], io["token_masks"])
            x = io["noise"].clone()
            for k in range(K):  # openpi's Euler loop: dt = -1/K from t = 1
                v = model.velocity(model.suffix_forward(kv, pad, io["state"], x, torch.full((B,), 1.0 - k / K)))
                xs.append(x)
                vs.append(v)
                x = x - v / K
        io.update(xs=torch.stack(xs), vs=torch.stack(vs), actions=x)
        torch.save(io, out / kind / "io.pt")


def _patch_openpi_sizes(gemma_pytorch, pi0_pytorch) -> None:
    sizes = {"gemma_2b": VLM, "gemma_300m": EXPERT}
    pi0_pytorch._gemma.get_config = lambda variant: types.SimpleNamespace(**sizes[variant])
    vlm_cls, expert_cls = gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM

    def vlm(config):
        v = config.vision_config
        v.hidden_size, v.num_hidden_layers = VISION["hidden_size"], VISION["num_layers"]
        v.num_attention_heads, v.intermediate_size = VISION["num_heads"], VISION["intermediate_size"]
        v.image_size, v.projection_dim = S, config.text_config.hidden_size
        config.text_config.vocab_size = config._vocab_size = V
        return vlm_cls(config=config)

    def expert(config):
        config.vocab_size = V
        return expert_cls(config=config)

    gemma_pytorch.PaliGemmaForConditionalGeneration = vlm
    gemma_pytorch.GemmaForCausalLM = expert


def _openpi_velocity(op, make_att_2d_masks, io: dict, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """openpi's own prefix pass (as its sample_actions does it) and denoise_step."""
    images, masks = list(io["images"].unbind(1)), list(io["image_masks"].unbind(1))
    embs, pad, att = op.embed_prefix(images, masks, io["tokens"], io["token_masks"])
    mask4 = op._prepare_attention_masks_4d(make_att_2d_masks(pad, att))
    op.paligemma_with_expert.paligemma.language_model.config._attn_implementation = "eager"
    _, kv = op.paligemma_with_expert.forward(attention_mask=mask4, position_ids=torch.cumsum(pad, dim=1) - 1,
                                             past_key_values=None, inputs_embeds=[embs, None], use_cache=True)
    return op.denoise_step(io["state"], pad, kv, x_t, t)


def check(out: Path) -> None:
    """openpi's side: strict load of each export into PI0Pytorch, its velocity at pirl's
    trajectory points and its own Euler trajectory."""
    sys.path.insert(0, str(Path(os.environ["OPENPI_SRC"]) / "src"))
    import openpi.models_pytorch.gemma_pytorch as gemma_pytorch
    import openpi.models_pytorch.pi0_pytorch as pi0_pytorch

    _patch_openpi_sizes(gemma_pytorch, pi0_pytorch)
    print(f"{'model':6s} {'strict load':>12s} {'max|dv|/max|v|':>15s} {'max|da|':>10s}")
    for kind in KINDS:
        ns = types.SimpleNamespace(pi05=kind == "pi05", paligemma_variant="gemma_2b", action_expert_variant="gemma_300m",
                                   dtype="float32", action_dim=32, action_horizon=H, pytorch_compile_mode=None)
        op = pi0_pytorch.PI0Pytorch(ns).eval()
        safetensors.torch.load_model(op, str(out / kind / "model.safetensors"))  # openpi's load_pytorch: strict
        io = torch.load(out / kind / "io.pt")
        dv, x = 0.0, io["noise"].clone()
        with torch.no_grad():
            for k in range(K):
                t = torch.full((B,), 1.0 - k / K)
                ref = _openpi_velocity(op, pi0_pytorch.make_att_2d_masks, io, io["xs"][k], t)
                dv = max(dv, float((io["vs"][k] - ref).abs().max() / ref.abs().max()))
                x = x + (-1.0 / K) * _openpi_velocity(op, pi0_pytorch.make_att_2d_masks, io, x, t)
        print(f"{kind:6s} {'ok':>12s} {dv:15.2e} {float((io['actions'] - x).abs().max()):10.2e}")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](Path(sys.argv[2]))
