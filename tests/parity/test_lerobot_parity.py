"""π0 / π0.5 parity against lerobot 0.6.1 itself, in its own environment (`make test-parity`).

Tiny random models are built with lerobot's own classes (its hard-coded PaliGemma sizes
patched here only: width 64 / 32, 8 heads of 8, a 2-layer SigLIP of width 32 whose
projection_dim is the VLM width, a 512-token vocabulary), saved with lerobot's
`save_pretrained` and its processor pipelines, and loaded by pirl's builder. Compared on
fixed inputs (per-sample masked cameras, padded prompts):
- lerobot's own `denoise_step` at every t of its `sample_actions` (10 Euler steps) against
  pirl's velocity: rtol 1e-4; the sampled actions against pirl's ODE sampler: 5e-3;
- lerobot's preprocessor (tokens, normalized state) and postprocessor (env actions)
  against pirl's processor on the same raw observation;
- a lerobot checkpoint after one lerobot training step (embed_tokens and lm_head differ);
- the other way: pirl's lerobot export loads strictly in lerobot (every tensor equal) and
  lerobot reproduces pirl's outputs; pirl's openpi export loads with openpi's strict
  `safetensors.torch.load_model` into lerobot's port of openpi's module tree, tied as
  openpi's transformers 4.53 ties PaliGemma's lm_head to its embedding.
"""
import contextlib
import io
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.pi0 import modeling_pi0, processor_pi0
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi05 import modeling_pi05, processor_pi05
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.processor import (PolicyProcessorPipeline, RelativeActionsProcessorStep, TokenizerProcessorStep,
                               policy_action_to_transition, transition_to_policy_action)
from omegaconf import OmegaConf

from pirl.models.pi0 import build_pi0_policy
from pirl.models.pi0.checkpoint_lerobot import relative_mask

pytestmark = pytest.mark.parity

V, S, H, STATE_DIM, ACTION_DIM, B = 512, 28, 6, 6, 5, 3
VLM = dict(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8)
EXPERT = dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8)
VISION = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, image_size=S)
TOKENS = {"pi0": 16, "pi05": 72}  # π0: prompts cut (as lerobot cuts them); π0.5: whole
PROMPTS = ["pick up the red cube", "open the drawer", "place it on plate"]


# ---- lerobot, tiny ---------------------------------------------------------------------
@contextlib.contextmanager
def tiny_sizes():
    """lerobot's variant sizes replaced while inside (see the module docstring)."""
    mp = pytest.MonkeyPatch()
    sizes = {"gemma_2b": VLM, "gemma_300m": EXPERT}
    for mod in (modeling_pi0, modeling_pi05):
        mp.setattr(mod, "get_gemma_config", lambda variant, _m=mod: _m.GemmaConfig(**sizes[variant]))
        vlm_cls, expert_cls = mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM

        def vlm(config, _cls=vlm_cls):
            v = config.vision_config
            v.hidden_size, v.num_hidden_layers = VISION["hidden_size"], VISION["num_layers"]
            v.num_attention_heads, v.intermediate_size = VISION["num_heads"], VISION["intermediate_size"]
            v.projection_dim = config.text_config.hidden_size
            config.text_config.vocab_size = config._vocab_size = V
            return _cls(config)

        def expert(config, _cls=expert_cls):
            config.vocab_size = V
            return _cls(config)

        mp.setattr(mod, "PaliGemmaForConditionalGenerationWithPiGemma", vlm)
        mp.setattr(mod, "PiGemmaForCausalLM", expert)
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module", autouse=True)
def tiny_lerobot():
    with tiny_sizes():
        yield


def make_tokenizer(d):
    """A tiny Gemma-style tokenizer (SentencePiece BPE converted by transformers), saved as
    a directory lerobot's TokenizerProcessorStep loads by name (PaliGemma's cannot be downloaded)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    d.mkdir(parents=True, exist_ok=True)
    words = ["pick", "up", "the", "red", "cube", "place", "it", "on", "plate", "open", "drawer", "Task:",
             "State:", "Action:"] + [str(i) for i in range(256)]
    rng = np.random.default_rng(0)
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=300, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>",
        pad_piece="<pad>", unk_piece="<unk>", user_defined_symbols=["\n"], split_digits=True, minloglevel=2)
    (d / "src").mkdir()
    (d / "sp.model").rename(d / "src" / "tokenizer.model")
    (d / "src" / "tokenizer_config.json").write_text(json.dumps(  # as PaliGemma's: <bos> first
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False}))
    AutoTokenizer.from_pretrained(str(d / "src")).save_pretrained(str(d / "hf"))
    return d / "hf"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _features():
    inputs = {"observation.images.base": PolicyFeature(FeatureType.VISUAL, (3, S, S)),
              "observation.images.wrist": PolicyFeature(FeatureType.VISUAL, (3, S, S)),
              "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}


def _dataset_stats(seed):
    g = torch.Generator().manual_seed(seed)

    def one(n):
        q01 = -torch.rand(n, generator=g) - 0.5
        return {"mean": torch.randn(n, generator=g) * 0.3, "std": torch.rand(n, generator=g) + 0.5,
                "q01": q01, "q99": q01 + torch.rand(n, generator=g) + 1.0, "min": q01 - 1, "max": q01 + 3}

    return {"observation.state": one(STATE_DIM), "action": one(ACTION_DIM)}


def _lerobot_policy(kind, seed, **config):
    inputs, outputs = _features()
    cls, mod = (PI0Config, modeling_pi0) if kind == "pi0" else (PI05Config, modeling_pi05)
    cfg = cls(chunk_size=H, n_action_steps=H, image_resolution=(S, S), tokenizer_max_length=TOKENS[kind],
              device="cpu", input_features=inputs, output_features=outputs, **config)
    torch.manual_seed(seed)
    policy = (mod.PI0Policy if kind == "pi0" else mod.PI05Policy)(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights of a meaningful size everywhere (the 0.02 init hides bugs)
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return policy.eval()


def _processors(kind, cfg, tokenizer_dir, stats):
    mod = processor_pi0 if kind == "pi0" else processor_pi05
    make = processor_pi0.make_pi0_pre_post_processors if kind == "pi0" else processor_pi05.make_pi05_pre_post_processors
    with pytest.MonkeyPatch.context() as mp:  # lerobot hard-codes PaliGemma's hub id
        mp.setattr(mod, "TokenizerProcessorStep",
                   lambda **kw: TokenizerProcessorStep(**{**kw, "tokenizer_name": str(tokenizer_dir)}))
        return make(cfg, stats)


def _save_lerobot(policy, kind, folder, tokenizer_dir, seed):
    pre, post = _processors(kind, policy.config, tokenizer_dir, _dataset_stats(seed))
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    return folder


def _postprocessor(folder):
    """lerobot's postprocessor as its factory loads it (model actions in, actions out)."""
    return PolicyProcessorPipeline.from_pretrained(folder, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)


def one_training_step(lr, tokenizer_dir, seed):
    """One step of lerobot's own training of a π0: its preprocessor, loss and AdamW preset."""
    pre, _ = _processors("pi0", lr.config, tokenizer_dir, _dataset_stats(seed))
    g = torch.Generator().manual_seed(seed + 1)
    batch = {"observation.images.base": torch.rand(B, 3, S, S, generator=g),
             "observation.images.wrist": torch.rand(B, 3, S, S, generator=g),
             "observation.state": torch.randn(B, STATE_DIM, generator=g),
             "action": torch.randn(B, H, ACTION_DIM, generator=g), "task": list(PROMPTS)}
    lr.train()
    optimizer = lr.config.get_optimizer_preset().build(lr.get_optim_params())
    loss, _ = lr.forward(pre(batch))
    loss.backward()
    optimizer.step()
    lr.eval()


def _pirl_from_lerobot(tmp_path, tokenizer_dir, kind, seed):
    """A random lerobot model saved by lerobot, and pirl's policy built from that folder."""
    lr = _lerobot_policy(kind, seed=seed)
    folder = _save_lerobot(lr, kind, tmp_path / "lerobot", tokenizer_dir, seed=seed)
    with pytest.warns(UserWarning, match="taking paligemma_with_expert.paligemma.model.language_model.embed_tokens"):
        policy = build_pi0_policy(_run_config(kind, folder))
    return lr, folder, policy.eval()


def _run_config(kind, folder, **openpi):
    return OmegaConf.create({"model_type": "openpi", "model_path": str(folder), "action_dim": ACTION_DIM, "num_action_chunks": H,
            "num_steps": 10, "precision": "fp32",
            "openpi": {"config_name": "pi05_tiny" if kind == "pi05" else "pi0_tiny", "pi05": kind == "pi05",
                       "action_horizon": H, "action_dim": 32,
                       "paligemma": dict(VLM, vocab_size=V), "expert": dict(EXPERT, vocab_size=V), "vision": VISION,
                       "max_token_len": TOKENS[kind], "add_value_head": False, "train_expert_only": False, **openpi}})


# ---- fixed inputs ----------------------------------------------------------------------
def _model_inputs(seed):
    """Model-level inputs for both: 2 cameras (the second masked for sample 1), padded prompts."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(B, 3, S, S, generator=g) * 2 - 1 for _ in range(2)]
    masks = [torch.ones(B, dtype=torch.bool), torch.tensor([True, False, True])]
    L = TOKENS["pi0"]
    tokens = torch.randint(1, V, (B, L), generator=g)
    token_masks = torch.arange(L)[None] < torch.tensor([L, 5, 9])[:, None]
    state = torch.randn(B, 32, generator=g)
    pirl = {"images": torch.stack(images + [torch.full_like(images[0], -1.0)], dim=1),
            "image_masks": torch.stack(masks + [torch.zeros(B, dtype=torch.bool)], dim=1),
            "tokens": tokens, "token_masks": token_masks, "state": state}
    return images, masks, tokens, token_masks, state, pirl


def _lerobot_sample(policy, kind, images, masks, tokens, token_masks, state, noise):
    """lerobot's own sample_actions (10 Euler steps), recording each denoise_step's (x_t, t, v)."""
    inner, records = policy.model, []
    step = inner.denoise_step

    def recording(**kw):
        v = step(**kw)
        records.append((kw["x_t"].clone(), kw["timestep"].clone(), v.clone()))
        return v

    inner.denoise_step = recording
    try:
        with torch.no_grad():
            if kind == "pi0":
                actions = inner.sample_actions(images, masks, tokens, token_masks, state, noise=noise, num_steps=10)
            else:
                actions = inner.sample_actions(images, masks, tokens, token_masks, noise=noise, num_steps=10)
    finally:
        del inner.denoise_step
    return actions, records


def _assert_velocity_close(pirl_model, fi, records):
    with torch.no_grad():
        _, kv, pad = pirl_model.prefix_forward(fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"])
        for x_t, t, v_ref in records:
            v = pirl_model.velocity(pirl_model.suffix_forward(kv, pad, fi["state"], x_t, t))
            assert v_ref.abs().mean() > 0.1  # a real signal
            torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-4 * v_ref.abs().max().item())


def _pirl_ode(policy, fi, seed):
    """pirl's own sampler (eval mode: deterministic ODE over spec.num_steps), model units."""
    full = dict(fi, raw_state=fi["state"][:, :STATE_DIM])
    sample = policy.sample(full, mode="eval", generator=torch.Generator().manual_seed(seed))
    return sample.replay["chains"][:, -1]


def parity_errors(policy, lr, kind, seed):
    """Measured, not asserted: max |Δv| / max |v| over lerobot's 10 denoise steps, and the max
    absolute difference of the sampled actions (docs/benchmarks.md, bench/lerobot_parity.py)."""
    images, masks, tokens, token_masks, state, fi = _inputs_for(kind, seed)
    noise = torch.randn(B, H, 32, generator=torch.Generator().manual_seed(seed))
    actions, records = _lerobot_sample(lr, kind, images, masks, tokens, token_masks, state, noise)
    with torch.no_grad():
        _, kv, pad = policy.model.prefix_forward(fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"])
        dv = max(float((policy.model.velocity(policy.model.suffix_forward(kv, pad, fi["state"], x, t)) - v).abs().max()
                       / v.abs().max()) for x, t, v in records)
    return {"velocity": dv, "actions": float((_pirl_ode(policy, fi, seed) - actions).abs().max())}


def _inputs_for(kind, seed):
    images, masks, tokens, token_masks, state, fi = _model_inputs(seed)
    if kind == "pi05":  # π0.5 prompts are longer (state bins in the prompt)
        L = TOKENS["pi05"]
        g = torch.Generator().manual_seed(seed + 1)
        tokens = torch.randint(1, V, (B, L), generator=g)
        token_masks = torch.arange(L)[None] < torch.tensor([L, 7, 30])[:, None]
        fi.update(tokens=tokens, token_masks=token_masks)
    return images, masks, tokens, token_masks, state, fi


def _check_model_parity(policy, lr, kind, seed):
    images, masks, tokens, token_masks, state, fi = _inputs_for(kind, seed)
    noise = torch.randn(B, H, 32, generator=torch.Generator().manual_seed(seed))
    actions, records = _lerobot_sample(lr, kind, images, masks, tokens, token_masks, state, noise)
    assert len(records) == 10 and {round(float(t[0]), 3) for _, t, _ in records} == {round(1 - k / 10, 3)
                                                                                      for k in range(10)}
    _assert_velocity_close(policy.model, fi, records)
    ours = _pirl_ode(policy, fi, seed)
    assert (actions - noise).abs().mean() > 0.1
    torch.testing.assert_close(ours, actions, rtol=0, atol=5e-3)
    return actions


# ---- lerobot -> pirl -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_lerobot_checkpoint_loads_and_matches_lerobot(tmp_path, tokenizer_dir, kind):
    lr, _, policy = _pirl_from_lerobot(tmp_path, tokenizer_dir, kind, seed=0)
    _check_model_parity(policy, lr, kind, seed=1)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_processors_match_lerobots_pipelines(tmp_path, tokenizer_dir, kind):
    """Raw observation -> tokens, normalized state (lerobot's preprocessor) and model actions
    -> env actions (its postprocessor), both loaded from the saved folder."""
    lr, folder, policy = _pirl_from_lerobot(tmp_path, tokenizer_dir, kind, seed=2)
    pre = PolicyProcessorPipeline.from_pretrained(folder, config_filename="policy_preprocessor.json")
    post = _postprocessor(folder)
    g = torch.Generator().manual_seed(3)
    pixels = [torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g) for _ in range(2)]
    raw_state = torch.randn(B, STATE_DIM, generator=g) * 0.5
    batch = {"observation.images.base": pixels[0].permute(0, 3, 1, 2).float() / 255,
             "observation.images.wrist": pixels[1].permute(0, 3, 1, 2).float() / 255,
             "observation.state": raw_state.clone(), "task": list(PROMPTS)}
    ref = pre(batch)
    ours = policy.processor({"main_images": pixels[0], "wrist_images": pixels[1], "states": raw_state,
                             "task_descriptions": list(PROMPTS)})
    assert torch.equal(ours["tokens"], ref["observation.language.tokens"])
    assert torch.equal(ours["token_masks"], ref["observation.language.attention_mask"].bool())
    torch.testing.assert_close(ours["state"][:, :STATE_DIM], ref["observation.state"], rtol=1e-6, atol=1e-6)
    images, masks = lr._preprocess_images(ref)
    torch.testing.assert_close(ours["images"][:, :2], torch.stack(images, 1), rtol=0, atol=1e-6)
    model_actions = torch.randn(B, H, 32, generator=g)
    torch.testing.assert_close(policy.processor.postprocess(model_actions, raw_state),
                               post(model_actions[..., :ACTION_DIM]), rtol=1e-6, atol=1e-6)


def test_relative_action_mask_is_lerobots():
    names = ["x", "y", "z", "roll", "Gripper_L"]
    for exclude in (["gripper"], [], ["z", "roll"]):
        step = RelativeActionsProcessorStep(enabled=True, exclude_joints=exclude, action_names=names)
        assert list(relative_mask(5, exclude, names)) == step._build_mask(5), exclude
    assert list(relative_mask(3, ["gripper"], None)) == RelativeActionsProcessorStep(
        enabled=True, exclude_joints=["gripper"], action_names=None)._build_mask(3)


def test_lerobot_checkpoint_after_one_training_step(tmp_path, tokenizer_dir):
    """One step of lerobot's own training (its loss, its AdamW preset) updates embed_tokens and
    leaves the untied lm_head: pirl must take the embedding."""
    kind = "pi0"
    lr = _lerobot_policy(kind, seed=4, optimizer_lr=1e-2)
    embed = lr.model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight
    before = embed.detach().clone()
    one_training_step(lr, tokenizer_dir, seed=4)
    assert not torch.equal(embed, before)
    folder = _save_lerobot(lr, kind, tmp_path / "trained", tokenizer_dir, seed=4)
    with pytest.warns(UserWarning, match="taking .*embed_tokens"):
        policy = build_pi0_policy(_run_config(kind, folder))
    _check_model_parity(policy.eval(), lr, kind, seed=6)
    # The finding this guards: the lm_head in place of the embedding changes the outputs.
    taken = policy.model.paligemma_with_expert.language_model.embed_tokens.weight
    head = lr.model.paligemma_with_expert.paligemma.lm_head.weight
    assert not torch.allclose(taken, head)


def test_run_config_contradicting_lerobots_is_refused(tmp_path, tokenizer_dir):
    folder = _save_lerobot(_lerobot_policy("pi0", seed=7), "pi0", tmp_path / "lerobot", tokenizer_dir, seed=7)
    bad = _run_config("pi0", folder)
    bad.update(action_horizon=50, num_action_chunks=50)
    with pytest.raises(ValueError, match="chunk_size 6 vs actor.model.openpi.action_horizon 50"):
        build_pi0_policy(bad)


# ---- pirl -> lerobot / openpi ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_pirl_lerobot_export_loads_strictly_in_lerobot(tmp_path, tokenizer_dir, kind):
    _, _, policy = _pirl_from_lerobot(tmp_path, tokenizer_dir, kind, seed=8)
    with torch.no_grad():  # RL-tuned stand-in: every pirl weight moved
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with pytest.warns(UserWarning, match="lerobot 0.6.1 builds only gemma_2b"):
        out = policy.export(tmp_path / "export", "lerobot")
    cls = modeling_pi0.PI0Policy if kind == "pi0" else modeling_pi05.PI05Policy
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        back = cls.from_pretrained(out, strict=True).eval()
    assert "All keys loaded successfully!" in log.getvalue(), log.getvalue()
    theirs = back.model.state_dict()
    mine = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert {"model." + k for k in theirs} == set(mine)
    for k, v in theirs.items():
        assert torch.equal(v, mine["model." + k]), k
    _check_model_parity(policy, back, kind, seed=9)
    pre = PolicyProcessorPipeline.from_pretrained(out, config_filename="policy_preprocessor.json")
    post = _postprocessor(out)
    g = torch.Generator().manual_seed(10)
    pixels = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g)
    raw_state = torch.randn(B, STATE_DIM, generator=g) * 0.5
    ref = pre({"observation.images.base_0_rgb": pixels.permute(0, 3, 1, 2).float() / 255,
               "observation.state": raw_state.clone(), "task": list(PROMPTS)})
    ours = policy.processor({"main_images": pixels, "states": raw_state, "task_descriptions": list(PROMPTS)})
    assert torch.equal(ours["tokens"], ref["observation.language.tokens"])
    torch.testing.assert_close(ours["state"][:, :STATE_DIM], ref["observation.state"], rtol=1e-6, atol=1e-6)
    model_actions = torch.randn(B, H, 32, generator=g)
    torch.testing.assert_close(policy.processor.postprocess(model_actions, raw_state),
                               post(model_actions[..., :ACTION_DIM]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_pirl_openpi_export_loads_with_openpis_strict_loader(tmp_path, tokenizer_dir, kind):
    _, _, policy = _pirl_from_lerobot(tmp_path, tokenizer_dir, kind, seed=11)
    out = policy.export(tmp_path / "openpi", "openpi")
    port = _lerobot_policy(kind, seed=12)  # fresh weights, overwritten by the load below
    pg = port.model.paligemma_with_expert.paligemma
    pg.lm_head.weight = pg.model.language_model.embed_tokens.weight  # openpi's tie
    safetensors.torch.load_model(port.model, str(out / "model.safetensors"), strict=True)
    _check_model_parity(policy, port.eval(), kind, seed=13)
