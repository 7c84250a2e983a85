"""Flow-matching denoising chains as stochastic policies (Flow-SDE, Flow-Noise)."""
from pirl.flow.chain import (
    ACTION_LEVEL, CHUNK_LEVEL, LOGPROB_TYPES, TOKEN_LEVEL, FlowSpec, VelocityFn,
    chain_logprob, executed, reduce_logprob, sample_chain, select_steps,
)
from pirl.flow.transitions import FLOW_NOISE, FLOW_SDE, NOISE_METHODS, ODE, time_grid

__all__ = [
    "ACTION_LEVEL", "CHUNK_LEVEL", "LOGPROB_TYPES", "TOKEN_LEVEL", "FlowSpec", "VelocityFn",
    "chain_logprob", "executed", "reduce_logprob", "sample_chain", "select_steps",
    "FLOW_NOISE", "FLOW_SDE", "NOISE_METHODS", "ODE", "time_grid",
]
