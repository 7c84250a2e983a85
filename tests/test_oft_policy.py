"""OpenVLA-OFT behind the policy interface, built from config: sample / evaluate / value /
sft_loss / save_pretrained; the actor's re-scored log-probs equal the rollout's."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from oft_reference import to_hf_state, train_llama_tokenizer, write_hf_checkpoint
from pirl.config.schema import PirlConfig
from pirl.flow import reduce_logprob
from pirl.models import build_policy
from pirl.models.oft import config_from_model_cfg
from pirl.models.oft.action_tokenizer import ActionTokenizer, compute_statistics
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import pixel_values

SAMPLING = {"do_sample": True, "temperature_train": 1.6, "temperature_eval": 0.0, "top_k": 50, "top_p": 0.95}


def _cfg(model=None, sampling=None, oft=None):
    m = {"model_type": "openvla_oft", "precision": "fp32", "action_dim": 2, "num_action_chunks": 4, "max_prompt_length": 24,
         "value_type": "action_level", "oft": {"config_name": "oft_tiny", "normalization": "none", **(oft or {})},
         **(model or {})}
    cfg = OmegaConf.merge(OmegaConf.structured(PirlConfig),
                          {"actor": {"model": m}, "rollout": {"sampling_params": {**SAMPLING, **(sampling or {})}}})
    return cfg


def _policy(cfg=None, seed=0):
    cfg = cfg if cfg is not None else _cfg()
    torch.manual_seed(seed)
    pol = build_policy(cfg.actor.model, state_dim=5, sampling=cfg.rollout.sampling_params)
    with torch.no_grad():
        for p in pol.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return pol.eval()


def _obs(B=3, seed=0, size=28):
    g = torch.Generator().manual_seed(seed)
    return {"main_images": torch.randint(0, 255, (B, size, size, 3), dtype=torch.uint8, generator=g),
            "states": torch.randn(B, 5, generator=g),
            "task_descriptions": ["move to the red target", "move to the blue target", "Open The Drawer"][:B]}


def test_sample_shapes_specs_and_actions_are_bin_centres():
    pol = _policy()
    fi = pol.preprocess(_obs())
    for name, spec in pol.input_spec().items():
        assert fi[name].shape[1:] == spec.shape and fi[name].dtype == spec.dtype, name
    s = pol.sample(fi, "train", torch.Generator().manual_seed(1))
    B, C, D = 3, 4, 2
    tok = s.replay["action_tokens"]
    spec = pol.replay_spec()["action_tokens"]
    assert tok.shape == (B, *spec.shape) and tok.dtype == spec.dtype and 0 <= tok.min() and tok.max() < 256
    assert s.actions.shape == (B, C, D) and s.logprob.shape == (B, C, D) and s.values.shape == (B, C)
    assert pol.value_shape == (C,)
    assert torch.equal(s.actions, ActionTokenizer(256).detokenize(tok))  # normalization none: bin centres
    assert (s.logprob < 0).all() and torch.isfinite(s.logprob).all()


def test_actor_logprobs_equal_the_rollouts_for_unchanged_weights():
    pol = _policy()
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, "train", torch.Generator().manual_seed(2))
    ev = pol.evaluate(fi, s.replay)
    assert torch.allclose(ev.logprob, s.logprob, atol=1e-6)
    assert torch.allclose(ev.values, s.values, atol=1e-6)
    # independently: the model's raw logits, temperature_train, top-k 50 and top-p 0.95 by hand
    with torch.no_grad():
        logits, _ = pol.model(fi["input_ids"], fi["attention_mask"], pixel_values(fi["images"], pol.model.cfg.vision))
    x = logits.double().view(3, 4, 2, 256) / 1.6
    kth = x.topk(50, dim=-1).values[..., -1:]
    x = x.masked_fill(x < kth, float("-inf"))
    p = x.softmax(-1)
    sp, order = p.sort(-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < 0.95  # a bin stays while the mass before it is below top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    x = x.masked_fill(~keep, float("-inf"))
    ref = x.log_softmax(-1).gather(-1, s.replay["action_tokens"][..., None])[..., 0]
    assert torch.allclose(s.logprob.double(), ref, atol=1e-5)
    assert ev.entropy.shape == (3, 4, 2) and (ev.entropy > 0).all()
    # logprob_type reductions see the flow policies' layout
    assert reduce_logprob(ev.logprob, "action_level").shape == (3, 4)
    assert reduce_logprob(ev.logprob, "chunk_level").shape == (3,)


def test_gradients_flow_from_evaluate():
    pol = _policy().train()
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, "train", torch.Generator().manual_seed(3))
    ev = pol.evaluate(fi, s.replay)
    (ev.logprob.sum() + ev.values.sum()).backward()
    assert pol.model.language_model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert pol.model.value_head.mlp[0].weight.grad.abs().sum() > 0


def test_eval_is_greedy_and_deterministic():
    pol = _policy()
    fi = pol.preprocess(_obs())
    a = pol.sample(fi, "eval", torch.Generator().manual_seed(4))
    b = pol.sample(fi, "eval", torch.Generator().manual_seed(5))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.logprob, torch.zeros_like(a.logprob))
    with torch.no_grad():
        logits, _ = pol.model(fi["input_ids"], fi["attention_mask"], pixel_values(fi["images"], pol.model.cfg.vision))
    assert torch.equal(a.replay["action_tokens"], logits.view(3, 4, 2, 256).argmax(-1))
    warm = _policy(_cfg(sampling={"temperature_eval": 0.6}))
    c = warm.sample(fi, "eval", torch.Generator().manual_seed(4))
    d = warm.sample(fi, "eval", torch.Generator().manual_seed(4))
    assert torch.equal(c.actions, d.actions)  # sampled eval: reproducible from its generator


def test_chunk_level_values_and_value():
    pol = _policy(_cfg(model={"value_type": "chunk_level"}))
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, "train", torch.Generator().manual_seed(6))
    assert s.values.shape == (3,) and pol.value_shape == ()
    assert torch.allclose(pol.value(fi), s.values)


def test_sft_loss_is_the_cross_entropy_of_the_demonstrated_bins():
    pol = _policy().train()
    obs = _obs()
    fi = pol.preprocess(obs)
    actions = torch.rand(3, 4, 2) * 2 - 1
    loss = pol.sft_loss(fi, actions)
    logits, _ = pol.model(fi["input_ids"], fi["attention_mask"], pixel_values(fi["images"], pol.model.cfg.vision))
    target = ActionTokenizer(256).tokenize(actions)
    ref = -logits.double().log_softmax(-1).view(3, 4, 2, 256).gather(-1, target[..., None]).mean()
    assert torch.allclose(loss.double(), ref, atol=1e-5)
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=3e-3)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = pol.sft_loss(pol.preprocess(obs), actions)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_save_pretrained_round_trip_with_lora_merged(tmp_path):
    pol = _policy(_cfg(model={"is_lora": True, "lora_rank": 4}))
    with torch.no_grad():
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, "train", torch.Generator().manual_seed(7))
    pol.save_pretrained(tmp_path / "ckpt", {"step": 3})
    assert json.loads((tmp_path / "ckpt" / "pirl_config.json").read_text())["tokenizer"] == "hashed_words"
    torch.manual_seed(5)  # another init: everything must come from the checkpoint
    reloaded = build_policy(_cfg(model={"model_path": str(tmp_path / "ckpt")}).actor.model, 5,
                            sampling=_cfg().rollout.sampling_params).eval()
    s2 = reloaded.sample(reloaded.preprocess(_obs()), "train", torch.Generator().manual_seed(7))
    assert torch.equal(s2.replay["action_tokens"], s.replay["action_tokens"])
    assert torch.allclose(s2.logprob, s.logprob, atol=1e-5)


def test_hf_checkpoint_with_statistics_and_tokenizer(tmp_path):
    tok = train_llama_tokenizer(tmp_path / "sp")
    cfg = _cfg(model={"model_path": str(tmp_path / "hf"), "unnorm_key": "reach", "max_prompt_length": 32},
               oft={"normalization": "bounds_q99"})
    oft_cfg = config_from_model_cfg(cfg.actor.model)
    torch.manual_seed(0)
    src = OFTModel(oft_cfg)
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(200, 2, generator=g, dtype=torch.float64) * torch.tensor([0.5, 2.0]) + torch.tensor([1.0, -3.0])
    write_hf_checkpoint(tmp_path / "hf", to_hf_state(src.state_dict()), oft_cfg, tok,
                        {"reach_no_noops": compute_statistics(acts)})
    pol = build_policy(cfg.actor.model, 5, sampling=cfg.rollout.sampling_params).eval()
    s = pol.sample(pol.preprocess(_obs()), "train", torch.Generator().manual_seed(8))
    q = torch.quantile(acts, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0)
    centres = ActionTokenizer(256).detokenize(s.replay["action_tokens"]).double()
    expect = 0.5 * (centres + 1) * (q[1] - q[0] + 1e-8) + q[0]
    assert torch.allclose(s.actions.double(), expect, atol=1e-5)
    assert pol.processor.tokenizer.encoder.sp.id_to_piece(int(pol.preprocess(_obs())["input_ids"][0, -1])) == "▁"


@pytest.mark.parametrize("change,match", [
    ({"oft": {"normalization": "bounds_q99"}}, r"normalization bounds_q99 needs dataset statistics"),
    ({"model": {"lora_path": "/x"}}, r"actor\.model\.lora_path: an adapter needs its base model"),
    ({"model": {"vocab_size": 32000}}, r"actor\.model\.vocab_size is 32000 but the model has 512"),
    ({"sampling": {"repetition_penalty": 1.1}}, r"repetition_penalty"),
    ({"model": {"attn_implementation": "flash_attention_2"}}, r"attn_implementation must be one of"),
    ({"oft": {"lora_targets": ["vlm"]}}, r"lora_targets must be a non-empty subset"),
    ({"model": {"implement_version": "rlinf", "use_film": True}}, r"official variant"),
])
def test_bad_config_is_refused_before_any_weight(change, match):
    cfg = _cfg(model=change.get("model"), sampling=change.get("sampling"), oft=change.get("oft"))
    with pytest.raises(ValueError, match=match):
        build_policy(cfg.actor.model, 5, sampling=cfg.rollout.sampling_params)
