"""π0 / π0.5: a PaliGemma prefix and a Gemma action expert with joint attention.

Built on transformers' PaliGemma (SigLIP tower, linear projector, Gemma LM) and Gemma
decoder layers; the layer-by-layer joint pass is ours because neither HF model knows
the other. Module names follow openpi's PyTorch port so checkpoints map one to one.

Conventions:
- Flow time t=1 is noise, t=0 the action (openpi's convention, opposite of the paper).
- Sequence = [images | language] (prefix, VLM weights) + [state | actions] (suffix,
  expert weights; π0.5 has no state token). Block mask from cumulative "ar" flags
  (big_vision): the prefix attends bidirectionally within itself, the state token sees the
  prefix and itself, the action block sees everything and itself; nothing earlier sees
  anything later. Padding tokens and masked cameras are excluded as keys.
- RoPE positions are global: cumsum of the valid-token mask − 1 over the whole sequence.
- Attention logits and softmax in fp32 with an additive float mask (MASK_VALUE).
- RMSNorm scales by (1 + w); the expert's norms in π0.5 are adaptive (scale, shift, gate
  from the time embedding) and their gate multiplies the residual branch.

Rollout caches the prefix's per-layer keys/values once (`prefix_forward`); each denoise
step runs only the expert against that cache (`suffix_forward`). The cache is a tuple of
(k, v) per layer, each (B, KV, P, hd), and is never written after the prefix pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from transformers.models.gemma.modeling_gemma import GemmaModel
from transformers.models.paligemma.modeling_paligemma import PaliGemmaForConditionalGeneration

from pirl.flow.matching import flow_matching_loss, sample_times
from pirl.models.pi0.configuration import GemmaSpec, Pi0Config

# Additive mask for disallowed keys: openpi's value (close to -finfo(fp32).max so a fully
# masked row still softmaxes to finite numbers instead of NaN).
MASK_VALUE = -2.3819763e38
# Sinusoidal time embedding periods (openpi): sensitive over t in [0, 1].
TIME_MIN_PERIOD, TIME_MAX_PERIOD = 4e-3, 4.0

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (k, v), each (B, KV, P, hd)


def gemma_hf_config(spec: GemmaSpec) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.width, intermediate_size=spec.mlp_dim,
        num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        hidden_act="gelu_pytorch_tanh", rms_norm_eps=spec.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        pad_token_id=0,
    )


def paligemma_hf_config(cfg: Pi0Config) -> PaliGemmaConfig:
    v = cfg.vision
    vision = SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, patch_size=v.patch_size, image_size=v.image_size,
        num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
        projection_dim=cfg.paligemma.width,  # type: ignore[call-arg]  # a config attribute PaliGemma's projector reads
    )
    return PaliGemmaConfig(
        vision_config=vision, text_config=gemma_hf_config(cfg.paligemma),
        image_token_index=cfg.paligemma.vocab_size - 1, vocab_size=cfg.paligemma.vocab_size,
        projection_dim=cfg.paligemma.width, hidden_size=cfg.paligemma.width,
    )


class AdaRMSNorm(nn.Module):
    """Gemma RMSNorm conditioned on the time embedding (π0.5's adaRMS):
    y = norm(x)·(1 + scale) + shift, and a gate for the residual branch, all from
    `dense(cond)`. Zero-initialised weight: starts as a plain unit-scale norm."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim, bias=True)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        mod = self.dense(cond.to(self.dense.weight.dtype)).float()[:, None, :]  # (B, 1, 3W)
        scale, shift, gate = mod.chunk(3, dim=-1)
        return (normed * (1.0 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def apply_norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None):
    """(normed, gate or None) for either a plain Gemma RMSNorm or an AdaRMSNorm."""
    if isinstance(norm, AdaRMSNorm):
        if cond is None:
            raise ValueError("π0.5 expert norms need the time conditioning (adarms cond)")
        return norm(x, cond)
    return norm(x), None


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, L) int -> cos, sin (B, 1, L, hd) fp32, HF rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, L, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, L, hd); rotation in fp32, result in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
              mask: torch.Tensor) -> torch.Tensor:
    """One softmax over several key/value segments (e.g. the cached prefix and the new
    tokens) without concatenating them, so the cache is never copied.

    q (B, h, Lq, hd); keys/values [(B, KV, Lk_i, hd)]; mask (B, 1, Lq, ΣLk_i) additive fp32
    -> (B, Lq, h·hd). Query heads are grouped over the KV heads (GQA / MQA) instead of
    repeating K and V. Logits and softmax in fp32 whatever the weights' dtype."""
    B, h, Lq, hd = q.shape
    kvh = keys[0].shape[1]
    g = h // kvh
    qg = q.float().reshape(B, kvh, g * Lq, hd)  # row index = group·Lq + query
    logits = torch.cat([torch.matmul(qg, k.float().transpose(-1, -2)) for k in keys], dim=-1)
    logits = logits * (hd ** -0.5) + mask.repeat(1, 1, g, 1)
    probs = torch.softmax(logits, dim=-1).to(values[0].dtype)
    out = probs.new_zeros(B, kvh, g * Lq, hd)  # 0 + x is exact: the sum over key blocks as before
    start = 0
    for v in values:
        out = out + torch.matmul(probs[..., start:start + v.shape[2]], v)
        start += v.shape[2]
    return out.reshape(B, h, Lq, hd).transpose(1, 2).reshape(B, Lq, h * hd)


def make_att_2d_masks(pad: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """pad (B, N) bool valid tokens, ar (B, N) int block starts -> (B, N, N) bool: token i
    may attend j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid (big_vision)."""
    cum = torch.cumsum(ar.long(), dim=1)
    return (cum[:, None, :] <= cum[:, :, None]) & pad[:, None, :] & pad[:, :, None]


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """(B, Lq, Lk) bool -> (B, 1, Lq, Lk) fp32 with 0 where allowed, MASK_VALUE elsewhere."""
    zero = torch.zeros((), dtype=torch.float32, device=allowed.device)
    return torch.where(allowed[:, None], zero, torch.tensor(MASK_VALUE, device=allowed.device))


def sinusoidal_time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (B,) -> (B, dim) [sin | cos] with periods geometric in [4e-3, 4] (float64 math)."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    x = (2 * math.pi / period)[None, :] * t.double()[:, None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1).float()


class ExpertLM(nn.Module):
    """The action expert: Gemma decoder layers and final norm, no token embedding or LM
    head (the expert only ever receives embeddings). Named like openpi's
    `gemma_expert.model.*`. With adaRMS (π0.5) every norm is an AdaRMSNorm."""

    def __init__(self, spec: GemmaSpec, adarms: bool):
        super().__init__()
        model = GemmaModel(gemma_hf_config(spec))
        model.embed_tokens = None  # type: ignore[assignment]  # the expert only receives embeddings
        if adarms:
            for layer in model.layers:
                layer.input_layernorm = AdaRMSNorm(spec.width, spec.width, spec.rms_eps)
                layer.post_attention_layernorm = AdaRMSNorm(spec.width, spec.width, spec.rms_eps)
            model.norm = AdaRMSNorm(spec.width, spec.width, spec.rms_eps)  # type: ignore[assignment]
        self.model = model


class PaliGemmaWithExpert(nn.Module):
    """Both towers and the joint layer-by-layer pass."""

    def __init__(self, cfg: Pi0Config):
        super().__init__()
        self.cfg = cfg
        self.paligemma = PaliGemmaForConditionalGeneration(paligemma_hf_config(cfg))
        self.gemma_expert = ExpertLM(cfg.expert, adarms=cfg.pi05)
        self.gradient_checkpointing = False

    @property
    def language_model(self) -> GemmaModel:
        return self.paligemma.model.language_model

    def towers(self) -> tuple[GemmaModel, GemmaModel]:
        return self.language_model, self.gemma_expert.model

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) in [-1, 1] -> (N, T_img, W_vlm). Not scaled: only text
        embeddings carry the sqrt(width) factor (openpi / big_vision)."""
        pm = self.paligemma.model
        feats = pm.vision_tower(pixel_values=pixels.to(pm.multi_modal_projector.linear.weight.dtype)).last_hidden_state
        return pm.multi_modal_projector(feats)

    def embed_language(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, L, W_vlm), scaled by sqrt(width) like Gemma's embedder."""
        weight = self.language_model.embed_tokens.weight
        return F.embedding(tokens, weight) * math.sqrt(weight.shape[1])

    def forward(
        self,
        hiddens: list[torch.Tensor | None],  # [prefix (B, P, Wv) | None, suffix (B, S, We) | None]
        mask: torch.Tensor,  # (B, 1, Lq, Lk) additive fp32; Lk includes the cache
        positions: torch.Tensor,  # (B, Lq) global RoPE positions of the query tokens
        cond: torch.Tensor | None = None,  # (B, We) adaRMS conditioning of the expert (π0.5)
        past_kv: KVCache | None = None,  # cached prefix (read only)
        return_kv: bool = False,
    ) -> tuple[list[torch.Tensor | None], KVCache | None]:
        towers = self.towers()
        spec = self.cfg.paligemma
        cos, sin = rope_cos_sin(positions, spec.head_dim, spec.rope_theta)
        conds = [None, cond]
        kv_out = []
        for li in range(spec.depth):
            layers = [t.layers[li] if h is not None else None for t, h in zip(towers, hiddens)]
            past = past_kv[li] if past_kv is not None else None
            fn = _JointLayer(layers, conds, spec)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hiddens, kv = checkpoint(fn, hiddens, mask, cos, sin, past, use_reentrant=False)
            else:
                hiddens, kv = fn(hiddens, mask, cos, sin, past)
            kv_out.append(kv)
        outs = []
        for tower, h, c in zip(towers, hiddens, conds):
            outs.append(None if h is None else apply_norm(tower.norm, h, c)[0])
        return outs, (tuple(kv_out) if return_kv else None)


class _JointLayer:
    """One decoder layer of both experts: own norms and projections, one softmax over the
    concatenated sequence (plus the cached prefix keys/values)."""

    def __init__(self, layers, conds, spec: GemmaSpec):
        self.layers, self.conds, self.spec = layers, conds, spec

    def __call__(self, hiddens, mask, cos, sin, past):
        hd = self.spec.head_dim
        qs, ks, vs, gates, lengths = [], [], [], [], []
        for layer, h, c in zip(self.layers, hiddens, self.conds):
            if h is None:
                continue
            B, L, _ = h.shape
            x, gate = apply_norm(layer.input_layernorm, h, c)
            attn = layer.self_attn
            qs.append(attn.q_proj(x).view(B, L, -1, hd).transpose(1, 2))
            ks.append(attn.k_proj(x).view(B, L, -1, hd).transpose(1, 2))
            vs.append(attn.v_proj(x).view(B, L, -1, hd).transpose(1, 2))
            gates.append(gate)
            lengths.append(L)
        dtype = qs[0].dtype
        q = apply_rope(torch.cat([t.to(dtype) for t in qs], dim=2), cos, sin)
        k = apply_rope(torch.cat([t.to(dtype) for t in ks], dim=2), cos, sin)
        v = torch.cat([t.to(dtype) for t in vs], dim=2)
        kv = (k, v)
        keys, values = ([past[0].to(dtype), k], [past[1].to(dtype), v]) if past is not None else ([k], [v])
        att = attention(q, keys, values, mask)  # (B, Lq, h·hd)
        outs, start, gi = [], 0, 0
        for layer, h, c in zip(self.layers, hiddens, self.conds):
            if h is None:
                outs.append(None)
                continue
            end = start + lengths[gi]
            o = layer.self_attn.o_proj(att[:, start:end].to(layer.self_attn.o_proj.weight.dtype))
            h = gated_residual(h, o, gates[gi])
            x, gate = apply_norm(layer.post_attention_layernorm, h, c)
            h = gated_residual(h, layer.mlp(x), gate)
            outs.append(h)
            start, gi = end, gi + 1
        return outs, kv


class ValueHead(nn.Module):
    """Critic MLP: pooled features (B, W) -> (B,)."""

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or min(512, max(32, width))
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden // 2),
                                 nn.GELU(), nn.Linear(hidden // 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1).float()


class NoiseHead(nn.Module):
    """Flow-noise: per-element std (B, H, D) from the expert's action outputs, squashed by a
    sigmoid into [low, high] (`openpi.noise_logvar_range`)."""

    def __init__(self, width: int, action_dim: int, std_range: tuple[float, float]):
        super().__init__()
        self.proj = nn.Linear(width, action_dim)
        self.low, self.high = float(std_range[0]), float(std_range[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.proj(h).float())


class Pi0Model(nn.Module):
    """π0 / π0.5 network: embeddings, joint transformer, action projection, RL heads."""

    def __init__(self, cfg: Pi0Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
        w, d = cfg.expert.width, cfg.action_dim
        self.action_in_proj = nn.Linear(d, w)
        self.action_out_proj = nn.Linear(w, d)
        if cfg.pi05:
            self.time_mlp_in = nn.Linear(w, w)
            self.time_mlp_out = nn.Linear(w, w)
        else:
            self.state_proj = nn.Linear(d, w)
            self.action_time_mlp_in = nn.Linear(2 * w, w)
            self.action_time_mlp_out = nn.Linear(w, w)
        if cfg.add_value_head:
            self.value_head = ValueHead(cfg.paligemma.width if cfg.value_after_vlm else w)
        if cfg.add_noise_head:
            self.noise_head = NoiseHead(w, d, cfg.noise_std_range)

    # ---- embeddings -------------------------------------------------------------------
    def embed_prefix(self, images: torch.Tensor, image_masks: torch.Tensor, tokens: torch.Tensor,
                     token_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, NC, 3, S, S), image_masks (B, NC) bool, tokens/token_masks (B, L) ->
        embs (B, P, Wv), pad (B, P) bool, ar (B, P) int (all 0: one bidirectional block)."""
        B, NC = images.shape[:2]
        img = self.paligemma_with_expert.embed_image(images.flatten(0, 1))  # (B·NC, T, Wv)
        T = img.shape[1]
        img = img.reshape(B, NC * T, -1)
        img_pad = image_masks[:, :, None].expand(B, NC, T).reshape(B, NC * T)
        lang = self.paligemma_with_expert.embed_language(tokens).to(img.dtype)
        embs = torch.cat([img, lang], dim=1)
        pad = torch.cat([img_pad, token_masks.bool()], dim=1)
        return embs, pad, torch.zeros_like(pad, dtype=torch.long)

    def embed_suffix(self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """state (B, D), x_t (B, H, D), t (B,) -> embs (B, S, We), pad (B, S), ar (B, S),
        adaRMS cond (B, We) or None. π0: [state | actions], time mixed into every action
        token by an MLP; π0.5: [actions], time drives the expert's adaptive norms."""
        B, H, _ = x_t.shape
        dtype = self.action_in_proj.weight.dtype
        w = self.cfg.expert.width
        temb = sinusoidal_time_embedding(t, w).to(dtype)
        act = self.action_in_proj(x_t.to(dtype))
        device = x_t.device
        if self.cfg.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
            embs = act
            ar = torch.zeros(B, H, dtype=torch.long, device=device)
            ar[:, 0] = 1
        else:
            cond = None
            mixed = torch.cat([act, temb[:, None, :].expand(B, H, w)], dim=-1)
            act = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(mixed)))
            st = self.state_proj(state.to(dtype))[:, None, :]
            embs = torch.cat([st, act], dim=1)
            ar = torch.zeros(B, H + 1, dtype=torch.long, device=device)
            ar[:, :2] = 1  # state starts a block; the actions start the next
        pad = torch.ones(embs.shape[:2], dtype=torch.bool, device=device)
        return embs, pad, ar, cond

    # ---- passes -----------------------------------------------------------------------
    def prefix_forward(self, images, image_masks, tokens, token_masks, return_kv: bool = True):
        """The VLM over [images | language] once. Returns prefix outputs (B, P, Wv), the
        read-only KV cache and the prefix pad mask (B, P)."""
        embs, pad, ar = self.embed_prefix(images, image_masks, tokens, token_masks)
        mask = additive_mask(make_att_2d_masks(pad, ar))
        positions = torch.cumsum(pad.long(), dim=1) - 1
        (out, _), kv = self.paligemma_with_expert([embs, None], mask, positions, return_kv=return_kv)
        return out, kv, pad

    def suffix_forward(self, kv: KVCache, prefix_pad: torch.Tensor, state: torch.Tensor,
                       x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Expert only, against the cached prefix -> suffix outputs (B, S, We)."""
        embs, pad, ar, cond = self.embed_suffix(state, x_t, t)
        B, S = pad.shape
        P = prefix_pad.shape[1]
        to_prefix = prefix_pad[:, None, :].expand(B, S, P)
        mask = additive_mask(torch.cat([to_prefix, make_att_2d_masks(pad, ar)], dim=2))
        positions = prefix_pad.long().sum(dim=1, keepdim=True) + torch.cumsum(pad.long(), dim=1) - 1
        (_, out), _ = self.paligemma_with_expert([None, embs], mask, positions, cond=cond, past_kv=kv)
        return out

    def joint_forward(self, images, image_masks, tokens, token_masks, state, x_t, t):
        """Prefix and suffix in one pass, no cache (SFT, and the recompute baseline).
        Returns prefix outputs (B, P, Wv), suffix outputs (B, S, We), prefix pad (B, P)."""
        pe, ppad, par = self.embed_prefix(images, image_masks, tokens, token_masks)
        se, spad, sar, cond = self.embed_suffix(state, x_t, t)
        pad = torch.cat([ppad, spad], dim=1)
        mask = additive_mask(make_att_2d_masks(pad, torch.cat([par, sar], dim=1)))
        positions = torch.cumsum(pad.long(), dim=1) - 1
        (po, so), _ = self.paligemma_with_expert([pe, se.to(pe.dtype)], mask, positions, cond=cond)
        return po, so, ppad

    # ---- heads ------------------------------------------------------------------------
    def action_tokens(self, suffix_out: torch.Tensor) -> torch.Tensor:
        """(B, S, We) -> the H action-token outputs (B, H, We) (the state token dropped)."""
        return suffix_out[:, -self.cfg.action_horizon:]

    def velocity(self, suffix_out: torch.Tensor) -> torch.Tensor:
        """(B, S, We) -> v (B, H, D) fp32."""
        h = self.action_tokens(suffix_out)
        return self.action_out_proj(h.to(self.action_out_proj.weight.dtype)).float()

    def noise_std(self, suffix_out: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.add_noise_head:
            return None
        return self.noise_head(self.action_tokens(suffix_out).to(self.noise_head.proj.weight.dtype))

    def value_from_prefix(self, prefix_out: torch.Tensor, prefix_pad: torch.Tensor) -> torch.Tensor:
        """Critic after the VLM: mean over valid prefix outputs -> (B,)."""
        m = prefix_pad.to(prefix_out.dtype)[..., None]
        pooled = (prefix_out * m).sum(1) / m.sum(1).clamp(min=1)
        return self._value(pooled)

    def value_from_suffix(self, suffix_out: torch.Tensor, action_chunk: int) -> torch.Tensor:
        """Critic after the expert: mean over the executed action tokens -> (B,)."""
        return self._value(self.action_tokens(suffix_out)[:, :action_chunk].mean(1))

    def _value(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cfg.detach_critic_input:
            feats = feats.detach()
        return self.value_head(feats.to(next(self.value_head.parameters()).dtype))

    # ---- supervised flow matching -----------------------------------------------------
    def sft_loss(self, images, image_masks, tokens, token_masks, state, actions, mask=None,
                 noise: torch.Tensor | None = None, time: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        """Supervised flow matching (pirl.flow.matching: t ~ Beta(1.5, 1)·0.999 + 0.001 as
        openpi, target u = noise − action) with prefix and suffix in one pass. actions
        (B, H, D) model units; mask (B|1, H, D) bool marks the demonstrated elements (None:
        all). Returns (loss, metrics)."""
        B = actions.shape[0]
        if noise is None:
            noise = torch.randn(actions.shape, generator=generator, dtype=torch.float32).to(actions.device)
        if time is None:
            time = sample_times(B, generator, actions.device)

        def velocity_fn(x_t, t):
            _, so, _ = self.joint_forward(images, image_masks, tokens, token_masks, state, x_t, t)
            return self.velocity(so), None

        loss = flow_matching_loss(velocity_fn, actions, noise, time, mask)
        return loss, {"sft/loss": loss.detach()}
