"""The training loop, for every layout (RLinf's embodied runner and DeepSpeed-Chat's trainer
are the model). It holds no tensors: it calls the workers of this rank's roles in one fixed
order, the same on every rank, so the env, rollout and actor ranks meet where they must.

    sync weights (actor -> rollout) -> collect rollouts (env <-> rollout, pipelined over
    `rollout.pipeline_stage_num` stages) -> trajectories (rollout -> actor, split evenly) ->
    advantages -> update epochs -> eval / log / save

`cluster.component_placement` decides the roles: colocated (`env,rollout,actor: all`) runs
the three workers in one process joined by in-process channels; other layouts join them by
torch.distributed point-to-point (pirl.engine.channels). One RL sample = one chunk step of
one env (DESIGN.md).
"""
from __future__ import annotations

import copy
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from pirl.checkpoint import CheckpointManager
from pirl.data import RolloutBuffer, rollout_schema
from pirl.engine.actor import select_trainable, trainable_names
from pirl.engine.channels import LocalChannel, P2PChannel, action_channel, env_channel, trajectory_kind
from pirl.engine.dist import DistInfo
from pirl.engine.groups import ProcessGroups
from pirl.engine.offload import ModuleOffload
from pirl.engine.placement import Placement, pair_env_rollout, trajectory_routes
from pirl.engine.weight_sync import WeightSync
from pirl.logging import MetricLogger, format_summary
from pirl.models import build_policy
from pirl.workers.actor_worker import ActorWorker
from pirl.workers.env_worker import EnvWorker
from pirl.workers.rollout_worker import RolloutWorker

SPLITS = ("train", "eval")


def seed_everything(seed: int) -> None:
    """The same on every rank: ZeRO-3 partitions each rank's own initial tensors, and a
    rollout-only rank builds the replica the actor ranks build."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Driver:
    def __init__(self, cfg, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        rank = dist_info.rank
        raw = OmegaConf.to_container(cfg.cluster.component_placement, resolve=True)
        assert isinstance(raw, dict)
        placement = Placement.from_config(raw, dist_info.world_size)
        self.groups = g = ProcessGroups.build(placement)
        self.logger = MetricLogger(cfg, rank)
        self.stages = S = cfg.rollout.pipeline_stage_num
        C = cfg.actor.model.num_action_chunks
        self.n_chunks = {s: cfg.env[s].max_steps_per_rollout_epoch // C for s in SPLITS}
        self.epochs = cfg.env.train.rollout_epoch
        per_stage = {s: cfg.env[s].total_num_envs // (g.size("env") * S) for s in SPLITS}
        links = {s: pair_env_rollout(placement, per_stage[s]) for s in SPLITS}

        self.routes = trajectory_routes(placement, self._cols_per_rollout_rank(links["train"]))
        # one two-rank group per p2p channel, created in the same order on every rank
        pairs = [(k, a, b) for lk in links["train"] if lk.env_rank != lk.rollout_rank
                 for k, a, b in (("obs", lk.env_rank, lk.rollout_rank), ("actions", lk.rollout_rank, lk.env_rank))]
        pairs += [("trajectories", rt.rollout_rank, rt.actor_rank) for rt in self.routes
                  if rt.rollout_rank != rt.actor_rank]
        self.pair_groups = g.add_pair_groups(pairs)
        env_side, roll_side = self._env_rollout_channels(links["train"], dist_info.device)
        self._env_side, self._roll_side = env_side, roll_side
        self.env = None
        if g.has("env"):
            self.env = EnvWorker(cfg, g, {s: [lk for lk in links[s] if lk.env_rank == rank] for s in SPLITS},
                                 env_side, S)
        state_dim, action_dim = self._env_dims()
        self.state_dim = state_dim
        if action_dim != cfg.actor.model.action_dim:
            raise ValueError(f"actor.model.action_dim is {cfg.actor.model.action_dim} but the env has {action_dim} "
                             f"action dims")

        self.actor: ActorWorker | None = None
        self.rollout: RolloutWorker | None = None
        self.weights: WeightSync | None = None
        self.replica_offload: ModuleOffload | None = None
        if g.has("actor") or g.has("rollout"):
            seed_everything(cfg.runner.seed)
            policy = build_policy(cfg.actor.model, state_dim=state_dim, sampling=cfg.rollout.sampling_params)
            self.schema = rollout_schema(policy, C, action_dim)
            replica = None
            if g.has("rollout"):
                replica = copy.deepcopy(policy)
                select_trainable(replica, list(cfg.actor.model.trainable), list(cfg.actor.model.frozen))
                trainable = trainable_names(replica)
                replica = replica.to(dist_info.device).eval().requires_grad_(False)
                self.rollout = RolloutWorker(cfg, g, replica, self.schema,
                                             {s: [lk for lk in links[s] if lk.rollout_rank == rank] for s in SPLITS},
                                             roll_side, S, self.n_chunks)
                self.replica_offload = ModuleOffload(replica) if cfg.rollout.enable_offload else None
            if g.has("actor"):
                # a redrawn progress bar only on a terminal: in a log file its carriage returns pile up
                self.actor = ActorWorker(cfg, g, policy, self._total_steps(), dist_info.device,
                                         show_progress=self.logger.active and sys.stdout.isatty())
                trainable = trainable_names(self.actor.module)
            self.weights = WeightSync(g, self.actor.module if self.actor else None, replica, trainable,
                                      zero3=self.actor is not None and self.actor.actor.zero_stage == 3,
                                      device=dist_info.device)
        self.traj_channels: dict[tuple[int, int], P2PChannel] = {}
        self.iteration = 0
        self._closed = False
        self.ckpt = CheckpointManager(cfg, dist_info, log=self.logger.info)
        self._describe(placement)

    # ---- set-up ---------------------------------------------------------------------------
    def _env_rollout_channels(self, links, device):
        """Both ends of every env <-> rollout link this rank is on: one in-process pair when
        the link stays on this rank, p2p channels to the peer otherwise."""
        rank = self.dist.rank
        env_side: dict[int, tuple] = {}
        roll_side: dict[int, tuple] = {}
        for link in links:
            if link.env_rank == link.rollout_rank == rank:
                pair = (LocalChannel(), LocalChannel())
                env_side[rank] = roll_side[rank] = pair
            elif rank in (link.env_rank, link.rollout_rank):
                e, r = link.env_rank, link.rollout_rank
                peer = r if rank == e else e
                pair = (env_channel(peer, device, self.pair_groups[("obs", e, r)]),
                        action_channel(peer, device, self.pair_groups[("actions", r, e)]))
                (env_side if rank == e else roll_side)[peer] = pair
        return env_side, roll_side

    def _env_dims(self) -> tuple[int, int]:
        """(state dim, action dim) of the envs, from the first env rank to every rank: the
        rollout and actor ranks build the policy for them (a deliberate WORLD broadcast, once)."""
        dims = torch.zeros(2, dtype=torch.int64)
        if self.env is not None:
            dims = torch.tensor([self.env.state_dim, self.env.action_dim], dtype=torch.int64)
        if dist.is_initialized() and self.dist.world_size > 1:
            dist.broadcast(dims, self.groups.placement.ranks("env")[0])
        return int(dims[0]), int(dims[1])

    def _cols_per_rollout_rank(self, links) -> int:
        """Env trajectories each rollout rank holds per iteration: epochs x stages x batch."""
        r0 = self.groups.placement.ranks("rollout")[0]
        batch = sum(lk.rollout_cols[1] - lk.rollout_cols[0] for lk in links if lk.rollout_rank == r0)
        return self.epochs * self.stages * batch

    def _samples_per_actor_rank(self) -> int:
        e = self.cfg.env.train
        return e.total_num_envs * self.epochs * self.n_chunks["train"] // self.groups.size("actor")

    def _steps_per_iteration(self) -> int:
        per_step = self.cfg.actor.global_batch_size // self.groups.size("actor")
        return self._samples_per_actor_rank() // per_step * self.cfg.algorithm.update_epoch

    def _total_steps(self) -> int:
        total = self.cfg.actor.optim.total_training_steps
        return total if total > 0 else self._steps_per_iteration() * self.cfg.runner.max_epochs

    def _describe(self, placement: Placement) -> None:
        roles = ", ".join(c for c in ("env", "rollout", "actor") if self.groups.has(c))
        self.logger.info(f"layout: {'colocated' if placement.is_colocated else 'disaggregated'}, "
                         f"{placement.world_size} ranks, {self.stages} pipeline stage(s); rank 0: {roles}")

    # ---- one iteration ------------------------------------------------------------------------
    def _episode_steps(self, split: str, epoch: int) -> None:
        """One rollout epoch (or eval) of every stage, in the order every rank follows: for
        each chunk step and stage, the rollout samples, then the env steps."""
        it = self.iteration
        if self.env is not None:
            self.env.begin(split, it, epoch)
        if self.rollout is not None:
            self.rollout.begin(split, it, epoch)
        for t in range(self.n_chunks[split]):
            for s in range(self.stages):
                if self.rollout is not None:
                    self.rollout.act(split, t, s)
                if self.env is not None:
                    self.env.step(split, s)
        if self.rollout is not None:
            for s in range(self.stages):
                self.rollout.finish(split, s)
            if split == "train":
                self.rollout.end_epoch()

    def collect(self) -> tuple[RolloutBuffer | None, dict[str, float]]:
        """Rollouts of every env, then each actor rank's share of the trajectories."""
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.actor is not None:
            self.actor.to_host()
        if self.replica_offload is not None:
            self.replica_offload.reload()
        if self.rollout is not None:
            self.rollout.infer_time = 0.0
        for epoch in range(self.epochs):
            self._episode_steps("train", epoch)
        if self.env is not None:
            env_metrics = self.env.train_metrics()
            if self.groups.index("env") == 0:
                metrics.update(env_metrics)
        mine = None
        if self.rollout is not None:
            mine = self.rollout.take()
            if self.groups.index("rollout") == 0:
                metrics["time/rollout_inference"] = self.rollout.infer_time
            if self.replica_offload is not None:
                self.replica_offload.offload()
        t1 = time.perf_counter()
        batch = self._route_trajectories(mine)
        if self.actor is not None:
            self.actor.to_device()
        metrics["time/rollout"] = t1 - t0
        metrics["time/trajectories"] = time.perf_counter() - t1
        return batch, metrics

    def _route_trajectories(self, mine: RolloutBuffer | None) -> RolloutBuffer | None:
        rank = self.dist.rank
        local: dict[int, RolloutBuffer] = {}
        if mine is not None:
            for rt in self.routes:
                if rt.rollout_rank != rank:
                    continue
                part = mine.columns(slice(*rt.src))
                if rt.actor_rank == rank:
                    local[rt.rollout_rank] = part
                else:
                    self._traj_channel(rank, rt.actor_rank).send({k: v.contiguous() for k, v in part.named().items()})
        if self.actor is None:
            return None
        parts = []
        for rt in sorted((r for r in self.routes if r.actor_rank == rank), key=lambda r: r.dst):
            if rt.rollout_rank == rank:
                parts.append(local[rank])
            else:
                named = self._traj_channel(rt.rollout_rank, rank).recv()
                parts.append(RolloutBuffer.from_named(self.schema, {k: v.cpu() for k, v in named.items()}))
        return RolloutBuffer.cat(parts)

    def _traj_channel(self, src: int, dst: int) -> P2PChannel:
        """Trajectories from rollout rank src to actor rank dst (one channel per direction)."""
        if (src, dst) not in self.traj_channels:
            universe, tag = trajectory_kind(tuple(f"{g}.{n}" for g, n, _ in self.schema.fields()))
            peer = dst if src == self.dist.rank else src
            self.traj_channels[(src, dst)] = P2PChannel(peer, universe, tag, self.dist.device,
                                                        group=self.pair_groups[("trajectories", src, dst)])
        return self.traj_channels[(src, dst)]

    def sync_weights(self) -> dict[str, float]:
        if self.weights is None:
            return {}
        if self.replica_offload is not None:
            self.replica_offload.reload()
        m = self.weights.sync()
        return m if self.dist.rank == self.groups.placement.ranks("actor")[0] else {}

    def train(self, batch: RolloutBuffer | None) -> dict[str, float]:
        if self.actor is None:
            return {}
        assert batch is not None
        metrics = self.actor.compute_advantages(batch)
        metrics.update(self.actor.update(batch, self.iteration))
        return metrics if self.groups.index("actor") == 0 else {}

    def evaluate(self) -> dict[str, float]:
        if self.actor is not None:
            self.actor.to_host()
        if self.replica_offload is not None:
            self.replica_offload.reload()
        self._episode_steps("eval", 0)
        out = {}
        if self.env is not None:
            m = self.env.eval_metrics()
            out = m if self.groups.index("env") == 0 else {}
        if self.actor is not None:
            self.actor.to_device()
        return self.gather(out)

    def gather(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every component leader's metrics to the logging rank (rank 0): a deliberate WORLD
        gather, once per iteration, of a few floats per rank."""
        if not dist.is_initialized() or self.dist.world_size == 1:
            return metrics
        parts: list = [None] * self.dist.world_size if self.dist.rank == 0 else []
        dist.gather_object(metrics, parts if self.dist.rank == 0 else None, dst=0)
        out: dict[str, float] = {}
        for part in parts:
            for k, v in part.items():
                out.setdefault(k, v)
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        rc = self.cfg.runner
        resume = self.ckpt.resume_path()
        if resume is not None:
            self.load(resume)
        else:
            self.sync_weights()  # version 0: everything, once
        results: dict[str, float] = {}
        if rc.only_eval:
            metrics = self.evaluate()  # gathered on rank 0 only
            if self.dist.rank == 0:
                success = metrics["eval/success_once"]
                results["success"] = success
                self.logger.log({"eval/success_once": success}, self.iteration)
                self.logger.info(f"eval only: success {success:.3f}")
            self.close()
            return results
        if rc.eval_before_train and self.iteration == 0:
            before = self.evaluate()
            if self.dist.rank == 0:
                results["success_before"] = before["eval/success_once"]
                self.logger.info(f"eval before training: success {results['success_before']:.3f}")
                self.logger.log({"eval/success_once": results["success_before"]}, 0)
        steps_per_iter = self._steps_per_iteration()
        while self.iteration < rc.max_epochs and (rc.max_steps < 0 or self.iteration * steps_per_iter < rc.max_steps):
            t0 = time.perf_counter()
            batch, metrics = self.collect()
            metrics.update(self.train(batch))
            metrics.update(self.sync_weights())
            self.iteration += 1
            metrics["time/iteration"] = time.perf_counter() - t0
            interval = rc.val_check_interval
            metrics = self.gather(metrics)
            if interval > 0 and self.iteration % interval == 0:
                metrics.update(self.evaluate())
            if self.dist.rank == 0:
                self.logger.log(metrics, self.iteration)
                self.logger.info(format_summary(self.iteration, metrics))
            if rc.save_interval > 0 and self.iteration % rc.save_interval == 0:
                self.save()
        after = self.evaluate()
        if self.dist.rank == 0:
            results["success_after"] = after["eval/success_once"]
            self.logger.log({"eval/success_once": results["success_after"]}, self.iteration)
            if "success_before" in results:
                self.logger.info(f"success before: {results['success_before']:.3f}  "
                                 f"after: {results['success_after']:.3f}")
            else:
                self.logger.info(f"success after: {results['success_after']:.3f}")
        if rc.save_policy:
            self.export_policy()
        self.close()
        return results

    def export_policy(self) -> Path | None:
        """The trained policy (the first rollout rank's replica, synced from the actor) as a
        pirl policy checkpoint with its contract: what `python -m pirl.eval --checkpoint` and
        `actor.model.model_path` load, at <log_path>/<experiment>/policy."""
        from pirl.models.contract import policy_contract

        lcfg = self.cfg.runner.logger
        path = Path(lcfg.log_path) / lcfg.experiment_name / "policy"
        if self.rollout is not None and self.groups.index("rollout") == 0:
            self.rollout.policy.save_pretrained(path, {"policy": policy_contract(self.cfg, self.state_dim),
                                                       "iteration": self.iteration,
                                                       "init_model_path": self.cfg.actor.model.model_path})
            print(f"policy written to {path}", flush=True)
        return path

    def close(self, flush: bool = True) -> None:
        """Idempotent. `flush`: first wait for every message still in flight (a dropped
        channel would cancel its sends and leave the peer waiting); off after an error, when
        the peers may never receive them. Then close the envs and the logger."""
        if self._closed:
            return
        self._closed = True
        if flush:
            for pair in (*self._env_side.values(), *self._roll_side.values()):
                for ch in pair:
                    ch.flush()
            for ch in self.traj_channels.values():
                ch.flush()
        if self.env is not None:
            self.env.close()
        self.logger.close()

    # ---- checkpoint / resume ------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "iteration": self.iteration,
            "weights_version": self.weights.version if self.weights is not None else -1,
            "global_step": self.actor.global_step if self.actor is not None else 0,
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "env": self.env.state_dict() if self.env is not None else None,
        }

    def save(self) -> None:
        self.ckpt.save(self.iteration, self.actor.actor if self.actor is not None else None, self._state())

    def load(self, path) -> None:
        state = self.ckpt.load(path, self.actor.actor if self.actor is not None else None)
        self.iteration = state["iteration"]
        if self.actor is not None:
            self.actor.global_step = state["global_step"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if self.env is not None and state["env"] is not None:
            self.env.load_state_dict(state["env"])
        if self.weights is not None:
            self.weights.version = -1
            self.sync_weights()  # a full sync of the restored weights
        self.logger.info(f"resumed from {path} at iteration {self.iteration}")
