"""RL algorithm core: chunk-level GAE, GRPO advantages, PPO actor and critic losses.

Pure functions of tensors and masks; reduction happens only in `agg_loss`.
"""
from pirl.algos.advantages import (
    chunk_rewards, compute_gae, compute_grpo_advantages, filter_groups, invalidate_cut_episodes, loss_mask_after_done,
    normalize_advantages,
)
from pirl.algos.losses import (
    LOSS_AGG_MODES, PPO_LOSS_KEYS, SEQ_MEAN_TOKEN_MEAN, SEQ_MEAN_TOKEN_SUM, TOKEN_MEAN,
    VALUE_LOSS_TYPES, agg_loss, entropy_loss, expand_mask, loss_kwargs, masked_mean,
    ppo_actor_loss, ppo_loss, value_loss,
)

__all__ = [
    "chunk_rewards", "compute_gae", "compute_grpo_advantages", "filter_groups", "invalidate_cut_episodes",
    "loss_mask_after_done", "normalize_advantages",
    "LOSS_AGG_MODES", "PPO_LOSS_KEYS", "SEQ_MEAN_TOKEN_MEAN", "SEQ_MEAN_TOKEN_SUM", "TOKEN_MEAN",
    "VALUE_LOSS_TYPES", "agg_loss", "entropy_loss", "expand_mask", "loss_kwargs", "masked_mean",
    "ppo_actor_loss", "ppo_loss", "value_loss",
]
