"""Tier 5: a tiny π0 trains with flow-SDE PPO on reach2d through the launcher (DeepSpeed,
2 ranks, ZeRO-3), and eval success rises within 25 iterations. As a user would: a few-shot
supervised warm start first (`python -m pirl.sft`: 32 scripted-expert episodes, 300
flow-matching steps, norm stats from the demos), then RL from that checkpoint. One
denoising step (as the reach2d learning setups), the whole model trained, the main camera
rendered; deterministic eval of 128 fixed episodes every 5 iterations. The tiny VLA's eval
success moves by ±0.05 from one eval to the next, so the test compares the warm start with
the mean of the last three evals.

π0.5 is not trained here: its reach2d gain (+0.08 for seed 0 in 40 iterations, its state
spelt as digit tokens in the prompt) sits inside that noise, and 40 iterations cost a sixth
of `make test`'s budget; its PPO and GRPO iterations run in tests/test_seed_experiments.py
and bench/learning.py --model pi05_tiny measures its learning over three seeds
(docs/benchmarks.md, "Learning: pi05_tiny")."""
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
ITERATIONS = {"pi0_tiny": 25}
# bench/learning.py, seeds 0-2 (docs/benchmarks.md, "Learning: pi0_tiny"), mean of the last
# three evals minus the warm start, flow-SDE: +0.19, +0.08, +0.20.
MIN_GAIN = 0.05
MODEL = ["actor.model.num_steps=1", "actor.model.openpi.train_expert_only=False",
         "env.train.init_params.render=True"]


@pytest.mark.parametrize("model, experiment", [("pi0_tiny", "reach2d_learn_ppo_flow_sde")])
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
