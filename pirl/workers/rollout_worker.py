"""The rollout worker: owns the policy replica; for each pipeline stage it receives the
paired env ranks' observations, preprocesses and samples an action chunk, sends the actions
back and fills the rollout buffer in place (pirl.data). It receives weights from the actor
(pirl.engine.weight_sync) and sends its trajectories to the actor ranks.

Buffer columns: (rollout epoch, stage, the stage's batch rows); step t of a column holds
the sample taken at observation t and the env's answer to it, which arrives with
observation t + 1 (or with the last message of the epoch).
"""
from __future__ import annotations

import time

import torch

from pirl.algos import registry
from pirl.data import RolloutBuffer, RolloutSchema
from pirl.engine.channels import EnvOutput
from pirl.engine.groups import ProcessGroups
from pirl.engine.placement import Link
from pirl.models.policy import Policy
from pirl.seeding import generator_for


class RolloutWorker:
    def __init__(self, cfg, groups: ProcessGroups, policy: Policy, schema: RolloutSchema,
                 links: dict[str, list[Link]], channels: dict[int, tuple], stages: int, n_chunks: dict[str, int]):
        """`links[split]`: the links this rollout rank serves; `channels[env_rank]`:
        (observation channel in, action channel out); `n_chunks[split]`: chunk steps per epoch."""
        self.cfg, self.groups, self.policy, self.schema = cfg, groups, policy, schema
        self.index = groups.index("rollout")
        self.links, self.channels, self.stages, self.n_chunks = links, channels, stages, n_chunks
        self.batch = {split: sum(link.rollout_cols[1] - link.rollout_cols[0] for link in ls)
                      for split, ls in links.items()}  # rows per stage and policy call
        self.bootstrap = registry.bootstraps(cfg.algorithm, cfg.env.train.auto_reset)
        self.boot_always = cfg.algorithm.bootstrap_type == "always"
        self._epochs: list[RolloutBuffer] = []
        self._buf: RolloutBuffer | None = None
        self._gens: list[torch.Generator] = []
        self.infer_time = 0.0

    # ---- per stage ---------------------------------------------------------------------------
    def _recv(self, split: str) -> EnvOutput:
        return EnvOutput.cat([self.channels[link.env_rank][0].recv() for link in self.links[split]])

    def _send(self, split: str, actions: torch.Tensor) -> None:
        for link in self.links[split]:
            lo, hi = link.rollout_cols
            self.channels[link.env_rank][1].send(actions[lo:hi])

    def begin(self, split: str, iteration: int, epoch: int) -> None:
        """Sampling noise per (iteration, epoch, stage): a pure function of the run's seed, so
        a resumed run draws what an uninterrupted one would."""
        if split == "train":
            self._buf = RolloutBuffer(self.schema, self.n_chunks["train"], self.stages * self.batch["train"])
            self._gens = [generator_for(self.cfg.runner.seed, "rollout", self.index, s, iteration, epoch)
                          for s in range(self.stages)]
        else:
            self._gens = [generator_for(self.cfg.env.eval.seed, "eval_rollout", self.index, s)
                          for s in range(self.stages)]

    def _cols(self, stage: int) -> slice:
        b = self.batch["train"]
        return slice(stage * b, (stage + 1) * b)

    def _record_step(self, t: int, stage: int, msg: EnvOutput) -> None:
        """The env's answer to the sample taken at step t (and, when GAE bootstraps, V of the
        last observation of every episode that ended in it: truncated ones with
        bootstrap_type standard, every one with always)."""
        assert self._buf is not None
        step = msg.step()
        b, vs = msg.num_envs, self.policy.value_shape
        final = torch.zeros(b, *vs)
        ended = step["dones"][:, -1] if self.boot_always else step["truncations"][:, -1]
        if self.bootstrap and msg.final_obs is not None and bool(ended.any()):
            v = self.policy.value(self.policy.preprocess(msg.final_obs)).float().cpu()
            final = torch.where(ended.view(b, *[1] * len(vs)), v, final)
        self._buf.write("steps", t, self._cols(stage), {**step, "final_values": final}, complete=False)

    @torch.no_grad()
    def act(self, split: str, t: int, stage: int) -> None:
        msg = self._recv(split)
        t0 = time.perf_counter()
        if split == "train" and t > 0:
            self._record_step(t - 1, stage, msg)
        mode = "train" if split == "train" else "eval"
        out = self.policy.sample(self.policy.preprocess(msg.obs), mode, self._gens[stage])
        if split == "train":
            assert self._buf is not None
            self._buf.write_sample(t, self._cols(stage), out)
        self.infer_time += time.perf_counter() - t0
        self._send(split, out.actions.float().cpu())

    @torch.no_grad()
    def finish(self, split: str, stage: int) -> None:
        """The last message of the epoch: the last step's results and, for GAE's bootstrap,
        V(the observation after it)."""
        msg = self._recv(split)
        if split != "train":
            return
        assert self._buf is not None
        T = self.n_chunks["train"]
        self._record_step(T - 1, stage, msg)
        last = self.policy.value(self.policy.preprocess(msg.obs)).float().cpu()
        self._buf.write("envs", None, self._cols(stage), {"last_values": last}, complete=False)

    def end_epoch(self) -> None:
        assert self._buf is not None
        self._epochs.append(self._buf)
        self._buf = None

    def take(self) -> RolloutBuffer:
        """This iteration's trajectories, (T, epochs x stages x batch) columns."""
        out = RolloutBuffer.cat(self._epochs)
        self._epochs = []
        return out

