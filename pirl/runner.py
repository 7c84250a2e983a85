"""The training loop (DESIGN.md "The job, as data flows"), colocated placement.

One iteration: `algorithm.rollout_epoch` x (max_episode_steps / num_action_chunks)
chunk steps of every env with the rollout replica, then advantages (GAE or GRPO), then
`algorithm.update_epoch` passes of shuffled minibatches through the DeepSpeed actor,
then the actor's weights go to the rollout replica. One RL sample = one chunk step of
one env. Every rank runs its own env shard, rollout replica and actor partition.
"""
from __future__ import annotations

import copy
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pirl import algos
from pirl.checkpoint import CheckpointManager
from pirl.data import RolloutBuffer, rollout_schema
from pirl.engine.dist import DistInfo, all_reduce_sum
from pirl.engine.placement import Placement
from pirl.envs import make_env
from pirl.envs.base import EPISODE_METRICS
from pirl.flow import reduce_logprob
from pirl.logging import MetricLogger, format_summary
from pirl.models import build_policy
from pirl.models.policy import ActionSample, Policy


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Runner:
    def __init__(self, cfg, dist: DistInfo):
        self.cfg, self.dist = cfg, dist
        self.placement = Placement.from_config(dict(cfg.cluster.component_placement), dist.world_size)
        if not self.placement.is_colocated:
            raise NotImplementedError(
                "cluster.component_placement: only the colocated placement (env,rollout,actor: all) runs "
                "in this version; disjoint env/rollout/actor ranks need the distributed engine")
        self.logger = MetricLogger(cfg, dist.rank)
        model_cfg, algo = cfg.actor.model, cfg.algorithm
        self.chunk = int(model_cfg.num_action_chunks)
        self.n_chunks = int(cfg.env.train.max_episode_steps) // self.chunk
        self.stages = int(cfg.rollout.pipeline_stage_num)
        envs_per_rank = int(cfg.env.train.total_num_envs) // dist.world_size
        eval_per_rank = int(cfg.env.eval.total_num_envs) // dist.world_size
        # Each pipeline stage owns its own envs; stages run one after another here (the
        # overlap of simulation and inference needs env and rollout on different ranks).
        self.envs = [make_env(cfg.env.train, envs_per_rank // self.stages,
                              seed=int(cfg.env.train.seed) + 1000 * (dist.rank * self.stages + s),
                              rank=dist.rank, video_cfg=cfg.video_cfg if s == 0 else None)
                     for s in range(self.stages)]
        self.eval_env = make_env(cfg.env.eval, eval_per_rank, seed=int(cfg.env.eval.seed) + 1000 * dist.rank,
                                 rank=dist.rank)
        # The same seed on every rank: ZeRO-3 partitions each rank's own initial tensors.
        _seed_everything(int(cfg.runner.seed))
        policy = build_policy(model_cfg, state_dim=self.envs[0].state_dim,
                              sampling=cfg.rollout.sampling_params).to(dist.device)
        self.rollout_policy: Policy = copy.deepcopy(policy).eval().requires_grad_(False)
        self.schema = rollout_schema(policy, self.chunk, int(model_cfg.action_dim))
        self.samples_per_rank = int(algo.rollout_epoch) * self.n_chunks * envs_per_rank
        per_step = int(cfg.actor.global_batch_size) // dist.world_size
        self.steps_per_iter = self.samples_per_rank // per_step * int(algo.update_epoch)
        total_steps = int(cfg.actor.optim.total_training_steps)
        if total_steps <= 0:
            total_steps = self.steps_per_iter * int(cfg.runner.max_epochs)
        from pirl.engine.actor import ActorEngine

        self.actor = ActorEngine(policy, cfg.actor, dist.world_size, total_steps)
        self.actor.copy_weights_to(self.rollout_policy)
        # Per-rank randomness: rollout noise and minibatch shuffling.
        self.gen = torch.Generator().manual_seed(int(cfg.runner.seed) * 7919 + dist.rank)
        self.iteration = 0
        self.global_step = 0
        self.obs: list | None = None
        self.ckpt = CheckpointManager(cfg, dist, log=self.logger.info)

    # ---- rollout ------------------------------------------------------------------------
    def _reset_seed(self, stage: int, epoch: int) -> int:
        return int(self.cfg.env.train.seed) + 100_003 * (self.iteration * 64 + epoch) + 1009 * (
            self.dist.rank * self.stages + stage)

    @torch.no_grad()
    def _final_values(self, obs, infos, trunc: torch.Tensor) -> torch.Tensor:
        """V of the truncated episodes' last observations (B,), 0 elsewhere."""
        if not bool(trunc.any()):
            return torch.zeros(trunc.shape[0])
        last = infos.get("final_obs", obs)
        v = self.rollout_policy.value(self.rollout_policy.preprocess(last)).float().cpu()
        return torch.where(trunc, v, torch.zeros_like(v))

    @torch.no_grad()
    def rollout(self) -> tuple[RolloutBuffer, dict[str, float]]:
        split = self.cfg.env.train
        algo = self.cfg.algorithm
        group = int(split.group_size)
        per_epoch: list[RolloutBuffer] = []
        episodes: list[tuple[str, dict[str, float]]] = []  # (task, metrics) of each finished episode
        restarts = 0
        for epoch in range(int(algo.rollout_epoch)):
            if self.obs is None or not bool(split.auto_reset):
                self.obs = [env.reset(seed=self._reset_seed(s, epoch), group_size=group)
                            for s, env in enumerate(self.envs)]
            width = self.envs[0].num_envs
            buf = RolloutBuffer(self.schema, self.n_chunks, width * len(self.envs))
            for s, env in enumerate(self.envs):
                cols = slice(s * width, (s + 1) * width)
                first_success = torch.full((env.num_envs,), float("nan"))
                for t in range(self.n_chunks):
                    out: ActionSample = self.rollout_policy.sample(self.rollout_policy.preprocess(self.obs[s]),
                                                                  "train", self.gen)
                    obs, rew, term, trunc, infos = env.chunk_step(out.actions.cpu())
                    truncated = trunc[:, -1] & ~term[:, -1]
                    buf.write_sample(t, cols, out)
                    buf.write("steps", t, cols, {
                        "rewards": rew, "dones": term | trunc, "truncations": trunc,
                        "valid": infos.get("valid", torch.ones(env.num_envs, dtype=torch.bool)),
                        "final_values": self._final_values(obs, infos, truncated)
                        if bool(algo.bootstrap_on_truncation) else torch.zeros(env.num_envs)}, complete=False)
                    episodes += _finished_episodes(infos, getattr(env, "task_names", None))
                    restarts += int(infos.get("restarts", 0))
                    newly = infos["done"] & torch.isnan(first_success)
                    first_success[newly] = infos["episode"]["success_once"][newly]
                    self.obs[s] = obs
                buf.write("envs", None, cols, {
                    "success": torch.nan_to_num(first_success, nan=0.0),
                    "last_values": self.rollout_policy.value(self.rollout_policy.preprocess(self.obs[s])).float()})
            per_epoch.append(buf)
        env_metrics = episode_means(episodes)
        env_metrics["env/restarts"] = float(all_reduce_sum(torch.tensor([float(restarts)]))[0])
        return RolloutBuffer.cat(per_epoch), env_metrics

    # ---- advantages ---------------------------------------------------------------------
    def compute_advantages(self, b: RolloutBuffer) -> dict[str, float]:
        algo = self.cfg.algorithm
        st = b.steps
        rewards = algos.chunk_rewards(st["rewards"], 1.0)  # (T, B); the env applied reward_coef
        dones, trunc = st["dones"][..., -1], st["truncations"][..., -1]  # flags stay set: the last step says
        mask = invalidate_cut_episodes(st["valid"], dones)
        if not bool(self.cfg.env.train.auto_reset):
            mask &= algos.loss_mask_after_done(dones)
        if algo.adv_type == "gae":
            boot = bool(algo.bootstrap_on_truncation)
            adv, ret = algos.compute_gae(rewards, st["values"], dones, b.envs["last_values"], float(algo.gamma),
                                         float(algo.gae_lambda), trunc if boot else None,
                                         st["final_values"] if boot else None)
        else:
            adv, keep = algos.compute_grpo_advantages(rewards, mask, int(algo.group_size))
            mask = mask & keep[None]
            if bool(algo.filter_rewards):
                keep = algos.filter_groups(b.envs["success"], int(algo.group_size), float(algo.rewards_lower_bound),
                                           float(algo.rewards_upper_bound))
                mask = mask & keep[None]
            ret = adv.clone()
        valid = mask.float()
        stats = all_reduce_sum(torch.tensor([(adv * valid).sum().item(), (ret * valid).sum().item(),
                                             valid.sum().item(), float(valid.numel())], dtype=torch.float64))
        n = max(stats[2].item(), 1.0)
        metrics = {"rollout/advantages_mean": stats[0].item() / n, "rollout/returns_mean": stats[1].item() / n,
                   "rollout/valid_fraction": stats[2].item() / max(1.0, stats[3].item())}
        if bool(algo.normalize_advantages) and algo.adv_type == "gae":
            adv = algos.normalize_advantages(adv, mask, reduce_sum=all_reduce_sum)
        b.train = {"advantages": adv, "returns": ret, "mask": mask}
        return metrics

    # ---- update -------------------------------------------------------------------------
    def _loss_fn(self, engine, mb: dict) -> tuple[torch.Tensor, dict]:
        algo = self.cfg.algorithm
        ev = engine(mb["inputs"], mb["replay"])
        lp = reduce_logprob(ev.logprob, algo.logprob_type)
        old = reduce_logprob(mb["logprob"], algo.logprob_type)
        critic = algo.loss_type == "actor_critic"
        return algos.ppo_loss(
            lp, old, mb["advantages"], mb["mask"], entropy=ev.entropy,
            values=ev.values if critic else None, old_values=mb["values"] if critic else None,
            returns=mb["returns"] if critic else None, **algos.loss_kwargs(algo))

    def update(self, b: RolloutBuffer) -> dict[str, float]:
        device = self.dist.device
        flat = b.flat()
        n = b.T * b.B
        micro = int(self.cfg.actor.micro_batch_size)
        ga = self.actor.grad_accum
        per_step = micro * ga
        totals: dict[str, float] = {}
        count = 0
        # A redrawn bar only on a terminal: in a log file (CI, SLURM, `make train > log`) its
        # carriage returns pile up; there the one summary line per iteration is the record.
        bar = tqdm(total=self.steps_per_iter, desc=f"iter {self.iteration}", leave=False,
                   disable=not (self.logger.active and sys.stdout.isatty()), dynamic_ncols=True)
        for _ in range(int(self.cfg.algorithm.update_epoch)):
            perm = torch.randperm(n, generator=self.gen)
            for start in range(0, n - per_step + 1, per_step):
                idx = perm[start:start + per_step]
                mbs = [_take(flat, idx[i * micro:(i + 1) * micro], device) for i in range(ga)]
                m = self.actor.train_step(mbs, self._loss_fn)
                self.global_step += 1
                count += 1
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{m.get('actor/loss', float('nan')):.3g}")
        bar.close()
        out = {k: v / max(count, 1) for k, v in totals.items()}
        out["actor/skipped_steps"] = float(self.actor.skipped_steps)
        return out

    # ---- eval ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic ODE sampling, one episode per eval env; success of that episode."""
        env = self.eval_env
        # rank r's envs reset with seeds base + r·B + i (group_seeds): no two ranks share one
        seed = int(self.cfg.env.eval.seed) + env.num_envs * self.dist.rank
        obs = env.reset(seed=seed, group_size=1)
        # Fixed initial noise too: the same weights always score the same, and comparisons
        # before/after training see the same episodes and the same x1 draws.
        gen = torch.Generator().manual_seed(seed)
        n_chunks = int(self.cfg.env.eval.max_episode_steps) // self.chunk
        success = torch.full((env.num_envs,), float("nan"))
        length = torch.zeros(env.num_envs)
        for _ in range(n_chunks):
            out = self.rollout_policy.sample(self.rollout_policy.preprocess(obs), "eval", gen)
            obs, _, _, _, infos = env.chunk_step(out.actions.cpu())
            newly = infos["done"] & torch.isnan(success)
            success[newly] = infos["episode"]["success_once"][newly]
            length[newly] = infos["episode"]["episode_len"][newly]
        ended = ~torch.isnan(success)
        tot = all_reduce_sum(torch.tensor([success[ended].sum().item(), float(env.num_envs),
                                           length[ended].sum().item(), ended.sum().item()], dtype=torch.float64))
        return {"eval/success_once": tot[0].item() / tot[1].item(),
                "eval/episode_len": tot[2].item() / max(tot[3].item(), 1.0)}

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        cfg = self.cfg.runner
        resume = self.ckpt.resume_path()
        if resume is not None:
            self.load(resume)
        results: dict[str, float] = {}
        if bool(cfg.eval_before_train) and self.iteration == 0:
            results["success_before"] = self.evaluate()["eval/success_once"]
            self.logger.info(f"eval before training: success {results['success_before']:.3f}")
            self.logger.log({"eval/success_once": results["success_before"]}, 0)
        max_steps = int(cfg.max_steps)
        while self.iteration < int(cfg.max_epochs) and (max_steps < 0 or self.global_step < max_steps):
            t0 = time.perf_counter()
            if bool(self.cfg.actor.enable_offload):
                self.actor.offload()
            batch, metrics = self.rollout()
            if bool(self.cfg.actor.enable_offload):
                self.actor.onload()
            t1 = time.perf_counter()
            metrics.update(self.compute_advantages(batch))
            metrics.update(self.update(batch))
            self.actor.copy_weights_to(self.rollout_policy)
            t2 = time.perf_counter()
            self.iteration += 1
            metrics.update({"time/rollout": t1 - t0, "time/update": t2 - t1, "time/iteration": t2 - t0})
            interval = int(cfg.val_check_interval)
            if interval > 0 and self.iteration % interval == 0:
                metrics.update(self.evaluate())
            self.logger.log(metrics, self.iteration)
            self.logger.info(format_summary(self.iteration, metrics))
            if int(cfg.save_interval) > 0 and self.iteration % int(cfg.save_interval) == 0:
                self.save()
        results["success_after"] = self.evaluate()["eval/success_once"]
        self.logger.log({"eval/success_once": results["success_after"]}, self.iteration)
        if "success_before" in results:
            self.logger.info(f"success before: {results['success_before']:.3f}  after: {results['success_after']:.3f}")
        else:
            self.logger.info(f"success after: {results['success_after']:.3f}")
        if bool(cfg.save_policy):
            self.export_policy()
        self.close()
        return results

    def export_policy(self) -> Path:
        """The trained policy (the rollout replica, synced from the actor) as a pirl policy
        checkpoint with its contract: what `python -m pirl.eval --checkpoint` and
        `actor.model.model_path` load. Rank 0 writes <log_path>/<experiment>/policy."""
        from pirl.models.contract import policy_contract

        lcfg = self.cfg.runner.logger
        path = Path(lcfg.log_path) / lcfg.experiment_name / "policy"
        if self.dist.rank == 0:
            self.rollout_policy.save_pretrained(path, {"policy": policy_contract(self.cfg, self.envs[0].state_dim),
                                                       "iteration": self.iteration,
                                                       "init_model_path": self.cfg.actor.model.model_path})
            self.logger.info(f"policy written to {path}")
        return path

    def close(self) -> None:
        """Close loggers and envs (their worker processes exit); idempotent."""
        self.logger.close()
        for env in self.envs + ([self.eval_env] if self.eval_env is not None else []):
            env.close()
        self.envs, self.eval_env = [], None

    # ---- checkpoint / resume ------------------------------------------------------------------
    def _runner_state(self) -> dict:
        return {
            "iteration": self.iteration, "global_step": self.global_step,
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "envs": [env.state_dict() if hasattr(env, "state_dict") else None for env in self.envs],
            "has_obs": self.obs is not None,
        }

    def save(self) -> None:
        self.ckpt.save(self.iteration, self.actor, self._runner_state())

    def load(self, path) -> None:
        state = self.ckpt.load(path, self.actor)
        self.iteration, self.global_step = state["iteration"], state["global_step"]
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.obs = None
        if state["has_obs"] and all(s is not None for s in state["envs"]):
            self.obs = [env.load_state_dict(s) for env, s in zip(self.envs, state["envs"])]
        self.actor.copy_weights_to(self.rollout_policy)
        self.logger.info(f"resumed from {path} at iteration {self.iteration}")


def _finished_episodes(infos: dict, task_names) -> list[tuple[str, dict[str, float]]]:
    """(task, {success_once, episode_len, return, and the sim's episode stats such as
    CALVIN's avg_len}) for every valid episode ended this chunk."""
    done = infos["done"] & infos.get("valid", torch.ones_like(infos["done"]))
    ep = infos["episode"]
    return [(str(task_names[i]) if task_names is not None else "", {k: float(ep[k][i]) for k in ep})
            for i in done.nonzero().flatten().tolist()]


def episode_means(episodes: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    """Means over the episodes of all ranks: env/<metric>, and env/<task>/<metric> per task."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, episodes)
        episodes = [e for part in gathered for e in part]
    out = {f"env/{k}": float("nan") for k in EPISODE_METRICS}
    groups: dict[str, list[dict[str, float]]] = {"": []}
    for task, m in episodes:
        groups[""].append(m)
        if task:
            groups.setdefault(task, []).append(m)
    stats = sorted({k for _, m in episodes for k in m} - set(EPISODE_METRICS))
    for task, ms in groups.items():
        prefix = f"env/{task}/" if task else "env/"
        for k in (*EPISODE_METRICS, *stats):
            vals = [m[k] for m in ms if k in m]
            if vals:
                out[prefix + k] = sum(vals) / len(vals)
    out["env/num_episodes"] = float(len(episodes))
    return out


def invalidate_cut_episodes(valid: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """(T, B) masks: an episode cut by a crashed env worker (valid False at its last chunk)
    is dropped whole, also its chunks before the crash."""
    mask = valid.clone()
    bad = torch.zeros_like(valid[0])
    for t in reversed(range(valid.shape[0])):
        bad = torch.where(dones[t], ~valid[t], bad)  # an episode ending here: bad iff cut
        mask[t] &= ~bad
    return mask


def _take(flat: dict, idx: torch.Tensor, device) -> dict:
    """Rows `idx` of every flat (N, ...) tensor, moved to the training device."""
    out = {}
    for k, v in flat.items():
        out[k] = {kk: vv[idx].to(device) for kk, vv in v.items()} if isinstance(v, dict) else v[idx].to(device)
    return out
