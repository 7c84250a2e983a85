"""Triton kernels for flow-policy RL, installed as `pirl.kernels`.

    dispatch   what the rollout and the actor call: Triton on CUDA, torch elsewhere
               (PIRL_KERNELS=auto|triton|torch)
    reference  the torch references (pirl.flow.transitions math + executed-box reduction)
    flow_step  the Triton kernels: fused denoising step, log-prob forward and backward
    autograd   FlowStepLogprob, the differentiable fused log-prob

Triton itself is imported only when a Triton path is used (`flow_step`, `autograd`).
"""
from pirl.kernels import dispatch, reference
from pirl.kernels.dispatch import BACKEND_ENV, backend, denoise_step, flow_step_logprob, step_logprob

__all__ = ["dispatch", "reference", "BACKEND_ENV", "backend", "denoise_step", "flow_step_logprob",
           "step_logprob"]
