"""reach2d: the built-in task. A point agent in the plane must reach the target whose
colour the instruction names ("move to the red target") among several coloured targets.

Vectorized in torch (all B envs in one process, no simulator dependency), implementing
the env protocol of pirl/envs/base.py: rendered RGB observation, state vector, language
instruction, chunked actions, sparse success reward, seeds, group resets for GRPO.

State (B, 2 + 2·N + N): agent xy, the N targets' xy relative to the agent (egocentric:
the move the instruction asks for is a state entry the goal's one-hot selects), one-hot
of the goal colour.
Action (B, C, 2): a velocity in [-1, 1]² per env step; the agent moves `speed`·a.
"""
from __future__ import annotations

import torch

from pirl.envs.base import Obs, StepResult

COLOURS = ("red", "green", "blue", "yellow")
RGB = torch.tensor([[230, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40]], dtype=torch.uint8)
AGENT_RGB = torch.tensor([255, 255, 255], dtype=torch.uint8)
BACKGROUND = 24  # dark grey
ARENA = 0.8  # targets and agent start inside [-ARENA, ARENA]²; the agent may not leave [-1, 1]²


class Reach2DEnv:
    def __init__(self, num_envs: int, max_episode_steps: int = 16, num_targets: int = 3,
                 speed: float = 0.15, success_radius: float = 0.15, image_size: int = 64,
                 auto_reset: bool = True, ignore_terminations: bool = False,
                 use_rel_reward: bool = False, reward_coef: float = 1.0, seed: int = 0,
                 render: bool = True, device: str | torch.device = "cpu"):
        if not 1 <= num_targets <= len(COLOURS):
            raise ValueError(f"env.*.init_params.num_targets must be in [1, {len(COLOURS)}], got {num_targets}")
        self.num_envs, self.max_episode_steps = num_envs, max_episode_steps
        self.num_targets, self.speed, self.radius = num_targets, speed, success_radius
        self.image_size, self.render_images = image_size, render
        self.auto_reset, self.ignore_terminations = auto_reset, ignore_terminations
        self.use_rel_reward, self.reward_coef = use_rel_reward, reward_coef
        self.device = torch.device(device)
        self.action_dim = 2
        self.state_dim = 2 + 3 * num_targets
        self.generator = torch.Generator().manual_seed(seed)
        B = num_envs
        self.pos = torch.zeros(B, 2)
        self.targets = torch.zeros(B, num_targets, 2)
        self.goal = torch.zeros(B, dtype=torch.long)
        self.elapsed = torch.zeros(B, dtype=torch.long)
        self.ret = torch.zeros(B)
        self.succeeded = torch.zeros(B, dtype=torch.bool)
        self.active = torch.ones(B, dtype=torch.bool)
        self.terminated = torch.zeros(B, dtype=torch.bool)  # episode ended by success, not yet reset
        self.truncated = torch.zeros(B, dtype=torch.bool)  # ... by the time limit
        self.prev_reward = torch.zeros(B)  # r_{t-1} for relative rewards
        self.group_size = 1

    # ---- episode starts -------------------------------------------------------------
    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n fresh initial states: agent (n, 2), targets (n, N, 2), goal (n,)."""
        g = self.generator
        pos = (torch.rand(n, 2, generator=g) * 2 - 1) * ARENA
        targets = (torch.rand(n, self.num_targets, 2, generator=g) * 2 - 1) * ARENA
        goal = torch.randint(0, self.num_targets, (n,), generator=g)
        return pos, targets, goal

    def _start(self, rows: torch.Tensor, group_size: int) -> None:
        """Start new episodes in `rows` (sorted env indices); rows of one group share a state."""
        if rows.numel() == 0:
            return
        groups = rows // group_size
        uniq, inverse = torch.unique(groups, return_inverse=True)
        pos, targets, goal = self._draw(uniq.numel())
        self.pos[rows], self.targets[rows], self.goal[rows] = pos[inverse], targets[inverse], goal[inverse]
        self.elapsed[rows] = 0
        self.ret[rows] = 0
        self.succeeded[rows] = False
        self.active[rows] = True
        self.terminated[rows] = False
        self.truncated[rows] = False
        self.prev_reward[rows] = 0.0

    def reset(self, seed: int | None = None, group_size: int = 1) -> Obs:
        if self.num_envs % group_size:
            raise ValueError(f"group_size {group_size} must divide the env count {self.num_envs}")
        if seed is not None:
            self.generator.manual_seed(seed)
        self.group_size = group_size
        self._start(torch.arange(self.num_envs), group_size)
        return self._obs()

    # ---- stepping ---------------------------------------------------------------------
    def _goal_pos(self) -> torch.Tensor:
        return self.targets[torch.arange(self.num_envs), self.goal]  # (B, 2)

    def chunk_step(self, actions: torch.Tensor) -> StepResult:
        actions = torch.as_tensor(actions, dtype=torch.float32).cpu()
        B, C, D = actions.shape
        if B != self.num_envs or D != self.action_dim:
            raise ValueError(f"reach2d expects actions (B={self.num_envs}, C, {self.action_dim}), got {tuple(actions.shape)}")
        rewards = torch.zeros(B, C)
        terms = torch.zeros(B, C, dtype=torch.bool)
        truncs = torch.zeros(B, C, dtype=torch.bool)
        success = torch.zeros(B, C, dtype=torch.bool)
        done = torch.zeros(B, dtype=torch.bool)
        for c in range(C):
            live = self.active & ~done  # envs still executing this chunk
            a = actions[:, c].clamp(-1.0, 1.0)
            self.pos = torch.where(live[:, None], (self.pos + self.speed * a).clamp(-1.0, 1.0), self.pos)
            self.elapsed += live.long()
            at_goal = (self.pos - self._goal_pos()).norm(dim=1) < self.radius
            hit = live & at_goal
            r = hit.float() * self.reward_coef  # sparse: success is the reward
            if self.use_rel_reward:  # RLinf's relative reward: a held success pays once
                r, self.prev_reward = torch.where(live, r - self.prev_reward, 0.0), torch.where(live, r, self.prev_reward)
            rewards[:, c] = r
            self.ret += r
            self.succeeded |= hit
            success[:, c] = hit
            term = hit & ~torch.tensor(self.ignore_terminations)
            trunc = live & ~term & (self.elapsed >= self.max_episode_steps)
            self.terminated |= term
            self.truncated |= trunc
            # flags stay set until the env is reset (pirl.envs.base)
            terms[:, c], truncs[:, c] = self.terminated, self.truncated
            done |= term | trunc
        infos = {
            "done": done.clone(),
            "success": success,
            "episode": {
                "success_once": self.succeeded.float().clone(),
                "episode_len": self.elapsed.float().clone(),
                "return": self.ret.clone(),
            },
        }
        self.active &= ~done
        if self.auto_reset and bool(done.any()):
            infos["final_obs"] = self._obs()
            self._start(done.nonzero().flatten(), 1)
        return self._obs(), rewards, terms, truncs, infos

    # ---- observations -----------------------------------------------------------------
    def _obs(self) -> Obs:
        goal_onehot = torch.nn.functional.one_hot(self.goal, self.num_targets).float()
        # Egocentric: each target relative to the agent, so the move the instruction asks
        # for is (one-hot-selected) state entries, not a difference the network must learn.
        rel = (self.targets - self.pos[:, None, :]).flatten(1)  # (B, 2N)
        states = torch.cat([self.pos, rel, goal_onehot], dim=1)
        obs: Obs = {
            "states": states.clone(),
            "task_descriptions": [f"move to the {COLOURS[int(g)]} target" for g in self.goal],
        }
        if self.render_images:
            obs["main_images"] = self.render()
        return obs

    def render(self) -> torch.Tensor:
        """(B, S, S, 3) uint8 top-down view: coloured target discs, the agent as a white dot."""
        S = self.image_size
        coords = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1  # pixel centres in [-1, 1]
        gy, gx = torch.meshgrid(-coords, coords, indexing="ij")  # image row 0 is y = +1
        grid = torch.stack([gx, gy], dim=-1)  # (S, S, 2)
        img = torch.full((self.num_envs, S, S, 3), BACKGROUND, dtype=torch.uint8)
        for i in range(self.num_targets):
            d = (grid[None] - self.targets[:, i, None, None, :]).norm(dim=-1)  # (B, S, S)
            img[d < self.radius] = RGB[i]
        d = (grid[None] - self.pos[:, None, None, :]).norm(dim=-1)
        img[d < max(0.06, 1.5 * 2 / S)] = AGENT_RGB
        return img

    # ---- checkpointing: a resumed run continues the same episodes ---------------------------
    def state_dict(self) -> dict:
        keys = ("pos", "targets", "goal", "elapsed", "ret", "succeeded", "active", "terminated", "truncated",
                "prev_reward")
        return {k: getattr(self, k).clone() for k in keys} | {
            "generator": self.generator.get_state(), "group_size": self.group_size}

    def load_state_dict(self, state: dict) -> Obs:
        for k, v in state.items():
            if k == "generator":
                self.generator.set_state(v)
            elif k == "group_size":
                self.group_size = v
            else:
                setattr(self, k, v.clone())
        return self._obs()

    def close(self) -> None:
        pass
