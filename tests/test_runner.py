"""The runner end to end on reach2d: checkpoint / resume exactness, atomic checkpoints,
metric backends, and the launcher's refusal of a bad config before any rank starts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["env.train.total_num_envs=32", "env.eval.total_num_envs=8", "actor.micro_batch_size=32",
         "actor.global_batch_size=64", "cluster.num_gpus_per_node=1", "runner.val_check_interval=0"]


def _train(log_path: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config-name", "reach2d_ppo_flow_sde", *SMALL,
           f"runner.logger.log_path={log_path}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt / "actor" / "actor" / "mp_rank_00_model_states.pt", weights_only=False)
    return state["module"]


def test_resume_continues_exactly(tmp_path):
    exp = "runner.logger.experiment_name=exp"
    _train(tmp_path / "straight", exp, "runner.max_epochs=4", "runner.save_interval=2", "runner.keep_last_n=5")
    _train(tmp_path / "resumed", exp, "runner.max_epochs=2", "runner.save_interval=2")
    out = _train(tmp_path / "resumed", exp, "runner.max_epochs=4", "runner.save_interval=2", "runner.resume_dir=auto")
    assert "resumed from" in out.stdout and "at iteration 2" in out.stdout
    a = _weights(tmp_path / "straight" / "exp" / "checkpoints" / "iter_000004")
    b = _weights(tmp_path / "resumed" / "exp" / "checkpoints" / "iter_000004")
    mid = _weights(tmp_path / "straight" / "exp" / "checkpoints" / "iter_000002")
    assert a.keys() == b.keys()
    assert max((a[k] - mid[k]).abs().max().item() for k in a) > 0  # it trained after the save
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_checkpoints_atomic_and_pruned(tmp_path):
    root = tmp_path / "run" / "exp" / "checkpoints"
    root.mkdir(parents=True)
    stale = root / "iter_000009.tmp"  # what a crash in the middle of a save leaves behind
    stale.mkdir()
    (stale / "half_written").write_bytes(b"\0" * 10)
    _train(tmp_path / "run", "runner.logger.experiment_name=exp", "runner.max_epochs=3", "runner.save_interval=1",
           "runner.keep_last_n=2", "runner.resume_dir=auto")
    names = sorted(p.name for p in root.iterdir())
    assert names == ["iter_000002", "iter_000003", "latest"]
    assert (root / "latest").read_text() == "iter_000003"
    assert (root / "iter_000003" / "config.yaml").is_file()
    assert (root / "iter_000003" / "runner_rank0.json").is_file()
    assert (root / "iter_000003" / "manifest.json").is_file()


def test_metrics_reach_tensorboard_and_wandb(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = _train(tmp_path, "runner.logger.experiment_name=exp", "runner.max_epochs=2",
                 "runner.logger.logger_backends=[tensorboard,wandb]", "runner.logger.wandb_mode=offline")
    assert "success before:" in out.stdout
    acc = EventAccumulator(str(tmp_path / "exp" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("env/success_once", "rollout/returns_mean", "rollout/advantages_mean", "actor/loss",
                 "actor/value_loss", "actor/grad_norm", "actor/approx_kl", "actor/pg_clipfrac",
                 "actor/value_clip_ratio", "actor/entropy", "actor/lr", "time/iteration", "eval/success_once"):
        assert name in tags, name
    assert [e.step for e in acc.Scalars("actor/loss")] == [1, 2]
    assert list((tmp_path / "exp" / "wandb").glob("offline-run-*"))


def test_launcher_rejects_bad_config_before_starting(tmp_path):
    proc = subprocess.run([str(ROOT / "launcher" / "run.sh"), "reach2d_ppo_flow_sde", "actor.micro_bach_size=3",
                           f"runner.logger.log_path={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "actor.micro_batch_size" in proc.stderr  # the suggestion names the real key
    assert "deepspeed" not in proc.stdout.lower() + proc.stderr.lower().replace("ds_config", "")
    assert not any(tmp_path.iterdir())
