"""π0 / π0.5 parity against a second implementation written from openpi's published JAX
equations (pi0.py, gemma.py, siglip.py), in float64, without a KV cache.

lerobot's independent PyTorch port could not be used here: lerobot 0.4.x (the port with
π0.5) requires torch<2.8, and lerobot 0.3.2 (π0 only) needs transformers 4.51 and
torchvision, whose PyPI build for torch 2.13 is CUDA-only (see docs/benchmarks.md).

Tolerances (lerobot's own parity tests): velocity rtol 1e-4, ODE-sampled actions 5e-3.
"""
import math

import torch
import torch.nn.functional as F

from pirl.models.pi0.configuration import preset
from pirl.models.pi0.modeling import Pi0Model

PG = "paligemma_with_expert.paligemma.model."
EX = "paligemma_with_expert.gemma_expert.model."


def _randomize(model, gen, scale=0.15):
    """Random weights of a meaningful size everywhere (HF's 0.02 init hides bugs)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _inputs(cfg, B, gen):
    S, NC, L = cfg.vision.image_size, len(cfg.image_keys), cfg.max_token_len
    images = torch.rand(B, NC, 3, S, S, generator=gen) * 2 - 1
    image_masks = torch.tensor([[True, True, False], [True, False, True], [True, True, True]])[:B]
    tokens = torch.randint(1, cfg.paligemma.vocab_size, (B, L), generator=gen)
    lengths = torch.tensor([L, 5, 9])[:B]
    token_masks = torch.arange(L)[None] < lengths[:, None]
    state = torch.randn(B, cfg.action_dim, generator=gen)
    return images, image_masks, tokens, token_masks, state


# ---- the reference, float64, from the JAX equations ----------------------------------
def ref_layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def ref_siglip(sd, cfg, img):
    """img (N, 3, S, S) -> (N, T, Wv): patches, learned positions, pre-LN encoder, final LN, projector."""
    v = cfg.vision
    pre = PG + "vision_tower."
    p = v.patch_size
    N = img.shape[0]
    patches = img.unfold(2, p, p).unfold(3, p, p)  # (N, 3, g, g, p, p)
    g = patches.shape[2]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(N, g * g, 3 * p * p)
    w = sd[pre + "embeddings.patch_embedding.weight"].reshape(v.hidden_size, -1)
    x = patches @ w.T + sd[pre + "embeddings.patch_embedding.bias"] + sd[pre + "embeddings.position_embedding.weight"]
    nh, hd = v.num_heads, v.hidden_size // v.num_heads
    for i in range(v.num_layers):
        q = f"{pre}encoder.layers.{i}."
        h = ref_layernorm(x, sd[q + "layer_norm1.weight"], sd[q + "layer_norm1.bias"])
        proj = {n: (h @ sd[f"{q}self_attn.{n}_proj.weight"].T + sd[f"{q}self_attn.{n}_proj.bias"]).reshape(N, -1, nh, hd)
                for n in "qkv"}
        a = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", proj["q"], proj["k"]) / math.sqrt(hd), -1)
        o = torch.einsum("nhqk,nkhd->nqhd", a, proj["v"]).reshape(N, -1, v.hidden_size)
        x = x + o @ sd[q + "self_attn.out_proj.weight"].T + sd[q + "self_attn.out_proj.bias"]
        h = ref_layernorm(x, sd[q + "layer_norm2.weight"], sd[q + "layer_norm2.bias"])
        h = gelu_tanh(h @ sd[q + "mlp.fc1.weight"].T + sd[q + "mlp.fc1.bias"])
        x = x + h @ sd[q + "mlp.fc2.weight"].T + sd[q + "mlp.fc2.bias"]
    x = ref_layernorm(x, sd[pre + "post_layernorm.weight"], sd[pre + "post_layernorm.bias"])
    return x @ sd[PG + "multi_modal_projector.linear.weight"].T + sd[PG + "multi_modal_projector.linear.bias"]


def ref_rmsnorm(x, scale):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * (1 + scale)


def ref_norm(sd, name, x, cond):
    """gemma.RMSNorm: plain (1 + scale), or adaptive (scale, shift, gate from Dense(cond))."""
    if name + ".dense.weight" in sd:
        mod = cond @ sd[name + ".dense.weight"].T + sd[name + ".dense.bias"]
        scale, shift, gate = mod[:, None].chunk(3, -1)
        normed = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6)
        return normed * (1 + scale) + shift, gate
    return ref_rmsnorm(x, sd[name + ".weight"]), None


def ref_rope(x, pos, theta=10_000.0):
    """gemma._apply_rope: x (B, L, h, hd), pos (B, L)."""
    hd = x.shape[-1]
    timescale = theta ** (2 * torch.arange(hd // 2, dtype=torch.float64) / hd)
    rad = pos[..., None, None].double() / timescale  # (B, L, 1, hd/2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * torch.cos(rad) - x2 * torch.sin(rad), x2 * torch.cos(rad) + x1 * torch.sin(rad)], -1)


def ref_time_embedding(t, dim):
    fraction = torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    x = t[:, None].double() * (1.0 / period * 2 * math.pi)[None]
    return torch.cat([torch.sin(x), torch.cos(x)], -1)


def ref_velocity(sd, cfg, images, image_masks, tokens, token_masks, state, x_t, t):
    """Full-sequence pass (no cache): v (B, H, D), float64."""
    B, NC = images.shape[:2]
    Wv, We = cfg.paligemma.width, cfg.expert.width
    img = ref_siglip(sd, cfg, images.flatten(0, 1).double()).reshape(B, -1, Wv)
    T = img.shape[1] // NC
    lang = sd[PG + "language_model.embed_tokens.weight"][tokens] * math.sqrt(Wv)
    prefix = torch.cat([img, lang], 1)
    valid = torch.cat([image_masks.repeat_interleave(T, 1), token_masks], 1)
    # Blocks: 0 = prefix, 1 = state (π0), 2 = actions; query i sees key j iff block(j) <= block(i).
    temb = ref_time_embedding(t, We)
    act = x_t.double() @ sd["action_in_proj.weight"].T + sd["action_in_proj.bias"]
    if cfg.pi05:
        h = F.silu(temb @ sd["time_mlp_in.weight"].T + sd["time_mlp_in.bias"])
        cond = F.silu(h @ sd["time_mlp_out.weight"].T + sd["time_mlp_out.bias"])
        suffix, blocks_s = act, [2] * cfg.action_horizon
    else:
        cond = None
        h = torch.cat([act, temb[:, None].expand_as(act)], -1)
        h = F.silu(h @ sd["action_time_mlp_in.weight"].T + sd["action_time_mlp_in.bias"])
        act = h @ sd["action_time_mlp_out.weight"].T + sd["action_time_mlp_out.bias"]
        st = state.double() @ sd["state_proj.weight"].T + sd["state_proj.bias"]
        suffix, blocks_s = torch.cat([st[:, None], act], 1), [1] + [2] * cfg.action_horizon
    P, S = prefix.shape[1], suffix.shape[1]
    blocks = torch.tensor([0] * P + blocks_s)
    valid = torch.cat([valid, torch.ones(B, S, dtype=torch.bool)], 1)
    allowed = (blocks[None, None, :] <= blocks[None, :, None]) & valid[:, None, :] & valid[:, :, None]
    pos = torch.cumsum(valid.long(), 1) - 1
    xs = [prefix, suffix]
    names = [PG + "language_model.", EX]
    conds = [None, cond]
    hd, nh = cfg.paligemma.head_dim, cfg.paligemma.num_heads
    for li in range(cfg.paligemma.depth):
        qs, ks, vs, gates = [], [], [], []
        for x, n, c in zip(xs, names, conds):
            pre = f"{n}layers.{li}."
            h, gate = ref_norm(sd, pre + "input_layernorm", x, c)
            qs.append((h @ sd[pre + "self_attn.q_proj.weight"].T).reshape(B, x.shape[1], nh, hd))
            ks.append((h @ sd[pre + "self_attn.k_proj.weight"].T).reshape(B, x.shape[1], -1, hd))
            vs.append((h @ sd[pre + "self_attn.v_proj.weight"].T).reshape(B, x.shape[1], -1, hd))
            gates.append(gate)
        q, k, v = ref_rope(torch.cat(qs, 1), pos), ref_rope(torch.cat(ks, 1), pos), torch.cat(vs, 1)
        k = k.expand(-1, -1, nh, -1) if k.shape[2] == 1 else k.repeat_interleave(nh // k.shape[2], 2)
        v = v.expand(-1, -1, nh, -1) if v.shape[2] == 1 else v.repeat_interleave(nh // v.shape[2], 2)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        probs = torch.nan_to_num(torch.softmax(logits, -1))  # padded queries: no keys, zero rows
        o = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, P + S, nh * hd)
        outs = []
        for j, (x, n, c) in enumerate(zip(xs, names, conds)):
            pre = f"{n}layers.{li}."
            seg = o[:, :P] if j == 0 else o[:, P:]
            y = seg @ sd[pre + "self_attn.o_proj.weight"].T
            x = x + (y if gates[j] is None else y * gates[j])
            h, gate = ref_norm(sd, pre + "post_attention_layernorm", x, c)
            gated = gelu_tanh(h @ sd[pre + "mlp.gate_proj.weight"].T) * (h @ sd[pre + "mlp.up_proj.weight"].T)
            y = gated @ sd[pre + "mlp.down_proj.weight"].T
            outs.append(x + (y if gate is None else y * gate))
        xs = outs
    out, _ = ref_norm(sd, EX + "norm", xs[1], cond)
    return out[:, -cfg.action_horizon:] @ sd["action_out_proj.weight"].T + sd["action_out_proj.bias"]


# ---- tests ---------------------------------------------------------------------------
def _setup(name, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = preset(name)
    model = Pi0Model(cfg).eval()
    _randomize(model, gen)
    sd = {k: v.double() for k, v in model.state_dict().items()}
    return cfg, model, sd, gen


def _check_velocity(name, seed):
    cfg, model, sd, gen = _setup(name, seed)
    inputs = _inputs(cfg, 3, gen)
    x_t = torch.randn(3, cfg.action_horizon, cfg.action_dim, generator=gen)
    t = torch.tensor([1.0, 0.55, 0.1])
    with torch.no_grad():
        po, kv, pad = model.prefix_forward(*inputs[:4])
        v = model.velocity(model.suffix_forward(kv, pad, inputs[4], x_t, t))
        _, so, _ = model.joint_forward(*inputs, x_t, t)
    ref = ref_velocity(sd, cfg, *inputs, x_t, t)
    assert ref.abs().mean() > 0.1  # a real signal, not a near-zero output
    torch.testing.assert_close(v.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(model.velocity(so), v, rtol=1e-5, atol=1e-5)  # cache == no cache


def test_pi0_velocity_matches_jax_reference():
    _check_velocity("pi0_tiny", 0)


def test_pi05_velocity_matches_jax_reference():
    _check_velocity("pi05_tiny", 1)


def _check_ode(name, seed):
    cfg, model, sd, gen = _setup(name, seed)
    inputs = _inputs(cfg, 3, gen)
    noise = torch.randn(3, cfg.action_horizon, cfg.action_dim, generator=gen)
    K = 5
    with torch.no_grad():
        _, kv, pad = model.prefix_forward(*inputs[:4])
        x, xr = noise.clone(), noise.double()
        for k in range(K):  # openpi sample_actions: dt = -1/K from t = 1
            t = torch.full((3,), 1.0 - k / K)
            x = x - model.velocity(model.suffix_forward(kv, pad, inputs[4], x, t)) / K
            xr = xr - ref_velocity(sd, cfg, *inputs, xr, t) / K
    assert (xr - noise.double()).abs().mean() > 0.1
    torch.testing.assert_close(x.double(), xr, rtol=0, atol=5e-3)


def test_pi0_ode_sampling_matches_reference():
    _check_ode("pi0_tiny", 2)


def test_pi05_ode_sampling_matches_reference():
    _check_ode("pi05_tiny", 3)
