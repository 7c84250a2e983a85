"""π0 / π0.5 network: masks, cache, real-size parameter count, norms, SFT loss,
gradient checkpointing, freezing and LoRA."""
import pytest
import torch

from pirl.models.pi0.configuration import preset
from pirl.models.pi0.lora import apply_lora, freeze_vlm, merged_state_dict
from pirl.models.pi0.modeling import AdaRMSNorm, Pi0Model, make_att_2d_masks


def _model(name, seed=0, **kw):
    torch.manual_seed(seed)
    m = Pi0Model(preset(name, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.15)
    return m


def _inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    S, L = cfg.vision.image_size, cfg.max_token_len
    images = torch.rand(B, 3, 3, S, S, generator=g) * 2 - 1
    image_masks = torch.tensor([[True, False, True], [True, True, False]])[:B]
    tokens = torch.randint(1, cfg.paligemma.vocab_size, (B, L), generator=g)
    token_masks = torch.arange(L)[None] < torch.tensor([6, L])[:B, None]
    state = torch.randn(B, cfg.action_dim, generator=g)
    x = torch.randn(B, cfg.action_horizon, cfg.action_dim, generator=g)
    return (images, image_masks, tokens, token_masks), state, x, torch.tensor([0.9, 0.3])[:B]


def test_block_mask_pi0_layout():
    # 3 prefix tokens (last one padding), state, 2 actions
    pad = torch.tensor([[1, 1, 0, 1, 1, 1]]).bool()
    ar = torch.tensor([[0, 0, 0, 1, 1, 0]])
    m = make_att_2d_masks(pad, ar)[0].int()
    expect = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],  # state: prefix + itself
        [1, 1, 0, 1, 1, 1],  # actions: everything, bidirectional within the block
        [1, 1, 0, 1, 1, 1],
    ])
    assert torch.equal(m, expect)


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_prefix_blind_to_suffix_and_padding_invisible(name):
    m = _model(name).eval()
    pre, state, x, t = _inputs(m.cfg)
    with torch.no_grad():
        po, so, pad = m.joint_forward(*pre, state, x, t)
        po2, _, _ = m.joint_forward(*pre, state + 1, torch.randn_like(x), t * 0.5)
        assert torch.equal(po[pad], po2[pad])  # the prefix never sees the suffix
        images, im, tokens, tm = pre
        images2, tokens2 = images.clone(), tokens.clone()
        images2[~im] = torch.rand_like(images2[~im])  # masked cameras
        tokens2[~tm] = torch.randint(1, 100, tokens2[~tm].shape)  # padding tokens
        _, so3, _ = m.joint_forward(images2, im, tokens2, tm, state, x, t)
        torch.testing.assert_close(so3, so, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(m.joint_forward(images2, im | True, tokens2, tm, state, x, t)[1], so, atol=1e-3)
        _, kv, ppad = m.prefix_forward(*pre)
        kv_before = [(k.clone(), v.clone()) for k, v in kv]
        torch.testing.assert_close(m.suffix_forward(kv, ppad, state, x, t), so, rtol=1e-5, atol=1e-5)
        m.suffix_forward(kv, ppad, state, torch.randn_like(x), t)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kv, kv_before))


def _expected_pi0_params(pi05: bool) -> int:
    """SigLIP So400m/14 + projector + Gemma 2B + Gemma 300M expert + π0 projections, by formula."""
    v, vm, n_img = 1152, 4304, 256
    siglip = 3 * 14 * 14 * v + v + n_img * v + 27 * (4 * v + 4 * (v * v + v) + v * vm + vm + vm * v + v) + 2 * v
    proj = v * 2048 + 2048
    gemma = 257152 * 2048 + 18 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 16384 + 2 * 2048) + 2048
    w = 1024
    norm = (w * 3 * w + 3 * w) if pi05 else w  # adaRMS dense replaces the scale vector
    expert = 18 * (2 * w * 2048 + 2 * w * 256 + 3 * w * 4096 + 2 * norm) + norm
    heads = (32 * w + w) + (w * 32 + 32)
    heads += 2 * (w * w + w) if pi05 else (32 * w + w) + (2 * w * w + w) + (w * w + w)
    return siglip + proj + gemma + expert + heads


@pytest.mark.parametrize("name,pi05", [("pi0", False), ("pi05", True)])
def test_real_size_builds_on_meta_with_published_count(name, pi05):
    with torch.device("meta"):
        m = Pi0Model(preset(name, add_value_head=False))
    n = sum(p.numel() for p in m.parameters())  # the tied lm_head counts once
    assert n == _expected_pi0_params(pi05)
    if not pi05:
        assert abs(n / 1e9 - 3.24) < 0.01  # π0: ~3.24B


def test_rmsnorm_is_one_plus_w_and_adarms_modulates():
    m = _model("pi0_tiny")
    norm = m.paligemma_with_expert.language_model.layers[0].input_layernorm
    x = torch.randn(2, 3, 64)
    ref = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight.double())
    torch.testing.assert_close(norm(x).double(), ref, rtol=1e-5, atol=1e-5)
    ada = AdaRMSNorm(8, 4)
    with torch.no_grad():
        ada.dense.weight.normal_()
        ada.dense.bias.normal_()
    x, c = torch.randn(2, 3, 8), torch.randn(2, 4)
    y, gate = ada(x, c)
    mod = (c.double() @ ada.dense.weight.double().T + ada.dense.bias.double())[:, None]
    normed = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y.double(), normed * (1 + mod[..., :8]) + mod[..., 8:16], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gate.double(), mod[..., 16:], rtol=1e-5, atol=1e-5)


def test_sft_loss_is_flow_matching_over_real_dims():
    m = _model("pi0_tiny")
    pre, state, actions, _ = _inputs(m.cfg)
    noise, time = torch.randn_like(actions), torch.tensor([0.7, 0.2])
    mask = torch.zeros(1, *actions.shape[1:], dtype=torch.bool)
    mask[:, :3, :3] = True  # 3 demonstrated steps of 3 real dims
    loss, metrics = m.sft_loss(*pre, state, actions, mask, noise=noise, time=time)
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    _, so, _ = m.joint_forward(*pre, state, x_t, time)
    ref = ((m.velocity(so).double() - (noise - actions).double()) ** 2)[:, :3, :3].mean()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)
    assert not metrics["sft/loss"].requires_grad
    torch.testing.assert_close(metrics["sft/loss"].double(), ref.detach(), rtol=1e-6, atol=0)
    loss.backward()
    assert m.action_in_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        m = _model("pi05_tiny")
        m.train()
        m.paligemma_with_expert.gradient_checkpointing = ckpt
        pre, state, x, t = _inputs(m.cfg)
        loss, _ = m.sft_loss(*pre, state, x, noise=torch.ones_like(x) * 0.3, time=t)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6)


def test_train_expert_only_and_lora_choose_trainable_params():
    m = _model("pi0_tiny")
    freeze_vlm(m)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert not any(n.startswith("paligemma_with_expert.paligemma.") for n in trainable)
    assert any(n.startswith("paligemma_with_expert.gemma_expert.") for n in trainable)

    m = _model("pi0_tiny")
    pre, state, x, t = _inputs(m.cfg)
    with torch.no_grad():
        _, before, _ = m.joint_forward(*pre, state, x, t)
    apply_lora(m, rank=4, targets=("vlm",))
    names = [n for n, _ in m.named_parameters()]
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model.layers." in n for n in lora)  # not SigLIP, not the expert
    assert {n for n, p in m.named_parameters() if p.requires_grad and "language_model" in n} == set(lora)
    with torch.no_grad():
        _, after, _ = m.joint_forward(*pre, state, x, t)
        torch.testing.assert_close(after, before)  # LoRA B starts at zero
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
        _, tuned, _ = m.joint_forward(*pre, state, x, t)
    merged = merged_state_dict(m)
    plain = _model("pi0_tiny", seed=5)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        _, replay, _ = plain.joint_forward(*pre, state, x, t)
    assert not torch.allclose(tuned, before, atol=1e-3)
    torch.testing.assert_close(replay, tuned, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="lora_targets"):
        apply_lora(_model("pi0_tiny"), 4, targets=("decoder",))
