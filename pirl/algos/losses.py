"""PPO / GRPO losses as pure functions of tensors and masks (verl's core_algos style).

Each loss returns element-wise losses plus metrics; `agg_loss` is the one place where
elements become a scalar. Granularity (`algorithm.logprob_type`, pirl.flow.chain):

    chunk_level   logprob (B,)           one ratio per sample (chunk step of one env)
    action_level  logprob (B, C)         one ratio per executed action
    token_level   logprob (B, C, D_env)  one ratio per executed action dim

A "sample" is dim 0 (one chunk step of one env, B of them); a "token" is one element of
the log-prob tensor. Per-sample tensors (advantages, mask: (B,)) broadcast to the element
shape; a mask may also come element-shaped. Padded or invalid entries never contribute:
they are replaced (not multiplied: they may hold inf/NaN) before any arithmetic, so they
give exactly zero loss and zero gradient.

Metrics are detached 0-d tensors (no host sync inside the loss), averaged over valid
entries, named as the seeds name them.
"""
from __future__ import annotations

import torch

TOKEN_MEAN = "token-mean"  # mean over every valid element of the batch
SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"  # per sample: sum over its valid elements; mean over samples
SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # per sample: mean over its valid elements; mean over samples
LOSS_AGG_MODES = (TOKEN_MEAN, SEQ_MEAN_TOKEN_SUM, SEQ_MEAN_TOKEN_MEAN)
VALUE_LOSS_TYPES = ("huber", "mse")

# exp() of a summed chain log-ratio overflows fp32 beyond ~88; verl clamps the log-ratio
# to ±20 (ratio 5e8), far outside any clip range, so only runaway entries are affected.
LOG_RATIO_CLAMP = 20.0


def _fp(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to fp32 (log-probs in fp32 whatever the model dtype); keep fp64."""
    return x if x.dtype == torch.float64 else x.float()


def expand_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool mask of shape like.shape[:k] (e.g. (B,)) -> like.shape, by trailing broadcast."""
    if tuple(mask.shape) != tuple(like.shape[: mask.dim()]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not prefix the element shape "
                         f"{tuple(like.shape)}: expected (B,) or {tuple(like.shape)}")
    m = mask.bool().reshape(mask.shape + (1,) * (like.dim() - mask.dim()))
    return m.expand(like.shape)


def _broadcast(x: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Per-sample (B,) (or any prefix shape) tensor -> like.shape."""
    if tuple(x.shape) != tuple(like.shape[: x.dim()]):
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not prefix the element shape "
                         f"{tuple(like.shape)}: expected (B,) or {tuple(like.shape)}")
    return x.reshape(x.shape + (1,) * (like.dim() - x.dim())).expand(like.shape)


def _zero_invalid(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid entries of a broadcastable mask; 0 when none is valid."""
    m = expand_mask(mask, x)
    return _zero_invalid(_fp(x), m).sum() / m.sum().clamp(min=1)


def agg_loss(loss_elems: torch.Tensor, mask: torch.Tensor, mode: str = TOKEN_MEAN) -> torch.Tensor:
    """Element losses (B, ...) -> scalar; the only reduction in pirl's losses.

    Samples with no valid element are left out of the seq-mean modes (not averaged in
    as zeros). Everything masked -> 0 (with a zero, finite gradient)."""
    x = _fp(loss_elems)
    m = expand_mask(mask, x)
    x = _zero_invalid(x, m)
    if mode == TOKEN_MEAN:
        return x.sum() / m.sum().clamp(min=1)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"algorithm.loss_agg_func (loss_agg_mode) must be one of {LOSS_AGG_MODES}, got {mode!r}")
    per_sample = x.reshape(x.shape[0], -1).sum(dim=1)  # (B,)
    count = m.reshape(m.shape[0], -1).sum(dim=1)  # (B,)
    if mode == SEQ_MEAN_TOKEN_MEAN:
        per_sample = per_sample / count.clamp(min=1)
    has_valid = count > 0
    return _zero_invalid(per_sample, has_valid).sum() / has_valid.sum().clamp(min=1)


def ppo_actor_loss(
    logprob: torch.Tensor,  # (B,), (B, C) or (B, C, D_env): current policy, with grad
    old_logprob: torch.Tensor,  # same shape: recorded at sampling
    advantages: torch.Tensor,  # (B,) or the element shape
    mask: torch.Tensor,  # (B,) or the element shape, bool
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: -A·clip(r, 1-low, 1+high) pessimistically vs -A·r, r = exp(logprob -
    old_logprob) per element. With clip_ratio_c (> 1) the dual clip of
    https://arxiv.org/pdf/1912.09729 bounds the loss of negative-advantage elements by
    -A·c, so a huge ratio cannot blow the update up (verl's compute_policy_loss).

    Returns element losses (logprob's shape, 0 where invalid) and metrics:
    actor/pg_clipfrac (clipped term active), actor/approx_kl (k3 estimator of
    KL(old || new): (r - 1) - log r, >= 0, unbiased under old samples), actor/ratio_mean,
    actor/dual_clip_frac (negative-advantage elements bounded by the dual clip)."""
    if tuple(old_logprob.shape) != tuple(logprob.shape):
        raise ValueError(f"old_logprob shape {tuple(old_logprob.shape)} != logprob shape {tuple(logprob.shape)}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"algorithm.clip_ratio_c must be > 1 (or null to disable dual clip), got {clip_ratio_c}")
    lp = _fp(logprob)
    m = expand_mask(mask, lp)
    adv = _zero_invalid(_fp(_broadcast(advantages, lp, "advantages")), m).detach()
    log_ratio = _zero_invalid(lp - _fp(old_logprob).detach(), m)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(m)
    if clip_ratio_c is not None:
        dual_bound = -adv * clip_ratio_c
        dual_active = (adv < 0) & (loss > dual_bound)
        loss = torch.where(dual_active, dual_bound, loss)
    loss = _zero_invalid(loss, m)
    with torch.no_grad():
        metrics = {
            "actor/pg_clipfrac": masked_mean((clipped > unclipped).float(), m),
            "actor/approx_kl": masked_mean((ratio - 1.0) - log_ratio, m),
            "actor/ratio_mean": masked_mean(ratio, m),
            "actor/dual_clip_frac": masked_mean((dual_active & m).float(), m),
        }
    return loss, metrics


def _elementwise_value_loss(err: torch.Tensor, loss_type: str, huber_delta: float) -> torch.Tensor:
    if loss_type == "huber":
        a = err.abs()
        return torch.where(a <= huber_delta, 0.5 * err**2, huber_delta * (a - 0.5 * huber_delta))
    if loss_type == "mse":
        return 0.5 * err**2
    raise ValueError(f"algorithm.value_loss_type must be one of {VALUE_LOSS_TYPES}, got {loss_type!r}")


def value_loss(
    values: torch.Tensor,  # (B,) current critic, with grad
    old_values: torch.Tensor,  # (B,) recorded at sampling
    returns: torch.Tensor,  # (B,) GAE returns (targets)
    mask: torch.Tensor,  # (B,) bool
    value_clip: float | None,
    loss_type: str = "huber",
    huber_delta: float = 10.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO2 clipped value loss per sample: max(L(v - R), L(v_clip - R)) with
    v_clip = old + clip(v - old, ±value_clip); L = huber(δ) or 0.5·err². value_clip None:
    unclipped. Returns (B,) losses (0 where invalid) and metrics actor/value_clip_ratio
    (samples whose loss the clipped branch set) and actor/explained_variance
    (1 - Var(R - v) / Var(R) over valid samples)."""
    v = _fp(values)
    for name, x in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        if tuple(x.shape) != tuple(v.shape):
            raise ValueError(f"{name} shape {tuple(x.shape)} != values shape {tuple(v.shape)}")
    m = mask.bool()
    v = _zero_invalid(v, m)
    old = _zero_invalid(_fp(old_values), m).detach()
    ret = _zero_invalid(_fp(returns), m).detach()
    loss = _elementwise_value_loss(v - ret, loss_type, huber_delta)
    clip_active = torch.zeros_like(m)
    if value_clip is not None:
        v_clipped = old + (v - old).clamp(-value_clip, value_clip)
        loss_clipped = _elementwise_value_loss(v_clipped - ret, loss_type, huber_delta)
        clip_active = loss_clipped > loss
        loss = torch.maximum(loss, loss_clipped)
    loss = _zero_invalid(loss, m)
    with torch.no_grad():
        ret_var = masked_mean((ret - masked_mean(ret, m)) ** 2, m)
        resid = ret - v
        resid_var = masked_mean((resid - masked_mean(resid, m)) ** 2, m)
        metrics = {
            "actor/value_clip_ratio": masked_mean(clip_active.float(), m),
            "actor/explained_variance": 1.0 - resid_var / ret_var.clamp(min=1e-8),
        }
    return loss, metrics


def entropy_loss(entropy: torch.Tensor, mask: torch.Tensor, mode: str = TOKEN_MEAN) -> torch.Tensor:
    """Mean entropy of the scored transitions (entropy (B, C, D_env) element-wise, mask
    (B,) or element-shaped) -> scalar; the PPO loss subtracts entropy_bonus times it."""
    return agg_loss(entropy, mask, mode)


def ppo_loss(
    logprob: torch.Tensor,  # (B,), (B, C) or (B, C, D_env) per logprob_type
    old_logprob: torch.Tensor,  # same shape
    advantages: torch.Tensor,  # (B,)
    mask: torch.Tensor,  # (B,) bool, or the element shape
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None = None,
    entropy: torch.Tensor | None = None,  # (B, C, D_env) element entropies; None: not logged
    entropy_bonus: float = 0.0,
    values: torch.Tensor | None = None,  # (B,) critic; None: actor-only loss (GRPO)
    old_values: torch.Tensor | None = None,  # (B,)
    returns: torch.Tensor | None = None,  # (B,)
    value_clip: float | None = None,
    value_loss_type: str = "huber",
    huber_delta: float = 10.0,
    value_loss_coef: float = 1.0,
    loss_agg_mode: str = TOKEN_MEAN,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO (actor_critic) or GRPO (actor) loss of one micro-batch:

        loss = agg(actor) + value_loss_coef · mean(value) − entropy_bonus · agg(entropy)

    Keyword names are the `algorithm.*` keys (`loss_kwargs(cfg.algorithm)` picks them).
    The entropy is reduced with the same loss_agg_mode over its own elements; the value
    loss is averaged over valid samples (a sample is valid if any of its elements is).
    Metrics: actor/loss (policy loss), actor/value_loss, actor/entropy, actor/pg_clipfrac,
    actor/approx_kl, actor/ratio_mean, actor/dual_clip_frac, actor/value_clip_ratio,
    actor/explained_variance, actor/total_loss."""
    given = [x is not None for x in (values, old_values, returns)]
    if any(given) and not all(given):
        raise ValueError("ppo_loss needs values, old_values and returns together (or none, for GRPO)")
    if entropy is None and entropy_bonus != 0.0:
        raise ValueError(f"algorithm.entropy_bonus is {entropy_bonus} but no entropy was passed")
    pg_elems, metrics = ppo_actor_loss(logprob, old_logprob, advantages, mask,
                                       clip_ratio_low, clip_ratio_high, clip_ratio_c)
    policy_loss = agg_loss(pg_elems, mask, loss_agg_mode)
    total = policy_loss
    metrics["actor/loss"] = policy_loss.detach()
    if values is not None and old_values is not None and returns is not None:
        sample_mask = mask.bool() if mask.dim() == 1 else mask.bool().reshape(mask.shape[0], -1).any(dim=1)
        v_elems, v_metrics = value_loss(values, old_values, returns, sample_mask,
                                        value_clip, value_loss_type, huber_delta)
        v_loss = agg_loss(v_elems, sample_mask, TOKEN_MEAN)
        total = total + value_loss_coef * v_loss
        metrics["actor/value_loss"] = v_loss.detach()
        metrics.update(v_metrics)
    if entropy is not None:
        ent = entropy_loss(entropy, mask, loss_agg_mode)
        if entropy_bonus != 0.0:
            total = total - entropy_bonus * ent
        metrics["actor/entropy"] = ent.detach()
    metrics["actor/total_loss"] = total.detach()
    return total, metrics


PPO_LOSS_KEYS = ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c", "entropy_bonus", "value_clip",
                 "value_loss_type", "huber_delta", "value_loss_coef")


def loss_kwargs(algorithm) -> dict:
    """The `algorithm` config section (dataclass or OmegaConf) -> ppo_loss keyword args;
    the reference system's `loss_agg_func` is ppo_loss's `loss_agg_mode`."""
    kwargs = {k: getattr(algorithm, k) for k in PPO_LOSS_KEYS}
    kwargs["loss_agg_mode"] = algorithm.loss_agg_func
    return kwargs
