"""Tier 4: one training iteration of every seeds' experiment whose simulator is installed
here, on the CPU, with the tiny-model override of tests/seed_runs.py (all of them in one
process, simulators built once). What each run must show: the experiment's own algorithm
ran (a finite PPO loss and critic loss with a gradient; GRPO's group filter at work), its
ZeRO stage, its episode rules, and an eval after the update."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pirl.config import load_config

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from seed_runs import SEED_EXPERIMENTS  # noqa: E402

SIMULATOR_PACKAGES = {"libero": "libero", "metaworld": "metaworld", "maniskill": "mani_skill"}


def _installed(name: str) -> bool:
    env_type = name.split("_")[0]
    return importlib.util.find_spec(SIMULATOR_PACKAGES[env_type]) is not None


RUNNABLE = [n for n in SEED_EXPERIMENTS if _installed(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("seed_runs")
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore",
               MS_SKIP_ASSET_DOWNLOAD_PROMPT="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "seed_runs.py"), str(log_dir), *RUNNABLE],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[record["name"]] = record
    assert proc.returncode == 0, _without_egl_teardown(proc.stdout + proc.stderr)[-5000:]
    return out


def _without_egl_teardown(text: str) -> str:
    """robosuite's EGL contexts complain at interpreter exit ("Exception ignored in
    EGLGLContext.__del__", five lines each, hundreds of them): drop them, so that a
    failure's message shows the failure."""
    noise = ("Exception ignored in", "Traceback (most recent call last)", "egl_context.py", "binding_utils.py",
             "OpenGL/error.py", "EGLError")
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in noise))


def test_every_seed_experiment_has_its_simulator_here():
    assert RUNNABLE == SEED_EXPERIMENTS, f"not installed: {sorted(set(SEED_EXPERIMENTS) - set(RUNNABLE))}"


@pytest.mark.parametrize("name", RUNNABLE)
def test_one_iteration_on_cpu(runs, name):
    cfg = load_config(name, check_files=False)
    rec = runs[name]
    m = rec["metrics"]
    assert rec["ds_stage"] == 3  # ds_configs/zero3.json, the schema's default the experiments keep
    assert m["env/num_episodes"] >= 1 and m["env/restarts"] == 0
    assert 0.0 <= rec["results"]["success_after"] <= 1.0 and "eval/success_once" in m
    assert m["actor/skipped_steps"] == 0
    if cfg.algorithm.adv_type == "gae":  # PPO with the critic: a loss with a gradient
        assert m["rollout/valid_fraction"] == 1.0
        for key in ("actor/loss", "actor/value_loss", "actor/entropy"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), key
        assert m["actor/grad_norm"] > 0 and math.isfinite(m["actor/grad_norm"])
    else:  # GRPO, group filter on: a group outside [0.1, 0.9] success trains nothing
        assert cfg.algorithm.filter_rewards
        kept = cfg.algorithm.rewards_lower_bound <= m["env/success_once"] <= cfg.algorithm.rewards_upper_bound
        assert (m["rollout/valid_fraction"] > 0) == kept
        if not kept:
            assert m["actor/loss"] == 0.0 and m["actor/grad_norm"] == 0.0
