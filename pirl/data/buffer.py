"""One declared rollout-buffer schema, preallocated and filled in place.

Every field is a `FieldSpec(shape, dtype, doc)` per RL sample (one chunk step of one env);
the buffer stores it time-major as (T, B, *shape), T chunk steps of B env columns (CleanRL's
storage block). The schema is the union of
    steps   fields every policy shares (rewards per env step, dones, log-probs, values, ...)
    inputs  the policy's `input_spec()`: the tensors `preprocess` makes from an observation
    replay  the policy's `replay_spec()`: what `evaluate` needs back (a flow policy's chain,
            a token policy's action tokens); nothing here names them
    envs    per env column (B, *shape): the value after the last step
    train   filled by the actor: advantages, returns, the training mask
The order of the dicts is the wire order when a buffer travels between ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator

import torch

GROUPS = ("steps", "inputs", "replay", "envs")  # what a rollout fills and sends; `train` stays with the actor


@dataclass(frozen=True)
class FieldSpec:
    shape: tuple[int, ...]  # per sample, without the leading (T, B)
    dtype: torch.dtype
    doc: str = ""

    def empty(self, *lead: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zeros (*lead, *shape): a preallocated slot, never garbage if a row stays unwritten."""
        return torch.zeros((*lead, *self.shape), dtype=self.dtype, device=device)


def step_fields(chunk: int, action_dim: int, value_shape: tuple[int, ...]) -> dict[str, FieldSpec]:
    """The fields every policy's rollout fills at each chunk step. Rewards keep the env-step
    axis (C,) so `algorithm.reward_type` chooses the reduction (pirl.algos.registry)."""
    C, D = chunk, action_dim
    f32 = torch.float32
    return {
        "rewards": FieldSpec((C,), f32, "env-step rewards inside the chunk (0 once the episode ended in it)"),
        "dones": FieldSpec((C,), torch.bool, "episode over at this env step, terminated or truncated; "
                                             "stays set until the env is reset (pirl.envs.base)"),
        "truncations": FieldSpec((C,), torch.bool, "episode over by the time limit, not a terminal state"),
        "success": FieldSpec((C,), torch.bool, "the task is solved at this env step"),
        "valid": FieldSpec((), torch.bool, "False where a crashed env worker cut the env's data"),
        "logprob": FieldSpec((C, D), f32, "element log-probs of the executed actions at sampling"),
        "values": FieldSpec(value_shape, f32, "critic V(obs) at sampling (0 without a value head)"),
        "final_values": FieldSpec(value_shape, f32, "V(last obs) of an episode truncated in this chunk "
                                                    "(algorithm.bootstrap_type), 0 elsewhere"),
    }


def env_fields(value_shape: tuple[int, ...]) -> dict[str, FieldSpec]:
    return {
        "last_values": FieldSpec(value_shape, torch.float32, "V(obs after the last chunk step): GAE bootstrap"),
    }


ENV_FIELDS = tuple(env_fields(()))


def train_fields() -> dict[str, FieldSpec]:
    """Set by the actor from the rollout (pirl.algos.registry estimators)."""
    return {
        "advantages": FieldSpec((), torch.float32, "advantage of the chunk step"),
        "returns": FieldSpec((), torch.float32, "critic target"),
        "mask": FieldSpec((), torch.bool, "sample is trained on"),
    }


@dataclass(frozen=True)
class RolloutSchema:
    steps: dict[str, FieldSpec]
    inputs: dict[str, FieldSpec]
    replay: dict[str, FieldSpec]
    envs: dict[str, FieldSpec]

    def fields(self) -> Iterator[tuple[str, str, FieldSpec]]:
        """(group, name, spec) in wire order."""
        for group in GROUPS:
            for name, spec in getattr(self, group).items():
                yield group, name, spec

    def describe(self) -> str:
        """One line per field: group.name shape dtype  meaning (printed by --dry-run users)."""
        return "\n".join(f"{g}.{n:14s} {str(tuple(s.shape)):16s} {str(s.dtype).removeprefix('torch.'):8s} {s.doc}"
                         for g, n, s in self.fields())


def rollout_schema(policy, chunk: int, action_dim: int) -> RolloutSchema:
    """The buffer schema of `policy` (pirl.models.policy.Policy) on an env of `action_dim`
    real action dims, executing `chunk` actions per chunk step."""
    vs = tuple(policy.value_shape)
    inputs, replay = dict(policy.input_spec()), dict(policy.replay_spec())
    common = step_fields(chunk, action_dim, vs)
    clash = (set(inputs) | set(replay)) & set(common) or set(inputs) & set(replay)
    if clash:
        raise ValueError(f"policy field names {sorted(clash)} clash with the rollout's own fields")
    return RolloutSchema(steps=common, inputs=inputs, replay=replay, envs=env_fields(vs))


class RolloutBuffer:
    """(T, B, ...) tensors of every schema field, allocated once, written in place by
    chunk step t and env columns `cols` (a slice: one pipeline stage's envs)."""

    def __init__(self, schema: RolloutSchema, T: int, B: int, device: torch.device | str | None = None,
                 _empty: bool = False):
        self.schema, self.T, self.B = schema, T, B
        self.train: dict[str, torch.Tensor] = {}
        if _empty:
            return
        self.steps = {k: s.empty(T, B, device=device) for k, s in schema.steps.items()}
        self.inputs = {k: s.empty(T, B, device=device) for k, s in schema.inputs.items()}
        self.replay = {k: s.empty(T, B, device=device) for k, s in schema.replay.items()}
        self.envs = {k: s.empty(B, device=device) for k, s in schema.envs.items()}

    # ---- filling --------------------------------------------------------------------------
    @staticmethod
    def _put(group: str, name: str, dst: torch.Tensor, src: torch.Tensor) -> None:
        src = torch.as_tensor(src)
        if tuple(src.shape) != tuple(dst.shape):  # copy_ would broadcast a wrong shape silently
            raise ValueError(f"rollout field {group}.{name}: expected shape {tuple(dst.shape)}, "
                             f"got {tuple(src.shape)}")
        dst.copy_(src.detach())

    def write(self, group: str, t: int | None, cols: slice, values: dict[str, torch.Tensor],
              complete: bool = True) -> None:
        """Fill `values` (name -> (b, *shape)) of one group at chunk step t (None for `envs`).
        `complete`: every field of the group must be given (a policy's inputs and replay)."""
        store, spec = getattr(self, group), getattr(self.schema, group)
        unknown = set(values) - set(spec)
        if unknown:
            raise KeyError(f"rollout fields {sorted(unknown)} are not in the {group} schema {list(spec)}")
        if complete and set(values) != set(spec):
            missing = sorted(set(spec) - set(values))
            raise KeyError(f"rollout fields {group}.{missing} missing ({'; '.join(spec[m].doc for m in missing)})")
        for name, v in values.items():
            dst = store[name][cols] if t is None else store[name][t, cols]
            self._put(group, name, dst, v)

    def write_sample(self, t: int, cols: slice, sample) -> None:
        """What the rollout policy returned (pirl.models.policy.ActionSample) for envs `cols`."""
        self.write("inputs", t, cols, sample.forward_inputs)
        self.write("replay", t, cols, sample.replay)
        self.write("steps", t, cols, {"logprob": sample.logprob, "values": sample.values}, complete=False)

    # ---- moving -------------------------------------------------------------------------
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor in wire order (RolloutSchema.fields)."""
        return [getattr(self, g)[n] for g, n, _ in self.schema.fields()]

    def named(self) -> dict[str, torch.Tensor]:
        """"group.name" -> tensor, in wire order: what travels to the actor ranks."""
        return {f"{g}.{n}": getattr(self, g)[n] for g, n, _ in self.schema.fields()}

    @classmethod
    def from_named(cls, schema: RolloutSchema, named: dict[str, torch.Tensor]) -> RolloutBuffer:
        """The inverse of `named` (received tensors become the buffer's storage)."""
        steps = named[f"steps.{next(iter(schema.steps))}"]
        out = cls(schema, steps.shape[0], steps.shape[1], _empty=True)
        for g in GROUPS:
            setattr(out, g, {n: named[f"{g}.{n}"] for n in getattr(schema, g)})
        return out

    def wire_names(self) -> tuple[str, ...]:
        return tuple(f"{g}.{n}" for g, n, _ in self.schema.fields())

    def _from(self, fn) -> RolloutBuffer:
        out = RolloutBuffer(self.schema, self.T, 0, _empty=True)
        for g in GROUPS:
            setattr(out, g, {k: fn(g, v) for k, v in getattr(self, g).items()})
        out.train = {k: fn("train", v) for k, v in self.train.items()}
        out.B = next(iter(out.envs.values())).shape[0]
        return out

    def columns(self, cols: slice | torch.Tensor) -> RolloutBuffer:
        """The env columns `cols` (a view for a slice)."""
        return self._from(lambda g, v: v[cols] if g == "envs" else v[:, cols])

    def to(self, device) -> RolloutBuffer:
        return self._from(lambda g, v: v.to(device))

    @classmethod
    def cat(cls, parts: list[RolloutBuffer]) -> RolloutBuffer:
        """Join buffers of the same T along the env axis (stages, rollout epochs, ranks):
        every column is an independent env trajectory."""
        if len(parts) == 1:
            return parts[0]
        head = parts[0]
        if any(p.T != head.T or p.schema is not head.schema and p.schema != head.schema for p in parts):
            raise ValueError("RolloutBuffer.cat: parts differ in T or schema")
        out = RolloutBuffer(head.schema, head.T, 0, _empty=True)
        for g in GROUPS:
            dim = 0 if g == "envs" else 1
            setattr(out, g, {k: torch.cat([getattr(p, g)[k] for p in parts], dim=dim) for k in getattr(head, g)})
        out.B = sum(p.B for p in parts)
        return out

    def alloc_train(self) -> None:
        self.train = {k: s.empty(self.T, self.B, device=self.steps["valid"].device) for k, s in train_fields().items()}

    def flat(self) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
        """Samples flattened to N = T x B rows: {"inputs": {...}, "replay": {...}, and the step
        and train fields by name}; what minibatches are cut from."""
        f = lambda v: v.flatten(0, 1)  # noqa: E731
        out: dict = {"inputs": {k: f(v) for k, v in self.inputs.items()},
                     "replay": {k: f(v) for k, v in self.replay.items()}}
        out.update({k: f(v) for k, v in self.steps.items()})
        out.update({k: f(v) for k, v in self.train.items()})
        return out
