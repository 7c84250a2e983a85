"""Policies: the policy interface (pirl.models.policy), flow_mlp, and (pirl.models.pi0) π0 / π0.5."""
from __future__ import annotations

from pirl.flow import FlowSpec
from pirl.models.policy import ActionSample, ChunkEval, FlowPolicy, Policy

MODEL_TYPES = ("flow_mlp", "openpi", "openvla_oft")


def flow_spec(model_cfg) -> FlowSpec:
    """The stochastic-chain definition from `actor.model` (flow keys live in `openpi`)."""
    op = model_cfg.openpi
    return FlowSpec(
        num_steps=op.num_steps,
        noise_method=op.noise_method,
        noise_level=op.noise_level,
        joint_logprob=op.joint_logprob,
        action_chunk=op.action_chunk,
        action_env_dim=op.action_env_dim,
    )


def build_policy(model_cfg, state_dim: int, sampling=None) -> Policy:
    """`actor.model` section + the env's state size (+ `rollout.sampling_params` for a token
    policy) -> a Policy (on CPU)."""
    if model_cfg.model_type == "flow_mlp":
        from pirl.config.validate import model_action_sizes
        from pirl.models.flow_mlp import FlowMLPPolicy

        horizon, action_dim = model_action_sizes(model_cfg)
        policy = FlowMLPPolicy(
            state_dim=state_dim,
            spec=flow_spec(model_cfg),
            horizon=horizon,
            action_dim=action_dim,
            hidden_dim=model_cfg.hidden_dim,
            num_layers=model_cfg.num_layers,
            add_value_head=model_cfg.add_value_head,
            noise_std_range=tuple(model_cfg.openpi.noise_logvar_range),
            detach_critic_input=bool(model_cfg.openpi.detach_critic_input),  # null: False
            prediction=model_cfg.prediction,
        )
        if model_cfg.model_path:
            from pirl.models.io import load_policy_weights

            load_policy_weights(policy, model_cfg.model_path)
        return policy
    if model_cfg.model_type == "openpi":
        from pirl.models.pi0 import build_pi0_policy

        return build_pi0_policy(model_cfg, state_dim)
    if model_cfg.model_type == "openvla_oft":
        from pirl.models.oft import build_oft_policy

        if sampling is None:
            raise ValueError("openvla_oft samples tokens: build_policy needs rollout.sampling_params")
        return build_oft_policy(model_cfg, sampling)
    raise ValueError(f"actor.model.model_type must be one of {MODEL_TYPES}, got {model_cfg.model_type!r}")


__all__ = ["ActionSample", "ChunkEval", "FlowPolicy", "Policy", "build_policy", "flow_spec", "MODEL_TYPES"]
