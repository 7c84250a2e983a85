"""π0 processor: images, prompt formats with a tokenizer trained here, norm stats, delta actions."""
import json
import math

import numpy as np
import pytest
import torch

from pirl.models.pi0.configuration import preset
from pirl.models.pi0.normalize import (NormStats, compute_norm_stats, load_norm_stats, normalize, save_norm_stats,
                                      unnormalize)
from pirl.models.pi0.processor import (AugmentDraw, Pi0Processor, ProcessorConfig, augment, draw_augment,
                                      resize_with_pad, to_unit_range)
from pirl.models.pi0.tokenizer import (ByteTokenizer, PromptTokenizer, SentencePieceTokenizer, clean_prompt,
                                       discretize_state)


def test_resize_with_pad_keeps_aspect_and_pads_black():
    img = torch.randint(1, 255, (2, 20, 40, 3), dtype=torch.uint8)
    out = resize_with_pad(img, 28)
    assert out.shape == (2, 3, 28, 28)
    # 40x20 -> 28x14, centred: rows 0-6 and 21-27 are padding
    assert (out[:, :, :7] == 0).all() and (out[:, :, 21:] == 0).all()
    assert (out[:, :, 7:21] > 0).all()
    ref = torch.nn.functional.interpolate(img.permute(0, 3, 1, 2).double(), size=(14, 28), mode="bilinear",
                                          align_corners=False, antialias=True)
    torch.testing.assert_close(out[:, :, 7:21].double(), ref.clamp(0, 255), atol=1e-3, rtol=0)
    u = to_unit_range(out)
    assert u.min() >= -1 and u.max() <= 1 and (u[:, :, :7] == -1).all()


def test_norm_stats_roundtrip_zscore_and_quantile(tmp_path):
    g = torch.Generator().manual_seed(0)
    st = NormStats(mean=torch.randn(3, generator=g), std=torch.rand(3, generator=g) + 0.5,
                   q01=-torch.rand(3, generator=g) - 1, q99=torch.rand(3, generator=g) + 1)
    save_norm_stats(tmp_path / "ns.json", {"state": st, "actions": st})
    loaded = load_norm_stats(tmp_path / "ns.json")["state"]
    x = torch.randn(4, 5, generator=g)  # 5 dims, stats cover 3: dims 3-4 pass through
    z = normalize(x, loaded, "zscore")
    ref = (x[:, :3].double() - st.mean.double()) / (st.std.double() + 1e-6)
    torch.testing.assert_close(z[:, :3].double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(z[:, 3:], x[:, 3:])
    q = normalize(x, loaded, "quantile")
    refq = 2 * (x[:, :3].double() - st.q01.double()) / (st.q99.double() - st.q01.double() + 1e-6) - 1
    torch.testing.assert_close(q[:, :3].double(), refq, rtol=1e-6, atol=1e-6)
    for mode in ("zscore", "quantile"):
        torch.testing.assert_close(unnormalize(normalize(x, loaded, mode), loaded, mode), x, rtol=1e-5, atol=1e-5)


def test_norm_stats_errors_name_the_problem(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"state": {}}))
    with pytest.raises(ValueError, match="norm_stats"):
        load_norm_stats(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"norm_stats": {"state": {"mean": [0, 1], "std": [1]}}}))
    with pytest.raises(ValueError, match="std"):
        load_norm_stats(tmp_path / "b.json")
    st = NormStats(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="q01"):
        normalize(torch.randn(2, 2), st, "quantile")


def test_state_bins_match_openpi_digitize():
    s = np.array([-1.5, -1.0, -0.99, 0.0, 0.3, 0.999, 1.0, 2.0])
    bins = discretize_state(s)
    # independent: bin = floor((s + 1) / (2/256)), with openpi's edge cases
    ref = np.floor((s + 1) / (2 / 256)).astype(int)
    ref = np.where(s < -1, -1, np.minimum(ref, 255))
    assert bins.tolist() == ref.tolist()


def test_pi0_prompt_format(sp_model):
    enc = SentencePieceTokenizer(sp_model)
    tok = PromptTokenizer(enc, max_len=24, discrete_state=False, model_vocab=512)
    tokens, masks = tok(["pick_up the red cube\n", "open drawer"])
    for i, p in enumerate(["pick up the red cube", "open drawer"]):
        ids = enc.sp.encode(p, add_bos=True) + enc.sp.encode("\n")
        assert tokens[i, : len(ids)].tolist() == ids and masks[i].sum() == len(ids)
        assert (tokens[i, len(ids):] == 0).all()
    assert clean_prompt(" a_b\nc ") == "a b c"


def test_pi05_prompt_has_state_bins_and_truncates(sp_model):
    enc = SentencePieceTokenizer(sp_model)
    tok = PromptTokenizer(enc, max_len=64, discrete_state=True, model_vocab=512)
    state = torch.tensor([[-0.5, 0.25, 0.99]])
    tokens, masks = tok(["place it on plate"], state)
    ids = enc.sp.encode("Task: place it on plate, State: 64 160 254;\nAction: ", add_bos=True)
    assert tokens[0, : len(ids)].tolist() == ids and int(masks[0].sum()) == len(ids)
    short = PromptTokenizer(enc, max_len=5, discrete_state=True, model_vocab=512)
    with pytest.warns(UserWarning, match=f"{len(ids)} tokens truncated to max_token_len 5"):
        t2, m2 = short(["place it on plate"], state)
    assert t2[0].tolist() == ids[:5] and m2.all()
    with pytest.raises(ValueError, match="vocabulary"):
        PromptTokenizer(enc, 8, False, model_vocab=100)


def _processor(pcfg, stats=None):
    cfg = preset("pi0_tiny")
    return Pi0Processor(cfg, PromptTokenizer(ByteTokenizer(), cfg.max_token_len, False, 512), stats, pcfg)


def test_processor_cameras_masks_and_state_padding():
    st = NormStats(mean=torch.tensor([0.5, -1.0]), std=torch.tensor([2.0, 0.5]))
    proc = _processor(ProcessorConfig(action_env_dim=2), {"state": st, "actions": st})
    g = torch.Generator().manual_seed(1)
    obs = {"main_images": torch.randint(0, 255, (2, 56, 56, 3), dtype=torch.uint8, generator=g),
           "states": torch.randn(2, 2, generator=g), "task_descriptions": ["a", "b"]}
    fi = proc(obs)
    assert fi["images"].shape == (2, 3, 3, 28, 28) and fi["image_masks"].tolist() == [[True, False, False]] * 2
    assert (fi["images"][:, 1:] == -1).all()
    assert fi["state"].shape == (2, 8) and (fi["state"][:, 2:] == 0).all()
    torch.testing.assert_close(fi["state"][:, :2], (obs["states"] - st.mean) / (st.std + 1e-6))


def test_postprocess_unnormalizes_adds_state_to_delta_dims_and_slices():
    st = NormStats(mean=torch.tensor([0.5, -1.0, 0.0]), std=torch.tensor([2.0, 0.5, 1.0]))
    proc = _processor(ProcessorConfig(action_env_dim=3, delta_action_mask=(True, False, True)),
                      {"state": st, "actions": st})
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 8, generator=g)
    raw = torch.randn(2, 3, generator=g)
    out = proc.postprocess(a, raw)
    ref = a[..., :3].double() * (st.std.double() + 1e-6) + st.mean.double()
    ref[..., 0] += raw[:, None, 0].double()
    ref[..., 2] += raw[:, None, 2].double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(proc.to_delta(out, raw)[..., 1], out[..., 1])
    torch.testing.assert_close(proc.to_delta(out, raw)[..., 0], out[..., 0] - raw[:, None, 0])


def test_augmentation_only_in_training_and_switchable():
    proc = _processor(ProcessorConfig(train_augment=True))
    obs = {"main_images": torch.randint(0, 255, (1, 28, 28, 3), dtype=torch.uint8),
           "states": torch.randn(1, 2), "task_descriptions": ["x"]}
    base = proc(obs)["images"]
    proc.training = True
    aug = proc(obs, torch.Generator().manual_seed(0))["images"]
    assert not torch.equal(base, aug) and aug.min() >= -1 and aug.max() <= 1
    proc.pcfg.train_augment = False
    assert torch.equal(proc(obs)["images"], base)


def test_augment_draws_are_uniform_over_openpi_ranges():
    g = torch.Generator().manual_seed(0)
    N, S = 3000, 224
    draws = [draw_augment(S, g) for _ in range(N)]
    bound = 1.95 / N ** 0.5  # Kolmogorov-Smirnov at the 0.1% level; a range off by 0.05 gives ~0.08
    for name, (lo, hi) in (("angle_deg", (-5.0, 5.0)), ("brightness", (0.7, 1.3)), ("contrast", (0.6, 1.4)),
                           ("saturation", (0.5, 1.5))):
        x = np.sort([getattr(d, name) for d in draws])
        assert lo <= x[0] and x[-1] <= hi, name
        cdf, i = (x - lo) / (hi - lo), np.arange(1, N + 1)
        assert max((i / N - cdf).max(), (cdf - (i - 1) / N).max()) < bound, name
    slack = S - int(S * 0.95)  # 12: offsets 0..12 of a 212-pixel crop
    for name in ("top", "left"):
        counts = np.bincount([getattr(d, name) for d in draws], minlength=slack + 1)
        assert counts.shape == (slack + 1,)
        np.testing.assert_allclose(counts / N, 1 / (slack + 1), atol=0.02)


def _ref_bilinear(img, py, px):
    """float64 bilinear sample of img (C, H, W) at pixel coordinates py, px (h, w); zero outside."""
    C, H, W = img.shape
    y0, x0 = torch.floor(py), torch.floor(px)
    out = torch.zeros(C, *py.shape, dtype=torch.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            w = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            vals = img[:, yy.clamp(0, H - 1).long(), xx.clamp(0, W - 1).long()]
            out += torch.where(inside, w, torch.zeros_like(w)) * vals
    return out


def _ref_augment(img, d, geometric):
    """float64 openpi augmentation of one image (3, S, S) in [-1, 1], written out pixel by pixel."""
    x = img.double() / 2 + 0.5
    S = x.shape[-1]
    if geometric:
        c = int(S * 0.95)
        crop = x[:, d.top:d.top + c, d.left:d.left + c]
        src = ((torch.arange(S, dtype=torch.float64) + 0.5) * c / S - 0.5).clamp(0, c - 1)  # half-pixel resize
        x = _ref_bilinear(crop, src[:, None].expand(S, S), src[None, :].expand(S, S))
        if abs(d.angle_deg) > 0.1:
            a = math.radians(d.angle_deg)
            lin = torch.linspace(-1, 1, S, dtype=torch.float64)
            gy, gx = lin[:, None].expand(S, S), lin[None, :].expand(S, S)
            u, v = gx * math.cos(a) - gy * math.sin(a), gx * math.sin(a) + gy * math.cos(a)
            x = _ref_bilinear(x, ((v + 1) * S - 1) / 2, ((u + 1) * S - 1) / 2)
    x = x * d.brightness
    x = (x - x.mean()) * d.contrast + x.mean()
    gray = x.mean(0, keepdim=True)
    x = gray + (x - gray) * d.saturation
    return x.clamp(0, 1) * 2 - 1


@pytest.mark.parametrize("angle", [3.7, -4.2, 0.05])
def test_augment_matches_a_float64_reference(angle):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 28, 28, generator=g) * 2 - 1
    d = AugmentDraw(top=1, left=2, angle_deg=angle, brightness=1.2, contrast=0.7, saturation=1.4)
    for geometric in (True, False):
        out = augment(x, d, geometric)
        for i in range(2):
            torch.testing.assert_close(out[i].double(), _ref_augment(x[i], d, geometric), rtol=0, atol=2e-5)


def test_processor_augments_per_batch_and_spares_wrist_geometry():
    cfg = preset("pi0_tiny")
    proc = Pi0Processor(cfg, PromptTokenizer(ByteTokenizer(), cfg.max_token_len, False, 512), None,
                        ProcessorConfig(train_augment=True))
    proc.training = True
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 255, (1, 28, 28, 3), dtype=torch.uint8, generator=g).expand(4, 28, 28, 3)
    obs = {"main_images": img, "wrist_images": img, "states": torch.randn(4, 2), "task_descriptions": ["x"] * 4}
    out = proc(obs, torch.Generator().manual_seed(7))["images"]  # (B, NC, 3, S, S)
    assert all(torch.equal(out[0], out[i]) for i in range(1, 4))  # one draw for the whole batch
    replay = torch.Generator().manual_seed(7)
    d_base, d_wrist = draw_augment(28, replay), draw_augment(28, replay)  # one draw per camera, slot order
    x = to_unit_range(resize_with_pad(img[:1], 28))[0]
    torch.testing.assert_close(out[0, 0].double(), _ref_augment(x, d_base, geometric=True), rtol=0, atol=2e-5)
    torch.testing.assert_close(out[0, 1].double(), _ref_augment(x, d_wrist, geometric=False), rtol=0, atol=2e-5)
    again = proc(obs, torch.Generator().manual_seed(8))["images"]
    assert not torch.allclose(again, out)


def test_compute_norm_stats_matches_numpy():
    x = torch.randn(500, 5) * torch.tensor([1.0, 2.0, 0.1, 5.0, 1.0]) + torch.tensor([0.0, -1.0, 3.0, 0.5, 2.0])
    st = compute_norm_stats(x)
    ref = x.double().numpy()
    np.testing.assert_allclose(st.mean.numpy(), ref.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.std.numpy(), ref.std(0, ddof=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.q01.numpy(), np.quantile(ref, 0.01, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.q99.numpy(), np.quantile(ref, 0.99, axis=0), rtol=1e-6, atol=1e-6)
    inside = normalize(x, st, "quantile")  # 98% of every dim lands in [-1, 1]
    frac = ((inside >= -1 - 1e-5) & (inside <= 1 + 1e-5)).float().mean(0)
    assert ((frac > 0.97) & (frac < 0.99)).all(), frac
    with pytest.raises(ValueError, match="N >= 2"):
        compute_norm_stats(torch.randn(1, 3))
