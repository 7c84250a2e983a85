"""OpenVLA-OFT checkpoints: the OpenVLA / OpenVLA-OFT Hugging Face layout (rlinf and official
variants, written here with timm names and a tokenizer trained here) and pirl's format;
strict, all-or-nothing errors that name the tensors, files and keys."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from oft_reference import (
    film_component, fold_film_component, ref_action_logits, to_hf_state, train_llama_tokenizer, write_hf_checkpoint,
)
from pirl.models.oft import checkpoint as ck
from pirl.models.oft.action_tokenizer import compute_statistics
from pirl.models.oft.configuration import OFFICIAL, preset
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import SentencePieceEncoder, pixel_values

TINY = preset("oft_tiny")
OFFICIAL_CFG = dataclasses.replace(TINY, variant=OFFICIAL, use_film=True, use_proprio=True, proprio_dim=5,
                                   num_images_in_input=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_llama_tokenizer(tmp_path_factory.mktemp("llama_sp"))


def _model(cfg=TINY, seed=0) -> OFTModel:
    torch.manual_seed(seed)
    m = OFTModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _stats(cfg=TINY):
    g = torch.Generator().manual_seed(0)
    return {"reach_no_noops": compute_statistics(torch.randn(50, cfg.action_dim, generator=g),
                                                 torch.randn(50, cfg.proprio_dim, generator=g))}


def _inputs(cfg, B=2):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.tokenizer_vocab, (B, cfg.max_prompt_length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 1:6] = False
    S = cfg.vision[0].image_size
    images = torch.randint(0, 256, (B, cfg.num_images_in_input, 3, S, S), generator=g, dtype=torch.uint8)
    return ids, mask, images


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_hf_layout_rlinf_variant_loads_strictly(tmp_path, tokenizer):
    a, b = _model(seed=0), _model(seed=1)
    write_hf_checkpoint(tmp_path, to_hf_state(a.state_dict()), TINY, tokenizer, _stats(), shards=3)
    assert ck.detect_format(tmp_path) == ck.HF
    b_value = {k: v.clone() for k, v in b.state_dict().items() if k.startswith("value_head.")}
    ck.load_weights(b, tmp_path)
    for k, v in b.state_dict().items():
        expect = b_value[k] if k.startswith("value_head.") else a.state_dict()[k]  # the critic is pirl's
        assert torch.equal(v, expect), k
    # The loaded model computes what a second implementation computes from the files.
    files = {}
    for f in sorted(tmp_path.glob("model-*.safetensors")):
        files.update(load_file(str(f)))
    ids, mask, images = _inputs(TINY)
    got, _ = b(ids, mask, pixel_values(images, TINY.vision))
    assert torch.allclose(got.double(), ref_action_logits(files, TINY, ids, mask, images), atol=2e-4)
    assert list(ck.read_statistics_of(tmp_path, ck.HF)) == ["reach_no_noops"]
    assert isinstance(ck.read_tokenizer(tmp_path, ck.HF, TINY.tokenizer_vocab), SentencePieceEncoder)


def test_hf_layout_official_variant_film_and_proprio(tmp_path, tokenizer):
    cfg = OFFICIAL_CFG
    a, b = _model(cfg, 0), _model(cfg, 1)
    hf = to_hf_state(a.state_dict())
    vision = {k: v for k, v in hf.items() if k.startswith("vision_backbone.")}
    film = {k: v for k, v in a.state_dict().items() if ".film." in k}
    comp = film_component(vision, film, rank=4, gen=torch.Generator().manual_seed(2))
    torch.save(comp, tmp_path / "vision_backbone--150000_checkpoint.pt")
    proprio = {"module." + k[len("proprio_projector."):]: v for k, v in a.state_dict().items()
               if k.startswith("proprio_projector.")}  # saved from a DDP module
    torch.save(proprio, tmp_path / "proprio_projector--150000_checkpoint.pt")
    (tmp_path / "lora_adapter").mkdir()
    (tmp_path / "lora_adapter" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    write_hf_checkpoint(tmp_path, hf, cfg, tokenizer, _stats(cfg))
    ck.load_weights(b, tmp_path)
    # Vision weights come from the FiLM file with its adapters folded in (alpha 2, r 4).
    T = dict(hf)
    T.update(fold_film_component(comp, alpha=2.0))
    T.update({k: v for k, v in a.state_dict().items() if k.startswith("proprio_projector.")})
    q = b.state_dict()["vision_backbone.fused_featurizer.blocks.1.self_attn.q_proj.weight"].double()
    D = q.shape[0]
    assert torch.allclose(q, T["vision_backbone.fused_featurizer.blocks.1.attn.qkv.weight"][:D].double(), atol=1e-6)
    ids, mask, images = _inputs(cfg)
    px = torch.randn(2, 5)
    got, _ = b(ids, mask, pixel_values(images, cfg.vision), px)
    ref = ref_action_logits(T, cfg, ids, mask, images, px, film=True, official=True)
    assert torch.allclose(got.double(), ref, atol=2e-4), (got.double() - ref).abs().max()


def test_official_lora_scale_defaults_to_min_rank_16(tmp_path):
    state = {"x.base_layer.weight": torch.ones(3, 2), "x.lora_A.default.weight": torch.ones(32, 2),
             "x.lora_B.default.weight": torch.ones(3, 32) * 0.5}
    folded = ck.fold_lora(state, tmp_path)  # no lora_adapter/: alpha = min(32, 16)
    assert torch.allclose(folded["x.weight"], torch.ones(3, 2) + 16 / 32 * 0.5 * 32 * torch.ones(3, 2))


def _write(tmp_path, tokenizer, mutate=None, cfg=TINY):
    hf = to_hf_state(_model(cfg).state_dict())
    if mutate:
        mutate(hf)
    return write_hf_checkpoint(tmp_path, hf, cfg, tokenizer, _stats(cfg), shards=2)


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.pop("language_model.model.layers.1.mlp.up_proj.weight"),
     r"1 missing: language_model\.model\.layers\.1\.mlp\.up_proj\.weight"),
    (lambda s: s.update({"vision_backbone.featurizer.blocks.0.attn.extra.weight": torch.zeros(2)}),
     r"unexpected: vision_backbone\.featurizer\.blocks\.0\.attn\.extra\.weight"),
    (lambda s: s.update({"projector.fc3.bias": torch.zeros(5)}), r"wrong shape: projector\.fc3\.bias: checkpoint \(5,\)"),
    (lambda s: s.update({"projector.fc3.bias": torch.zeros(64, dtype=torch.long)}), r"wrong dtype: projector\.fc3\.bias"),
    (lambda s: s.pop("vision_backbone.fused_featurizer.attn_pool.kv.weight"), r"attn_pool\.q without attn_pool\.kv"),
])
def test_bad_tensors_are_listed_and_nothing_is_copied(tmp_path, tokenizer, mutate, match):
    _write(tmp_path, tokenizer, mutate)
    m = _model(seed=3)
    before = _state(m)
    with pytest.raises(ck.CheckpointError, match=match):
        ck.load_weights(m, tmp_path)
    assert _unchanged(m, before)


def test_config_mismatch_names_the_keys(tmp_path, tokenizer):
    _write(tmp_path, tokenizer)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["text_config"]["hidden_size"] = 128
    meta["n_action_bins"] = 128
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match=r"text_config\.hidden_size: checkpoint 128 vs run 64.*n_action_bins"):
        ck.load_weights(_model(), tmp_path)


def test_truncated_shard_and_missing_files(tmp_path, tokenizer):
    _write(tmp_path, tokenizer)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ck.CheckpointError, match=shard.name):
        ck.load_weights(_model(), tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(ck.CheckpointError, match="no tokenizer.model"):
        ck.read_tokenizer(tmp_path, ck.HF, TINY.tokenizer_vocab)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ck.CheckpointError, match="model_type 'openvla'"):
        ck.detect_format(tmp_path)


def test_official_component_files_must_be_unique(tmp_path, tokenizer):
    _write(tmp_path, tokenizer, cfg=OFFICIAL_CFG)
    for step in (1, 2):
        torch.save({}, tmp_path / f"vision_backbone--{step}_checkpoint.pt")
    with pytest.raises(ck.CheckpointError, match="exactly one vision_backbone--<step>_checkpoint.pt"):
        ck.load_weights(_model(OFFICIAL_CFG), tmp_path)


def test_pirl_format_round_trip(tmp_path, tokenizer):
    a, b = _model(seed=0), _model(seed=1)
    ck.save_pirl(a, tmp_path, _stats(), SentencePieceEncoder(tokenizer))
    assert ck.detect_format(tmp_path) == ck.PIRL
    ck.load_weights(b, tmp_path)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    assert ck.read_statistics_of(tmp_path, ck.PIRL) == json.loads(json.dumps(_stats()))
    other = dataclasses.replace(TINY, num_action_chunks=8)
    with pytest.raises(ck.CheckpointError, match="num_action_chunks: checkpoint 4 vs run 8"):
        ck.load_weights(OFTModel(other), tmp_path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ck.CheckpointError, match="missing"):
        ck.load_weights(b, tmp_path)


def test_peft_adapter_folder_is_folded_into_the_hf_weights(tmp_path, tokenizer):
    a = _model(seed=0)
    hf = to_hf_state(a.state_dict())
    write_hf_checkpoint(tmp_path / "base", hf, TINY, tokenizer, _stats())
    g = torch.Generator().manual_seed(5)
    qkv = "vision_backbone.featurizer.blocks.0.attn.qkv"  # timm's fused qkv takes one adapter
    q = "language_model.model.layers.1.self_attn.q_proj"
    adapters = {}
    for mod in (qkv, q):
        W = hf[mod + ".weight"]
        adapters[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(4, W.shape[1], generator=g)
        adapters[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(W.shape[0], 4, generator=g)
    (tmp_path / "lora").mkdir()
    save_file(adapters, str(tmp_path / "lora" / "adapter_model.safetensors"))
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    b = _model(seed=1)
    ck.load_weights(b, tmp_path / "base", adapter=tmp_path / "lora")
    for mod in (qkv, q):
        A, B = adapters[f"base_model.model.{mod}.lora_A.weight"], adapters[f"base_model.model.{mod}.lora_B.weight"]
        expect = hf[mod + ".weight"].double() + 2.0 * B.double() @ A.double()
        if mod == qkv:
            D = expect.shape[0] // 3
            got = torch.cat([b.state_dict()[f"vision_backbone.featurizer.blocks.0.attention.{n}_proj.weight"]
                             for n in "qkv"])
            assert got.shape[0] == 3 * D
        else:
            got = b.state_dict()[mod + ".weight"]
        assert torch.allclose(got.double(), expect, atol=1e-5), mod
    adapters["base_model.model.projector.fc1.lora_A.weight"] = torch.randn(4, 3)
    adapters["base_model.model.projector.fc1.lora_B.weight"] = torch.randn(5, 4)
    save_file(adapters, str(tmp_path / "lora" / "adapter_model.safetensors"))
    with pytest.raises(ck.CheckpointError, match=r"projector\.fc1: A \(4, 3\) and B \(5, 4\) do not fit"):
        ck.load_weights(_model(seed=1), tmp_path / "base", adapter=tmp_path / "lora")
