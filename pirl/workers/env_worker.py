"""The env worker: owns this env rank's envs, one group per pipeline stage for training and
one per stage for eval; receives actions, steps, sends observations, rewards and dones to
the rollout rank(s) each stage is paired with; keeps episode metrics, reduced over the env
group.

Per rollout epoch (or eval) and stage: `begin` sends the first observations (after a reset,
or the observations the last epoch ended on when auto_reset keeps episodes running), then
each `step(s)` receives that stage's actions, runs one chunk step and sends the result.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pirl.algos import registry
from pirl.engine.channels import EnvOutput
from pirl.engine.groups import ProcessGroups
from pirl.engine.placement import Link
from pirl.envs import make_env
from pirl.envs.base import EPISODE_METRICS
from pirl.seeding import seed_for

SPLITS = ("train", "eval")
STREAM = {"train": "env", "eval": "eval_env"}


def reset_seed(split_cfg, split: str, env_index: int, stage: int, iteration: int, epoch: int) -> int:
    """Seed of a stage's reset: training envs draw new initial states every (iteration,
    epoch); eval envs the same ones at every eval (iteration 0, epoch 0), so evals compare
    the same episodes."""
    if split == "eval":
        iteration = epoch = 0
    return seed_for(split_cfg.seed, STREAM[split], rank=env_index, stage=stage, iteration=iteration, epoch=epoch)


class EnvWorker:
    def __init__(self, cfg, groups: ProcessGroups, links: dict[str, list[Link]], channels: dict[int, tuple],
                 stages: int):
        """`links[split]`: this env rank's links (pirl.engine.placement.pair_env_rollout);
        `channels[rollout_rank]`: (observation channel out, action channel in) to that rank."""
        self.cfg, self.groups, self.stages = cfg, groups, stages
        self.index = groups.index("env")
        self.links, self.channels = links, channels
        self.envs: dict[str, list] = {}
        for split in SPLITS:
            scfg = cfg.env[split]
            per_stage = scfg.total_num_envs // (groups.size("env") * stages)
            # each env rank's first stage records, as the split's video_cfg says
            self.envs[split] = [make_env(scfg, per_stage, seed=reset_seed(scfg, split, self.index, s, 0, 0),
                                         rank=self.index, record=s == 0)
                                for s in range(stages)]
        self.obs: list[dict | None] = [None] * stages  # training obs each stage's episodes continue from
        self._episodes: list[tuple[str, dict[str, float]]] = []
        self._first: list[dict[str, torch.Tensor]] = []  # eval: first-episode metrics per stage
        self._restarts = 0
        self._final_obs = registry.bootstraps(cfg.algorithm, cfg.env.train.auto_reset)

    @property
    def state_dim(self) -> int:
        return self.envs["train"][0].state_dim

    @property
    def action_dim(self) -> int:
        return self.envs["train"][0].action_dim

    # ---- the episode protocol, per stage ------------------------------------------------------
    def _send(self, split: str, stage: int, msg: EnvOutput) -> None:
        for link in self.links[split]:
            lo, hi = link.env_cols
            self.channels[link.rollout_rank][0].send(msg.rows(lo, hi))

    def begin(self, split: str, iteration: int, epoch: int) -> None:
        scfg = self.cfg.env[split]
        if split == "eval":
            self._first = []
        for s, env in enumerate(self.envs[split]):
            obs = self.obs[s] if split == "train" and scfg.auto_reset else None
            if obs is None:  # eval, no auto_reset, or the first epoch of a run: new episodes
                # use_fixed_reset_state_ids: a group's envs share their reset state, else each draws its own
                group = scfg.group_size if scfg.use_fixed_reset_state_ids else 1
                obs = env.reset(seed=reset_seed(scfg, split, self.index, s, iteration, epoch), group_size=group)
                if split == "train":
                    self.obs[s] = obs
            if split == "eval":
                n = env.num_envs
                self._first.append({"success": torch.full((n,), math.nan), "length": torch.zeros(n)})
            self._send(split, s, EnvOutput(obs))

    def step(self, split: str, stage: int) -> None:
        env = self.envs[split][stage]
        actions = torch.cat([self.channels[link.rollout_rank][1].recv() for link in self.links[split]])
        obs, rew, term, trunc, infos = env.chunk_step(actions)
        done = infos["done"]
        valid = infos.get("valid", torch.ones(env.num_envs, dtype=torch.bool))
        ep = infos["episode"]
        if split == "train":
            self._episodes += finished_episodes(infos, getattr(env, "task_names", None))
            self._restarts += int(infos.get("restarts", 0))
            self.obs[stage] = obs
        else:
            first = self._first[stage]
            newly = done & torch.isnan(first["success"])
            first["success"][newly] = ep["success_once"][newly]
            first["length"][newly] = ep["episode_len"][newly]
        final = infos.get("final_obs", obs) if self._final_obs and split == "train" else None
        self._send(split, stage, EnvOutput(obs, rew, term | trunc, trunc, infos["success"], valid, final))

    # ---- metrics over the env group ----------------------------------------------------------
    def train_metrics(self) -> dict[str, float]:
        """episode_means over the episodes every env rank finished in this iteration's
        rollout, and env/restarts (crashed env workers brought back)."""
        mine = (self._episodes, self._restarts)
        self._episodes = []
        parts: list = [mine]
        group = self.groups.group("env")
        if group is not None and self.groups.size("env") > 1:  # per-task episode lists: objects, once
            parts = [None] * self.groups.size("env")
            dist.all_gather_object(parts, mine, group=group)
        out = episode_means([e for eps, _ in parts for e in eps])
        out["env/restarts"] = float(sum(r for _, r in parts))
        return out

    def eval_metrics(self) -> dict[str, float]:
        """Success of each eval env's first episode (an env whose episode did not end counts
        as a failure), mean episode length of those that ended, over every env rank."""
        succ = torch.cat([f["success"] for f in self._first])
        length = torch.cat([f["length"] for f in self._first])
        ended = ~torch.isnan(succ)
        tot = self.groups.all_reduce(torch.tensor([succ[ended].sum().item(), float(succ.numel()),
                                                   length[ended].sum().item(), ended.sum().item()],
                                                  dtype=torch.float64), "env")
        return {"eval/success_once": tot[0].item() / tot[1].item(),
                "eval/episode_len": tot[2].item() / max(tot[3].item(), 1.0)}

    # ---- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        envs = self.envs["train"]
        states = [env.state_dict() if hasattr(env, "state_dict") else None for env in envs]
        running = all(o is not None for o in self.obs) and all(s is not None for s in states)
        return {"envs": states, "has_obs": running}

    def load_state_dict(self, state: dict) -> None:
        """Episodes continue where the checkpoint left them (envs with a state_dict), else
        the next epoch starts new ones."""
        self.obs = [None] * self.stages
        if state["has_obs"]:
            self.obs = [env.load_state_dict(s) for env, s in zip(self.envs["train"], state["envs"])]

    def close(self) -> None:
        for split in SPLITS:
            for env in self.envs[split]:
                env.close()


def finished_episodes(infos: dict, task_names) -> list[tuple[str, dict[str, float]]]:
    """(task, {success_once, episode_len, return, and the sim's own episode stats such as
    CALVIN's avg_len}) for every valid episode that ended in this chunk step."""
    done = infos["done"] & infos.get("valid", torch.ones_like(infos["done"]))
    ep = infos["episode"]
    return [(str(task_names[i]) if task_names is not None else "", {k: float(ep[k][i]) for k in ep})
            for i in done.nonzero().flatten().tolist()]


def episode_means(episodes: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    """env/<metric> and env/<task>/<metric> means over the episodes (each metric over the
    episodes that report it), and env/num_episodes."""
    out = {f"env/{k}": math.nan for k in EPISODE_METRICS}
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
