"""π0 processor: images, prompt formats with a tokenizer trained here, norm stats, delta actions."""
import json

import numpy as np
import pytest
import torch

from pirl.models.pi0.configuration import preset
from pirl.models.pi0.normalize import (NormStats, compute_norm_stats, load_norm_stats, normalize, save_norm_stats,
                                      unnormalize)
from pirl.models.pi0.processor import Pi0Processor, ProcessorConfig, resize_with_pad, to_unit_range
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
