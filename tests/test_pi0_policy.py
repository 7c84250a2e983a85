"""π0 / π0.5 behind the FlowPolicy interface: sample / evaluate / value / sft_loss /
save_pretrained, built from config."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from pirl.config.schema import PirlConfig
from pirl.models.pi0 import build_pi0_policy
from pirl.models.pi0.checkpoint import save_pirl
from pirl.models.pi0.normalize import NormStats


def _cfg(pi05=False, method="flow_sde", joint=False, **openpi):
    op = {"config_name": "pi05_tiny" if pi05 else "pi0_tiny", "pi05": pi05, "noise_method": method,
          "joint_logprob": joint, "train_expert_only": True, "max_token_len": 64}
    full = OmegaConf.merge(OmegaConf.structured(PirlConfig), {"actor": {"model": {
        "model_type": "openpi", "action_dim": 3, "num_action_chunks": 3, "num_steps": 4,
        "openpi": {"action_horizon": 4, "action_dim": 8, **op}}}})
    plain = OmegaConf.to_container(full, resolve=True)
    plain["actor"]["model"]["openpi"].update(openpi)  # keys the schema does not have yet (tokenizer_path)
    return OmegaConf.create(plain).actor.model


def _obs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"main_images": torch.randint(0, 255, (B, 40, 30, 3), dtype=torch.uint8, generator=g),
            "wrist_images": torch.randint(0, 255, (B, 28, 28, 3), dtype=torch.uint8, generator=g),
            "states": torch.randn(B, 4, generator=g), "task_descriptions": ["reach the red goal"] * B}


def _policy(*a, **kw):
    torch.manual_seed(0)
    pol = build_pi0_policy(_cfg(*a, **kw))
    with torch.no_grad():
        for p in pol.parameters():
            p.mul_(5.0)  # out of HF's 0.02 init range: real signal everywhere
    return pol


@pytest.mark.parametrize("pi05", [False, True])
def test_sde_sample_logprob_is_the_gaussian_of_the_chosen_step(pi05):
    pol = _policy(pi05)
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, generator=torch.Generator().manual_seed(1))
    K, B = 4, 3
    assert s.replay["chains"].shape == (B, K + 1, 4, 8) and s.actions.shape == (B, 3, 3) and s.logprob.shape == (B, 3, 3)
    assert (s.replay["step_mask"].sum(1) == 1).all()
    # independent float64 recomputation of x_{k+1} | x_k for each row's stochastic step
    with torch.no_grad():
        _, kv, pad = pol.model.prefix_forward(fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"])
        for b in range(B):
            k = int(s.replay["step_mask"][b].float().argmax())
            t = 1 - k / K
            x = s.replay["chains"][b:b + 1, k]
            v = pol.model.velocity(pol.model.suffix_forward(
                tuple((a[b:b + 1], c[b:b + 1]) for a, c in kv), pad[b:b + 1], fi["state"][b:b + 1], x,
                torch.tensor([t]))).double()
            x = x.double()
            sigma = 0.5 * math.sqrt(t / (1 - t)) if t < 1 else 0.5 * math.sqrt(K)
            mean = x - v / K - sigma ** 2 / K / (2 * t) * (x + (1 - t) * v)
            std = sigma * math.sqrt(1 / K)
            x_next = s.replay["chains"][b:b + 1, k + 1].double()
            lp = -((x_next - mean) ** 2) / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)
            torch.testing.assert_close(s.logprob[b].double(), lp[0, :3, :3], rtol=1e-4, atol=1e-4)
            for j in range(K):  # the other steps are ODE
                if j != k:
                    assert not s.replay["step_mask"][b, j]
    # actions are the chain's end, through the processor, executed part only
    torch.testing.assert_close(s.actions, pol.processor.postprocess(s.replay["chains"][:, -1], fi["raw_state"])[:, :3])


@pytest.mark.parametrize("pi05,method,joint", [(False, "flow_sde", False), (True, "flow_noise", True),
                                               (False, "flow_noise", True), (True, "flow_sde", False)])
def test_evaluate_rescores_sample_exactly_and_trains_the_expert_only(pi05, method, joint):
    pol = _policy(pi05, method, joint)
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, generator=torch.Generator().manual_seed(2))
    assert s.replay["step_mask"].all() if joint else (s.replay["step_mask"].sum(1) == 1).all()
    ev = pol.evaluate(fi, s.replay)
    torch.testing.assert_close(ev.logprob, s.logprob, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ev.values, s.values, rtol=1e-5, atol=1e-5)
    assert s.values.abs().sum() > 0 and ev.entropy.shape == (3, 3, 3)
    (ev.logprob.sum() + ev.values.sum() + ev.entropy.sum()).backward()
    assert all(p.grad is None for p in pol.model.paligemma_with_expert.paligemma.parameters())
    assert pol.model.paligemma_with_expert.gemma_expert.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    if method == "flow_noise":
        assert pol.model.noise_head.proj.weight.grad.abs().sum() > 0


def test_eval_mode_is_pure_ode():
    pol = _policy(True)
    fi = pol.preprocess(_obs())
    s = pol.sample(fi, mode="eval", generator=torch.Generator().manual_seed(3))
    assert not s.replay["step_mask"].any() and (s.logprob == 0).all()
    with torch.no_grad():
        _, kv, pad = pol.model.prefix_forward(fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"])
        x = s.replay["chains"][:, 0]
        for k in range(4):
            t = torch.full((3,), 1 - k / 4)
            x = x - pol.model.velocity(pol.model.suffix_forward(kv, pad, fi["state"], x, t)) / 4
            torch.testing.assert_close(s.replay["chains"][:, k + 1], x, rtol=1e-5, atol=1e-5)


def test_value_after_vlm_and_detached_critic():
    pol = _policy(False, value_after_vlm=True, detach_critic_input=True, train_expert_only=False)
    fi = pol.preprocess(_obs())
    v = pol.value(fi)
    assert v.shape == (3,) and v.abs().sum() > 0
    s = pol.sample(fi, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(s.values, v)
    ev = pol.evaluate(fi, s.replay)
    ev.values.sum().backward()
    assert pol.model.value_head.net[0].weight.grad.abs().sum() > 0
    lm = pol.model.paligemma_with_expert.language_model
    assert lm.layers[0].mlp.up_proj.weight.grad is None  # detached: the critic loss leaves the VLM alone


def test_builder_loads_a_pirl_checkpoint_and_checks_variant(tmp_path):
    pol = _policy(False)
    save_pirl(pol.model, tmp_path / "ck")
    cfg = _cfg(False)
    cfg.model_path = str(tmp_path / "ck")
    with pytest.raises(ValueError, match="tokenizer_path is required"):
        build_pi0_policy(cfg)
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        build_pi0_policy(_cfg(False, tokenizer_path=str(tmp_path / "none.model")))
    cfg05 = _cfg(True)
    cfg05.model_path = str(tmp_path / "ck")
    with pytest.raises(ValueError, match="pi05 False vs actor.model.openpi.pi05 True"):
        build_pi0_policy(cfg05)
    with pytest.raises(ValueError, match="config_name"):
        build_pi0_policy(_cfg(False, config_name="pi7"))


def _reload(cfg, path):
    cfg.model_path = str(path)
    return build_pi0_policy(cfg)


@pytest.mark.parametrize("pi05,sentencepiece", [(False, False), (True, True)])
def test_save_pretrained_reloads_weights_stats_and_tokenizer(pi05, sentencepiece, sp_model, tmp_path):
    extra = {"tokenizer_path": str(sp_model)} if sentencepiece else {}
    pol = _policy(pi05, **extra)
    stats = {"state": NormStats(mean=torch.randn(4), std=torch.rand(4) + 0.5, q01=-torch.rand(4) - 1, q99=torch.rand(4) + 1),
             "actions": NormStats(mean=torch.randn(3), std=torch.rand(3) + 0.5, q01=-torch.rand(3) - 1, q99=torch.rand(3) + 1)}
    pol.processor.norm_stats = stats
    out = pol.save_pretrained(tmp_path / "ck", {"sft_steps": 7})
    assert (out / "tokenizer.model").is_file() == sentencepiece
    assert json.loads((out / "train_meta.json").read_text()) == {"sft_steps": 7}
    again = _reload(_cfg(pi05), out)  # no tokenizer_path: the checkpoint's own tokenizer
    assert type(again.processor.tokenizer.encoder) is type(pol.processor.tokenizer.encoder)
    fi, fi2 = pol.preprocess(_obs()), again.preprocess(_obs())
    assert torch.equal(fi["tokens"], fi2["tokens"]) and torch.equal(fi["state"], fi2["state"])
    a = pol.sample(fi, mode="eval", generator=torch.Generator().manual_seed(5)).actions
    b = again.sample(fi2, mode="eval", generator=torch.Generator().manual_seed(5)).actions
    torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_save_pretrained_merges_lora_and_never_replaces_other_folders(tmp_path):
    cfg = _cfg(False, lora_targets=["expert"])
    cfg.is_lora, cfg.lora_rank = True, 4
    torch.manual_seed(0)
    pol = build_pi0_policy(cfg)
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # adapters that change the outputs
    fi = pol.preprocess(_obs())
    a = pol.sample(fi, mode="eval", generator=torch.Generator().manual_seed(6)).actions
    out = pol.save_pretrained(tmp_path / "ck")
    again = _reload(cfg, out)  # merged base weights + fresh (zero-B) adapters
    b = again.sample(again.preprocess(_obs()), mode="eval", generator=torch.Generator().manual_seed(6)).actions
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)

    user = tmp_path / "notes"
    user.mkdir()
    (user / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        pol.save_pretrained(user)
    assert (user / "todo.txt").read_text() == "mine" and not (tmp_path / "notes.tmp").exists()


def test_sft_loss_covers_demonstrated_steps_and_dims_only():
    from pirl.flow.matching import sample_times

    pol = _policy(True)
    fi = pol.preprocess(_obs())
    actions = torch.rand(3, 3, 3) * 2 - 1  # (B, C=3 of H=4, D_env=3 of D=8), env units
    loss = pol.sft_loss(fi, actions, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws: noise, then times
    noise = torch.randn(3, 4, 8, generator=g).double()
    t = sample_times(3, g).double()[:, None, None]
    a = torch.zeros(3, 4, 8, dtype=torch.float64)
    a[:, :3, :3] = actions.double()
    x_t = t * noise + (1 - t) * a
    with torch.no_grad():
        _, so, _ = pol.model.joint_forward(fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"],
                                           fi["state"], x_t.float(), t.flatten().float())
        v = pol.model.velocity(so).double()
    ref = ((v - (noise - a)) ** 2)[:, :3, :3].mean()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    w = pol.model.action_out_proj.weight.grad  # (D, We): rows of undemonstrated dims get no gradient
    assert w[:3].abs().sum() > 0 and (w[3:] == 0).all()


def test_actor_parameter_selection_keeps_the_builders_frozen_towers():
    """The actor's regex selection narrows what the builder left trainable: with
    train_expert_only the VLM stays frozen under empty `trainable` / `frozen` lists."""
    from pirl.engine.actor import select_trainable

    pol = build_pi0_policy(_cfg(False, train_expert_only=True))
    vlm = {n for n, _ in pol.named_parameters() if n.startswith("model.paligemma_with_expert.paligemma.")}
    n_train, n_total = select_trainable(pol, [], [])
    on = {n for n, p in pol.named_parameters() if p.requires_grad}
    assert vlm and not (vlm & on) and on
    assert n_train == sum(p.numel() for p in pol.parameters() if p.requires_grad) < n_total
    select_trainable(pol, [r"gemma_expert\."], [r"\.mlp\."])  # narrows further, never widens
    on2 = {n for n, p in pol.named_parameters() if p.requires_grad}
    assert on2 and on2 < on and all("gemma_expert." in n and ".mlp." not in n for n in on2)
    with pytest.raises(ValueError, match="no trainable parameter"):
        select_trainable(pol, [r"paligemma\.model\."], [])
