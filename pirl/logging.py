"""Metrics to the console, TensorBoard, WandB and SwanLab (`runner.logger.logger_backends`).

Only rank 0 writes unless `runner.logger.log_all_ranks`. WandB runs offline when there is
no network (or `wandb_mode: offline`); SwanLab is used when installed and asked for.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

BACKENDS = ("tensorboard", "wandb", "swanlab")
SUMMARY_KEYS = ("env/success_once", "eval/success_once", "rollout/returns_mean", "actor/loss",
                "actor/value_loss", "actor/approx_kl", "actor/grad_norm", "time/iteration")


def _online(host: str = "api.wandb.ai", timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def format_summary(step: int, metrics: dict[str, float]) -> str:
    """One line per iteration: the metrics users watch first, short names."""
    parts = [f"iter {step}"]
    for k in SUMMARY_KEYS:
        if k in metrics:
            parts.append(f"{k.split('/', 1)[1] if k.startswith(('actor/', 'time/')) else k}={metrics[k]:.4g}")
    return " | ".join(parts)


class MetricLogger:
    def __init__(self, cfg, rank: int = 0):
        lcfg = cfg.runner.logger
        self.active = rank == 0 or bool(lcfg.log_all_ranks)
        self.rank = rank
        self.log_dir = Path(lcfg.log_path) / lcfg.experiment_name
        self.tb = self.wandb = self.swanlab = None
        unknown = [b for b in lcfg.logger_backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"runner.logger.logger_backends: unknown {unknown}; choose from {BACKENDS}")
        if not self.active:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        backends = set(lcfg.logger_backends)
        plain_cfg = OmegaConf.to_container(cfg, resolve=True)
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.log_dir / "tensorboard"))
        if "wandb" in backends:
            import wandb

            mode: Any = lcfg.wandb_mode  # online | offline | disabled, validated with the config
            if mode == "auto":
                mode = "online" if os.environ.get("WANDB_API_KEY") and _online() else "offline"
            self.wandb = wandb.init(project=lcfg.project_name, name=lcfg.experiment_name, config=cast(dict, plain_cfg),
                                    dir=str(self.log_dir), mode=mode, reinit=True)
        if "swanlab" in backends:
            try:
                import swanlab
            except ImportError as e:
                raise ImportError("runner.logger.logger_backends names swanlab but it is not installed "
                                  "(pip install swanlab)") from e
            self.swanlab = swanlab.init(project=lcfg.project_name, experiment_name=lcfg.experiment_name,
                                        config=plain_cfg, logdir=str(self.log_dir / "swanlab"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.swanlab is not None:
            self.swanlab.log(metrics, step=step)

    def info(self, msg: str) -> None:
        if self.active:
            prefix = f"[rank {self.rank}] " if self.rank else ""
            print(prefix + msg, file=sys.stdout, flush=True)

    def close(self) -> None:
        """Flush and stop every backend (their writer threads end here, not at exit); idempotent."""
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.swanlab is not None:
            self.swanlab.finish()
        self.tb = self.wandb = self.swanlab = None
