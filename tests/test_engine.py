"""The distributed engine on several gloo ranks (tests/dist/engine_checks.py): p2p messages,
log-prob equality right after a weight sync (and its failure without one), trainable-only
syncs, and offload cycles that leave training bit-identical."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pirl.engine.dist import free_port

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist" / "engine_checks.py"


def _run(mode: str, nproc: int, out: Path) -> list[dict]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), str(SCRIPT), mode, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_disjoint_layout_syncs_weights_and_rescores_the_rollout_exactly(tmp_path):
    env_rank, rollout_rank, actor_rank = _run("sync", 3, tmp_path)
    assert rollout_rank["message_equal"] and rollout_rank["final_obs_absent"]  # uint8, bool, text over gloo p2p
    rounds = {r["step"]: r for r in actor_rank["rounds"]}
    # right after a sync the actor scores the rollout's samples as the rollout did
    assert rounds["synced"]["diff"] < 1e-5 and rounds["resynced"]["diff"] < 1e-5
    assert rounds["stale"]["diff"] > 1e-3  # the metric sees weights that were not synced
    # version 0 sends everything once; later versions only what trains (the encoder is frozen)
    assert rounds["synced"]["sync"]["weights/version"] == 0
    assert rounds["synced"]["sync"]["weights/sync_bytes"] == actor_rank["all_bytes"]
    assert rounds["resynced"]["sync"]["weights/version"] == 1
    assert rounds["resynced"]["sync"]["weights/sync_bytes"] == actor_rank["trainable_bytes"] < actor_rank["all_bytes"]
    assert [r["version"] for r in rollout_rank["rounds"]] == [0, 0, 1]  # the rollout checked each stamp


@pytest.mark.parametrize("stage", [3, 2])
def test_offload_cycle_leaves_training_bit_identical(tmp_path, stage):
    ranks = _run(f"offload{stage}", 2, tmp_path)
    for r in ranks:
        assert r["identical"] and r["nonzero"] and r["stage"] == stage
        assert r["poisoned_differs"]  # it trains from the host copies: a corrupted one changes the result
        for step in r["bytes"]:  # every state tensor was moved into a host buffer
            for kind, s in step.items():
                if s["count"]:
                    assert s["devices"] == ["cpu"], (kind, s)
        first = r["bytes"][0]
        assert all(first[k]["moved"] == first[k]["count"] for k in first), first
        assert first["hp_params"]["bytes"] > 0 and first["optim_states"]["bytes"] > 0
        assert first["frozen_params"]["count"] == 4  # the frozen encoder's 2 weights and 2 biases
