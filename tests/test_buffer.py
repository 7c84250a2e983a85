"""The rollout buffer (pirl.data): every policy's declared input / replay specs match what
it returns, and the preallocated (T, B, ...) buffer holds exactly what was written, against
an independent stack of the same samples."""
import pytest
import torch
from omegaconf import OmegaConf

from pirl.config.schema import PirlConfig
from pirl.data import RolloutBuffer, rollout_schema
from pirl.flow import FlowSpec
from pirl.models.flow_mlp import FlowMLPPolicy
from pirl.models.pi0 import build_pi0_policy

torch.set_num_threads(1)
C, D_ENV = 3, 2


def _flow_mlp():
    spec = FlowSpec(num_steps=2, noise_method="flow_sde", action_chunk=C, action_env_dim=D_ENV)
    torch.manual_seed(0)
    return FlowMLPPolicy(state_dim=5, spec=spec, horizon=4, action_dim=3, hidden_dim=16)


def _pi0(state_dim=5):
    full = OmegaConf.merge(OmegaConf.structured(PirlConfig), {"actor": {"model": {
        "model_type": "openpi", "action_dim": D_ENV, "num_action_chunks": C, "num_steps": 2,
        "openpi": {"config_name": "pi0_tiny", "action_horizon": 4, "action_dim": 8, "max_token_len": 16}}}})
    torch.manual_seed(0)
    return build_pi0_policy(full.actor.model, state_dim)


def _obs(B, seed, state_dim=5):
    g = torch.Generator().manual_seed(seed)
    return {"states": torch.randn(B, state_dim, generator=g),
            "main_images": torch.randint(0, 255, (B, 24, 24, 3), dtype=torch.uint8, generator=g),
            "task_descriptions": [f"task {i}" for i in range(B)]}


@pytest.mark.parametrize("make", [_flow_mlp, _pi0], ids=["flow_mlp", "pi0"])
def test_declared_specs_match_what_the_policy_returns(make):
    policy = make()
    B = 4
    out = policy.sample(policy.preprocess(_obs(B, 1)), "train", torch.Generator().manual_seed(2))
    for declared, got in ((policy.input_spec(), out.forward_inputs), (policy.replay_spec(), out.replay)):
        assert set(declared) == set(got)
        for name, spec in declared.items():
            assert tuple(got[name].shape) == (B, *spec.shape), name
            assert got[name].dtype == spec.dtype, name
    assert out.logprob.shape == (B, C, D_ENV) and out.values.shape == (B, *policy.value_shape)
    schema = rollout_schema(policy, C, D_ENV)
    assert "chains" not in schema.steps and "chains" in schema.replay  # the flow chain is the policy's own
    assert "rewards" in schema.describe()


def test_pi0_input_spec_needs_the_env_state_size():
    with pytest.raises(ValueError, match="state size"):
        _pi0(state_dim=None).input_spec()


def test_buffer_holds_what_was_written_in_place():
    policy = _flow_mlp()
    schema = rollout_schema(policy, C, D_ENV)
    T, stages, width = 5, 2, 3
    buf = RolloutBuffer(schema, T, stages * width)
    storage = {k: v.data_ptr() for k, v in buf.steps.items()}
    g = torch.Generator().manual_seed(0)
    ref: dict[str, list] = {}  # name -> [t][stage] tensors: the independent reference
    for s in range(stages):
        cols = slice(s * width, (s + 1) * width)
        for t in range(T):
            out = policy.sample(policy.preprocess(_obs(width, 10 * t + s)), "train", g)
            env = {"rewards": torch.rand(width, C, generator=g), "dones": torch.rand(width, C, generator=g) > 0.5,
                   "truncations": torch.rand(width, C, generator=g) > 0.5,
                   "success": torch.rand(width, C, generator=g) > 0.5,
                   "valid": torch.rand(width, generator=g) > 0.2, "final_values": torch.randn(width, generator=g)}
            buf.write_sample(t, cols, out)
            buf.write("steps", t, cols, env, complete=False)
            for k, v in {**env, "logprob": out.logprob, "values": out.values, **out.replay,
                         **out.forward_inputs}.items():
                ref.setdefault(k, [[None] * stages for _ in range(T)])[t][s] = v
        buf.write("envs", None, cols, {"last_values": torch.randn(width, generator=g)})
    assert {k: v.data_ptr() for k, v in buf.steps.items()} == storage  # filled in place
    for k, per_t in ref.items():
        expected = torch.stack([torch.cat(row, dim=0) for row in per_t])  # (T, B, ...)
        group = "steps" if k in buf.steps else "replay" if k in buf.replay else "inputs"
        assert torch.equal(getattr(buf, group)[k], expected.to(getattr(buf, group)[k].dtype)), k
    # stage columns, concatenation and flattening agree with the same reference
    joined = RolloutBuffer.cat([buf.columns(slice(0, width)), buf.columns(slice(width, 2 * width))])
    for a, b in zip(joined.tensors(), buf.tensors()):
        assert torch.equal(a, b)
    flat = buf.flat()
    assert torch.equal(flat["replay"]["chains"][buf.B + 1], buf.replay["chains"][1, 1])  # row t*B + b
    assert torch.equal(flat["rewards"], buf.steps["rewards"].flatten(0, 1))


def test_buffer_refuses_wrong_shapes_and_missing_fields():
    policy = _flow_mlp()
    buf = RolloutBuffer(rollout_schema(policy, C, D_ENV), 2, 4)
    with pytest.raises(ValueError, match=r"steps.rewards: expected shape \(4, 3\), got \(4,\)"):
        buf.write("steps", 0, slice(0, 4), {"rewards": torch.ones(4)}, complete=False)
    with pytest.raises(KeyError, match="replay.*step_mask"):
        buf.write("replay", 0, slice(0, 4), {"chains": torch.zeros(4, 3, 4, 3)})
    with pytest.raises(KeyError, match="not in the steps schema"):
        buf.write("steps", 0, slice(0, 4), {"reward": torch.ones(4, 3)}, complete=False)
