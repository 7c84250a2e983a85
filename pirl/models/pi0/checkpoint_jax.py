"""openpi's JAX checkpoints (orbax `params/`, OCDBT + zarr) read without JAX, mapped to
pirl's parameter names with the key map of openpi's own conversion
(examples/convert_jax_model_to_pytorch.py), written here from the einsum definitions of
openpi's gemma.py / siglip.py so that it holds for any size, not only the released ones.

A checkpoint directory is what openpi downloads or trains: `<dir>/params/` (orbax's
`_METADATA`, `manifest.ocdbt`, `ocdbt.process_*/`, `d/`) beside `<dir>/assets/<asset_id>/
norm_stats.json`; `<dir>` may also be the params folder itself. Leaves are read with
tensorstore (a dependency of orbax, no JAX needed). Params saved from an `nnx.State` during
openpi training end every key path in "value"; that level is dropped, as openpi's
`restore_params` does.

JAX layouts (L = stacked layers of nn.scan, N heads, K kv heads, H head dim, D width, F mlp):
    llm/layers/attn/q_einsum/w       (L, N, D, H)      "BTD,NDH->BTNH"   -> q_proj (N·H, D)
    llm/layers/attn/kv_einsum/w      (L, 2, K, D, H)   "BSD,2KDH->2BSKH" -> k_proj, v_proj (K·H, D)
    llm/layers/attn/qkv_einsum/w     (L, 3, N, D, H)   (when K == N)
    llm/layers/attn/attn_vec_einsum/w (L, N, H, D)     "BTNH,NHD->BTD"   -> o_proj (D, N·H)
    llm/layers/mlp/gating_einsum     (L, 2, D, F)      x·w[0] gate, x·w[1] up
    llm/layers/mlp/linear            (L, F, D)
    llm/layers/pre_attention_norm/scale (L, D), pre_ffw_norm, final_norm: RMSNorm scales
    ..._1/...                        the same for the action expert; π0.5's adaRMS norms are
                                     `<norm>_1/Dense_0/{kernel (L, D, 3D), bias}`
    img/embedding/kernel (P, P, 3, W) conv HWIO; img/pos_embedding (1, T, W)
    img/Transformer/encoderblock/... (L, ...) SigLIP; MultiHeadDotProductAttention_0/
        {query,key,value}/kernel (L, W, nh, hd), out/kernel (L, nh, hd, W)
    img/head/kernel (W, D) projector; top-level Linear kernels are (in, out)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ORBAX_METADATA = "_METADATA"
PARAMS_DIR = "params"

PG = "paligemma_with_expert.paligemma.model."
VT = PG + "vision_tower."
LM = PG + "language_model."
EX = "paligemma_with_expert.gemma_expert.model."
# Top-level nnx.Linear modules of openpi's Pi0 (kernel (in, out) -> weight (out, in)).
LINEARS = ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out",
           "time_mlp_in", "time_mlp_out")


class OrbaxError(ValueError):
    pass


def params_dir(path: str | Path) -> Path | None:
    """The orbax params folder of a checkpoint directory (or the folder itself), or None."""
    path = Path(path)
    for d in (path / PARAMS_DIR, path):
        if (d / ORBAX_METADATA).is_file():
            return d
    return None


def _leaf_paths(meta: dict, where: Path) -> list[tuple[str, ...]]:
    tree = meta.get("tree_metadata")
    if not isinstance(tree, dict):
        raise OrbaxError(f"{where}: no 'tree_metadata' (not an orbax PyTree checkpoint written by orbax >= 0.5)")
    paths = []
    for entry in tree.values():
        keys = tuple(str(k["key"]) for k in entry["key_metadata"])
        if entry.get("value_metadata", {}).get("skip_deserialize"):
            continue
        paths.append(keys)
    return paths


def read_orbax(directory: str | Path) -> dict[tuple[str, ...], torch.Tensor]:
    """Every array leaf of an orbax PyTree checkpoint -> {key path: tensor} (dtype kept;
    bfloat16 stays bfloat16). A missing or unreadable leaf is an error naming it."""
    import tensorstore as ts

    directory = Path(directory).resolve()
    meta_file = directory / ORBAX_METADATA
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OrbaxError(f"cannot read {meta_file}: {e}") from e
    driver = "zarr3" if meta.get("use_zarr3") else "zarr"
    out: dict[tuple[str, ...], torch.Tensor] = {}
    for keys in _leaf_paths(meta, meta_file):
        name = ".".join(keys)
        if meta.get("use_ocdbt", True):
            kvstore = {"driver": "ocdbt", "base": f"file://{directory}/", "path": name}
        else:
            kvstore = {"driver": "file", "path": f"{directory}/{name}/"}
        try:
            array = ts.open({"driver": driver, "kvstore": kvstore}, open=True, read=True).result().read().result()
        except Exception as e:  # tensorstore raises ValueError / its own status errors
            raise OrbaxError(f"{directory}: cannot read leaf {name!r}: {e}") from e
        out[keys] = _to_torch(np.asarray(array))
    return out


def _to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: same bits as torch's
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def flatten_params(leaves: dict[tuple[str, ...], torch.Tensor]) -> dict[str, torch.Tensor]:
    """{("params", "PaliGemma", "llm", ..., ["value"])} -> {"PaliGemma/llm/...": tensor}: the
    item's "params" root and nnx.State's trailing "value" dropped."""
    paths = list(leaves)
    if paths and all(p[0] == "params" for p in paths):
        leaves = {p[1:]: v for p, v in leaves.items()}
    if leaves and all(p[-1] == "value" for p in leaves):
        leaves = {p[:-1]: v for p, v in leaves.items()}
    return {"/".join(p): v for p, v in leaves.items()}


# ---- the key map ---------------------------------------------------------------------
def _q(w: torch.Tensor) -> torch.Tensor:
    """(N, D, H) -> (N·H, D)."""
    return w.permute(0, 2, 1).reshape(-1, w.shape[1])


def _gemma_layers(p: dict[str, torch.Tensor], suffix: str, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """One Gemma tower's stacked layers ('' = PaliGemma's LLM, '_1' = the action expert)."""
    a = "PaliGemma/llm/layers/attn/"
    if a + f"qkv_einsum{suffix}/w" in p:
        qkv = p.pop(a + f"qkv_einsum{suffix}/w")  # (L, 3, N, D, H)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    elif a + f"q_einsum{suffix}/w" in p and a + f"kv_einsum{suffix}/w" in p:
        q = p.pop(a + f"q_einsum{suffix}/w")  # (L, N, D, H)
        kv = p.pop(a + f"kv_einsum{suffix}/w")  # (L, 2, K, D, H)
        k, v = kv[:, 0], kv[:, 1]
    else:
        return  # reported as missing tensors by the strict check
    o = p.pop(a + f"attn_vec_einsum{suffix}/w", None)  # (L, N, H, D)
    gating = p.pop(f"PaliGemma/llm/layers/mlp{suffix}/gating_einsum", None)  # (L, 2, D, F)
    linear = p.pop(f"PaliGemma/llm/layers/mlp{suffix}/linear", None)  # (L, F, D)
    norms = {}
    for jax_name, name in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
        base = f"PaliGemma/llm/layers/{jax_name}{suffix}/"
        norms[name] = {part: p.pop(base + jax, None) for part, jax in
                       (("weight", "scale"), ("dense.weight", "Dense_0/kernel"), ("dense.bias", "Dense_0/bias"))}
    for i in range(q.shape[0]):
        lp = f"{prefix}layers.{i}."
        out[lp + "self_attn.q_proj.weight"] = _q(q[i])
        out[lp + "self_attn.k_proj.weight"] = _q(k[i])
        out[lp + "self_attn.v_proj.weight"] = _q(v[i])
        if o is not None:
            out[lp + "self_attn.o_proj.weight"] = o[i].reshape(-1, o.shape[-1]).T
        if gating is not None:
            out[lp + "mlp.gate_proj.weight"] = gating[i, 0].T
            out[lp + "mlp.up_proj.weight"] = gating[i, 1].T
        if linear is not None:
            out[lp + "mlp.down_proj.weight"] = linear[i].T
        for name, parts in norms.items():
            for part, t in parts.items():
                if t is not None:
                    out[f"{lp}{name}.{part}"] = t[i].T if part == "dense.weight" else t[i]
    for part, jax in (("weight", "scale"), ("dense.weight", "Dense_0/kernel"), ("dense.bias", "Dense_0/bias")):
        t = p.pop(f"PaliGemma/llm/final_norm{suffix}/{jax}", None)
        if t is not None:
            out[f"{prefix}norm.{part}"] = t.T if part == "dense.weight" else t


def _siglip(p: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    img = "PaliGemma/img/"
    rules = {
        "embedding/kernel": ("embeddings.patch_embedding.weight", lambda t: t.permute(3, 2, 0, 1)),  # HWIO -> OIHW
        "embedding/bias": ("embeddings.patch_embedding.bias", None),
        "pos_embedding": ("embeddings.position_embedding.weight", lambda t: t.reshape(-1, t.shape[-1])),
        "Transformer/encoder_norm/scale": ("post_layernorm.weight", None),
        "Transformer/encoder_norm/bias": ("post_layernorm.bias", None),
    }
    for jax, (name, fn) in rules.items():
        if img + jax in p:
            t = p.pop(img + jax)
            out[VT + name] = fn(t) if fn else t
    blk = img + "Transformer/encoderblock/"
    per_layer = {
        "LayerNorm_0/scale": ("layer_norm1.weight", None), "LayerNorm_0/bias": ("layer_norm1.bias", None),
        "LayerNorm_1/scale": ("layer_norm2.weight", None), "LayerNorm_1/bias": ("layer_norm2.bias", None),
        "MlpBlock_0/Dense_0/kernel": ("mlp.fc1.weight", lambda t: t.T), "MlpBlock_0/Dense_0/bias": ("mlp.fc1.bias", None),
        "MlpBlock_0/Dense_1/kernel": ("mlp.fc2.weight", lambda t: t.T), "MlpBlock_0/Dense_1/bias": ("mlp.fc2.bias", None),
        "MultiHeadDotProductAttention_0/out/kernel": ("self_attn.out_proj.weight",
                                                       lambda t: t.reshape(-1, t.shape[-1]).T),  # (nh, hd, W)
        "MultiHeadDotProductAttention_0/out/bias": ("self_attn.out_proj.bias", None),
    }
    for jax, name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        per_layer[f"MultiHeadDotProductAttention_0/{jax}/kernel"] = (
            f"self_attn.{name}.weight", lambda t: t.reshape(t.shape[0], -1).T)  # (W, nh, hd) -> (nh·hd, W)
        per_layer[f"MultiHeadDotProductAttention_0/{jax}/bias"] = (f"self_attn.{name}.bias", lambda t: t.reshape(-1))
    for jax, (name, fn) in per_layer.items():
        if blk + jax not in p:
            continue
        stacked = p.pop(blk + jax)
        for i in range(stacked.shape[0]):
            out[f"{VT}encoder.layers.{i}.{name}"] = fn(stacked[i]) if fn else stacked[i]
    for jax, name, fn in (("head/kernel", "multi_modal_projector.linear.weight", lambda t: t.T),
                          ("head/bias", "multi_modal_projector.linear.bias", None)):
        if img + jax in p:
            t = p.pop(img + jax)
            out[PG + name] = fn(t) if fn else t


def jax_to_pirl(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openpi JAX names ("PaliGemma/llm/...") -> pirl names. Leaves the map does not know
    keep their JAX name, so the strict check lists them as unexpected (e.g. LoRA factors)."""
    p = dict(flat)
    out: dict[str, torch.Tensor] = {}
    emb = p.pop("PaliGemma/llm/embedder/input_embedding", None)
    if emb is not None:
        out[LM + "embed_tokens.weight"] = emb
    _gemma_layers(p, "", LM, out)
    _gemma_layers(p, "_1", EX, out)
    _siglip(p, out)
    for name in LINEARS:
        for part, fn in (("kernel", lambda t: t.T), ("bias", None)):
            key = f"{name}/{part}"
            if key in p:
                t = p.pop(key)
                out[f"{name}.{'weight' if part == 'kernel' else 'bias'}"] = fn(t) if fn else t
    out.update(p)  # unmapped: reported by name
    return {k: v.contiguous() for k, v in out.items()}

