"""π0 checkpoints: pirl / openpi / lerobot layouts round-trip; strict, all-or-nothing errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pirl.models.pi0 import checkpoint as ck
from pirl.models.pi0.configuration import preset
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.normalize import NormStats

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
