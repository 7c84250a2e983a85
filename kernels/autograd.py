"""The fused log-prob as a differentiable op: Triton forward, Triton backward."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from pirl.flow import transitions as T
from pirl.kernels import flow_step as K
from pirl.kernels import reference as R


class FlowStepLogprob(torch.autograd.Function):
    """(x_t, v, x_next, t, learned_std) -> (logprob, entropy) of the executed box, reduced
    per `reduce`. The backward recomputes μ and std from the inputs instead of saving
    them: one read of the operands, no (B, H, D) fp32 intermediates kept for the update."""

    @staticmethod
    def forward(ctx, x_t, v, x_next, t, learned_std, delta, method, noise_level, action_chunk,
                action_env_dim, reduce):
        std, C, DE = K.check_logprob_inputs(x_t, v, x_next, t, method, learned_std, action_chunk, action_env_dim)
        lp, ent = K.step_logprob_fwd(x_t, v, x_next, t, delta, method, noise_level, std, C, DE, reduce)
        ctx.save_for_backward(x_t, v, x_next, t, learned_std)
        ctx.args = (delta, method, noise_level, C, DE, reduce)
        # An unused output (entropy under flow-sde, say) then costs no zero tensor.
        ctx.set_materialize_grads(False)
        return lp, ent

    @staticmethod
    @once_differentiable  # the Triton backward is not itself differentiable: say so if asked
    def backward(ctx, grad_lp, grad_ent):
        x_t, v, x_next, t, learned_std = ctx.saved_tensors
        delta, method, noise_level, C, DE, reduce = ctx.args
        want_x, want_v, want_y, _, want_std = ctx.needs_input_grad[:5]
        none = (None,) * 6
        if grad_lp is None and grad_ent is None:
            return (None,) * 5 + none
        if grad_lp is None:  # only the entropy is used: it depends on the std alone
            want_x = want_v = want_y = False
            grad_lp = torch.zeros_like(grad_ent, dtype=torch.float32)
        if not (want_x or want_v or want_y or (want_std and method == T.FLOW_NOISE)):
            return (None,) * 5 + none
        std = K.check_logprob_inputs(x_t, v, x_next, t, method, learned_std, C, DE)[0]
        gx, gv, gy, gstd = K.step_logprob_bwd(
            x_t, v, x_next, t, delta, method, noise_level, std, C, DE, reduce,
            grad_lp, grad_ent, want_x, want_v, want_y, want_std and std is not None)
        if gstd is not None and gstd.shape != learned_std.shape:
            gstd = gstd.sum_to_size(learned_std.shape)  # learned_std was broadcast
        return (gx, gv, gy, None, gstd) + none


def flow_step_logprob(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    x_next: torch.Tensor,  # (B, H, D) stored x_{t−δ}
    t: torch.Tensor,  # (B,)
    delta: float,
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,  # (B, H, D) or broadcastable, flow_noise only
    action_chunk: int | None = None,  # C; None = the whole horizon H
    action_env_dim: int | None = None,  # D_env; None = all D dims
    logprob_type: str = R.TOKEN_LEVEL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton: log-prob and entropy of the executed box, (B, C, D_env) / (B, C) / (B,) fp32
    per `logprob_type`, differentiable in x_t, v, x_next and learned_std."""
    if logprob_type not in K.REDUCE_CODES:
        raise ValueError(f"algorithm.logprob_type must be one of {R.LOGPROB_TYPES}, got {logprob_type!r}")
    return FlowStepLogprob.apply(x_t, v, x_next, t, learned_std, float(delta), method, float(noise_level),
                                 action_chunk, action_env_dim, K.REDUCE_CODES[logprob_type])
