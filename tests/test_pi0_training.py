"""Tier 5: tiny π0 and π0.5 train with PPO on reach2d through the launcher (DeepSpeed,
2 ranks, ZeRO-3), and eval success rises within a fixed budget of iterations (25 for π0,
40 for π0.5). As a user would: a few-shot supervised warm start first (`python -m pirl.sft`:
32 scripted-expert episodes, 300 flow-matching steps, norm stats from the demos), then RL
from that checkpoint. One denoising step (as the reach2d learning setups), the whole model
trained, the main camera rendered; deterministic eval of 128 fixed episodes every 5
iterations. The tiny VLAs' eval success moves by ±0.05 from one eval to the next, so the
test compares the warm start with the mean of the last three evals.

Each model runs with one of the two noise methods (π0 flow-SDE, π0.5 flow-noise), so every
model and every method is trained here within `make test`'s time budget;
bench/learning.py --model pi0_tiny|pi05_tiny runs all four pairs for three seeds
(docs/benchmarks.md, "Learning: pi0_tiny" / "Learning: pi05_tiny")."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.dist]

ROOT = Path(__file__).resolve().parents[1]
BEFORE = re.compile(r"eval before training: success ([0-9.]+)")
EVAL = re.compile(r"^iter (\d+) \|.*eval/success_once=([0-9.]+)", re.M)
EVERY = 5
# π0.5 learns more slowly (its state comes as digit tokens in the prompt): 40 iterations.
ITERATIONS = {"pi0_tiny": 25, "pi05_tiny": 40}
# bench/learning.py, seed 0 (docs/benchmarks.md has seeds 0-2), mean of the last three evals
# minus the warm start: π0 flow-SDE +0.19, flow-noise +0.10 (25 iterations); π0.5 flow-SDE
# +0.16, flow-noise +0.08 (40 iterations).
MIN_GAIN = 0.05
MODEL = ["actor.model.num_steps=1", "actor.model.openpi.train_expert_only=False",
         "env.train.init_params.render=True"]


@pytest.mark.parametrize("model, experiment", [("pi0_tiny", "reach2d_learn_ppo_flow_sde"),
                                               ("pi05_tiny", "reach2d_learn_ppo_flow_noise")])
def test_tiny_vla_success_rises_after_warm_start(model, experiment, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    overrides = [f"model@actor.model={model}", *MODEL]
    sft = subprocess.run([sys.executable, "-m", "pirl.sft", "--config-name", experiment, "--episodes", "2",
                          "--steps", "300", "--out", str(tmp_path / "sft"), *overrides],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert sft.returncode == 0, (sft.stdout + sft.stderr)[-3000:]
    assert (tmp_path / "sft" / "norm_stats.json").is_file()
    cmd = [str(ROOT / "launcher" / "run.sh"), experiment, *overrides, f"actor.model.model_path={tmp_path / 'sft'}",
           "env.train.total_num_envs=64", f"runner.max_epochs={ITERATIONS[model]}",
           f"runner.val_check_interval={EVERY}",
           "runner.save_interval=0", "actor.ds_config=ds_configs/zero3.json", f"runner.logger.log_path={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    stdout = proc.stdout.replace("\r", "\n")
    before = BEFORE.search(stdout)
    evals = {int(i): float(s) for i, s in EVAL.findall(stdout)}
    last = [ITERATIONS[model] - k * EVERY for k in range(3)]
    assert before and set(last) <= set(evals), out[-3000:]
    late = sum(evals[i] for i in last) / len(last)
    assert late >= float(before.group(1)) + MIN_GAIN, f"{model} {experiment}: success {before.group(1)} -> {evals}"
