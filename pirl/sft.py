"""Few-shot supervised warm start for reach2d: a scripted expert's demonstrations, flow
matching through the policy's own `sft_loss` (pirl.flow.matching; flow_mlp, π0 and π0.5
alike), a checkpoint in the policy's own format. It plays the part a pretrained VLA plays
on real tasks: an imperfect starting policy that RL then improves.

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
from pirl.models import build_policy
from pirl.models.policy import Policy


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


def _select(obs: dict, rows: torch.Tensor) -> dict:
    """The rows (bool (B,) or long (N,)) of every observation entry (tensors and lists)."""
    idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
    return {k: v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()] for k, v in obs.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) if torch.is_tensor(parts[0][k]) else sum((p[k] for p in parts), [])
            for k in parts[0]}


def collect_demos(env: Reach2DEnv, episodes_per_env: int, chunk: int, noise: float = 0.0,
                  seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Run the expert for `episodes_per_env` full episodes of every env (no auto-reset
    bookkeeping: each episode is one reset). Returns the observations (a dict as the env
    gives them: states (N, S), main_images (N, H, W, 3) when rendered, task_descriptions)
    and the action chunks (N, C, 2), one row per chunk step taken before the episode ended."""
    gen = torch.Generator().manual_seed(seed)
    n_chunks = env.max_episode_steps // chunk
    observations, actions = [], []
    for ep in range(episodes_per_env):
        obs = env.reset(seed=seed * 1_000 + ep)
        live = torch.ones(env.num_envs, dtype=torch.bool)
        for _ in range(n_chunks):
            a = expert_chunk(env, chunk, noise, gen)
            observations.append(_select(obs, live))
            actions.append(a[live])
            obs, _, _, _, info = env.chunk_step(a)
            live &= ~info["done"]
            if not bool(live.any()):
                break
    return _concat(observations), torch.cat(actions)


def train_flow_matching(policy: Policy, observations: dict, actions: torch.Tensor, steps: int,
                        lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> list[float]:
    """Fit any Policy's velocity field to the demonstrations through its own
    `preprocess` and `sft_loss` (AdamW over the trainable parameters, minibatches drawn with
    replacement). actions (N, C, D_env) in env units. Returns the loss of every step."""
    N = actions.shape[0]
    if N == 0 or any(len(v) != N for v in observations.values()):
        raise ValueError(f"need as many observations as action chunks (> 0), got "
                         f"{ {k: len(v) for k, v in observations.items()} } and {N}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, N, (batch_size,), generator=gen)
        fi = policy.preprocess(_select(observations, idx))
        loss = policy.sft_loss(fi, actions[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def demo_norm_stats(policy, observations: dict, actions: torch.Tensor) -> dict:
    """π0's state / action normalization statistics over the demonstrations, as openpi
    computes them over its SFT data (actions after the delta transform). They travel with
    the checkpoint; π0.5 needs them most: its prompt bins the normalized state over [-1, 1],
    so an unnormalized state beyond that range would be clipped away."""
    from pirl.models.pi0.normalize import compute_norm_stats

    states = observations["states"].float()
    deltas = policy.processor.to_delta(actions.float(), states)  # (N, C, D_env)
    return {"state": compute_norm_stats(states), "actions": compute_norm_stats(deltas.flatten(0, 1))}


def warm_start(cfg, episodes_per_env: int, num_envs: int = 16, noise: float = 0.0, steps: int = 1500,
               lr: float = 1e-3, seed: int = 0) -> tuple[Policy, list[float]]:
    """Build the experiment's policy (any model type) and fit it to expert demos of its
    train env: `episodes_per_env` x `num_envs` demonstrated episodes, observed as the RL run
    will observe them (rendered when env.train.extra.render says so)."""
    split = cfg.env.train
    if str(split.simulator_type) != "reach2d":
        raise ValueError(f"pirl.sft warm starts reach2d only; env.train.simulator_type is {split.simulator_type!r}")
    env = Reach2DEnv(num_envs, max_episode_steps=int(split.max_episode_steps), auto_reset=False,
                     seed=seed, **dict(split.extra))
    chunk = int(cfg.actor.model.num_action_chunks)
    observations, actions = collect_demos(env, episodes_per_env, chunk, noise, seed)
    torch.manual_seed(seed)
    model_cfg = cfg.actor.model.copy() if hasattr(cfg.actor.model, "copy") else cfg.actor.model
    model_cfg.model_path = None
    policy = build_policy(model_cfg, state_dim=env.state_dim, sampling=cfg.rollout.sampling_params)
    processor = getattr(policy, "processor", None)  # π0's observation pipeline; flow_mlp has none
    if model_cfg.model_type == "openpi" and processor is not None and processor.norm_stats is None:
        processor.norm_stats = demo_norm_stats(policy, observations, actions)
    losses = train_flow_matching(policy, observations, actions, steps, lr, seed=seed)
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
    try:
        policy, losses = warm_start(cfg, args.episodes, args.num_envs, args.noise, args.steps, args.lr, args.seed)
    except ValueError as e:
        print(f"pirl.sft: {e}", file=sys.stderr)
        return 2
    policy.save_pretrained(Path(args.out), {"sft_episodes": args.episodes * args.num_envs,
                                            "sft_noise": args.noise, "sft_steps": args.steps})
    k = min(50, len(losses))
    print(f"flow-matching loss {sum(losses[:k]) / k:.4f} -> {sum(losses[-k:]) / k:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
