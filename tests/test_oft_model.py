"""OpenVLA-OFT model pieces: action tokens, statistics, sampling filters, the processor, the
parallel pass against a float64 second implementation and a token-by-token decode, LoRA,
gradient checkpointing and the 7B parameter count."""
import dataclasses

import numpy as np
import pytest
import torch

from oft_reference import ref_action_logits, to_hf_state, train_llama_tokenizer
from pirl.models.oft.action_tokenizer import (
    ActionTokenizer, compute_statistics, read_statistics, resolve_unnorm_key, select_bounds,
)
from pirl.models.oft.configuration import CAUSAL, OFFICIAL, preset
from pirl.models.oft.lora import apply_oft_lora, enable_gradient_checkpointing
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import (
    HashedWordEncoder, PromptTokenizer, SentencePieceEncoder, binarize_gripper, crop_and_resize, pixel_values,
    prepare_images,
)
from pirl.models.oft.sampling import draw, filter_logits, token_entropy, token_logprob
from pirl.models.pi0.lora import merged_state_dict

TINY = preset("oft_tiny")


def _model(cfg=TINY, seed=0) -> OFTModel:
    torch.manual_seed(seed)
    m = OFTModel(cfg)
    with torch.no_grad():  # move every tensor off its init (layer scales, zero biases)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _inputs(cfg=TINY, B=3, seed=0, pads=(0, 4, 9)):
    g = torch.Generator().manual_seed(seed)
    L = cfg.max_prompt_length
    ids = torch.randint(3, cfg.tokenizer_vocab, (B, L), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(B, L, dtype=torch.bool)
    for i, p in enumerate(pads[:B]):
        mask[i, 1:1 + p] = False
    S = cfg.vision[0].image_size
    images = torch.randint(0, 256, (B, cfg.num_images_in_input, 3, S, S), generator=g, dtype=torch.uint8)
    return ids, mask, images


# ---- action tokens and statistics ---------------------------------------------------------
def test_every_bin_centre_round_trips_exactly():
    tok = ActionTokenizer(256)
    centres = tok.centers  # (255,) float64
    back = tok.detokenize(tok.tokenize(centres[:, None]))[:, 0]
    assert torch.equal(back, centres.float())
    assert torch.equal(tok.tokenize(centres.float()[:, None])[:, 0], torch.arange(255, 0, -1))  # centre k -> j = 255 - k
    assert tok.tokenize(torch.tensor([1.0])).item() == 0 and tok.detokenize(torch.tensor([0])).item() == back[-1]


def test_tokenize_matches_openvla_numpy_formula():
    x = torch.rand(4000, dtype=torch.float64) * 2.4 - 1.2  # also outside [-1, 1]
    bins = np.linspace(-1, 1, 256)
    V = 32000
    ids = V - np.digitize(np.clip(x.numpy(), -1, 1), bins)  # OpenVLA's ActionTokenizer
    got = ActionTokenizer(256).tokenize(x)
    assert np.array_equal(got.numpy() + V - 256, ids)
    centres = (bins[:-1] + bins[1:]) / 2
    expect = centres[np.clip(V - ids - 1, 0, 254)]  # OpenVLA's decode_token_ids_to_actions
    assert np.allclose(ActionTokenizer(256).detokenize(got).numpy(), expect, atol=1e-7)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        ActionTokenizer(256).detokenize(torch.tensor([256]))


def test_bounds_against_float64_formula(tmp_path):
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2]) + 0.5
    entry = compute_statistics(acts)
    entry["action"]["mask"] = [True, True, False]
    (tmp_path / "s.json").write_text(__import__("json").dumps({"ds_no_noops": entry}))
    stats = read_statistics(tmp_path / "s.json")
    key, b, _ = select_bounds(stats, "ds", "bounds_q99", "s.json", False)
    assert key == "ds_no_noops"  # the reference system's fallback
    lo, hi = np.quantile(acts.numpy(), 0.01, axis=0), np.quantile(acts.numpy(), 0.99, axis=0)
    x = acts[:7]
    n = np.clip(2 * (x.numpy() - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    n[:, 2] = x.numpy()[:, 2]
    assert np.allclose(b.normalize(x).double().numpy(), n, atol=1e-6)
    u = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1
    ref = 0.5 * (u.numpy() + 1) * (hi - lo + 1e-8) + lo
    ref[:, 2] = u.numpy()[:, 2]
    assert np.allclose(b.unnormalize(u).double().numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="unnorm_key 'other'"):
        resolve_unnorm_key(stats, "other", "s.json")


def test_libero_gripper_convention():
    a = torch.tensor([[[0.1, 0.9], [0.2, 0.1]]])
    assert torch.equal(binarize_gripper(a)[..., -1], torch.tensor([[-1.0, 1.0]]))


# ---- sampling -------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, -1, 1.0), (1.6, 50, 1.0), (0.7, -1, 0.9), (1.3, 20, 0.8)])
def test_filters_match_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 256, generator=g) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k > 0:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)], atol=1e-6)
    tokens = draw(got, torch.Generator().manual_seed(0))
    dist = torch.distributions.Categorical(logits=got.double())
    assert torch.allclose(token_logprob(got, tokens).double(), dist.log_prob(tokens), atol=1e-5)
    assert torch.allclose(token_entropy(got).double(), dist.entropy(), atol=1e-5)
    assert not torch.isinf(token_logprob(got, tokens)).any()  # drawn bins are always kept


def test_draw_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]]))
    tokens = draw(logits.expand(20000, -1), torch.Generator().manual_seed(3))
    freq = torch.bincount(tokens, minlength=4).double() / tokens.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.015)


# ---- processor ------------------------------------------------------------------------------
def test_center_crop_matches_tf_crop_and_resize_formula():
    g = torch.Generator().manual_seed(4)
    img = torch.randint(0, 256, (2, 3, 20, 24), generator=g, dtype=torch.uint8)
    out = crop_and_resize(img, 16)
    x = img.double() / 255
    side = 0.9 ** 0.5
    y1 = x1 = (1 - side) / 2
    y2 = x2 = (1 + side) / 2
    ref = torch.empty(2, 3, 16, 16, dtype=torch.float64)
    for i in range(16):  # tf.image.crop_and_resize, bilinear, one output pixel at a time
        iy = y1 * 19 + i * (y2 - y1) * 19 / 15
        for j in range(16):
            ix = x1 * 23 + j * (x2 - x1) * 23 / 15
            t, left = int(np.floor(iy)), int(np.floor(ix))
            b, r = min(t + 1, 19), min(left + 1, 23)
            dy, dx = iy - t, ix - left
            top = x[:, :, t, left] * (1 - dx) + x[:, :, t, r] * dx
            bot = x[:, :, b, left] * (1 - dx) + x[:, :, b, r] * dx
            ref[:, :, i, j] = top * (1 - dy) + bot * dy
    expect = torch.floor(ref.clamp(0, 1) * 255.5).clamp(max=255).to(torch.uint8)  # convert_image_dtype
    assert (out.int() - expect.int()).abs().max() <= 1  # fp32 vs fp64 at a .5 boundary
    assert (out == expect).float().mean() > 0.99


def test_prepare_and_normalize_images():
    g = torch.Generator().manual_seed(5)
    img = torch.randint(0, 256, (2, 28, 28, 3), generator=g, dtype=torch.uint8)
    u8 = prepare_images(img, 28, center_crop=False)
    assert torch.equal(u8, img.permute(0, 3, 1, 2))  # already at size: untouched
    px = pixel_values(u8[:, None], TINY.vision)
    assert px.shape == (2, 6, 28, 28)
    dino = (img.permute(0, 3, 1, 2).double() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).double()) \
        / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1).double()
    assert torch.allclose(px[:, :3].double(), dino, atol=1e-5)
    assert torch.allclose(px[:, 3:].double(), img.permute(0, 3, 1, 2).double() / 127.5 - 1, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        prepare_images(img.float(), 28, False)


def test_prompt_layout_with_a_trained_llama_tokenizer(tmp_path):
    enc = SentencePieceEncoder(train_llama_tokenizer(tmp_path))
    tok = PromptTokenizer(enc, 32)
    ids, mask = tok(["Move to the RED target", "open the drawer"])
    text = "In: What action should the robot take to move to the red target?\nOut:"
    expect = [1] + enc.sp.encode(text) + [enc.space_id]
    n = len(expect)
    assert ids[0, 0] == 1 and mask[0, 0] and not mask[0, 1:32 - n + 1].any()
    assert ids[0, 32 - n + 1:].tolist() == expect[1:] and mask[0, 32 - n + 1:].all()
    assert enc.sp.id_to_piece(int(ids[0, -1])) == "▁" and ids[1, -1] == enc.space_id
    with pytest.raises(ValueError, match="max_prompt_length 8"):
        PromptTokenizer(enc, 8)(["move to the red target"])
    words = PromptTokenizer(HashedWordEncoder(512), 24)
    ids = words(["Move to the red target"])[0][0]
    assert ids[-1] == HashedWordEncoder.SPACE and (ids[-15:-1] >= 4).all() and (ids[-15:-1] < 512).all()
    assert words.token_ids("a b")[1:-1] != words.token_ids("a c")[1:-1]


# ---- the parallel pass -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["rlinf", "official_film_proprio", "causal"])
def test_forward_matches_float64_reference(variant):
    cfg = TINY
    if variant == "official_film_proprio":
        cfg = dataclasses.replace(TINY, variant=OFFICIAL, use_film=True, use_proprio=True, proprio_dim=5,
                                  num_images_in_input=2)
    if variant == "causal":
        cfg = dataclasses.replace(TINY, attention=CAUSAL)
    m = _model(cfg)
    ids, mask, images = _inputs(cfg)
    proprio = torch.randn(3, 5) if cfg.use_proprio else None
    got, _ = m(ids, mask, pixel_values(images, cfg.vision), proprio)
    T = to_hf_state(m.state_dict())
    if cfg.use_film:  # the reference reads FiLM under official OFT's names
        T.update({k.replace(".film.", ".blocks."): v for k, v in m.state_dict().items() if ".film." in k})
    if cfg.use_proprio:
        T.update({k: v for k, v in m.state_dict().items() if k.startswith("proprio_projector.")})
    ref = ref_action_logits(T, cfg, ids, mask, images, proprio, film=cfg.use_film, official=cfg.variant == OFFICIAL,
                            causal=cfg.attention == CAUSAL)
    assert got.shape == (3, cfg.num_action_tokens, 256)
    assert torch.allclose(got.double(), ref, atol=2e-4, rtol=1e-4), (got.double() - ref).abs().max()


def test_pads_are_invisible():
    m = _model()
    ids, mask, images = _inputs()
    px = pixel_values(images, TINY.vision)
    a, va = m(ids, mask, px)
    # Six more pads after <s> (a longer max_prompt_length) and other pad ids: the same
    # tokens keep their RoPE positions and no valid token attends to a pad.
    more = torch.full((3, 6), 7)
    b, vb = m(torch.cat([ids[:, :1], more, ids[:, 1:]], 1),
              torch.cat([mask[:, :1], torch.zeros(3, 6, dtype=torch.bool), mask[:, 1:]], 1), px)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(va, vb, atol=1e-5)


def test_parallel_equals_token_by_token_under_the_causal_mask():
    cfg = dataclasses.replace(TINY, attention=CAUSAL)
    m = _model(cfg)
    ids, mask, images = _inputs(cfg)
    px = pixel_values(images, cfg.vision)
    parallel, _ = m(ids, mask, px)
    g1 = torch.Generator().manual_seed(9)
    stepwise, tokens = m.stepwise_logits(ids, mask, px, pick=lambda i, lg: draw(filter_logits(lg, 1.3, 40), g1))
    assert torch.allclose(parallel, stepwise, atol=1e-5), (parallel - stepwise).abs().max()
    # The same draws in one pass: sampling token i from its row gives the same chunk.
    g2 = torch.Generator().manual_seed(9)
    again = torch.stack([draw(filter_logits(parallel[:, i], 1.3, 40), g2) for i in range(cfg.num_action_tokens)], 1)
    assert torch.equal(tokens, again)


def test_bidirectional_mask_differs_from_token_by_token():
    m = _model()
    ids, mask, images = _inputs()
    px = pixel_values(images, TINY.vision)
    parallel, _ = m(ids, mask, px)
    stepwise, _ = m.stepwise_logits(ids, mask, px)
    # Every position sees the placeholders in OFT's pass: the mask is in effect.
    assert (parallel - stepwise).abs().amax(dim=(0, 2)).min() > 1e-3


def test_values_read_the_state_position_and_shapes():
    m = _model()
    ids, mask, images = _inputs()
    _, v = m(ids, mask, pixel_values(images, TINY.vision))
    assert v.shape == (3, TINY.num_action_chunks) and v.dtype == torch.float32
    chunk = _model(dataclasses.replace(TINY, value_type="chunk_level"))
    assert chunk(ids, mask, pixel_values(images, TINY.vision))[1].shape == (3,)


def test_7b_builds_on_meta_with_the_published_parameter_count():
    with torch.device("meta"):
        m = OFTModel(dataclasses.replace(preset("openvla_7b"), add_value_head=False))
    assert sum(p.numel() for p in m.parameters()) == 7_541_237_184  # openvla/openvla-7b's safetensors


# ---- LoRA and gradient checkpointing ---------------------------------------------------------
def test_lora_trains_adapters_and_critic_and_merges_exactly():
    m = _model()
    ids, mask, images = _inputs()
    px = pixel_values(images, TINY.vision)
    before, _ = m(ids, mask, px)
    apply_oft_lora(m, rank=4)
    after, _ = m(ids, mask, px)
    assert torch.allclose(before, after, atol=1e-6)  # B = 0: starts as the base model
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("value_head.") for n in trainable)
    assert any("language_model.model.layers.0.self_attn.q_proj.lora_A" in n for n in trainable)
    assert any("vision_backbone.featurizer.blocks.0.attention.q_proj.lora_A" in n for n in trainable)
    assert any("language_model.lm_head.lora_A" in n for n in trainable)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    tuned, _ = m(ids, mask, px)
    plain = _model()
    plain.load_state_dict(merged_state_dict(m))
    assert torch.allclose(plain(ids, mask, px)[0], tuned, atol=1e-5)


def test_gradient_checkpointing_gives_equal_gradients():
    ids, mask, images = _inputs()
    px = pixel_values(images, TINY.vision)
    grads = []
    for ckpt in (False, True):
        m = _model().train()
        if ckpt:
            enable_gradient_checkpointing(m)
        logits, v = m(ids, mask, px)
        (logits.logsumexp(-1).mean() + v.pow(2).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
    unused = set(_model().unused_parameters())
    assert unused and not unused & set(grads[0])  # the last vision blocks never get a gradient
