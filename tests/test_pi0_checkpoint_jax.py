"""openpi JAX checkpoints: a tiny orbax `params/` written by orbax itself, loaded by pirl
without JAX; every converted weight checked against openpi's own einsum equations run in JAX."""
import dataclasses
import json

import jax  # dev extras: orbax writes the checkpoints, JAX runs openpi's equations
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from pirl.models.pi0 import checkpoint as ck
from pirl.models.pi0.checkpoint_jax import LINEARS
from pirl.models.pi0.configuration import preset
from pirl.models.pi0.modeling import Pi0Model


def _jax_params(cfg, seed=0, dtype=np.float32):
    """A random openpi Pi0 param tree (nested dicts) with the shapes openpi's modules create."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(dtype)

    v, p, e = cfg.vision, cfg.paligemma, cfg.expert
    L, Lv, N, K, H = p.depth, v.num_layers, p.num_heads, p.num_kv_heads, p.head_dim
    nh, hd, W, Fv = v.num_heads, v.hidden_size // v.num_heads, v.hidden_size, v.intermediate_size
    attn = {"attn_vec_einsum": {"w": r(L, N, H, p.width)}, "attn_vec_einsum_1": {"w": r(L, N, H, e.width)}}
    for s, spec in (("", p), ("_1", e)):
        if K == N:
            attn[f"qkv_einsum{s}"] = {"w": r(L, 3, N, spec.width, H)}
        else:
            attn[f"q_einsum{s}"] = {"w": r(L, N, spec.width, H)}
            attn[f"kv_einsum{s}"] = {"w": r(L, 2, K, spec.width, H)}
    layers = {"attn": attn,
              "mlp": {"gating_einsum": r(L, 2, p.width, p.mlp_dim), "linear": r(L, p.mlp_dim, p.width)},
              "mlp_1": {"gating_einsum": r(L, 2, e.width, e.mlp_dim), "linear": r(L, e.mlp_dim, e.width)},
              "pre_attention_norm": {"scale": r(L, p.width)}, "pre_ffw_norm": {"scale": r(L, p.width)}}
    llm = {"embedder": {"input_embedding": r(p.vocab_size, p.width)}, "layers": layers,
           "final_norm": {"scale": r(p.width)}}
    if cfg.pi05:  # adaRMS: the expert's norms are Dense layers on the time conditioning
        for n in ("pre_attention_norm_1", "pre_ffw_norm_1"):
            layers[n] = {"Dense_0": {"kernel": r(L, e.width, 3 * e.width), "bias": r(L, 3 * e.width)}}
        llm["final_norm_1"] = {"Dense_0": {"kernel": r(e.width, 3 * e.width), "bias": r(3 * e.width)}}
    else:
        layers["pre_attention_norm_1"] = {"scale": r(L, e.width)}
        layers["pre_ffw_norm_1"] = {"scale": r(L, e.width)}
        llm["final_norm_1"] = {"scale": r(e.width)}
    mha = {n: {"kernel": r(Lv, W, nh, hd), "bias": r(Lv, nh, hd)} for n in ("query", "key", "value")}
    mha["out"] = {"kernel": r(Lv, nh, hd, W), "bias": r(Lv, W)}
    img = {"embedding": {"kernel": r(v.patch_size, v.patch_size, 3, W), "bias": r(W)},
           "pos_embedding": r(1, v.num_tokens, W),
           "Transformer": {"encoderblock": {"LayerNorm_0": {"scale": r(Lv, W), "bias": r(Lv, W)},
                                            "LayerNorm_1": {"scale": r(Lv, W), "bias": r(Lv, W)},
                                            "MlpBlock_0": {"Dense_0": {"kernel": r(Lv, W, Fv), "bias": r(Lv, Fv)},
                                                           "Dense_1": {"kernel": r(Lv, Fv, W), "bias": r(Lv, W)}},
                                            "MultiHeadDotProductAttention_0": mha},
                           "encoder_norm": {"scale": r(W), "bias": r(W)}},
           "head": {"kernel": r(W, p.width), "bias": r(p.width)}}
    D, We = cfg.action_dim, e.width
    linears = {"action_in_proj": (D, We), "action_out_proj": (We, D)}
    linears.update({"time_mlp_in": (We, We), "time_mlp_out": (We, We)} if cfg.pi05 else
                   {"state_proj": (D, We), "action_time_mlp_in": (2 * We, We), "action_time_mlp_out": (We, We)})
    tree = {"PaliGemma": {"llm": llm, "img": img}}
    tree.update({k: {"kernel": r(*s), "bias": r(s[1])} for k, s in linears.items()})
    return tree


def _save(directory, tree, nnx_state=False):
    if nnx_state:  # openpi training checkpoints: every leaf under a "value" key (nnx.State)
        tree = jax.tree.map(lambda a: {"value": a}, tree)
    with ocp.PyTreeCheckpointer() as c:
        c.save(directory / "params", {"params": tree})
    return directory


def _model(cfg, seed=1):
    torch.manual_seed(seed)
    return Pi0Model(cfg)


def _np(t):
    return t.detach().double().numpy()


def _check_against_jax_equations(m, tree):
    """Every converted tensor reproduces the JAX computation it came from (openpi's einsums)."""
    g = np.random.default_rng(5)
    cfg = m.cfg
    llm, img = tree["PaliGemma"]["llm"], tree["PaliGemma"]["img"]
    close = lambda a, b: np.testing.assert_allclose(_np(a), np.asarray(b, np.float64), rtol=1e-4, atol=1e-5)  # noqa: E731
    towers = ((m.paligemma_with_expert.language_model, "", cfg.paligemma),
              (m.paligemma_with_expert.gemma_expert.model, "_1", cfg.expert))
    at, N, K, H = llm["layers"]["attn"], cfg.paligemma.num_heads, cfg.paligemma.num_kv_heads, cfg.paligemma.head_dim
    for tower, s, spec in towers:
        for i, layer in enumerate(tower.layers):
            x = g.standard_normal((2, 3, spec.width)).astype(np.float32)
            xt = torch.from_numpy(x)
            if f"qkv_einsum{s}" in at:
                q, k, v = jnp.einsum("BSD,3KDH->3BSKH", x, at[f"qkv_einsum{s}"]["w"][i])
            else:
                q = jnp.einsum("BTD,NDH->BTNH", x, at[f"q_einsum{s}"]["w"][i])
                k, v = jnp.einsum("BSD,2KDH->2BSKH", x, at[f"kv_einsum{s}"]["w"][i])
            close(layer.self_attn.q_proj(xt).view(2, 3, N, H), q)
            close(layer.self_attn.k_proj(xt).view(2, 3, K, H), k)
            close(layer.self_attn.v_proj(xt).view(2, 3, K, H), v)
            enc = g.standard_normal((2, 3, N, H)).astype(np.float32)
            close(layer.self_attn.o_proj(torch.from_numpy(enc).reshape(2, 3, N * H)),
                  jnp.einsum("BTNH,NHD->BTD", enc, at[f"attn_vec_einsum{s}"]["w"][i]))
            mlp = llm["layers"][f"mlp{s}"]
            close(layer.mlp.gate_proj(xt), jnp.dot(x, mlp["gating_einsum"][i][0]))
            close(layer.mlp.up_proj(xt), jnp.dot(x, mlp["gating_einsum"][i][1]))
            h = g.standard_normal((2, 3, spec.mlp_dim)).astype(np.float32)
            close(layer.mlp.down_proj(torch.from_numpy(h)), jnp.dot(h, mlp["linear"][i]))
            for norm, jax_norm in ((layer.input_layernorm, "pre_attention_norm"),
                                   (layer.post_attention_layernorm, "pre_ffw_norm")):
                leaf = llm["layers"][jax_norm + s]
                if "Dense_0" in leaf:
                    c = g.standard_normal((2, spec.width)).astype(np.float32)
                    close(norm.dense(torch.from_numpy(c)),
                          c @ leaf["Dense_0"]["kernel"][i] + leaf["Dense_0"]["bias"][i])
                else:
                    close(norm.weight, leaf["scale"][i])
    close(m.paligemma_with_expert.language_model.embed_tokens.weight, llm["embedder"]["input_embedding"])
    vt = m.paligemma_with_expert.paligemma.model.vision_tower
    P, W = cfg.vision.patch_size, cfg.vision.hidden_size
    pix = g.standard_normal((2, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(pix, img["embedding"]["kernel"], (P, P), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + img["embedding"]["bias"]
    close(vt.embeddings.patch_embedding(torch.from_numpy(pix).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), ref)
    close(vt.embeddings.position_embedding.weight, img["pos_embedding"][0])
    blk = img["Transformer"]["encoderblock"]
    mha = blk["MultiHeadDotProductAttention_0"]
    nh = cfg.vision.num_heads
    for i, layer in enumerate(vt.encoder.layers):
        x = g.standard_normal((2, 3, W)).astype(np.float32)
        xt = torch.from_numpy(x)
        for name, proj in (("query", layer.self_attn.q_proj), ("key", layer.self_attn.k_proj),
                           ("value", layer.self_attn.v_proj)):
            close(proj(xt).view(2, 3, nh, -1), jnp.einsum("BTW,WNH->BTNH", x, mha[name]["kernel"][i])
                  + mha[name]["bias"][i])
        enc = g.standard_normal((2, 3, nh, W // nh)).astype(np.float32)
        close(layer.self_attn.out_proj(torch.from_numpy(enc).reshape(2, 3, W)),
              jnp.einsum("BTNH,NHW->BTW", enc, mha["out"]["kernel"][i]) + mha["out"]["bias"][i])
        mlp = blk["MlpBlock_0"]
        close(layer.mlp.fc1(xt), x @ mlp["Dense_0"]["kernel"][i] + mlp["Dense_0"]["bias"][i])
        close(layer.layer_norm1.weight, blk["LayerNorm_0"]["scale"][i])
        close(layer.layer_norm2.bias, blk["LayerNorm_1"]["bias"][i])
    proj = m.paligemma_with_expert.paligemma.model.multi_modal_projector.linear
    x = g.standard_normal((2, W)).astype(np.float32)
    close(proj(torch.from_numpy(x)), x @ img["head"]["kernel"] + img["head"]["bias"])
    for name in LINEARS:
        if name in tree:
            lin = getattr(m, name)
            x = g.standard_normal((2, lin.in_features)).astype(np.float32)
            close(lin(torch.from_numpy(x)), x @ tree[name]["kernel"] + tree[name]["bias"])


@pytest.mark.parametrize("name,kv_heads", [("pi0_tiny", 1), ("pi05_tiny", 1), ("pi0_tiny", 2)])
def test_jax_checkpoint_loads_with_openpis_equations(tmp_path, name, kv_heads):
    cfg = preset(name)
    if kv_heads > 1:  # num_kv_heads == num_heads: openpi stores one qkv_einsum
        cfg = dataclasses.replace(cfg, paligemma=dataclasses.replace(cfg.paligemma, num_kv_heads=kv_heads),
                                  expert=dataclasses.replace(cfg.expert, num_kv_heads=kv_heads))
    tree = _jax_params(cfg)
    _save(tmp_path, tree)
    assert ck.detect_format(tmp_path) == ck.OPENPI_JAX
    m = _model(cfg)
    with torch.no_grad():
        assert ck.load_weights(m, tmp_path) == ck.OPENPI_JAX
        _check_against_jax_equations(m, tree)


def test_jax_training_checkpoint_bf16_and_params_folder(tmp_path):
    """nnx.State 'value' leaves, bfloat16 arrays, the params/ folder given directly, norm stats
    from the assets/ beside it: the same weights as the plain float checkpoint."""
    cfg = preset("pi0_tiny")
    tree = _jax_params(cfg, seed=3)
    a, b = _model(cfg, 1), _model(cfg, 2)
    ck.load_weights(a, _save(tmp_path / "plain", tree))
    bf16 = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.bfloat16), tree)
    _save(tmp_path / "train", bf16, nnx_state=True)
    stats = {"norm_stats": {k: {"mean": [0.1, 0.2], "std": [1.0, 2.0], "q01": [-1, -2], "q99": [1, 2]}
                            for k in ("state", "actions")}}
    (tmp_path / "train" / "assets" / "libero").mkdir(parents=True)
    (tmp_path / "train" / "assets" / "libero" / "norm_stats.json").write_text(json.dumps(stats))
    assert ck.detect_format(tmp_path / "train" / "params") == ck.OPENPI_JAX
    ck.load_weights(b, tmp_path / "train" / "params")
    for k, v in ck.model_tensors(b).items():
        if not k.startswith("value_head"):
            assert torch.equal(v, ck.model_tensors(a)[k].bfloat16().float()), k
    found = ck.find_norm_stats(tmp_path / "train" / "params", ck.OPENPI_JAX)
    assert found["actions"].std.tolist() == [1.0, 2.0]


def test_bad_jax_checkpoint_lists_every_problem_and_loads_nothing(tmp_path):
    cfg = preset("pi0_tiny")
    tree = _jax_params(cfg)
    del tree["PaliGemma"]["llm"]["final_norm"]  # missing
    tree["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum"]["lora_a"] = np.ones((2, 3), np.float32)  # unexpected
    tree["action_out_proj"]["bias"] = np.ones(9, np.float32)  # wrong shape
    tree["state_proj"]["bias"] = np.ones(cfg.expert.width, np.int32)  # wrong dtype
    _save(tmp_path, tree)
    m = _model(cfg)
    before = {k: v.clone() for k, v in ck.model_tensors(m).items()}
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_weights(m, tmp_path)
    msg = str(err.value)
    for part in ("1 missing: paligemma_with_expert.paligemma.model.language_model.norm.weight",
                 "1 unexpected: PaliGemma/llm/layers/attn/q_einsum/lora_a",
                 "action_out_proj.bias: checkpoint (9,) vs model (8,)", "state_proj.bias: checkpoint torch.int32"):
        assert part in msg, msg
    assert all(torch.equal(v, before[k]) for k, v in ck.model_tensors(m).items())
