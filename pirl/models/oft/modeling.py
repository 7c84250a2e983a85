"""OpenVLA-OFT: fused DINOv2 + SigLIP patches -> MLP projector -> Llama-2, one parallel pass.

Built from transformers' blocks (Dinov2WithRegistersLayer, SiglipEncoderLayer,
LlamaForCausalLM); the towers' embeddings are timm's (OpenVLA's checkpoints are timm
ViTs), so a checkpoint maps one tensor to one tensor (checkpoint.py). Module names follow
the OpenVLA HF checkpoint: `vision_backbone.featurizer`, `vision_backbone.fused_featurizer`,
`projector.fc{1,2,3}`, `language_model.model.*`, `language_model.lm_head`.

Sequence (batch-first, P = patches of every camera [+ 1 proprio token], L = prompt tokens,
A = num_action_chunks x action_dim placeholders):

    [<s>] [patches (P)] [prompt tokens 1..L-1, ending in "▁"] [placeholders (A)] [</s> (official)]

The prompt is left-padded after <s> (`attention_mask` False on pads); pads are never
attended to, and RoPE positions are the cumulative count of valid tokens − 1.
Placeholder embeddings are zero (OFT multiplies the action-token embeddings by 0), so the
parallel pass never sees an action token: the logits that decode action token i are read
at the position before placeholder i (next-token convention: the output at j predicts
token j+1), and are restricted to the last `n_action_bins` ids of the tokenizer's
vocabulary. The critic reads the hidden state at the same first position (the final "▁").
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2WithRegistersConfig, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig
from transformers.cache_utils import DynamicCache
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersLayer
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipMultiheadAttentionPoolingHead

from pirl.models.heads import MLPValueHead
from pirl.models.oft.configuration import (
    ACTION_LEVEL, CAUSAL, DINOV2, OFFICIAL, STOP_ID, LlamaSpec, OFTConfig, ViTSpec,
)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def dinov2_hf_config(spec: ViTSpec, attn: str) -> Dinov2WithRegistersConfig:
    if spec.mlp_dim % spec.hidden_size:
        raise ValueError(f"DINOv2 tower: mlp_dim {spec.mlp_dim} must be a multiple of hidden_size {spec.hidden_size}")
    cfg = Dinov2WithRegistersConfig(
        hidden_size=spec.hidden_size, num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
        mlp_ratio=spec.mlp_dim // spec.hidden_size, hidden_act="gelu", layer_norm_eps=spec.norm_eps,
        layerscale_value=spec.layerscale_init, qkv_bias=True, patch_size=spec.patch_size,
        image_size=spec.image_size, num_register_tokens=spec.num_registers,
    )
    cfg._attn_implementation = attn
    return cfg


def siglip_hf_config(spec: ViTSpec, attn: str) -> SiglipVisionConfig:
    # timm's SigLIP (what OpenVLA trained) uses exact GELU, not SigLIP's tanh approximation.
    cfg = SiglipVisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.mlp_dim, num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads, patch_size=spec.patch_size, image_size=spec.image_size,
        hidden_act="gelu", layer_norm_eps=spec.norm_eps,
    )
    cfg._attn_implementation = attn
    return cfg


def llama_hf_config(spec: LlamaSpec, attn: str) -> LlamaConfig:
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, rms_norm_eps=spec.rms_eps,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=False, attention_bias=False, pad_token_id=None,
    )
    cfg._attn_implementation = attn
    return cfg


class FiLM(nn.Module):
    """x·(1 + γ) + β with γ, β projected from the mean prompt embedding (official OFT)."""

    def __init__(self, llm_dim: int, vision_dim: int):
        super().__init__()
        self.scale = nn.Linear(llm_dim, vision_dim)
        self.shift = nn.Linear(llm_dim, vision_dim)

    def forward(self, x: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """x (B, N, Dv), lang (B, H)."""
        return x * (1 + self.scale(lang)[:, None]) + self.shift(lang)[:, None]


class ViTTower(nn.Module):
    """A timm ViT (embeddings as timm's) over transformers' encoder layers. Its features are
    the patch tokens after the second-to-last block (Prismatic's choice); the last block,
    the final norm and SigLIP's attention-pool head are kept only so that the module holds
    every tensor of the checkpoint (`unused_parameters`)."""

    def __init__(self, spec: ViTSpec, llm_dim: int, use_film: bool, attn: str):
        super().__init__()
        self.spec = spec
        D = spec.hidden_size
        self.patch_embed = nn.Conv2d(3, D, spec.patch_size, spec.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, spec.num_patches, D) * 0.02)
        if spec.kind == DINOV2:
            hf_d = dinov2_hf_config(spec, attn)
            # timm's dinov2 "no_embed_class": positions cover the patches only; the class
            # and register tokens are prepended after the positional embedding.
            self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
            self.reg_token = nn.Parameter(torch.randn(1, spec.num_registers, D) * 0.02) if spec.num_registers else None
            self.blocks = nn.ModuleList(Dinov2WithRegistersLayer(hf_d) for _ in range(spec.depth))
        else:
            hf_s = siglip_hf_config(spec, attn)
            self.blocks = nn.ModuleList(SiglipEncoderLayer(hf_s) for _ in range(spec.depth))
            self.attn_pool = SiglipMultiheadAttentionPoolingHead(hf_s)
        self.norm = nn.LayerNorm(D, eps=spec.norm_eps)
        self.film = nn.ModuleList(FiLM(llm_dim, D) for _ in range(spec.depth)) if use_film else None

    @property
    def feature_depth(self) -> int:
        return self.spec.depth - 1  # blocks run: up to and including the second-to-last

    def unused_parameters(self) -> list[str]:
        """Names (relative to this tower) of tensors the features never touch."""
        unused = [f"blocks.{self.spec.depth - 1}.", "norm."]
        if self.film is not None:
            unused.append(f"film.{self.spec.depth - 1}.")
        if self.spec.kind != DINOV2:
            unused.append("attn_pool.")
        return [n for n, _ in self.named_parameters() if n.startswith(tuple(unused))]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        if self.spec.kind == DINOV2:
            prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
            if self.reg_token is not None:
                prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
            x = torch.cat(prefix + [x], dim=1)
        return x

    def _block(self, i: int, x: torch.Tensor, lang: torch.Tensor | None) -> torch.Tensor:
        if self.film is None or lang is None:
            return self.blocks[i](x, None)
        # FiLM sits between the attention and the MLP half of the block (official OFT).
        film = self.film[i]
        if self.spec.kind == DINOV2:
            d = cast(Dinov2WithRegistersLayer, self.blocks[i])
            x = x + d.layer_scale1(d.attention(d.norm1(x))[0])
            x = film(x, lang)
            return x + d.layer_scale2(d.mlp(d.norm2(x)))
        s = cast(SiglipEncoderLayer, self.blocks[i])
        x = x + s.self_attn(hidden_states=s.layer_norm1(x), attention_mask=None)[0]
        x = film(x, lang)
        return x + s.mlp(s.layer_norm2(x))

    def forward(self, pixels: torch.Tensor, lang: torch.Tensor | None = None) -> torch.Tensor:
        """pixels (B, 3, S, S) normalized for this tower -> patch features (B, N, D)."""
        x = self.embed(pixels)
        for i in range(self.feature_depth):
            x = self._block(i, x, lang)
        return x[:, self.spec.num_prefix_tokens:]


class VisionBackbone(nn.Module):
    """`featurizer` (+ `fused_featurizer`): per camera, each tower reads its own 3 channels
    of the channel-stacked pixels; features are concatenated per patch, cameras along
    the patch axis (OpenVLA-OFT's multi-image layout)."""

    def __init__(self, cfg: OFTConfig, attn: str):
        super().__init__()
        self.featurizer = ViTTower(cfg.vision[0], cfg.llm.hidden_size, cfg.use_film, attn)
        self.fused_featurizer = (ViTTower(cfg.vision[1], cfg.llm.hidden_size, cfg.use_film, attn)
                                 if len(cfg.vision) == 2 else None)
        self.num_images = cfg.num_images_in_input

    def towers(self) -> list[ViTTower]:
        return [self.featurizer] + ([self.fused_featurizer] if self.fused_featurizer is not None else [])

    def forward(self, pixel_values: torch.Tensor, lang: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values (B, 3·towers·images, S, S) -> (B, images·N, Dv)."""
        towers = self.towers()
        per_image = pixel_values.split(3 * len(towers), dim=1)
        if len(per_image) != self.num_images:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels: expected "
                             f"{3 * len(towers) * self.num_images} ({self.num_images} cameras x {len(towers)} towers)")
        feats = []
        for img in per_image:
            chans = img.split(3, dim=1)
            feats.append(torch.cat([t(c, lang) for t, c in zip(towers, chans)], dim=2))
        return torch.cat(feats, dim=1)


class Projector(nn.Module):
    """Prismatic's "gelu-mlp" (one tower) or "fused-gelu-mlp" (two towers)."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(x)) if self.fused else x


class ProprioProjector(nn.Module):
    """Normalized proprio (B, p) -> one token (B, H) (official OFT)."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(proprio)))


def attention_bias(valid: torch.Tensor, causal: bool, dtype: torch.dtype, q_start: int = 0) -> torch.Tensor:
    """valid (B, S) bool keys -> additive mask (B, 1, S - q_start, S) in `dtype`.

    Disallowed keys get finfo(dtype).min (transformers' convention for additive masks; an
    additive float mask, never a boolean one: eager and sdpa disagree on boolean 4-D masks).
    Bidirectional: every query attends to every valid key (OFT's fork). Causal: also
    only keys at or before the query. Queries are positions q_start..S-1 (a KV-cached
    decode step asks for its last rows only)."""
    B, S = valid.shape
    allowed = valid[:, None, None, :].expand(B, 1, S - q_start, S)
    if causal:
        q = torch.arange(q_start, S, device=valid.device)[:, None]
        k = torch.arange(S, device=valid.device)[None, :]
        allowed = allowed & (k <= q)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


class OFTModel(nn.Module):
    def __init__(self, cfg: OFTConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        cfg.validate()
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"actor.model.attn_implementation must be one of {ATTN_IMPLEMENTATIONS} "
                             f"(flash_attention_2 cannot take OFT's bidirectional 4-D mask), "
                             f"got {attn_implementation!r}")
        self.cfg = cfg
        H = cfg.llm.hidden_size
        self.vision_backbone = VisionBackbone(cfg, attn_implementation)
        self.projector = Projector(cfg.vision_dim, H, fused=len(cfg.vision) == 2)
        self.language_model = LlamaForCausalLM(llama_hf_config(cfg.llm, attn_implementation))
        self.proprio_projector = ProprioProjector(cfg.proprio_dim, H) if cfg.use_proprio else None
        out = cfg.num_action_chunks if cfg.value_type == ACTION_LEVEL else 1
        self.value_head = MLPValueHead(H, cfg.value_hidden, out) if cfg.add_value_head else None

    # ---- pieces -------------------------------------------------------------------------
    def unused_parameters(self) -> list[str]:
        """Checkpoint tensors no forward reads (frozen by the builder: no gradient ever)."""
        out = []
        for name, tower in (("featurizer", self.vision_backbone.featurizer),
                            ("fused_featurizer", self.vision_backbone.fused_featurizer)):
            if tower is not None:
                out += [f"vision_backbone.{name}.{n}" for n in tower.unused_parameters()]
        return out

    def _lang_mean(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """FiLM's language vector: mean prompt embedding over valid tokens (B, H), plus the
        stop token's as official OFT averages every non-action token (equal to its mean
        at batch size 1, where it has no pads)."""
        m = mask.to(emb.dtype)[..., None]
        total, count = (emb * m).sum(1), m.sum(1)
        stop = self.embed(torch.full((emb.shape[0], 1), STOP_ID, device=emb.device))[:, 0]
        return (total + stop) / (count + 1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def build_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                       proprio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """-> embeddings (B, S, H), valid (B, S) bool, index of the first placeholder."""
        cfg = self.cfg
        emb = self.embed(input_ids)  # (B, L, H)
        lang = self._lang_mean(emb, attention_mask) if cfg.use_film else None
        dtype = emb.dtype
        patches = self.projector(self.vision_backbone(pixel_values.to(dtype), lang))  # (B, P, H)
        if self.proprio_projector is not None:
            if proprio is None:
                raise ValueError("use_proprio: the model needs the normalized proprio state")
            patches = torch.cat([patches, self.proprio_projector(proprio.to(dtype))[:, None]], dim=1)
        B, A = emb.shape[0], cfg.num_action_tokens
        parts = [emb[:, :1], patches, emb[:, 1:], emb.new_zeros(B, A, emb.shape[-1])]
        ones = attention_mask.new_ones
        valid = [attention_mask[:, :1], ones(B, patches.shape[1]), attention_mask[:, 1:], ones(B, A)]
        if cfg.variant == OFFICIAL:
            parts.append(self.embed(torch.full((B, 1), STOP_ID, device=emb.device)))
            valid.append(ones(B, 1))
        first = 1 + patches.shape[1] + emb.shape[1] - 1
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1).bool(), first

    def decoder(self, x: torch.Tensor, valid: torch.Tensor, cache: DynamicCache | None = None,
                q_start: int = 0) -> torch.Tensor:
        """Llama layers over x (B, S - q_start, H), the sequence's rows q_start.. (earlier
        rows come from `cache`); valid (B, S) covers the whole sequence -> final-norm
        hidden states (B, S - q_start, H)."""
        lm = self.language_model.model
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, q_start:]  # (B, S')
        bias = attention_bias(valid, self.cfg.attention == CAUSAL, x.dtype, q_start)
        rope = lm.rotary_emb(x, position_ids=positions)
        for layer in lm.layers:
            x = layer(x, attention_mask=bias, position_ids=positions, position_embeddings=rope,
                      cache=cache, use_cache=cache is not None)
        return lm.norm(x)

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, A, H) at the positions that decode the A action tokens ->
        logits (B, A, n_bins) fp32 over the action ids (the tokenizer's last n_bins ids)."""
        V, n = self.cfg.tokenizer_vocab, self.cfg.n_action_bins
        return self.language_model.lm_head(hidden)[..., V - n:V].float()

    def values(self, state_hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, C) action-level or (B,) chunk-level values, fp32 (0 without a head)."""
        B = state_hidden.shape[0]
        if self.value_head is None:
            shape = (B, self.cfg.num_action_chunks) if self.cfg.value_type == ACTION_LEVEL else (B,)
            return state_hidden.new_zeros(shape, dtype=torch.float32)
        v = self.value_head(state_hidden)
        return v if self.cfg.value_type == ACTION_LEVEL else v[:, 0]

    # ---- the parallel pass --------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                proprio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the whole sequence -> (action logits (B, A, n_bins) fp32,
        values (B, C) | (B,) fp32)."""
        x, valid, first = self.build_sequence(input_ids, attention_mask, pixel_values, proprio)
        h = self.decoder(x, valid)
        A = self.cfg.num_action_tokens
        return self.action_logits(h[:, first - 1:first - 1 + A]), self.values(h[:, first - 1])

    @torch.no_grad()
    def stepwise_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                        proprio: torch.Tensor | None = None, pick=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-by-token decode with a KV cache: the prefix once, then one placeholder per
        forward, each step's logits read from its last row. `pick(i, logits (B, n_bins))`
        chooses token i (sampling); the choice cannot change the next input, since action
        embeddings are zero, which is why the parallel pass may skip the loop. Under the
        causal mask both give the same logits; under the bidirectional one they differ (in the
        parallel pass every position, the prompt's too, sees all placeholders).
        -> (logits (B, A, n_bins), tokens (B, A) or empty)."""
        x, valid, first = self.build_sequence(input_ids, attention_mask, pixel_values, proprio)
        A = self.cfg.num_action_tokens
        cache = DynamicCache(config=self.language_model.config)
        h = self.decoder(x[:, :first], valid[:, :first], cache)
        logits, tokens = [], []
        for i in range(A):
            step = self.action_logits(h[:, -1:])[:, 0]  # (B, n_bins)
            logits.append(step)
            if pick is not None:
                tokens.append(pick(i, step))
            if i + 1 < A:
                end = first + i + 1
                h = self.decoder(x[:, end - 1:end], valid[:, :end], cache, q_start=end - 1)
        tok = torch.stack(tokens, dim=1) if tokens else torch.empty(0, dtype=torch.long)
        return torch.stack(logits, dim=1), tok
