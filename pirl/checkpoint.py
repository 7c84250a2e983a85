"""Checkpoints: DeepSpeed engine state + runner state (iteration, RNG states, env states,
config), written atomically and pruned to `runner.keep_last_n`.

Layout under <log_path>/<experiment_name>/checkpoints/:
    iter_000010/actor/...            DeepSpeed save_checkpoint (weights, optimizer, scheduler)
    iter_000010/runner_rank{r}.pt    per-rank runner state
    iter_000010/config.yaml          the resolved config
    latest                           name of the newest complete checkpoint

Every rank writes into `iter_N.tmp`; only when all have finished does rank 0 rename it
to `iter_N` and then update `latest` (write + os.replace). A crash mid-save leaves a
`.tmp` folder that is ignored and removed by the next save: the last good checkpoint is
never touched. Old checkpoints are deleted only after a new one is complete.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

CKPT_RE = re.compile(r"^iter_(\d{6,})$")


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("iter_")))


class CheckpointManager:
    def __init__(self, cfg, dist):
        self.cfg, self.rank = cfg, dist.rank
        lcfg = cfg.runner.logger
        self.root = Path(lcfg.log_path) / lcfg.experiment_name / "checkpoints"
        self.keep = int(cfg.runner.keep_last_n)

    def resume_path(self) -> Path | None:
        """`runner.resume_dir`: null (fresh run), "auto" (the latest here, if any), or a path."""
        spec = self.cfg.runner.resume_dir
        if spec is None or str(spec) == "":
            return None
        if str(spec) == "auto":
            latest = self.root / "latest"
            if latest.is_file() and (self.root / latest.read_text().strip()).is_dir():
                return self.root / latest.read_text().strip()
            found = list_checkpoints(self.root)
            return found[-1] if found else None
        path = Path(str(spec))
        if not (path / "actor").is_dir():
            raise FileNotFoundError(f"runner.resume_dir: {path} is not a pirl checkpoint (no actor/ inside)")
        return path

    def save(self, iteration: int, actor, runner_state: dict) -> Path:
        final = self.root / f"iter_{iteration:06d}"
        tmp = self.root / f"iter_{iteration:06d}.tmp"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        actor.save(str(tmp / "actor"), client_state={"iteration": iteration})
        torch.save(runner_state, tmp / f"runner_rank{self.rank}.pt")
        if self.rank == 0:
            OmegaConf.save(self.cfg, tmp / "config.yaml", resolve=True)
        _barrier()
        if self.rank == 0:
            if final.exists():  # re-saving the same iteration (after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer = self.root / "latest.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, self.root / "latest")
            for old in list_checkpoints(self.root)[:-self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, actor) -> dict:
        state_file = Path(path) / f"runner_rank{self.rank}.pt"
        if not state_file.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {state_file.name}: was it written with "
                                    f"the same number of ranks?")
        actor.load(str(Path(path) / "actor"))
        return torch.load(state_file, weights_only=False)
