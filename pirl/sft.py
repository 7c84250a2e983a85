"""Supervised warm start from demonstrations (flow matching), through the DeepSpeed actor
engine the RL run uses (ZeRO stage, LoRA, train_expert_only, trainable regexes as the
experiment configures them). It plays the part a pretrained VLA's few-shot SFT plays on
real tasks: a starting policy that RL then improves.

    python -m pirl.sft --config-name EXP --out DIR [--demos expert|DATASET] [--episodes N] [key=value ...]
    launcher/run.sh-style multi-rank runs work too (deepspeed / torchrun python -m pirl.sft ...)

Demonstrations (pirl.demos): `expert` records the env's scripted expert through pirl's own
env pipeline (reach2d: N episodes per env of --num-envs; MetaWorld: N successful episodes
per task); a LeRobotDataset folder or LIBERO HDF5 file(s) are read from disk. Every rank
trains on its own share of the samples (data parallel); the norm stats are computed over
all of them, before the model is built, and travel with the checkpoint (norm_stats.json)
together with the policy contract (pirl.models.contract) `python -m pirl.eval` checks.
The loss curve goes to the run's logger backends (TensorBoard / WandB / console) as
`sft/loss` under <log_path>/<experiment_name>_sft/.

Then train from it with actor.model.model_path=DIR; the policy is built from the same
experiment config, so the checkpoint fits the RL run's model exactly.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from pirl.demos import Demonstrations, chunk_episodes, detect_source, load_episodes
from pirl.models.policy import Policy

# Heads the flow-matching loss does not reach: frozen during SFT (no gradient would ever
# arrive; ZeRO would carry them as empty partitions).
SFT_FROZEN = (r"(^|\.)value_head\.", r"(^|\.)noise_head\.")


class FlowMatchingObjective(nn.Module):
    """The DeepSpeed engine's module during SFT: its forward is the policy's flow-matching
    loss, so ZeRO-3 gathers parameters through the usual forward hooks."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, forward_inputs: dict[str, torch.Tensor], actions: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.policy.sft_loss(forward_inputs, actions, generator)


def demo_norm_stats(policy, demos: Demonstrations) -> dict:
    """π0's state / action normalization statistics over the demonstrations, as openpi
    computes them over its SFT data (actions after the delta transform). π0.5 needs them
    most: its prompt bins the normalized state over [-1, 1]."""
    from pirl.models.pi0.normalize import compute_norm_stats

    states = demos.observations["states"].float()
    deltas = policy.processor.to_delta(demos.actions.float(), states)  # (N, C, D_env)
    return {"state": compute_norm_stats(states), "actions": compute_norm_stats(deltas.flatten(0, 1))}


def _gather_demos(demos: Demonstrations) -> Demonstrations:
    """Every rank's demonstrations joined (rank order), for statistics over all of them."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return demos
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (demos.observations["states"], demos.actions, demos.num_episodes))
    return Demonstrations({"states": torch.cat([p[0] for p in parts])}, torch.cat([p[1] for p in parts]),
                          num_episodes=sum(p[2] for p in parts))


def collect(cfg, source: str, episodes: int, num_envs: int, noise: float, seed: int,
            rank: int, world: int) -> Demonstrations:
    """This rank's demonstrations. Experts record a disjoint share per rank (own reset
    seeds); file sources are read whole and split by sample index."""
    split = cfg.env.train
    chunk = cfg.actor.model.num_action_chunks
    kind = detect_source(source)
    if kind == "expert":
        sim = split.env_type
        if sim == "reach2d":
            from pirl.demos.experts import reach2d_demos

            return reach2d_demos(split, episodes, num_envs, chunk, noise, seed + 7919 * rank)
        if sim == "metaworld":
            from pirl.demos.experts import record_metaworld_experts

            share = -(-episodes // world)  # ceil: every rank records as many per task
            # Reset seeds env.train.seed + seed + rank·num_envs + ...: the train split's own
            # initial states (the eval split starts from env.eval.seed), shifted by --seed.
            offset = split.seed + seed + rank * num_envs
            eps, _ = record_metaworld_experts(split, share, num_envs, seed, noise, seed_offset=offset)
            return chunk_episodes(eps, chunk)
        raise ValueError(f"--demos expert: no scripted expert for env.train.env_type {sim!r} "
                         "(reach2d and metaworld have one); give a LeRobotDataset folder or LIBERO HDF5 file")
    demos = chunk_episodes(load_episodes(source), chunk)
    rows = torch.arange(rank, len(demos), world)
    obs, actions = demos.select(rows)
    return Demonstrations(obs, actions, [demos.task_names[i] for i in rows.tolist()], demos.num_episodes)


def check_demos_fit(demos: Demonstrations, cfg, state_dim: int | None) -> None:
    """Demonstrations must match the env the policy will act in: action dims, state dims."""
    d_env = cfg.actor.model.action_dim
    if demos.actions.shape[-1] != d_env:
        raise ValueError(f"demonstrations have {demos.actions.shape[-1]}-D actions, actor.model.action_dim is {d_env}")
    s = demos.observations["states"].shape[-1]
    if state_dim is not None and s != state_dim:
        raise ValueError(f"demonstrations have {s}-D states, env.train's env has {state_dim}")


def env_state_dim(cfg) -> int | None:
    """State dims of the train env without building it (None where only a build tells)."""
    sim = cfg.env.train.env_type
    if sim == "metaworld":
        from pirl.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv.state_dim
    if sim == "libero":
        return 8
    if sim == "reach2d":
        from pirl.envs.reach2d import Reach2DEnv

        return Reach2DEnv(1, **dict(cfg.env.train.init_params)).state_dim
    return None


def sft_actor_config(actor_cfg, batch_size: int, world: int, lr: float):
    """The run's `actor` section with SFT's batch and optimizer settings (constant lr, no
    warmup, the value / noise heads frozen); ZeRO, LoRA and trainable parts unchanged."""
    a = copy.deepcopy(actor_cfg)
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of the {world} ranks")
    a.global_batch_size = batch_size
    a.micro_batch_size = batch_size // world
    a.optim.lr = lr
    a.optim.value_lr = lr
    a.optim.lr_scheduler = "constant"
    a.optim.lr_warmup_steps = 0
    a.model.frozen = list(a.model.frozen) + list(SFT_FROZEN)
    return a


def train(cfg, demos: Demonstrations, all_demos: Demonstrations, steps: int, lr: float, batch_size: int,
          seed: int, dist, log_every: int = 50):
    """Fit the experiment's policy to the demonstrations; returns (policy replica with the
    trained weights, losses per step)."""
    from pirl.engine.actor import ActorEngine
    from pirl.logging import MetricLogger
    from pirl.models import build_policy

    torch.manual_seed(seed)  # the same initial weights on every rank (ZeRO-3 partitions them)
    model_cfg = copy.deepcopy(cfg.actor.model)
    model_cfg.model_path = None
    state_dim = int(demos.observations["states"].shape[-1])
    policy = build_policy(model_cfg, state_dim=state_dim, sampling=cfg.rollout.sampling_params)
    processor = getattr(policy, "processor", None)  # π0's: norm stats from the demos travel with it
    if model_cfg.model_type == "openpi" and processor is not None and processor.norm_stats is None:
        processor.norm_stats = demo_norm_stats(policy, all_demos)
    replica = copy.deepcopy(policy)
    actor = ActorEngine(FlowMatchingObjective(policy), sft_actor_config(cfg.actor, batch_size, dist.world_size, lr),
                        dist.world_size, steps)
    log_cfg = copy.deepcopy(cfg)
    log_cfg.runner.logger.experiment_name = f"{cfg.runner.logger.experiment_name}_sft"
    logger = MetricLogger(log_cfg, dist.rank)
    gen = torch.Generator().manual_seed(seed * 7919 + dist.rank)
    micro = batch_size // dist.world_size // actor.grad_accum
    losses: list[float] = []
    t0 = time.perf_counter()

    def loss_fn(engine, mb):
        loss = engine(mb["forward_inputs"], mb["actions"], gen)
        return loss, {"sft/loss": loss.item()}

    for step in range(1, steps + 1):
        mbs = []
        for _ in range(actor.grad_accum):
            rows = torch.randint(0, len(demos), (micro,), generator=gen)
            obs, act = demos.select(rows)
            mbs.append({"forward_inputs": policy.preprocess(obs), "actions": act.to(dist.device)})
        m = actor.train_step(mbs, loss_fn)
        losses.append(m["sft/loss"])
        if step % log_every == 0 or step == steps:
            window = losses[-log_every:]
            metrics = {"sft/loss": sum(window) / len(window), "actor/grad_norm": m["actor/grad_norm"],
                       "actor/lr": m["actor/lr"], "time/sft": time.perf_counter() - t0}
            logger.log(metrics, step)
            logger.info(f"sft step {step}/{steps} | loss={metrics['sft/loss']:.4g} | "
                        f"grad_norm={metrics['actor/grad_norm']:.3g} | {metrics['time/sft']:.0f}s")
    logger.close()
    actor.copy_weights_to(FlowMatchingObjective(replica))
    return replica.eval(), losses


def main(argv: list[str] | None = None) -> int:
    from pirl.config import ConfigError, build_arg_parser, load_config
    from pirl.models.contract import policy_contract

    ap = build_arg_parser(prog="python -m pirl.sft")
    ap.description = __doc__.split("\n\n")[0]
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--demos", default="expert",
                    help="expert (the env's scripted expert), a LeRobotDataset folder, or LIBERO .hdf5 file(s)")
    ap.add_argument("--episodes", type=int, default=3,
                    help="expert episodes: per env of --num-envs (reach2d) or per task (metaworld)")
    ap.add_argument("--num-envs", type=int, default=16, help="envs recording expert episodes")
    ap.add_argument("--noise", type=float, default=0.0, help="std of noise added to the expert's actions")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128, help="samples per optimizer step, all ranks")
    ap.add_argument("--seed", type=int, default=0)
    # the DeepSpeed launcher passes --local_rank to every rank
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        import os

        launched = int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None
        cfg = load_config(args.config_name, args.config_path, args.overrides, world_size=args.world_size or launched)
        detect_source(args.demos)
        for name in ("steps", "episodes", "batch_size", "num_envs"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"pirl.sft: {e}", file=sys.stderr)
        return 2
    from pirl.engine.dist import init_distributed, shutdown

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    dist = init_distributed()
    try:
        demos = collect(cfg, args.demos, args.episodes, args.num_envs, args.noise, args.seed,
                        dist.rank, dist.world_size)
        check_demos_fit(demos, cfg, env_state_dim(cfg))
        all_demos = _gather_demos(demos)
        policy, losses = train(cfg, demos, all_demos, args.steps, args.lr, args.batch_size, args.seed, dist)
        if dist.rank == 0:
            meta = {"policy": policy_contract(cfg, int(demos.observations["states"].shape[-1])),
                    "sft_demos": args.demos, "sft_episodes": all_demos.num_episodes, "sft_samples": len(all_demos),
                    "sft_noise": args.noise, "sft_steps": args.steps, "sft_lr": args.lr, "sft_seed": args.seed}
            policy.save_pretrained(Path(args.out), meta)
            k = max(1, min(50, len(losses) // 4))  # mean of the first and of the last k steps
            print(f"flow-matching loss {sum(losses[:k]) / k:.4f} -> {sum(losses[-k:]) / k:.4f} "
                  f"({all_demos.num_episodes} episodes, {len(all_demos)} samples); wrote {args.out}", flush=True)
    except ValueError as e:
        print(f"pirl.sft: {e}", file=sys.stderr)
        shutdown()
        return 2
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
