"""Triton kernels (pirl.kernels) under Triton's CPU interpreter against float64 math.

The kernels read TRITON_INTERPRET when they launch, not when pirl.kernels is imported, so
each test turns the interpreter on with monkeypatch and the file runs in any order with
the rest of the suite. Every kernel output is allocated NaN-filled (the `_empty` hook) so
an element the kernel forgets to write fails the comparison.

Tolerances: fp32 kernels vs float64 math on the same (bf16-rounded where bf16) inputs:
values rtol 1e-5 / atol 1e-4 (log-probs of ~1e3 summed elements), gradients rtol 1e-4 /
atol 1e-5; bf16 gradients are stored in bf16, so rtol 1e-2 there.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from pirl.algos.losses import ppo_loss
from pirl.flow import (ACTION_LEVEL, CHUNK_LEVEL, FLOW_NOISE, FLOW_SDE, LOGPROB_TYPES, ODE, TOKEN_LEVEL,
                       FlowSpec, chain_logprob, executed, reduce_logprob, sample_chain, select_steps)
from pirl.kernels import dispatch, reference
from pirl.kernels import flow_step as K

LOG_2PI = math.log(2.0 * math.pi)
SHAPES = [  # (B, H, D, C, D_env): odd sizes; in the second, D=33 pads to a 64-wide tile row
    # and the denoise / backward kernels loop over two horizon tiles (BLOCK_H 32)
    (5, 7, 6, 4, 5),
    (3, 50, 33, 37, 31),
]


@pytest.fixture
def triton_cpu(monkeypatch):
    """Force the Triton path on CPU tensors through the interpreter, outputs NaN-poisoned."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    monkeypatch.setattr(K, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                             device=device))


# ---- float64 math, written from DESIGN.md independently of pirl.flow.transitions ----------
def transition64(x, v, t, delta, method, a, std):
    """Mean and std (B, H, D) float64 of x_{t−δ} | x_t."""
    x, v = x.double(), v.double()
    tb = t.double().reshape(-1, 1, 1)
    mean = x - delta * v
    if method == FLOW_SDE:
        one_minus_t = torch.where(tb >= 1.0, torch.full_like(tb, delta), 1.0 - tb)
        sigma = a * torch.sqrt(tb / one_minus_t)
        mean = mean - sigma**2 * delta / (2.0 * tb) * (x + (1.0 - tb) * v)
        return mean, (sigma * math.sqrt(delta)).expand_as(mean)
    return mean, std.double().expand_as(mean)


def logprob64(x, v, y, t, delta, method, a, std, C, DE, logprob_type):
    mean, s = transition64(x, v, t, delta, method, a, std)
    lp = -((y.double() - mean) ** 2) / (2.0 * s**2) - torch.log(s) - 0.5 * LOG_2PI
    ent = torch.log(s) + 0.5 * LOG_2PI + 0.5
    box = (slice(None), slice(0, C), slice(0, DE))
    dims = {TOKEN_LEVEL: (), ACTION_LEVEL: (2,), CHUNK_LEVEL: (1, 2)}[logprob_type]
    red = (lambda z: z.sum(dim=dims)) if dims else (lambda z: z)
    return red(lp[box]), red(ent[box])


def random_step(B, H, D, K_steps, dtype, gen, t_one=True):
    """x_t, v (in dtype), t on the K-step grid (row 0 at t=1 to hit the guard), a learned
    std in [0.3, 1.0] (in dtype) and fp32 ε, from which tests build x_next = μ + std·ε as
    the sampler stores it."""
    x = torch.randn(B, H, D, generator=gen)
    v = torch.randn(B, H, D, generator=gen)
    t = torch.randint(0, K_steps, (B,), generator=gen).float().mul(-1.0 / K_steps).add(1.0)
    if t_one:
        t[0] = 1.0
    std = 0.3 + 0.7 * torch.rand(B, H, D, generator=gen)
    eps = torch.randn(B, H, D, generator=gen)
    return x.to(dtype), v.to(dtype), t, std.to(dtype), eps


def seed_of(*key) -> int:
    """A per-case seed stable across processes (str hashes are salted per process)."""
    return zlib.crc32(repr(key).encode())


def _close(actual, expected, rtol, atol, what):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---- the fused log-prob -------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", [FLOW_SDE, FLOW_NOISE])
def test_flow_step_logprob_values_and_grads(triton_cpu, shape, dtype, method):
    B, H, D, C, DE = shape
    gen = torch.Generator().manual_seed(seed_of(shape, dtype, method))
    K_steps, a = 5, 0.7
    delta = 1.0 / K_steps
    x, v, t, std, eps = random_step(B, H, D, K_steps, dtype, gen)
    mean, s = transition64(x, v, t, delta, method, a, std)
    y = (mean + s * eps.double()).to(dtype)
    grad_rtol = 1e-4 if dtype == torch.float32 else 1e-2
    for logprob_type in LOGPROB_TYPES:
        leaves = [z.clone().requires_grad_() for z in (x, v, y, std)]
        lp, ent = dispatch.flow_step_logprob(*leaves[:3], t, delta, method, a, leaves[3], C, DE, logprob_type)
        leaves64 = [z.double().requires_grad_() for z in (x, v, y, std)]
        lp64, ent64 = logprob64(*leaves64[:3], t, delta, method, a, leaves64[3], C, DE, logprob_type)
        assert lp.dtype == ent.dtype == torch.float32 and lp.shape == lp64.shape
        _close(lp, lp64, 1e-5, 1e-4, f"logprob {logprob_type}")
        _close(ent, ent64, 1e-5, 1e-4, f"entropy {logprob_type}")
        w_lp, w_ent = torch.randn(lp.shape, generator=gen), torch.randn(lp.shape, generator=gen)
        grads = torch.autograd.grad((w_lp * lp).sum() + (w_ent * ent).sum(), leaves, allow_unused=True)
        grads64 = torch.autograd.grad((w_lp * lp64).sum() + (w_ent * ent64).sum(), leaves64, allow_unused=True)
        for name, g, g64 in zip(("x_t", "v", "x_next", "learned_std"), grads, grads64):
            if method == FLOW_SDE and name == "learned_std":
                assert g is None  # SDE's std is a function of t alone
                continue
            assert g.dtype == dtype and not torch.isnan(g).any(), name
            _close(g, g64, grad_rtol, 1e-5, f"grad {name} {logprob_type}")


@pytest.mark.parametrize("method", [FLOW_SDE, FLOW_NOISE])
def test_step_logprob_matches_transitions_reference(triton_cpu, method):
    """dispatch.step_logprob (chain.py's call) keeps transitions.step_logprob's contract:
    element-wise (B, H, D) log-prob and entropy, gradients in v and learned_std."""
    gen = torch.Generator().manual_seed(3)
    x, v, t, std, eps = random_step(4, 6, 5, 4, torch.float32, gen)
    y = x - 0.25 * v + 0.4 * eps
    vt, st = v.clone().requires_grad_(), std.clone().requires_grad_()
    vr, sr = v.clone().requires_grad_(), std.clone().requires_grad_()
    lp, ent = dispatch.step_logprob(x, vt, y, t, 0.25, method, 0.5, st)
    lpr, entr = reference.step_logprob(x, vr, y, t, 0.25, method, 0.5, sr)
    _close(lp, lpr, 1e-6, 1e-5, "logprob")
    _close(ent, entr, 1e-6, 1e-6, "entropy")
    w = torch.randn(lp.shape, generator=gen)
    g = torch.autograd.grad((w * lp).sum() + ent.sum(), [vt, st], allow_unused=True)
    gr = torch.autograd.grad((w * lpr).sum() + entr.sum(), [vr, sr], allow_unused=True)
    for a_, b_ in zip(g, gr):
        assert (a_ is None) == (b_ is None)
        if a_ is not None:
            _close(a_, b_, 1e-5, 1e-6, "grad")


@pytest.mark.parametrize("use", ["logprob", "entropy"])
def test_backward_through_one_output(triton_cpu, use):
    """Only one output feeds the loss (the PPO ratio without an entropy bonus, or the
    entropy alone): the other's gradient is absent, not garbage."""
    gen = torch.Generator().manual_seed(13)
    x, v, t, std, eps = random_step(3, 4, 5, 4, torch.float32, gen)
    y = x - 0.25 * v + std * eps
    idx = 0 if use == "logprob" else 1
    leaves = [v.clone().requires_grad_(), std.clone().requires_grad_()]
    out = dispatch.flow_step_logprob(x, *leaves[:1], y, t, 0.25, FLOW_NOISE, 0.0, leaves[1], 3, 4, ACTION_LEVEL)[idx]
    leaves64 = [v.double().requires_grad_(), std.double().requires_grad_()]
    out64 = logprob64(x, leaves64[0], y, t, 0.25, FLOW_NOISE, 0.0, leaves64[1], 3, 4, ACTION_LEVEL)[idx]
    w = torch.randn(out.shape, generator=gen)
    g = torch.autograd.grad((w * out).sum(), leaves, allow_unused=True)
    g64 = torch.autograd.grad((w * out64).sum(), leaves64, allow_unused=True)
    assert (g[0] is None) == (use == "entropy") == (g64[0] is None)
    for a_, b_ in zip(g, g64):
        if a_ is not None:
            _close(a_, b_, 1e-4, 1e-5, f"grad through {use}")


def test_learned_std_gradient_by_finite_differences(triton_cpu):
    """∂/∂std of Σ w_lp·lp + w_ent·ent, by central differences of the kernel itself. The
    token-level output is element-separable, so one perturbation of every std element at
    once gives every element's derivative. eps 3e-3: truncation ~eps²·|f'''|/6 ≈ 2e-4,
    fp32 rounding ≈ 1e-7·|lp|/eps ≈ 1e-4."""
    gen = torch.Generator().manual_seed(11)
    B, H, D = 4, 5, 7
    x, v, t, std, eps_n = random_step(B, H, D, 4, torch.float32, gen)
    std = 0.5 + 0.5 * torch.rand(B, H, D, generator=gen)
    y = x - 0.25 * v + std * eps_n
    w_lp, w_ent = torch.randn(B, H, D, generator=gen), torch.randn(B, H, D, generator=gen)

    def f(s):
        lp, ent = dispatch.flow_step_logprob(x, v, y, t, 0.25, FLOW_NOISE, 0.0, s)
        return w_lp * lp + w_ent * ent

    s = std.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(s).sum(), [s])
    h = 3e-3
    with torch.no_grad():
        fd = (f(std + h) - f(std - h)) / (2 * h)
    _close(g, fd, 2e-3, 2e-3, "d/dstd vs finite differences")


def test_non_contiguous_and_broadcast_inputs(triton_cpu):
    """Sliced chain rows, a transposed v, a stride-0 t and a (B, 1, D) std broadcast over H
    are read in place; the std gradient comes back in the std's own shape."""
    gen = torch.Generator().manual_seed(5)
    B, K1, H, D = 3, 5, 9, 6
    chains = torch.randn(B, K1, H, D, generator=gen)
    x, y = chains[:, 1], chains[:, 2]  # strides (K1·H·D, D, 1): not contiguous
    v = torch.randn(B, D, H, generator=gen).transpose(1, 2)
    t = torch.tensor(0.75).expand(B)
    std_small = (0.4 + 0.5 * torch.rand(B, 1, D, generator=gen)).requires_grad_()
    std_ref = std_small.detach().clone().requires_grad_()
    vt, vr = v.clone().requires_grad_(), v.detach().clone().requires_grad_()
    assert not x.is_contiguous() and not v.is_contiguous() and t.stride(0) == 0
    for method in (FLOW_SDE, FLOW_NOISE):
        lp, ent = dispatch.flow_step_logprob(x, vt, y, t, 0.25, method, 0.6, std_small, 7, 4, ACTION_LEVEL)
        lpr, entr = reference.flow_step_logprob(x, vr, y, t, 0.25, method, 0.6, std_ref, 7, 4, ACTION_LEVEL)
        _close(lp, lpr, 1e-5, 1e-5, f"{method} logprob")
        _close(ent, entr, 1e-5, 1e-5, f"{method} entropy")
        g = torch.autograd.grad(lp.sum() + ent.sum(), [vt, std_small], allow_unused=True)
        gr = torch.autograd.grad(lpr.sum() + entr.sum(), [vr, std_ref], allow_unused=True)
        _close(g[0], gr[0], 1e-5, 1e-6, f"{method} grad v")
        if method == FLOW_NOISE:
            assert g[1].shape == std_small.shape
            _close(g[1], gr[1], 1e-5, 1e-5, "grad std")
        x_next, lp_step = dispatch.denoise_step(x, v, t, 0.25, y, torch.tensor([True, False, True]), method, 0.6,
                                                std_small)
        xr, lpr_step = reference.denoise_step(x, v, t, 0.25, y, torch.tensor([True, False, True]), method, 0.6,
                                              std_small)
        _close(x_next, xr, 1e-6, 1e-6, f"{method} x_next")
        _close(lp_step, lpr_step, 1e-5, 1e-5, f"{method} step logprob")


# ---- the fused denoising step ---------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", [ODE, FLOW_SDE, FLOW_NOISE])
def test_fused_denoise_step(triton_cpu, shape, dtype, method):
    B, H, D = shape[:3]
    gen = torch.Generator().manual_seed(seed_of(shape, dtype, method, "denoise"))
    K_steps, a = 4, 0.5
    delta = 1.0 / K_steps
    x, v, t, std, eps = random_step(B, H, D, K_steps, dtype, gen)
    eps = eps.to(dtype)
    stochastic = torch.arange(B) % 2 == 0  # rows 0, 2, ...; row 0 sits at t=1
    x_next, lp = dispatch.denoise_step(x, v, t, delta, eps, stochastic, method, a, std)
    ode64 = x.double() - delta * v.double()
    if method == ODE:
        exp_x, exp_lp = ode64, torch.zeros_like(ode64)
    else:
        mean, s = transition64(x, v, t, delta, method, a, std)
        sample = mean + s * eps.double()
        row = stochastic.reshape(B, 1, 1)
        exp_x = torch.where(row, sample, ode64)
        exp_lp = torch.where(row, -0.5 * eps.double() ** 2 - torch.log(s) - 0.5 * LOG_2PI, torch.zeros_like(s))
    assert x_next.dtype == lp.dtype == torch.float32
    _close(x_next, exp_x, 1e-5, 1e-5, "x_next")
    _close(lp, exp_lp, 1e-5, 1e-4, "logprob")


# ---- dispatch ---------------------------------------------------------------------------------
def test_dispatch_selects_backend(monkeypatch):
    x = torch.randn(2, 3, 4)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for choice, expected in (("auto", "torch"), ("torch", "torch"), ("", "torch")):
        monkeypatch.setenv(dispatch.BACKEND_ENV, choice)
        assert dispatch.backend(x) == expected
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.backend(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.backend(x) == "triton"
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="PIRL_KERNELS"):
        dispatch.backend(x)


def test_logprob_type_names_match_flow():
    assert set(reference.LOGPROB_TYPES) == set(LOGPROB_TYPES) == set(K.REDUCE_CODES)


def test_bad_inputs_fail_clearly(triton_cpu):
    gen = torch.Generator().manual_seed(2)
    x, v, t, std, eps = random_step(3, 4, 5, 4, torch.float32, gen)
    with pytest.raises(ValueError, match="learned_std"):
        dispatch.step_logprob(x, v, x, t, 0.25, FLOW_NOISE, 0.0, None)
    with pytest.raises(ValueError, match="x_next must have shape"):
        dispatch.step_logprob(x, v, x[:, :3], t, 0.25, FLOW_SDE, 0.5)
    with pytest.raises(ValueError, match=r"t must be per-sample \(B,\)"):
        dispatch.step_logprob(x, v, x, t[:2], 0.25, FLOW_SDE, 0.5)
    with pytest.raises(ValueError, match="no density"):
        dispatch.step_logprob(x, v, x, t, 0.25, ODE)
    with pytest.raises(ValueError, match="action_chunk=5"):
        dispatch.flow_step_logprob(x, v, x, t, 0.25, FLOW_SDE, 0.5, None, 5, 2)
    with pytest.raises(ValueError, match="logprob_type"):
        dispatch.flow_step_logprob(x, v, x, t, 0.25, FLOW_SDE, 0.5, None, 2, 2, "sample_level")
    with pytest.raises(TypeError, match="v must be one of"):
        dispatch.step_logprob(x, v.double(), x, t, 0.25, FLOW_SDE, 0.5)
    with pytest.raises(ValueError, match="stochastic must be"):
        dispatch.denoise_step(x, v, t, 0.25, eps, torch.ones(3), FLOW_SDE, 0.5)
    with pytest.raises(ValueError, match="noise_method"):
        dispatch.denoise_step(x, v, t, 0.25, eps, torch.ones(3, dtype=torch.bool), "sde", 0.5)


# ---- Flow-SDE / Flow-Noise PPO through pirl.flow: reference path == interpreted Triton path --
class TinyVelocity(nn.Module):
    """v_θ(x_t, t) and a learned std squashed into [0.08, 0.16], from a 2-layer MLP."""

    def __init__(self, H, D, width=32):
        super().__init__()
        self.H, self.D = H, D
        self.net = nn.Sequential(nn.Linear(H * D + 1, width), nn.SiLU(), nn.Linear(width, 2 * H * D))

    def forward(self, x_t, t):
        out = self.net(torch.cat([x_t.flatten(1), t[:, None]], dim=1))
        v, s = out.view(-1, 2, self.H, self.D).unbind(1)
        return v, 0.08 + 0.08 * torch.sigmoid(s)


def _ppo_loss_and_grads(model, chains, step_mask, spec, old_lp, adv, logprob_type):
    lp, ent = chain_logprob(model, chains, step_mask, spec)
    lp_red = reduce_logprob(executed(lp, spec), logprob_type)
    loss, metrics = ppo_loss(lp_red, old_lp, adv, torch.ones(adv.shape[0], dtype=torch.bool),
                             clip_ratio_low=0.2, clip_ratio_high=0.28, entropy=executed(ent, spec),
                             entropy_bonus=0.005)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), metrics, grads


@pytest.mark.parametrize("method,joint", [(FLOW_SDE, False), (FLOW_NOISE, True)])
def test_ppo_loss_same_on_reference_and_triton_paths(monkeypatch, method, joint):
    """Sampling and the PPO update through pirl.flow give the same chains, losses and
    parameter gradients on both paths. Tolerance: rtol 1e-5 (losses), 1e-4 (gradients):
    the two differ only in fp32 rounding order inside one transition."""
    torch.manual_seed(0)
    B, H, D = 6, 5, 4
    spec = FlowSpec(num_steps=4, noise_method=method, noise_level=0.5, joint_logprob=joint,
                    action_chunk=3, action_env_dim=3)
    model = TinyVelocity(H, D)
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(B, H, D, generator=gen)
    step_mask = select_steps(B, spec, gen)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv(dispatch.BACKEND_ENV, backend)
        monkeypatch.setenv("TRITON_INTERPRET", "1" if backend == "triton" else "0")
        chains, logprob = sample_chain(model, x1, spec, step_mask, torch.Generator().manual_seed(9))
        # A policy a little away from the sampler, so ratios are not all 1 and some clip.
        old_lp = {lt: reduce_logprob(executed(logprob, spec), lt) + 0.3 * torch.randn(
            reduce_logprob(executed(logprob, spec), lt).shape, generator=torch.Generator().manual_seed(1))
            for lt in LOGPROB_TYPES}
        adv = torch.randn(B, generator=torch.Generator().manual_seed(2))
        per_type = {lt: _ppo_loss_and_grads(model, chains, step_mask, spec, old_lp[lt], adv, lt)
                    for lt in LOGPROB_TYPES}
        results[backend] = (chains, logprob, per_type)
    (c_ref, lp_ref, ref), (c_tri, lp_tri, tri) = results["torch"], results["triton"]
    _close(c_tri, c_ref, 1e-5, 1e-6, "chains")
    _close(lp_tri, lp_ref, 1e-5, 1e-4, "sampled logprob")
    for lt in LOGPROB_TYPES:
        loss_r, m_r, g_r = ref[lt]
        loss_t, m_t, g_t = tri[lt]
        _close(loss_t, loss_r, 1e-5, 1e-6, f"{lt} loss")
        for key in ("actor/approx_kl", "actor/pg_clipfrac", "actor/entropy"):
            _close(m_t[key], m_r[key], 1e-5, 1e-6, f"{lt} {key}")
        for a_, b_ in zip(g_t, g_r):
            _close(a_, b_, 1e-4, 1e-6, f"{lt} grads")


@pytest.mark.parametrize("method,joint", [(FLOW_SDE, False), (FLOW_NOISE, True)])
def test_flow_mlp_ppo_on_reach2d_same_on_both_paths(monkeypatch, method, joint):
    """The built-in task: FlowMLPPolicy samples a chunk on reach2d (reference path), the env
    executes it, and one PPO (actor-critic) loss of `evaluate` on those chains is computed
    on the reference and on the interpreted Triton path. Losses rtol 1e-5, gradients
    rtol 1e-4 / atol 1e-6 (fp32 rounding order inside the transition only)."""
    from pirl.envs.reach2d import Reach2DEnv
    from pirl.models.flow_mlp import FlowMLPPolicy

    torch.manual_seed(0)
    env = Reach2DEnv(num_envs=6, render=False, seed=3)
    spec = FlowSpec(num_steps=4, noise_method=method, noise_level=0.5, joint_logprob=joint,
                    action_chunk=3, action_env_dim=env.action_dim)
    policy = FlowMLPPolicy(state_dim=env.state_dim, spec=spec, horizon=5, action_dim=4, hidden_dim=32)
    inputs = policy.preprocess(env.reset(seed=0))
    monkeypatch.setenv(dispatch.BACKEND_ENV, "torch")
    sample = policy.sample(inputs, mode="train", generator=torch.Generator().manual_seed(4))
    _, rewards, _, _, _ = env.chunk_step(sample.actions)
    returns = rewards.sum(dim=1) + 0.1 * torch.randn(6, generator=torch.Generator().manual_seed(5))
    advantages = returns - sample.values
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv(dispatch.BACKEND_ENV, backend)
        monkeypatch.setenv("TRITON_INTERPRET", "1" if backend == "triton" else "0")
        out = {}
        for lt in LOGPROB_TYPES:
            ev = policy.evaluate(inputs, sample.replay)
            # Old log-probs a little off the current policy, so some ratios clip.
            old = reduce_logprob(sample.logprob, lt)
            old = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(6))
            loss, metrics = ppo_loss(reduce_logprob(ev.logprob, lt), old, advantages, torch.ones(6, dtype=torch.bool),
                                     clip_ratio_low=0.2, clip_ratio_high=0.28, entropy=ev.entropy,
                                     entropy_bonus=0.005, values=ev.values, old_values=sample.values,
                                     returns=returns, value_clip=0.2)
            grads = torch.autograd.grad(loss, [p for p in policy.parameters() if p.requires_grad], allow_unused=True)
            out[lt] = (loss.detach(), metrics, grads)
        results[backend] = out
    for lt in LOGPROB_TYPES:
        (loss_r, m_r, g_r), (loss_t, m_t, g_t) = results["torch"][lt], results["triton"][lt]
        _close(loss_t, loss_r, 1e-5, 1e-6, f"{lt} loss")
        _close(m_t["actor/approx_kl"], m_r["actor/approx_kl"], 1e-5, 1e-6, f"{lt} approx_kl")
        for a_, b_ in zip(g_t, g_r):
            assert (a_ is None) == (b_ is None)
            if a_ is not None:
                _close(a_, b_, 1e-4, 1e-6, f"{lt} grads")


def test_kernels_compile_for_h100():
    """The compiled (not interpreted) path: each kernel lowers through Triton's NVIDIA
    backend and ptxas for sm_90 (H100), no GPU needed. One variant per kernel, the widest
    (bf16, learned std, every gradient); bench/kernels.py runs them for real on a GPU."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    floats = {"delta", "sqrt_delta", "noise_level", "log_sqrt_2pi"}
    variants = [
        (K._step_logprob_fwd, dict(METHOD=2, REDUCE=2, BLOCK_H=64, BLOCK_D=32)),
        (K._step_logprob_bwd, dict(METHOD=2, REDUCE=1, HAS_GENT=True, WANT_X=True, WANT_V=True, WANT_Y=True,
                                   WANT_STD=True, BLOCK_H=64, BLOCK_D=32)),
        (K._denoise_step, dict(METHOD=1, BLOCK_H=8, BLOCK_D=32)),
    ]
    for fn, consts in variants:
        sig = {}
        for name in inspect.signature(fn).parameters:
            if name in consts:
                sig[name] = "constexpr"
            elif name == "flag_ptr":
                sig[name] = "*u8"
            elif name in ("lp_ptr", "ent_ptr", "out_ptr", "glp_ptr", "gent_ptr", "t_ptr"):
                sig[name] = "*fp32"
            elif name.endswith("_ptr"):
                sig[name] = "*bf16"
            else:
                sig[name] = "fp32" if name in floats else "i32"
        compiled = triton.compile(ASTSource(triton.jit(fn), sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                  options={"enable_fp_fusion": K.FP_FUSION})
        assert ".entry " + fn.__name__ in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0
