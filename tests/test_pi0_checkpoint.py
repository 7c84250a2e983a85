"""π0 checkpoints: pirl / openpi / lerobot layouts round-trip; strict, all-or-nothing errors."""
import json
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from pirl.models.pi0 import checkpoint as ck
from pirl.models.pi0.configuration import preset
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import NormStats, normalize, to_convention, unnormalize

PG = "paligemma_with_expert.paligemma."


def _model(name="pi0_tiny", seed=0):
    torch.manual_seed(seed)
    m = Pi0Model(preset(name))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _stats():
    s = NormStats(torch.randn(3), torch.rand(3) + 0.1, -torch.rand(3) - 1, torch.rand(3) + 1)
    return {"state": s, "actions": s}


def _same(a, b, skip=()):
    sa, sb = ck.model_tensors(a), ck.model_tensors(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if not any(k.startswith(s) for s in skip):
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_pirl_roundtrip(tmp_path, name):
    a, b = _model(name, 0), _model(name, 1)
    ck.save_pirl(a, tmp_path, _stats())
    assert ck.detect_format(tmp_path) == ck.PIRL and ck.read_config(tmp_path) == a.cfg
    ck.load_weights(b, tmp_path)
    _same(a, b)
    assert ck.find_norm_stats(tmp_path, ck.PIRL)["state"].mean.shape == (3,)


def test_openpi_export_layout_and_load(tmp_path):
    a, b = _model("pi05_tiny", 0), _model("pi05_tiny", 1)
    ck.export_openpi(a, tmp_path, _stats(), asset_id="droid")
    keys = load_file(str(tmp_path / ck.WEIGHTS)).keys()
    assert PG + "lm_head.weight" in keys and ck.EMBED not in keys  # tied embedding stored as lm_head
    assert not any(k.startswith(("value_head", "noise_head")) for k in keys)
    assert any(".vision_tower.vision_model.encoder." in k for k in keys)
    assert json.loads((tmp_path / "config.json").read_text())["pi05"] is True
    assert ck.detect_format(tmp_path) == ck.OPENPI
    ck.load_weights(b, tmp_path)
    _same(a, b, skip=("value_head",))  # the critic is pirl's: not in openpi files
    assert ck.find_norm_stats(tmp_path, ck.OPENPI) is not None


def test_openpi_legacy_layout_and_lerobot_prefix(tmp_path):
    a = _model("pi0_tiny", 0)
    state = {k: v for k, v in ck.model_tensors(a).items() if not k.startswith("value_head")}
    legacy = {}
    for k, v in state.items():  # transformers < 4.52 names, embedding duplicated as lm_head
        k = k.replace(PG + "model.language_model.", PG + "language_model.model.")
        k = k.replace(PG + "model.vision_tower.", PG + "vision_tower.vision_model.")
        k = k.replace(PG + "model.multi_modal_projector.", PG + "multi_modal_projector.")
        legacy[k] = v
    legacy[PG + "language_model.lm_head.weight"] = state[ck.EMBED].clone()
    (tmp_path / "openpi").mkdir()
    save_file(legacy, str(tmp_path / "openpi" / ck.WEIGHTS))
    (tmp_path / "openpi" / "config.json").write_text("{}")
    b = _model("pi0_tiny", 1)
    ck.load_weights(b, tmp_path / "openpi")
    _same(a, b, skip=("value_head",))

    (tmp_path / "lerobot").mkdir()
    save_file({"model." + k: v for k, v in state.items()}, str(tmp_path / "lerobot" / ck.WEIGHTS))
    (tmp_path / "lerobot" / "config.json").write_text(json.dumps({"type": "pi0"}))
    c = _model("pi0_tiny", 2)
    assert ck.detect_format(tmp_path / "lerobot") == ck.LEROBOT
    ck.load_weights(c, tmp_path / "lerobot")
    _same(a, c, skip=("value_head",))


def _broken(tmp_path, edit):
    a = _model("pi0_tiny", 0)
    ck.save_pirl(a, tmp_path)
    state = load_file(str(tmp_path / ck.WEIGHTS))
    edit(state)
    save_file(state, str(tmp_path / ck.WEIGHTS))
    return tmp_path


def _assert_untouched_error(path, match):
    b = _model("pi0_tiny", 1)
    before = {k: v.clone() for k, v in ck.model_tensors(b).items()}
    with pytest.raises(ck.CheckpointError, match=match):
        ck.load_weights(b, path)
    for k, v in ck.model_tensors(b).items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


def test_missing_key_is_an_error(tmp_path):
    key = "action_in_proj.bias"
    _assert_untouched_error(_broken(tmp_path, lambda s: s.pop(key)), f"1 missing: {key}")


def test_extra_key_is_an_error(tmp_path):
    _assert_untouched_error(_broken(tmp_path, lambda s: s.update(extra_proj=torch.randn(3))), "unexpected: extra_proj")


def test_wrong_shape_is_an_error(tmp_path):
    _assert_untouched_error(_broken(tmp_path, lambda s: s.update({"action_out_proj.bias": torch.randn(9)})),
                            r"wrong shape: action_out_proj.bias: checkpoint \(9,\) vs model \(8,\)")


def test_wrong_dtype_is_an_error(tmp_path):
    _assert_untouched_error(
        _broken(tmp_path, lambda s: s.update({"state_proj.bias": torch.randint(0, 5, (32,), dtype=torch.int32)})),
        "wrong dtype: state_proj.bias: checkpoint torch.int32")


def test_truncated_file_is_an_error(tmp_path):
    ck.save_pirl(_model("pi0_tiny", 0), tmp_path)
    data = (tmp_path / ck.WEIGHTS).read_bytes()
    (tmp_path / ck.WEIGHTS).write_bytes(data[: len(data) // 2])
    _assert_untouched_error(tmp_path, "truncated or corrupt")


def test_unknown_layout_is_an_error(tmp_path):
    save_file({"a": torch.randn(2)}, str(tmp_path / ck.WEIGHTS))
    with pytest.raises(ck.CheckpointError, match="cannot tell its format"):
        ck.detect_format(tmp_path)


def test_bf16_checkpoint_loads_into_fp32_model(tmp_path):
    a = _model("pi0_tiny", 0)
    ck.save_pirl(a, tmp_path, tensors={k: v.bfloat16() for k, v in ck.model_tensors(a).items()})
    b = _model("pi0_tiny", 1)
    ck.load_weights(b, tmp_path)
    for k, v in ck.model_tensors(b).items():
        assert v.dtype == torch.float32 and torch.equal(v, ck.model_tensors(a)[k].bfloat16().float()), k


# ---- lerobot folders ---------------------------------------------------------------------
def _hf_tokenizer(d):
    """A word-level tokenizer.json made with `tokenizers` (lerobot loads PaliGemma's by name)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "\n"] + "pick up the red cube open drawer".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_tokens([AddedToken("\n", normalized=False)])  # a token of its own, as in PaliGemma's
    d.mkdir(parents=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    return d, tok


def _lerobot_folder(tmp_path, name="pi0_tiny", **kw):
    a = _model(name, 0)
    stats = {k: replace(v, mode="quantile" if name == "pi05_tiny" else "zscore") for k, v in _stats().items()}
    tok_dir, tok = _hf_tokenizer(tmp_path / "tok")
    with pytest.warns(UserWarning, match="lerobot 0.6.1 builds only gemma_2b"):
        ck.export_lerobot(a, tmp_path / "lr", stats, state_dim=3, action_env_dim=3, tokenizer_name=str(tok_dir), **kw)
    return a, stats, tok, tmp_path / "lr"


def _run_cfg(path, name="pi0_tiny", **openpi):
    cfg = preset(name)
    return OmegaConf.create({"model_type": "openpi", "model_path": str(path), "action_dim": 3,
                             "num_action_chunks": cfg.action_horizon, "num_steps": 2,
                             "openpi": {"config_name": name, "pi05": name == "pi05_tiny",
                                        "action_horizon": cfg.action_horizon, "action_dim": cfg.action_dim,
                                        **openpi}})


def test_lerobot_folder_gives_weights_stats_tokenizer_and_relative_actions(tmp_path):
    from pirl.models.pi0 import build_pi0_policy

    a, stats, tok, path = _lerobot_folder(tmp_path, delta_action_mask=(True, False, True))
    assert ck.detect_format(path) == ck.LEROBOT
    keys = load_file(str(path / ck.WEIGHTS)).keys()
    assert {"model." + ck.LM_HEAD, "model." + ck.EMBED, "model." + ck.EXPERT_LM_HEAD} <= set(keys)
    policy = build_pi0_policy(_run_cfg(path))
    _same(a, policy.model, skip=("value_head",))
    proc = policy.processor
    assert proc.pcfg.delta_action_mask == (True, False, True)
    assert proc.norm_stats["state"].convention == "lerobot" and proc.mode("actions") == "zscore"
    x = torch.randn(5, 3)
    torch.testing.assert_close(proc.state(x), normalize(x, stats["state"], "zscore"), rtol=1e-6, atol=1e-6)
    ids = proc.tokenizer.token_ids("pick up the cube")
    assert ids == [2] + tok.encode("pick up the cube", add_special_tokens=False).ids + [4]  # <bos> ... "\n"


def test_lerobot_untied_lm_head_takes_the_embedding(tmp_path):
    _, _, _, path = _lerobot_folder(tmp_path)
    state = load_file(str(path / ck.WEIGHTS))
    embed = state["model." + ck.EMBED].clone()
    state["model." + ck.LM_HEAD] = torch.randn_like(embed)  # what lerobot writes after a fine-tune
    save_file(state, str(path / ck.WEIGHTS))
    b = _model("pi0_tiny", 1)
    with pytest.warns(UserWarning, match=f"taking {ck.EMBED}"):
        ck.load_weights(b, path)
    assert torch.equal(ck.model_tensors(b)[ck.EMBED], embed)


@pytest.mark.parametrize("field,value,message", [
    ("chunk_size", 16, "chunk_size 16 vs actor.model.openpi.action_horizon 4"),
    ("max_action_dim", 32, "max_action_dim 32 vs actor.model.openpi.action_dim 8"),
    ("tokenizer_max_length", 48, "tokenizer_max_length 48 vs actor.model.openpi.max_token_len 16"),
    ("type", "pi05", "type 'pi05' vs actor.model.openpi.pi05 False"),
    ("image_resolution", [224, 224], r"image_resolution \[224, 224\] vs actor.model.openpi.vision.image_size 28"),
    ("output_features", {"action": {"type": "ACTION", "shape": [7]}},
     "output_features.action.shape 7 vs actor.model.action_dim 3"),
    ("input_features", {"observation.images.wrist": {"type": "VISUAL", "shape": [3, 28, 28]},
                        "observation.images.top": {"type": "VISUAL", "shape": [3, 28, 28]}}, "camera order"),
])
def test_lerobot_config_contradicting_the_run_is_refused(tmp_path, field, value, message):
    _, _, _, path = _lerobot_folder(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta[field] = value
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match=message):
        ck.check_run_config(preset("pi0_tiny"), path, ck.LEROBOT, action_env_dim=3)


def test_lerobot_processor_modes_and_errors(tmp_path):
    from pirl.models.pi0 import build_pi0_policy

    a, stats, _, path = _lerobot_folder(tmp_path, name="pi05_tiny")
    found = ck.find_norm_stats(path, ck.LEROBOT)
    assert found["state"].mode == "quantile"
    x = torch.randn(4, 3)
    torch.testing.assert_close(normalize(x, found["actions"], "quantile"), normalize(x, stats["actions"], "quantile"),
                               rtol=1e-6, atol=1e-6)  # lerobot's formulas on the converted stats: the same transform
    with pytest.raises(ValueError, match="normalization 'zscore' contradicts the norm stats of 'state'"):
        build_pi0_policy(_run_cfg(path, "pi05_tiny", normalization="zscore"))
    pre = json.loads((path / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "normalizer_processor":
            step["config"]["norm_map"]["STATE"] = "QUANTILE10"
    (path / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(ck.CheckpointError, match="normalization QUANTILE10 of observation.state is not supported"):
        ck.find_norm_stats(path, ck.LEROBOT)


def test_openpi_export_has_every_key_of_openpis_model(tmp_path):
    a = _model("pi0_tiny", 0)
    ck.export_openpi(a, tmp_path, _stats())
    state = load_file(str(tmp_path / ck.WEIGHTS))
    head = state[ck.EXPERT_LM_HEAD]  # openpi's GemmaForCausalLM expert has it, unused
    assert head.shape == (a.cfg.expert.vocab_size, a.cfg.expert.width) and not head.any()
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["action_horizon"] = 50
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="action_horizon 50 vs actor.model.openpi.action_horizon 4"):
        ck.check_run_config(a.cfg, tmp_path, ck.OPENPI)


# ---- normalization conventions --------------------------------------------------------------
def test_lerobot_formulas_and_conversion_between_conventions():
    g = torch.Generator().manual_seed(0)
    lo = -torch.rand(4, generator=g) - 0.5
    st = NormStats(mean=torch.randn(4, generator=g), std=torch.rand(4, generator=g) + 0.3, q01=lo,
                   q99=lo + torch.tensor([1.0, 2.0, 0.0, 0.5]), min=lo - 1, max=lo + 2, convention="lerobot", eps=1e-8)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64).float()
    xd, m, s = x.double(), st.mean.double(), st.std.double()
    # lerobot's NormalizerProcessorStep, written out in float64 (d == 0 -> eps in quantile/minmax)
    torch.testing.assert_close(normalize(x, st, "zscore").double(), (xd - m) / (s + 1e-8), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(unnormalize(x, st, "zscore").double(), xd * s + m, rtol=1e-6, atol=1e-6)
    d = torch.where(st.q99 == st.q01, torch.tensor(1e-8), st.q99 - st.q01).double()
    torch.testing.assert_close(normalize(x, st, "quantile").double(), 2 * (xd - st.q01.double()) / d - 1,
                               rtol=1e-6, atol=1e-6)
    dm = (st.max - st.min).double()
    torch.testing.assert_close(unnormalize(x, st, "minmax").double(), (xd + 1) * dm / 2 + st.min.double(),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(normalize(x, st, "identity"), x)
    op = to_convention(st, "openpi", 1e-6)
    for mode in ("zscore", "minmax"):
        torch.testing.assert_close(normalize(x, op, mode), normalize(x, st, mode), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unnormalize(x, op, "zscore"), unnormalize(x, st, "zscore"), rtol=0, atol=1e-7)
    back = to_convention(op, "lerobot", 1e-8)
    torch.testing.assert_close(back.q99, st.q99, rtol=0, atol=1e-6)


def test_lerobot_tokenizer_by_hub_id_comes_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from pirl.models.pi0.tokenizer import HFTokenizer, load_tokenizer

    repo = tmp_path / "hub" / "models--google--paligemma-3b-pt-224"
    _hf_tokenizer(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = load_tokenizer("google/paligemma-3b-pt-224")
    assert isinstance(tok, HFTokenizer) and tok.name == "google/paligemma-3b-pt-224"
    assert tok.encode("pick up", add_bos=True) == [2, 5, 6]
    with pytest.raises(FileNotFoundError, match="nor in the local Hugging Face cache"):
        load_tokenizer("google/paligemma2-3b-pt-224")
