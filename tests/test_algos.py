"""pirl.algos against independent float64 references written another way (python loops,
forward sums instead of backward recursions, numpy per group), on random inputs and masks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pirl.algos import (
    agg_loss, chunk_rewards, compute_gae, compute_grpo_advantages, entropy_loss, filter_groups,
    loss_kwargs, loss_mask_after_done, normalize_advantages, ppo_actor_loss, ppo_loss, value_loss,
)
from pirl.config.schema import AlgorithmConfig

RTOL, ATOL = 2e-5, 2e-6  # fp32 implementation vs fp64 reference


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(torch.as_tensor(actual).detach().double()),
                               np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- rewards, masks


def test_chunk_rewards_sums_the_chunk_and_scales():
    r = torch.randn(5, 4, 3, generator=gen(0))
    ref = np.zeros((5, 4))
    for t in range(5):
        for b in range(4):
            ref[t, b] = 0.7 * sum(float(r[t, b, c]) for c in range(3))
    close(chunk_rewards(r, 0.7), ref)
    with pytest.raises(ValueError, match="step_rewards"):
        chunk_rewards(torch.randn(5, 4), 1.0)


def test_loss_mask_after_done_keeps_the_done_step():
    dones = torch.rand(9, 6, generator=gen(1)) < 0.25
    ref = np.ones((9, 6), dtype=bool)
    for b in range(6):
        ended = False
        for t in range(9):
            ref[t, b] = not ended
            ended = ended or bool(dones[t, b])
    assert (loss_mask_after_done(dones).numpy() == ref).all()
    explicit = torch.tensor([[False], [True], [False], [True]])
    assert loss_mask_after_done(explicit)[:, 0].tolist() == [True, True, False, False]


# ----------------------------------------------------------------------------- GAE


def gae_reference(r, v, done, last_v, gamma, lam, trunc=None, final_v=None):
    """Forward-sum definition: A_t = sum_l (γλ)^l δ_{t+l}, stopping after the episode's
    last step; python floats, one env at a time."""
    T, B = r.shape
    adv = np.zeros((T, B))
    for b in range(B):
        ended = [bool(done[t, b]) or (trunc is not None and bool(trunc[t, b])) for t in range(T)]
        deltas = []
        for t in range(T):
            reward = float(r[t, b])
            if trunc is not None and bool(trunc[t, b]):
                reward += gamma * float(final_v[t, b])
            nxt = float(last_v[b]) if t == T - 1 else float(v[t + 1, b])
            deltas.append(reward + (0.0 if ended[t] else gamma * nxt) - float(v[t, b]))
        for t in range(T):
            total, weight = 0.0, 1.0
            for u in range(t, T):
                total += weight * deltas[u]
                if ended[u]:
                    break
                weight *= gamma * lam
            adv[t, b] = total
    return adv, adv + np.asarray(v, dtype=np.float64)


def test_gae_by_hand():
    # one env, 3 steps, done at step 1: A_2 bootstraps from last_value, A_1 is cut.
    r = torch.tensor([[1.0], [2.0], [0.5]])
    v = torch.tensor([[0.3], [0.4], [0.2]])
    dones = torch.tensor([[False], [True], [False]])
    last = torch.tensor([1.0])
    g, lam = 0.9, 0.8
    d2 = 0.5 + g * 1.0 - 0.2
    d1 = 2.0 - 0.4
    d0 = 1.0 + g * 0.4 - 0.3
    adv, ret = compute_gae(r, v, dones, last, g, lam)
    close(adv[:, 0], [d0 + g * lam * d1, d1, d2])
    close(ret[:, 0], [d0 + g * lam * d1 + 0.3, d1 + 0.4, d2 + 0.2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_with_dones_truncations_and_bootstrap(seed):
    g = gen(seed)
    T, B = 11, 7
    r = torch.randn(T, B, generator=g)
    v = torch.randn(T, B, generator=g)
    dones = torch.rand(T, B, generator=g) < 0.2
    trunc = dones & (torch.rand(T, B, generator=g) < 0.5)  # a share of the dones are time limits
    trunc[3, 2] = True  # a truncation that `dones` missed still ends the episode
    final_v = torch.where(trunc, torch.randn(T, B, generator=g), torch.full((T, B), float("nan")))
    last = torch.randn(B, generator=g)
    adv, ret = compute_gae(r, v, dones, last, 0.97, 0.9, trunc, final_v)
    ref_adv, ref_ret = gae_reference(r, v, dones, last, 0.97, 0.9, trunc, final_v)
    close(adv, ref_adv)
    close(ret, ref_ret)
    # without truncation info every done is terminal
    adv2, _ = compute_gae(r, v, dones, last, 0.97, 0.9)
    close(adv2, gae_reference(r, v, dones, last, 0.97, 0.9)[0])


def test_gae_bad_inputs_name_the_argument():
    r = torch.randn(4, 3)
    with pytest.raises(ValueError, match="last_values"):
        compute_gae(r, r, r > 0, torch.randn(4), 0.9, 0.9)
    with pytest.raises(ValueError, match="final_values"):
        compute_gae(r, r, r > 0, torch.randn(3), 0.9, 0.9, truncations=r > 1)


def test_normalize_advantages_over_valid_entries_only():
    g = gen(3)
    adv = torch.randn(8, 5, generator=g) * 3 + 1
    mask = torch.rand(8, 5, generator=g) < 0.6
    adv_garbage = torch.where(mask, adv, torch.full_like(adv, float("inf")))
    out = normalize_advantages(adv_garbage, mask)
    valid = adv.double().numpy()[mask.numpy()]
    ref = (valid - valid.mean()) / (valid.std(ddof=1) + 1e-8)
    close(out[mask], ref)
    assert (out[~mask] == 0).all()


def test_normalize_advantages_across_ranks_equals_one_rank():
    """Two ranks holding envs 0-2 and 3-6, statistics summed through `reduce_sum`, give the
    1-rank result over all 7 envs."""
    g = gen(4)
    adv = torch.randn(6, 7, generator=g) * 2 - 0.5
    mask = torch.rand(6, 7, generator=g) < 0.7
    full = normalize_advantages(adv, mask)
    parts = [(adv[:, :3], mask[:, :3]), (adv[:, 3:], mask[:, 3:])]
    local = []
    for a, m in parts:  # each rank's own sums, as all_reduce would receive them
        normalize_advantages(a, m, reduce_sum=lambda t: local.append(t) or t)
    for r, (a, m) in enumerate(parts):
        other = local[1 - r]
        out = normalize_advantages(a, m, reduce_sum=lambda t, other=other: t + other)
        close(out, full[:, :3] if r == 0 else full[:, 3:])


# ----------------------------------------------------------------------------- GRPO


def grpo_reference(rewards, mask, G, eps=1e-6):
    r, m = np.asarray(rewards, np.float64), np.asarray(mask, bool)
    T, B = r.shape
    scores = np.array([r[m[:, b], b].sum() for b in range(B)])
    has = m.any(axis=0)
    adv, keep = np.zeros((T, B)), np.zeros(B, bool)
    for start in range(0, B, G):
        members = [b for b in range(start, start + G) if has[b]]
        if not members:
            continue
        s = scores[members]
        mean, std = (0.0, 1.0) if G == 1 else (s.mean(), s.std(ddof=1) if len(s) > 1 else 0.0)
        for b in range(start, start + G):
            keep[b] = True
            if has[b]:
                adv[m[:, b], b] = (scores[b] - mean) / (std + eps)
    return adv, keep


@pytest.mark.parametrize("G", [1, 4, 8])
def test_grpo_advantages_match_numpy_groups(G):
    g = gen(10 + G)
    T, B = 6, 16
    rewards = torch.randn(T, B, generator=g)
    mask = loss_mask_after_done(torch.rand(T, B, generator=g) < 0.3)
    mask[:, 1] = False  # an env with no valid step does not enter its group's statistics
    adv, keep = compute_grpo_advantages(rewards, mask, G)
    ref_adv, ref_keep = grpo_reference(rewards, mask, G)
    close(adv, ref_adv, rtol=1e-4, atol=1e-5)
    assert (keep.numpy() == ref_keep).all()


def test_grpo_all_masked_group_is_dropped_without_nan():
    g = gen(5)
    rewards = torch.randn(4, 8, generator=g)
    mask = torch.rand(4, 8, generator=g) < 0.7
    mask[0] = True
    mask[:, 4:8] = False  # the whole second group
    rewards[:, 4:8] = float("nan")  # whatever it held must not leak
    adv, keep = compute_grpo_advantages(rewards, mask, 4)
    assert keep.tolist() == [True] * 4 + [False] * 4
    assert torch.isfinite(adv).all() and (adv[:, 4:] == 0).all()
    close(adv[:, :4], grpo_reference(rewards[:, :4], mask[:, :4], 4)[0], rtol=1e-4, atol=1e-5)


def test_grpo_group_size_must_divide_envs():
    with pytest.raises(ValueError, match="algorithm.group_size"):
        compute_grpo_advantages(torch.randn(3, 10), torch.ones(3, 10, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="algorithm.group_size"):
        filter_groups(torch.ones(10), 3, 0.1, 0.9)


def test_filter_groups_keeps_groups_with_mixed_success():
    g = gen(6)
    success = torch.rand(24, generator=g) < 0.5
    success[0:4] = True  # all succeed: dropped
    success[4:8] = False  # all fail: dropped
    keep = filter_groups(success, 4, 0.1, 0.9)
    s = success.numpy().astype(np.float64).reshape(6, 4)
    ref = np.repeat([(0.1 <= row.mean() <= 0.9) for row in s], 4)
    assert (keep.numpy() == ref).all()
    assert not keep[:8].any()


# ----------------------------------------------------------------------------- PPO actor


def actor_reference(lp, old, adv, mask, low, high, c):
    """Per element, by cases: A>=0 -> -A·min(r, 1+high); A<0 -> |A|·max(r, 1-low), capped at
    |A|·c by the dual clip."""
    lp, old = np.asarray(lp, np.float64), np.asarray(old, np.float64)
    adv = np.broadcast_to(np.asarray(adv, np.float64).reshape(adv.shape + (1,) * (lp.ndim - adv.ndim)), lp.shape)
    m = np.broadcast_to(np.asarray(mask, bool).reshape(mask.shape + (1,) * (lp.ndim - mask.ndim)), lp.shape)
    loss = np.zeros(lp.shape)
    clipped, dual, kl, ratio = [], [], [], []
    for idx in np.ndindex(lp.shape):
        if not m[idx]:
            continue
        r, a = math.exp(lp[idx] - old[idx]), adv[idx]
        if a >= 0:
            loss[idx] = -a * min(r, 1 + high)
            clipped.append(r > 1 + high)
            dual.append(False)
        else:
            body = max(r, 1 - low)
            clipped.append(r < 1 - low)
            dual.append(c is not None and body > c)
            loss[idx] = -a * (min(body, c) if c is not None else body)
        kl.append(r - 1 - math.log(r))
        ratio.append(r)
    metrics = {"actor/pg_clipfrac": np.mean(clipped), "actor/dual_clip_frac": np.mean(dual),
               "actor/approx_kl": np.mean(kl), "actor/ratio_mean": np.mean(ratio)}
    return loss, metrics


@pytest.mark.parametrize("shape", [(12,), (12, 4), (12, 4, 3)])
@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_ppo_actor_loss_matches_reference(shape, clip_c):
    g = gen(len(shape) * 7 + (0 if clip_c is None else 1))
    old = torch.randn(shape, generator=g)
    lp = old + 0.6 * torch.randn(shape, generator=g)  # ratios spread well past the clip range
    lp[0] = old[0] + 2.0  # ratio e^2 > c on a negative advantage: dual clip active
    adv = torch.randn(shape[0], generator=g)
    adv[0] = -1.5
    mask = torch.rand(shape[0], generator=g) < 0.75
    mask[0] = True
    loss, metrics = ppo_actor_loss(lp, old, adv, mask, 0.2, 0.28, clip_c)
    ref_loss, ref_m = actor_reference(lp, old, adv, mask, 0.2, 0.28, clip_c)
    assert loss.shape == lp.shape
    close(loss, ref_loss)
    for k, val in ref_m.items():
        close(metrics[k], val, rtol=1e-5, atol=1e-6)
    if clip_c is not None:
        assert metrics["actor/dual_clip_frac"] > 0
        close(loss[0], 1.5 * clip_c)


def test_ppo_actor_loss_gradcheck_fp64_and_gradient_matches_reference():
    g = gen(21)
    B, C, D = 6, 3, 2
    old = torch.randn(B, C, D, generator=g, dtype=torch.float64)
    lp = (old + 0.4 * torch.randn(B, C, D, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True, True])

    def f(x):
        elems, _ = ppo_actor_loss(x, old, adv, mask, 0.2, 0.28, 2.5)
        return agg_loss(elems, mask, "token-mean")

    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-7)
    f(lp).backward()
    # analytic: d/dlp of -A·r is -A·r where the unclipped branch is active, else 0
    r = torch.exp(lp.detach() - old)
    a = adv.reshape(B, 1, 1).expand(B, C, D)
    m = mask.reshape(B, 1, 1).expand(B, C, D)
    active = torch.where(a >= 0, r < 1.28, (r > 0.8) & (r < 2.5))
    ref = torch.where(m & active, -a * r, torch.zeros_like(r)) / m.sum()
    close(lp.grad, ref, rtol=1e-10, atol=1e-12)


def test_invalid_entries_never_contribute_even_if_nan():
    g = gen(22)
    B, C = 8, 4
    old = torch.randn(B, C, generator=g)
    base = old + 0.3 * torch.randn(B, C, generator=g)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    poisoned = torch.where(mask.unsqueeze(1), base, torch.full_like(base, float("nan"))).requires_grad_()
    clean = base.clone().requires_grad_()
    adv = torch.randn(B, generator=g)
    for x in (poisoned, clean):
        elems, metrics = ppo_actor_loss(x, old, adv, mask, 0.2, 0.2, 3.0)
        agg_loss(elems, mask).backward()
        assert all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(poisoned.grad).all()
    close(poisoned.grad, clean.grad, rtol=0, atol=0)
    assert (poisoned.grad[~mask] == 0).all()


def test_all_masked_batch_gives_zero_loss_and_zero_grad():
    lp = torch.randn(5, 3, generator=gen(23)).requires_grad_()
    mask = torch.zeros(5, dtype=torch.bool)
    loss, metrics = ppo_loss(lp, lp.detach() + 0.1, torch.randn(5), mask, clip_ratio_low=0.2,
                             clip_ratio_high=0.2, values=torch.randn(5, requires_grad=True),
                             old_values=torch.randn(5), returns=torch.randn(5), value_clip=0.2)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_dual_clip_constant_must_exceed_one():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="algorithm.clip_ratio_c"):
        ppo_actor_loss(x, x, x, torch.ones(4, dtype=torch.bool), 0.2, 0.2, 0.9)


def test_mask_shape_must_prefix_element_shape():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="mask"):
        ppo_actor_loss(x, x, torch.randn(4), torch.ones(3, dtype=torch.bool), 0.2, 0.2)


# ----------------------------------------------------------------------------- reduction


def agg_reference(x, mask, mode):
    x = np.asarray(x, np.float64)
    m = np.broadcast_to(np.asarray(mask, bool).reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
    if mode == "token-mean":
        return x[m].mean() if m.any() else 0.0
    per = []
    for b in range(x.shape[0]):
        vals = x[b][m[b]]
        if vals.size:
            per.append(vals.sum() if mode == "seq-mean-token-sum" else vals.mean())
    return float(np.mean(per)) if per else 0.0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_agg_loss_modes(mode):
    g = gen(30)
    x = torch.randn(7, 4, 3, generator=g)
    sample_mask = torch.rand(7, generator=g) < 0.6
    sample_mask[0] = True
    elem_mask = torch.rand(7, 4, 3, generator=g) < 0.5
    elem_mask[2] = False  # a sample with nothing valid is left out of the seq-mean modes
    for mask in (sample_mask, elem_mask):
        close(agg_loss(x, mask, mode), agg_reference(x, mask, mode))
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(x, sample_mask, "sum")


def test_entropy_loss_is_masked_mean():
    g = gen(31)
    ent = torch.randn(6, 4, 2, generator=g)
    mask = torch.tensor([True, False, True, True, False, True])
    close(entropy_loss(ent, mask), ent.double().numpy()[mask.numpy()].mean())


# ----------------------------------------------------------------------------- value loss


def value_reference(v, old, ret, mask, clip, kind, delta):
    out, clip_hits = np.zeros(len(v)), []
    for i in range(len(v)):
        if not mask[i]:
            continue

        def L(e):
            if kind == "mse":
                return 0.5 * e * e
            return 0.5 * e * e if abs(e) <= delta else delta * (abs(e) - 0.5 * delta)

        plain = L(float(v[i]) - float(ret[i]))
        if clip is None:
            out[i] = plain
            clip_hits.append(False)
            continue
        vc = float(old[i]) + min(max(float(v[i]) - float(old[i]), -clip), clip)
        clipped = L(vc - float(ret[i]))
        out[i] = max(plain, clipped)
        clip_hits.append(clipped > plain)
    return out, float(np.mean(clip_hits))


@pytest.mark.parametrize("kind,clip", [("huber", 0.2), ("mse", 0.2), ("huber", None)])
def test_value_loss_matches_reference(kind, clip):
    g = gen(40)
    B = 32
    old = torch.randn(B, generator=g)
    v = old + 0.5 * torch.randn(B, generator=g)
    ret = old + 2.0 * torch.randn(B, generator=g)  # some errors beyond huber_delta
    mask = torch.rand(B, generator=g) < 0.8
    loss, metrics = value_loss(v, old, ret, mask, clip, kind, huber_delta=1.0)
    ref, clip_ratio = value_reference(v, old, ret, mask.numpy(), clip, kind, 1.0)
    close(loss, ref)
    close(metrics["actor/value_clip_ratio"], clip_ratio)
    if clip is not None:
        assert 0 < clip_ratio < 1
    vv, rr = v.double().numpy()[mask.numpy()], ret.double().numpy()[mask.numpy()]
    close(metrics["actor/explained_variance"], 1 - np.var(rr - vv) / np.var(rr), rtol=1e-4)


def test_value_loss_gradcheck_fp64():
    g = gen(41)
    old = torch.randn(10, generator=g, dtype=torch.float64)
    v = (old + 0.5 * torch.randn(10, generator=g, dtype=torch.float64)).requires_grad_()
    ret = old + 3.0 * torch.randn(10, generator=g, dtype=torch.float64)
    mask = torch.rand(10, generator=g) < 0.8

    def f(x):
        return agg_loss(value_loss(x, old, ret, mask, 0.2, "huber", 1.5)[0], mask)

    assert torch.autograd.gradcheck(f, (v,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- combined


def test_ppo_loss_combines_terms_and_names_metrics_as_the_seeds():
    g = gen(50)
    B, C, D = 10, 4, 3
    old = torch.randn(B, C, generator=g)
    lp = (old + 0.3 * torch.randn(B, C, generator=g)).requires_grad_()
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, generator=g) < 0.7
    ent = torch.rand(B, C, D, generator=g).requires_grad_()
    old_v = torch.randn(B, generator=g)
    v = (old_v + 0.4 * torch.randn(B, generator=g)).requires_grad_()
    ret = torch.randn(B, generator=g)
    cfg = AlgorithmConfig(clip_ratio_c=3.0, entropy_bonus=0.005, value_loss_coef=0.5, huber_delta=1.0)
    kw = loss_kwargs(cfg)
    loss, metrics = ppo_loss(lp, old, adv, mask, entropy=ent, values=v, old_values=old_v, returns=ret, **kw)

    pg_ref, _ = actor_reference(lp.detach(), old, adv, mask, cfg.clip_ratio_low, cfg.clip_ratio_high, 3.0)
    pg = agg_reference(pg_ref, mask, "token-mean")
    vl_ref, _ = value_reference(v.detach(), old_v, ret, mask.numpy(), cfg.value_clip, "huber", 1.0)
    vl = vl_ref[mask.numpy()].mean()
    en = agg_reference(ent.detach(), mask, "token-mean")
    close(loss, pg + 0.5 * vl - 0.005 * en)
    close(metrics["actor/loss"], pg)
    close(metrics["actor/value_loss"], vl)
    close(metrics["actor/entropy"], en)
    for k in ("actor/pg_clipfrac", "actor/approx_kl", "actor/value_clip_ratio"):
        assert k in metrics and metrics[k].dim() == 0 and not metrics[k].requires_grad
    loss.backward()
    # the entropy bonus pushes every valid element's entropy up by bonus / count
    n = int(mask.sum()) * C * D
    close(ent.grad[mask], np.full((int(mask.sum()), C, D), -0.005 / n))
    assert (ent.grad[~mask] == 0).all() and (v.grad[~mask] == 0).all()


def test_ppo_loss_actor_only_for_grpo_and_argument_errors():
    x = torch.randn(6, 2)
    mask = torch.ones(6, dtype=torch.bool)
    loss, metrics = ppo_loss(x, x, torch.randn(6), mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    assert loss.item() == pytest.approx(metrics["actor/loss"].item()) and "actor/value_loss" not in metrics
    with pytest.raises(ValueError, match="entropy_bonus"):
        ppo_loss(x, x, torch.randn(6), mask, clip_ratio_low=0.2, clip_ratio_high=0.2, entropy_bonus=0.01)
    with pytest.raises(ValueError, match="values, old_values and returns"):
        ppo_loss(x, x, torch.randn(6), mask, clip_ratio_low=0.2, clip_ratio_high=0.2, values=torch.randn(6))
    with pytest.raises(ValueError, match="value_loss_type"):
        ppo_loss(x, x, torch.randn(6), mask, clip_ratio_low=0.2, clip_ratio_high=0.2, values=torch.randn(6),
                 old_values=torch.randn(6), returns=torch.randn(6), value_loss_type="l1")


def test_loss_kwargs_from_structured_config_and_bf16_inputs_compute_in_fp32():
    from omegaconf import OmegaConf

    kw = loss_kwargs(OmegaConf.structured(AlgorithmConfig(clip_ratio_c=2.0)))
    assert kw["clip_ratio_c"] == 2.0 and kw["loss_agg_mode"] == "token-mean"
    g = gen(60)
    old = torch.randn(8, 3, generator=g).bfloat16()
    lp = (old.float() + 0.2 * torch.randn(8, 3, generator=g)).bfloat16()
    adv, mask = torch.randn(8, generator=g), torch.rand(8, generator=g) < 0.8
    loss, _ = ppo_loss(lp, old, adv, mask, **kw)
    assert loss.dtype == torch.float32
    ref, _ = actor_reference(lp.float(), old.float(), adv, mask, kw["clip_ratio_low"], kw["clip_ratio_high"], 2.0)
    close(loss, agg_reference(ref, mask, "token-mean"))
