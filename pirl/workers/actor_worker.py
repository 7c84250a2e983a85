"""The actor worker: owns the DeepSpeed engine of the policy (on the actor ranks' group),
receives its share of the trajectories, computes advantages (pirl.algos.registry), runs the
update epochs over shuffled minibatches, and is the source of the weight sync.

Right after a weight sync the replica and the actor hold the same weights, so the first
optimizer step of an update re-evaluates the fresh rollout with exactly the rollout's
weights: `actor/sync_logprob_diff` is the largest |log π_actor − log π_rollout| over its
valid elements, reduced over the actor group. It is zero up to floating-point noise unless
the sync, the buffer or the replay is wrong.
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from pirl.algos import registry
from pirl.data import RolloutBuffer
from pirl.engine.actor import ActorEngine
from pirl.engine.groups import ProcessGroups, scope_deepspeed_to
from pirl.engine.offload import ActorOffload
from pirl.models.policy import Policy
from pirl.seeding import generator_for


def take_rows(flat: dict, idx: torch.Tensor, device) -> dict:
    """Rows `idx` of every flat (N, ...) tensor (nested dicts too), moved to the training device."""
    return {k: take_rows(v, idx, device) if isinstance(v, dict) else v[idx].to(device) for k, v in flat.items()}


class ActorWorker:
    def __init__(self, cfg, groups: ProcessGroups, policy: Policy, total_steps: int, device: torch.device,
                 show_progress: bool = False):
        self.cfg, self.groups, self.device = cfg, groups, device
        self.index = groups.index("actor")
        n_actor = groups.size("actor")
        mpu = None
        if not groups.actor_is_world:
            scope_deepspeed_to(groups.group("actor"))  # DeepSpeed's WORLD is the actor group
            mpu = groups.actor_mpu()
        self.actor = ActorEngine(policy.to(device), cfg.actor, n_actor, total_steps, mpu=mpu)
        self.offload = ActorOffload(self.actor.engine) if cfg.actor.enable_offload else None
        self.per_step = cfg.actor.global_batch_size // n_actor  # samples per rank per optimizer step
        self.global_step = 0
        self.show_progress = show_progress

    @property
    def module(self) -> Policy:
        return self.actor.module

    # ---- advantages ------------------------------------------------------------------------
    def compute_advantages(self, buf: RolloutBuffer) -> dict[str, float]:
        algo = self.cfg.algorithm
        auto_reset = self.cfg.env.train.auto_reset
        traj = registry.trajectories(buf.steps, buf.envs, algo.reward_type, auto_reset,
                                     registry.bootstraps(algo, auto_reset))
        out = registry.estimator(algo.adv_type).fn(traj, algo, self.groups.sum_over("actor"))
        buf.train = {"advantages": out.advantages, "returns": out.returns, "mask": out.mask}
        valid = out.mask.float()
        stats = self.groups.all_reduce(torch.tensor(
            [(out.advantages * valid).sum().item(), (out.returns * valid).sum().item(), valid.sum().item(),
             float(valid.numel())], dtype=torch.float64), "actor")
        n = max(stats[2].item(), 1.0)
        return {"rollout/advantages_mean": stats[0].item() / n, "rollout/returns_mean": stats[1].item() / n,
                "rollout/valid_fraction": stats[2].item() / max(1.0, stats[3].item())}

    # ---- update ----------------------------------------------------------------------------
    def update(self, buf: RolloutBuffer, iteration: int) -> dict[str, float]:
        t0 = time.perf_counter()
        algo, loss = self.cfg.algorithm, registry.policy_loss(self.cfg.algorithm.loss_type)
        flat = buf.flat()
        n = buf.T * buf.B
        micro = self.cfg.actor.micro_batch_size
        ga = self.actor.grad_accum
        gen = generator_for(self.cfg.runner.seed, "actor", self.index, iteration=iteration)
        steps = n // self.per_step * algo.update_epoch
        totals: dict[str, float] = {}
        count = 0
        diff = torch.zeros(1, dtype=torch.float64)
        first = [True]

        def loss_fn(engine, mb):
            ev = engine(mb["inputs"], mb["replay"])
            if first[0]:  # weights as synced: the actor must score the rollout as the rollout did
                m = mb["mask"].view(-1, *[1] * (ev.logprob.dim() - 1)).expand_as(ev.logprob)
                d = (ev.logprob.detach().float() - mb["logprob"].float()).abs()[m]
                if d.numel():
                    diff[0] = max(diff[0].item(), d.max().item())
            return loss.fn(ev, mb, algo)

        bar = tqdm(total=steps, desc=f"iter {iteration}", leave=False, disable=not self.show_progress,
                   dynamic_ncols=True)
        for _ in range(algo.update_epoch):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n - self.per_step + 1, self.per_step):
                idx = perm[start:start + self.per_step]
                mbs = [take_rows(flat, idx[i * micro:(i + 1) * micro], self.device) for i in range(ga)]
                m = self.actor.train_step(mbs, loss_fn)
                first[0] = False
                self.global_step += 1
                count += 1
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{m.get('actor/loss', float('nan')):.3g}")
        bar.close()
        names = sorted(totals)
        means = self.groups.all_reduce(torch.tensor([totals[k] / max(count, 1) for k in names], dtype=torch.float64),
                                       "actor") / self.groups.size("actor")
        out = dict(zip(names, means.tolist()))
        out["actor/skipped_steps"] = float(self.actor.skipped_steps)
        out["actor/sync_logprob_diff"] = self.groups.all_reduce(diff, "actor", torch.distributed.ReduceOp.MAX).item()
        out["time/update"] = time.perf_counter() - t0
        return out

    # ---- offload -----------------------------------------------------------------------------
    def to_host(self) -> None:
        if self.offload is not None:
            self.offload.offload()

    def to_device(self) -> None:
        if self.offload is not None:
            self.offload.reload()
