"""Test helpers for OpenVLA-OFT: a Llama-style SentencePiece tokenizer trained here, tiny
checkpoints written in the OpenVLA / OpenVLA-OFT Hugging Face layout (timm tower names,
fused qkv, official FiLM / proprio component files with unmerged peft LoRA), and a float64
second implementation of the OFT forward that reads those timm-named tensors directly.

Nothing here imports pirl's key map or modules: the writer names tensors as timm and
OpenVLA do, and the reference computes from those names, so a wrong map or a wrong
block in pirl shows up as a mismatch.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

WORDS = ("pick up the red cube place it on plate open drawer move to blue green yellow target put bowl in "
         "basket turn stove close microwave push button slide left right top bottom black white mug cup cream "
         "cheese ketchup butter alphabet soup tomato sauce milk orange juice chocolate pudding salad dressing "
         "wine bottle rack cabinet shelf book caddy frying pan moka pot both").split()


def train_llama_tokenizer(directory: Path, vocab_size: int = 512) -> Path:
    """A BPE SentencePiece model with Llama-2's special ids (0 unk, 1 <s>, 2 </s>), byte
    fallback and identity normalization, so "\\n" is a byte token as in Llama."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join("In: What action should the robot take to " + " ".join(rng.choice(WORDS, 6))
                                + "?\nOut: " for _ in range(2000)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "tokenizer"),
                                   vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
                                   byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    return directory / "tokenizer.model"


# ---- pirl module tensors -> OpenVLA / timm names (written from timm's naming) ------------
def _tower_to_timm(rest: str, t: torch.Tensor, kind: str, state: dict, pending: dict) -> tuple[str, torch.Tensor] | None:
    parts = rest.split(".")
    if parts[0] == "patch_embed":
        return f"patch_embed.proj.{parts[1]}", t
    if parts[0] in ("pos_embed", "cls_token", "reg_token") or parts[0] == "norm":
        return rest, t
    if parts[0] == "blocks":
        i, sub = parts[1], ".".join(parts[2:])
        attn = "attention" if kind == "dinov2" else "self_attn"
        for n in "qkv":
            if sub.startswith(f"{attn}.{n}_proj."):
                pending.setdefault((i, sub.split(".")[-1]), {})[n] = t
                return None
        table = {"norm1": "norm1", "norm2": "norm2", "layer_norm1": "norm1", "layer_norm2": "norm2",
                 "attention.o_proj": "attn.proj", "self_attn.out_proj": "attn.proj",
                 "layer_scale1.lambda1": "ls1.scale_factor", "layer_scale2.lambda1": "ls2.scale_factor",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for k, v in table.items():
            if sub == k or sub.startswith(k + "."):
                return f"blocks.{i}.{v}{sub[len(k):]}", t
    if parts[0] == "attn_pool":
        sub = ".".join(parts[1:])
        if sub == "probe":
            return "attn_pool.latent", t
        if sub in ("attention.in_proj_weight", "attention.in_proj_bias"):
            D = t.shape[0] // 3
            kind_ = "weight" if sub.endswith("weight") else "bias"
            state[f"attn_pool.q.{kind_}"] = t[:D].clone()
            state[f"attn_pool.kv.{kind_}"] = t[D:].clone()
            return None
        table = {"attention.out_proj": "attn_pool.proj", "layernorm": "attn_pool.norm", "mlp": "attn_pool.mlp"}
        for k, v in table.items():
            if sub.startswith(k + "."):
                return v + sub[len(k):], t
    raise KeyError(rest)


def to_hf_state(model_state: dict[str, torch.Tensor], kinds=("dinov2", "siglip")) -> dict[str, torch.Tensor]:
    """pirl OFTModel state -> the names of OpenVLA's HF checkpoint (value head and FiLM dropped)."""
    out: dict[str, torch.Tensor] = {}
    towers = {"featurizer": kinds[0], "fused_featurizer": kinds[1] if len(kinds) > 1 else None}
    for tower, kind in towers.items():
        prefix = f"vision_backbone.{tower}."
        local: dict[str, torch.Tensor] = {}
        pending: dict = {}
        for k, t in model_state.items():
            if k.startswith(prefix) and ".film." not in k:
                got = _tower_to_timm(k[len(prefix):], t, kind, local, pending)
                if got is not None:
                    local[got[0]] = t
        for (i, what), qkv in pending.items():
            local[f"blocks.{i}.attn.qkv.{what}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
        out.update({prefix + k: v.clone() for k, v in local.items()})
    for k, t in model_state.items():
        if k.startswith(("projector.", "language_model.")):
            out[k] = t.clone()
    return out


def hf_config(cfg, norm_stats: dict | None = None) -> dict:
    """config.json as OpenVLA writes it (the fields pirl checks, and a few it ignores)."""
    return {
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
        "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp", "use_fused_vision_backbone": len(cfg.vision) == 2,
        "image_resize_strategy": "resize-naive", "image_sizes": [v.image_size for v in cfg.vision],
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "n_action_bins": cfg.n_action_bins, "pad_to_multiple_of": cfg.pad_to_multiple_of,
        "pad_token_id": cfg.pad_token_id, "norm_stats": norm_stats or {},
        "text_config": {"model_type": "llama", "vocab_size": cfg.llm.vocab_size, "hidden_size": cfg.llm.hidden_size,
                        "intermediate_size": cfg.llm.intermediate_size, "num_hidden_layers": cfg.llm.num_layers,
                        "num_attention_heads": cfg.llm.num_heads, "num_key_value_heads": cfg.llm.num_kv_heads,
                        "rms_norm_eps": cfg.llm.rms_eps, "rope_theta": cfg.llm.rope_theta,
                        "max_position_embeddings": cfg.llm.max_position_embeddings},
    }


def write_hf_checkpoint(directory: Path, state: dict[str, torch.Tensor], cfg, tokenizer: Path,
                        statistics: dict, shards: int = 2) -> Path:
    """Sharded safetensors + index, config.json, dataset_statistics.json, tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: state[k].contiguous() for k in keys[s * per:(s + 1) * per]}
        save_file(chunk, str(directory / name))
        weight_map.update({k: name for k in chunk})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(hf_config(cfg)))
    (directory / "dataset_statistics.json").write_text(json.dumps(statistics))
    (directory / "tokenizer.model").write_bytes(Path(tokenizer).read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                                 "padding_side": "right"}))
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                   "pad_token": "<PAD>", "unk_token": "<unk>"}))
    (directory / "added_tokens.json").write_text(json.dumps({"<PAD>": cfg.pad_token_id}))
    return directory


LINEAR = re.compile(r"(.*\.(?:attn\.qkv|attn\.proj|mlp\.fc[12]|attn_pool\.(?:q|kv|proj|mlp\.fc[12])))\.(weight|bias)")


def film_component(hf_vision: dict[str, torch.Tensor], film: dict[str, torch.Tensor], rank: int,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Official OFT's vision_backbone--*_checkpoint.pt: FiLMedPrismaticVisionBackbone state,
    blocks under `.block.`, FiLM as `blocks.N.scale/shift`, every linear layer with an
    unmerged peft adapter (random A and B, as after training: "all-linear")."""
    out: dict[str, torch.Tensor] = {}
    for k, t in hf_vision.items():
        name = re.sub(r"\.blocks\.(\d+)\.", r".blocks.\1.block.", k)
        m = LINEAR.fullmatch(name)
        if m is None:
            out[name] = t.clone()
        elif m[2] == "bias":
            out[f"{m[1]}.base_layer.bias"] = t.clone()
        else:
            out[f"{m[1]}.base_layer.weight"] = t.clone()
            out[f"{m[1]}.lora_A.default.weight"] = torch.randn(rank, t.shape[1], generator=gen) * 0.1
            out[f"{m[1]}.lora_B.default.weight"] = torch.randn(t.shape[0], rank, generator=gen) * 0.1
    for k, t in film.items():  # pirl's `vision_backbone.<tower>.film.N.scale.weight`
        tower, rest = k.split(".film.")
        out[f"{tower}.blocks.{rest}"] = t.clone()
    return out


def fold_film_component(component: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """The reference's reading of that file: W + (alpha / r)·B·A, names without peft's levels."""
    out = {}
    for k, t in component.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".").replace(".block.", ".")] = t.double()
    for k, A in component.items():
        if k.endswith(".lora_A.default.weight"):
            stem = k[: -len(".lora_A.default.weight")]
            B = component[stem + ".lora_B.default.weight"]
            name = stem.replace(".block.", ".") + ".weight"
            out[name] = out[name] + alpha / A.shape[0] * (B.double() @ A.double())
    return out


# ---- float64 reference forward ------------------------------------------------------------
def _ln(x, T, p, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], T[p + ".weight"], T[p + ".bias"], eps)


def _lin(x, T, p, bias=True):
    return F.linear(x, T[p + ".weight"], T[p + ".bias"] if bias else None)


def ref_vit(T: dict, prefix: str, kind: str, heads: int, pixels: torch.Tensor, depth: int,
            lang: torch.Tensor | None = None) -> torch.Tensor:
    """timm ViT features: output of block depth-2 without prefix tokens (Prismatic)."""
    w = T[prefix + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, T[prefix + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + T[prefix + "pos_embed"]
    n_prefix = 0
    if kind == "dinov2":
        reg = T.get(prefix + "reg_token")
        toks = [T[prefix + "cls_token"].expand(x.shape[0], -1, -1)]
        if reg is not None:
            toks.append(reg.expand(x.shape[0], -1, -1))
        x = torch.cat(toks + [x], dim=1)
        n_prefix = sum(t.shape[1] for t in toks)
    for i in range(depth - 1):
        b = f"{prefix}blocks.{i}."
        h = _ln(x, T, b + "norm1")
        B, N, D = h.shape
        qkv = _lin(h, T, b + "attn.qkv").reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), -1) @ v
        a = _lin(a.transpose(1, 2).reshape(B, N, D), T, b + "attn.proj")
        if kind == "dinov2":
            a = a * T[b + "ls1.scale_factor"]
        x = x + a
        if lang is not None:
            x = x * (1 + _lin(lang, T, b + "scale")[:, None]) + _lin(lang, T, b + "shift")[:, None]
        m = _lin(F.gelu(_lin(_ln(x, T, b + "norm2"), T, b + "mlp.fc1")), T, b + "mlp.fc2")
        if kind == "dinov2":
            m = m * T[b + "ls2.scale_factor"]
        x = x + m
    return x[:, n_prefix:]


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    f = pos[..., None].double() * inv
    emb = torch.cat([f, f], -1)[:, None]  # (B, 1, S, hd)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()


def ref_llama(T: dict, x: torch.Tensor, valid: torch.Tensor, spec, causal: bool) -> torch.Tensor:
    B, S, H = x.shape
    nh, kvh = spec.num_heads, spec.num_kv_heads
    hd = H // nh
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    allowed = valid[:, None, None, :].expand(B, 1, S, S)
    if causal:
        allowed = allowed & torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(spec.num_layers):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, T[p + "input_layernorm.weight"], spec.rms_eps)
        q = _lin(h, T, p + "self_attn.q_proj", bias=False).view(B, S, nh, hd).transpose(1, 2)
        k = _lin(h, T, p + "self_attn.k_proj", bias=False).view(B, S, kvh, hd).transpose(1, 2)
        v = _lin(h, T, p + "self_attn.v_proj", bias=False).view(B, S, kvh, hd).transpose(1, 2)
        q, k = _rope(q, pos, spec.rope_theta), _rope(k, pos, spec.rope_theta)
        k, v = k.repeat_interleave(nh // kvh, 1), v.repeat_interleave(nh // kvh, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, S, H)
        x = x + _lin(a, T, p + "self_attn.o_proj", bias=False)
        h = _rms(x, T[p + "post_attention_layernorm.weight"], spec.rms_eps)
        g = _lin(h, T, p + "mlp.gate_proj", bias=False)
        u = _lin(h, T, p + "mlp.up_proj", bias=False)
        x = x + _lin(F.silu(g) * u, T, p + "mlp.down_proj", bias=False)
    return _rms(x, T["language_model.model.norm.weight"], spec.rms_eps)


def ref_action_logits(T: dict, cfg, input_ids, attention_mask, images_u8, proprio=None, film=False,
                      official=False, causal=False) -> torch.Tensor:
    """float64 OFT forward from OpenVLA-named tensors -> action logits (B, A, n_bins)."""
    T = {k: v.double() for k, v in T.items()}
    emb = T["language_model.model.embed_tokens.weight"][input_ids]  # (B, L, H)
    lang = None
    if film:  # mean over valid prompt tokens and the stop token
        m = attention_mask.double()[..., None]
        lang = ((emb * m).sum(1) + T["language_model.model.embed_tokens.weight"][2]) / (m.sum(1) + 1)
    x = images_u8.double() / 255.0
    feats = []
    for cam in range(x.shape[1]):
        per = []
        for tower, spec in zip(("featurizer", "fused_featurizer"), cfg.vision):
            mean = torch.tensor(spec.mean, dtype=torch.float64)[:, None, None]
            std = torch.tensor(spec.std, dtype=torch.float64)[:, None, None]
            per.append(ref_vit(T, f"vision_backbone.{tower}.", spec.kind, spec.num_heads, (x[:, cam] - mean) / std,
                               spec.depth, lang))
        feats.append(torch.cat(per, dim=2))
    v = torch.cat(feats, dim=1)
    patches = _lin(F.gelu(_lin(F.gelu(_lin(v, T, "projector.fc1")), T, "projector.fc2")), T, "projector.fc3")
    if proprio is not None:
        pt = _lin(F.gelu(_lin(proprio.double(), T, "proprio_projector.fc1")), T, "proprio_projector.fc2")
        patches = torch.cat([patches, pt[:, None]], dim=1)
    B, A = emb.shape[0], cfg.num_action_tokens
    seq = [emb[:, :1], patches, emb[:, 1:], torch.zeros(B, A, emb.shape[-1], dtype=torch.float64)]
    valid = [attention_mask[:, :1], torch.ones(B, patches.shape[1], dtype=torch.bool), attention_mask[:, 1:],
             torch.ones(B, A, dtype=torch.bool)]
    if official:
        seq.append(T["language_model.model.embed_tokens.weight"][torch.full((B, 1), 2)])
        valid.append(torch.ones(B, 1, dtype=torch.bool))
    h = ref_llama(T, torch.cat(seq, 1), torch.cat(valid, 1), cfg.llm, causal)
    first = 1 + patches.shape[1] + emb.shape[1] - 1
    logits = _lin(h[:, first - 1:first - 1 + A], T, "language_model.lm_head", bias=False)
    V = cfg.tokenizer_vocab
    return logits[..., V - cfg.n_action_bins:V]
