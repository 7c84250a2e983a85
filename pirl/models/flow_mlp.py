"""flow_mlp: a state-based flow-matching policy. An MLP over (state, x_t, t) producing an
action chunk (H, D), with a value head and a learned-noise head. By default the MLP
predicts the clean action x̂0 and the velocity follows from it (`prediction="sample"`);
`prediction="velocity"` reads the MLP's output as v directly (π0's parameterization).

It implements the same `FlowPolicy` interface as π0, so every algorithm, kernel and
runner path is exercised by it in seconds, and it is a real model for state-based tasks.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from pirl.flow import FLOW_NOISE, FlowSpec, chain_logprob, executed, sample_chain, select_steps
from pirl.flow.matching import flow_matching_loss, pad_demonstrations, sample_times
from pirl.models.heads import NoiseHead, ValueHead
from pirl.models.io import save_policy
from pirl.data.buffer import FieldSpec
from pirl.models.policy import ActionSample, ChunkEval, FlowPolicy

TIME_EMB_DIM = 32
# The network predicts the clean action x̂0; the velocity is derived as v = (x_t − x̂0)/t
# (so that x_t − t·v = x̂0, DESIGN.md's convention). The divisor is floored: chains only
# visit t >= 1/K, and supervised flow matching (pirl.flow.matching) draws t down to 1e-3,
# where 1/t² would weight the squared error by up to 1e6.
MIN_T = 0.05
PREDICTIONS = ("sample", "velocity")


def sinusoidal_time_embedding(t: torch.Tensor, dim: int = TIME_EMB_DIM,
                              min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, dim) sin/cos features with log-spaced periods (π0's choice)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    angle = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class FlowMLPPolicy(FlowPolicy):
    def __init__(self, state_dim: int, spec: FlowSpec, horizon: int, action_dim: int,
                 hidden_dim: int = 128, num_layers: int = 3, add_value_head: bool = True,
                 noise_std_range: tuple[float, float] = (0.08, 0.16), detach_critic_input: bool = False,
                 prediction: str = "sample"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"flow_mlp prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        if spec.action_chunk > horizon or spec.action_env_dim > action_dim:
            raise ValueError(f"executed chunk ({spec.action_chunk}, {spec.action_env_dim}) exceeds the "
                             f"model's (horizon, action dim) = ({horizon}, {action_dim})")
        self.spec, self.horizon, self.action_dim = spec, horizon, action_dim
        self.state_dim = state_dim
        self.chain_shape = (horizon, action_dim)
        self.detach_critic_input = detach_critic_input
        self.encoder = mlp([state_dim, hidden_dim, hidden_dim])
        self.velocity_trunk = mlp([hidden_dim + horizon * action_dim + TIME_EMB_DIM] + [hidden_dim] * num_layers)
        self.velocity_out = nn.Linear(hidden_dim, horizon * action_dim)
        if prediction == "sample":
            # x̂0 = 0 at the start: the untrained policy stays put instead of acting on the
            # exogenous initial noise x1, so exploration comes from the scored transitions.
            nn.init.zeros_(self.velocity_out.weight)
            nn.init.zeros_(self.velocity_out.bias)
        self.noise_head = (NoiseHead(hidden_dim, horizon * action_dim, noise_std_range)
                           if spec.noise_method == FLOW_NOISE else None)
        self.value_head = ValueHead(hidden_dim) if add_value_head else None

    # ---- the velocity field -------------------------------------------------------------
    def velocity(self, features: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """features (B, W), x_t (B, H, D), t (B,) -> v (B, H, D), learned std (B, H, D) | None."""
        B = x_t.shape[0]
        h = torch.cat([features, x_t.flatten(1).to(features.dtype), sinusoidal_time_embedding(t).to(features.dtype)], dim=-1)
        h = nn.functional.silu(self.velocity_trunk(h))
        out = self.velocity_out(h).view(B, self.horizon, self.action_dim)
        if self.prediction == "sample":
            v = (x_t.to(out.dtype) - out) / t.to(out.dtype).clamp(min=MIN_T).view(B, 1, 1)
        else:
            v = out
        std = self.noise_head(h).view(B, self.horizon, self.action_dim) if self.noise_head is not None else None
        return v, std

    def _velocity_fn(self, features: torch.Tensor):
        return lambda x_t, t: self.velocity(features, x_t, t)

    def _values(self, features: torch.Tensor) -> torch.Tensor:
        if self.value_head is None:
            return features.new_zeros(features.shape[0], dtype=torch.float32)
        return self.value_head(features.detach() if self.detach_critic_input else features)

    # ---- Policy ------------------------------------------------------------------------------
    def input_spec(self) -> dict[str, FieldSpec]:
        return {"states": FieldSpec((self.state_dim,), torch.float32, "proprioceptive state, env units")}

    def preprocess(self, obs: dict) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
        return {"states": torch.as_tensor(obs["states"], dtype=torch.float32, device=device)}

    @torch.no_grad()
    def sample(self, forward_inputs, mode="train", generator=None) -> ActionSample:
        states = forward_inputs["states"]
        B = states.shape[0]
        features = self.encoder(states)
        x1 = torch.randn(B, self.horizon, self.action_dim, generator=generator).to(states.device)
        step_mask = select_steps(B, self.spec, generator, device=states.device) if mode == "train" else None
        chains, logprob = sample_chain(self._velocity_fn(features), x1, self.spec, step_mask, generator)
        if step_mask is None:
            step_mask = torch.zeros(B, self.spec.num_steps, dtype=torch.bool, device=states.device)
        return ActionSample(
            actions=executed(chains[:, -1], self.spec),
            logprob=executed(logprob, self.spec),
            values=self._values(features),
            replay={"chains": chains, "step_mask": step_mask},
            forward_inputs=forward_inputs,
        )

    def evaluate(self, forward_inputs, replay) -> ChunkEval:
        features = self.encoder(forward_inputs["states"])
        logprob, entropy = chain_logprob(self._velocity_fn(features), replay["chains"], replay["step_mask"],
                                         self.spec)
        return ChunkEval(logprob=executed(logprob, self.spec), entropy=executed(entropy, self.spec),
                         values=self._values(features))

    def value(self, forward_inputs) -> torch.Tensor:
        return self._values(self.encoder(forward_inputs["states"]))

    def sft_loss(self, forward_inputs, actions, generator=None) -> torch.Tensor:
        """Env actions are model units for flow_mlp: (B, C, D_env) padded with zeros to
        (B, H, D); the padding is masked out of the loss."""
        states = forward_inputs["states"]
        actions = actions.to(states.device)
        padded, mask = pad_demonstrations(actions, self.horizon, self.action_dim)
        B = padded.shape[0]
        noise = torch.randn(padded.shape, generator=generator).to(actions.device)
        t = sample_times(B, generator, actions.device)
        features = self.encoder(states)
        return flow_matching_loss(self._velocity_fn(features), padded, noise, t, mask)

    def save_pretrained(self, directory, meta=None) -> Path:
        return save_policy(self, directory, {"model_type": "flow_mlp", **(meta or {})})
