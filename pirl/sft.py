"""Few-shot supervised warm start for reach2d: a scripted expert's demonstrations, flow
matching (pirl.flow.matching), a pirl-format checkpoint. It plays the part a pretrained
VLA plays on real tasks: an imperfect starting policy that RL then improves.

    python -m pirl.sft --config-name reach2d_ppo_flow_sde --episodes 48 --out DIR [key=value ...]

then train from it with actor.model.model_path=DIR. The policy is built from the same
experiment config, so the checkpoint fits the RL run's model exactly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pirl.envs.reach2d import Reach2DEnv
from pirl.flow.matching import flow_matching_loss, sample_times
from pirl.models import build_policy
from pirl.models.io import save_policy
from pirl.models.policy import FlowPolicy


def expert_chunk(env: Reach2DEnv, chunk: int, noise: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, 2) actions of the scripted expert: head straight for the named target, at
    full speed until the last step, which lands on it; `noise` adds N(0, noise²) per
    element (an imperfect demonstrator). Plans the chunk open loop from the current state."""
    pos = env.pos.clone()
    goal = env._goal_pos()
    actions = []
    for _ in range(chunk):
        d = goal - pos  # (B, 2)
        dist = d.norm(dim=1, keepdim=True)
        a = d / dist.clamp(min=1e-6) * (dist / env.speed).clamp(max=1.0)
        if noise > 0:
            a = a + noise * torch.randn(a.shape, generator=generator)
        a = a.clamp(-1.0, 1.0)
        pos = (pos + env.speed * a).clamp(-1.0, 1.0)
        actions.append(a)
    return torch.stack(actions, dim=1)


def collect_demos(env: Reach2DEnv, episodes_per_env: int, chunk: int, noise: float = 0.0,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the expert for `episodes_per_env` full episodes of every env (no auto-reset
    bookkeeping: each episode is one reset). Returns states (N, S) and action chunks
    (N, C, 2), one row per chunk step taken before the episode ended."""
    gen = torch.Generator().manual_seed(seed)
    n_chunks = env.max_episode_steps // chunk
    states, actions = [], []
    for ep in range(episodes_per_env):
        obs = env.reset(seed=seed * 1_000 + ep)
        live = torch.ones(env.num_envs, dtype=torch.bool)
        for _ in range(n_chunks):
            a = expert_chunk(env, chunk, noise, gen)
            states.append(obs["states"][live])
            actions.append(a[live])
            obs, _, _, _, info = env.chunk_step(a)
            live &= ~info["done"]
            if not bool(live.any()):
                break
    return torch.cat(states), torch.cat(actions)


def train_flow_matching(policy: FlowPolicy, states: torch.Tensor, actions: torch.Tensor, steps: int,
                        lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> list[float]:
    """Fit the policy's velocity field to the demonstrations (AdamW, minibatches drawn with
    replacement). actions (N, C, D_env) are padded with zeros to the model's (H, D); padded
    elements are masked out of the loss. Returns the loss of every step."""
    if states.shape[0] != actions.shape[0] or states.shape[0] == 0:
        raise ValueError(f"need as many states as action chunks (> 0), got {states.shape[0]} and {actions.shape[0]}")
    H, D = policy.horizon, policy.action_dim
    N, C, De = actions.shape
    padded = actions.new_zeros(N, H, D)
    padded[:, :C, :De] = actions
    mask = torch.zeros(1, H, D, dtype=torch.bool)
    mask[:, :C, :De] = True
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, N, (batch_size,), generator=gen)
        feats = policy.encoder(states[idx])
        noise = torch.randn(batch_size, H, D, generator=gen)
        t = sample_times(batch_size, gen)
        loss = flow_matching_loss(lambda x, tt: policy.velocity(feats, x, tt), padded[idx], noise, t, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def warm_start(cfg, episodes_per_env: int, num_envs: int = 16, noise: float = 0.0, steps: int = 1500,
               lr: float = 1e-3, seed: int = 0) -> tuple[FlowPolicy, list[float]]:
    """Build the experiment's policy and fit it to expert demos of its train env:
    `episodes_per_env` x `num_envs` demonstrated episodes."""
    split = cfg.env.train
    if str(split.simulator_type) != "reach2d":
        raise ValueError(f"pirl.sft warm starts reach2d only; env.train.simulator_type is {split.simulator_type!r}")
    extra = dict(split.extra) | {"render": False}  # demos need states only
    env = Reach2DEnv(num_envs, max_episode_steps=int(split.max_episode_steps), auto_reset=False,
                     seed=seed, **extra)
    chunk = int(cfg.actor.model.num_action_chunks)
    states, actions = collect_demos(env, episodes_per_env, chunk, noise, seed)
    torch.manual_seed(seed)
    model_cfg = cfg.actor.model.copy() if hasattr(cfg.actor.model, "copy") else cfg.actor.model
    model_cfg.model_path = None
    policy = build_policy(model_cfg, state_dim=env.state_dim)
    losses = train_flow_matching(policy, states, actions, steps, lr, seed=seed)
    return policy.eval(), losses


def main(argv: list[str] | None = None) -> int:
    from pirl.config import load_config

    ap = argparse.ArgumentParser(prog="python -m pirl.sft", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-name", required=True, help="experiment whose model and env to use")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--episodes", type=int, default=3, help="demonstrated episodes per env (16 envs)")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.0, help="expert action noise std")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)
    cfg = load_config(args.config_name, overrides=args.overrides)
    if cfg.actor.model.model_type != "flow_mlp":
        print(f"pirl.sft: actor.model.model_type must be flow_mlp, got {cfg.actor.model.model_type!r}", file=sys.stderr)
        return 2
    policy, losses = warm_start(cfg, args.episodes, args.num_envs, args.noise, args.steps, args.lr, args.seed)
    save_policy(policy, Path(args.out), {"model_type": "flow_mlp", "sft_episodes": args.episodes * args.num_envs,
                                         "sft_noise": args.noise, "sft_steps": args.steps})
    print(f"flow-matching loss {sum(losses[:50]) / 50:.4f} -> {sum(losses[-50:]) / 50:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
