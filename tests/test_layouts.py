"""Every layout learns (tier 5): flow_mlp on reach2d with the reach2d_learn_ppo_flow_sde
recipe, from the same few-shot warm start, through the launcher, to >= 0.90 eval success
within 35 iterations (bench/learning.py's three colocated seeds reach it by
iteration 20-25: docs/benchmarks.md, "Learning").

    colocated          env,rollout,actor: all            2 ranks
    hybrid             env: 0, rollout: 1, actor: 0-2    3 ranks (actor on all, env / rollout apart)
    fully disjoint     env: 0, rollout: 1, actor: 2      3 ranks

Three actor ranks cannot split the recipe's 256 envs / batch 256 evenly: the hybrid run
uses 288 envs and a global batch of 288 (the same 4 minibatches x 4 epochs = 16 optimizer
steps per iteration). Each run also logs actor/sync_logprob_diff: after every weight sync
the actor re-scores the fresh rollout exactly as the rollout scored it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.dist]

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "reach2d_learn_ppo_flow_sde"
ITERATIONS, TARGET, WARM_START_MAX = 35, 0.90, 0.65
LAYOUTS = {
    "colocated": (2, "{'env,rollout,actor': all}", []),
    "hybrid": (3, "{env: 0, rollout: 1, actor: 0-2}",
               ["env.train.total_num_envs=288", "actor.global_batch_size=288", "actor.micro_batch_size=96"]),
    "disjoint": (3, "{env: 0, rollout: 1, actor: 2}", []),
}
RESULT = re.compile(r"success_before=([0-9.]+) success_after=([0-9.]+)")


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """The few-shot warm start the recipe starts from (python -m pirl.sft), once for all layouts."""
    tmp = tmp_path_factory.mktemp("warm")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    sft = subprocess.run([sys.executable, "-m", "pirl.sft", "--config-name", RECIPE, "--out", str(tmp / "sft"),
                          "--episodes", "2", f"runner.logger.log_path={tmp / 'logs'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert sft.returncode == 0, (sft.stdout + sft.stderr)[-3000:]
    first, last = map(float, re.search(r"flow-matching loss ([0-9.]+) -> ([0-9.]+)", sft.stdout).groups())
    assert last < 0.5 * first  # the warm start fitted the demos
    return tmp / "sft"


def _sync_diffs(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir / RECIPE / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("actor/sync_logprob_diff")]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_learns(layout, warm, tmp_path):
    ranks, placement, extra = LAYOUTS[layout]
    hosts = tmp_path / "hosts"
    hosts.write_text(f"localhost slots={ranks}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIRL_HOSTFILE=str(hosts))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    cmd = ["bash", str(ROOT / "launcher" / "run.sh"), RECIPE, f"actor.model.model_path={warm}",
           f"cluster.component_placement={placement}", f"cluster.num_gpus_per_node={ranks}", *extra,
           f"runner.max_epochs={ITERATIONS}", "runner.val_check_interval=0", "runner.save_interval=0",
           "runner.eval_before_train=True", f"runner.logger.log_path={tmp_path / 'runs'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    found = RESULT.findall(proc.stdout)
    assert found, tail
    before, after = map(float, found[-1])
    assert before <= WARM_START_MAX, f"{layout}: warm start already at {before:.3f}"
    assert after >= TARGET, f"{layout}: success {before:.3f} -> {after:.3f} in {ITERATIONS} iterations"
    diffs = _sync_diffs(tmp_path / "runs")
    assert len(diffs) == ITERATIONS and max(diffs) < 1e-5
