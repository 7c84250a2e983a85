"""The rollout buffer: one declared schema (field, shape, dtype, meaning), preallocated
(T, B, ...) and filled in place (CleanRL's storage block is the model)."""
from pirl.data.buffer import (
    ENV_FIELDS, FieldSpec, RolloutBuffer, RolloutSchema, rollout_schema, step_fields, train_fields,
)

__all__ = ["ENV_FIELDS", "FieldSpec", "RolloutBuffer", "RolloutSchema", "rollout_schema", "step_fields",
           "train_fields"]
