"""pirl.checkpoint: runner state without pickle, manifests written last, `auto` resume from
the newest complete and intact checkpoint, named damaged checkpoints as errors, crashes
during save. One process; the multi-rank and multi-host cases are in test_rank_death.py
and test_multihost.py."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pirl.checkpoint import (MANIFEST, CheckpointError, CheckpointManager, decode_state, encode_state,
                             load_state, save_state)

ROOT = Path(__file__).resolve().parents[1]


class FileActor:
    """Stands in for ActorEngine: writes a real torch.save file of random weights under
    actor/, like DeepSpeed's save_checkpoint, and can crash halfway through a save."""

    def __init__(self, seed: int, crash_after_first_file: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.weights = {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)}
        self.crash = crash_after_first_file
        self.loaded: dict | None = None

    def save(self, directory: str, client_state: dict) -> None:
        d = Path(directory) / "actor"
        d.mkdir(parents=True)
        torch.save(self.weights, d / "mp_rank_00_model_states.pt")
        if self.crash:
            raise OSError("No space left on device")
        torch.save({"exp_avg": self.weights["w"] * 2}, d / "zero_pp_rank_0_mp_rank_00_optim_states.pt")

    def load(self, directory: str) -> dict:
        self.loaded = torch.load(Path(directory) / "actor" / "mp_rank_00_model_states.pt", weights_only=True)
        return {}


def _manager(tmp_path: Path, resume_dir=None, world: int = 1, logs: list | None = None) -> CheckpointManager:
    cfg = OmegaConf.create({"runner": {"keep_last_n": 3, "resume_dir": resume_dir,
                                       "logger": {"log_path": str(tmp_path), "experiment_name": "exp"}},
                            "seed": 7})
    return CheckpointManager(cfg, SimpleNamespace(rank=0, world_size=world),
                             log=(logs.append if logs is not None else lambda m: None))


def _runner_state(seed: int) -> dict:
    rng = np.random.RandomState(seed)
    random.seed(seed)
    return {"iteration": seed, "generator": torch.Generator().manual_seed(seed).get_state(),
            "numpy_rng": rng.get_state(), "python_rng": random.getstate(), "has_obs": True,
            "envs": [{"pos": torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)),
                      "group_size": 2}, None],
            "ratio": float("nan")}


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b and type(a) is type(b)


def test_runner_state_round_trips_without_pickle(tmp_path):
    state = _runner_state(3)
    save_state(state, tmp_path / "runner_rank0")
    json.loads((tmp_path / "runner_rank0.json").read_text())  # plain JSON
    with open(tmp_path / "runner_rank0.safetensors", "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        json.loads(f.read(header_len))  # a safetensors header, not a pickle
    back = load_state(tmp_path / "runner_rank0")
    _assert_same(state, back)
    np.random.set_state(back["numpy_rng"])  # the restored states are usable as such
    random.setstate(back["python_rng"])
    assert np.random.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)


def test_runner_state_refuses_what_would_need_pickle():
    with pytest.raises(TypeError, match=r"envs\.0\.sim is a object"):
        encode_state({"envs": [{"sim": object()}]})
    with pytest.raises(TypeError, match="__tensor__"):
        encode_state({"x": {"__tensor__": 1}})
    tree, tensors = encode_state({"a": (1, torch.ones(2))})
    assert tree == {"a": {"__tuple__": [1, {"__tensor__": "a.1"}]}}
    _assert_same(decode_state(tree, tensors), {"a": (1, torch.ones(2))})


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    mgr = _manager(tmp_path)
    folder = mgr.save(1, FileActor(1), _runner_state(1))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["iteration"] == 1 and manifest["world_size"] == 1
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(manifest["files"]) == on_disk
    assert "actor/actor/zero_pp_rank_0_mp_rank_00_optim_states.pt" in on_disk and "runner_rank0.json" in on_disk
    for name, rec in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "exp" / "checkpoints" / "latest").read_text() == "iter_000001"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_auto_skips_damaged_latest_and_named_damaged_is_an_error(tmp_path, damage):
    mgr = _manager(tmp_path)
    mgr.save(1, FileActor(1), _runner_state(1))
    latest = mgr.save(2, FileActor(2), _runner_state(2))
    victim = latest / "actor" / "actor" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        os.truncate(victim, victim.stat().st_size // 2)
    elif damage == "flip":  # same size, one byte changed
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "delete":
        victim.unlink()
    else:
        (latest / MANIFEST).unlink()
    expect = {"truncate": "bytes, the manifest records", "flip": "sha256 differs", "delete": "missing",
              "no_manifest": "no manifest.json"}[damage]

    logs: list[str] = []
    auto = _manager(tmp_path, "auto", logs=logs)
    chosen = auto.resume_path()
    assert chosen is not None and chosen.name == "iter_000001"
    assert len(logs) == 1 and "skipping iter_000002" in logs[0] and expect in logs[0]
    if damage != "no_manifest":
        assert str(victim) in logs[0]
    actor = FileActor(0)
    state = auto.load(chosen, actor)
    _assert_same(state, _runner_state(1))
    _assert_same(actor.loaded, FileActor(1).weights)

    named = _manager(tmp_path, str(latest))
    with pytest.raises(CheckpointError, match=expect) as err:
        named.resume_path()
    if damage != "no_manifest":
        assert str(victim) in str(err.value)


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path):
    mgr = _manager(tmp_path)
    good = mgr.save(1, FileActor(1), _runner_state(1))
    with pytest.raises(OSError, match="No space left"):
        mgr.save(2, FileActor(2, crash_after_first_file=True), _runner_state(2))
    root = tmp_path / "exp" / "checkpoints"
    assert (root / "iter_000002.tmp").is_dir() and not (root / "iter_000002").exists()
    assert (root / "latest").read_text() == "iter_000001"
    assert _manager(tmp_path, "auto").resume_path() == good
    mgr.save(2, FileActor(2), _runner_state(2))  # the next save clears the half-written folder
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "iter_000002", "latest"]


def test_resave_of_an_existing_iteration_keeps_the_old_bytes(tmp_path):
    logs: list[str] = []
    mgr = _manager(tmp_path, logs=logs)
    mgr.save(1, FileActor(1), _runner_state(1))
    mgr.save(1, FileActor(5), _runner_state(5))  # e.g. resumed from an older checkpoint with another lr
    root = tmp_path / "exp" / "checkpoints"
    assert "moved it to iter_000001.replaced" in logs[0]
    old = torch.load(root / "iter_000001.replaced" / "actor" / "actor" / "mp_rank_00_model_states.pt",
                     weights_only=True)
    _assert_same(old, FileActor(1).weights)


def test_world_size_mismatch_is_an_error(tmp_path):
    _manager(tmp_path).save(1, FileActor(1), _runner_state(1))
    with pytest.raises(CheckpointError, match="written by 1 ranks and this run has 2"):
        _manager(tmp_path, "auto", world=2).check(tmp_path / "exp" / "checkpoints" / "iter_000001")


def test_pruning_keeps_the_newest_complete_and_never_an_incomplete(tmp_path):
    mgr = _manager(tmp_path)
    for it in range(1, 5):
        mgr.save(it, FileActor(it), _runner_state(it))
    root = tmp_path / "exp" / "checkpoints"
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000002", "iter_000003", "iter_000004"]
    (root / "iter_000002" / MANIFEST).unlink()  # incomplete: not counted and not deleted
    mgr.save(5, FileActor(5), _runner_state(5))
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000002", "iter_000003", "iter_000004",
                                                           "iter_000005"]


def _train(log_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config-name", "reach2d_ppo_flow_sde",
           "env.train.total_num_envs=16", "env.eval.total_num_envs=4", "actor.micro_batch_size=32",
           "actor.global_batch_size=64", "cluster.num_gpus_per_node=1", "runner.val_check_interval=0",
           "runner.eval_before_train=false", "actor.ds_config=ds_configs/zero2.json",
           "runner.logger.experiment_name=exp", f"runner.logger.log_path={log_path}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.dist
def test_train_py_resumes_past_a_truncated_deepspeed_file(tmp_path):
    """The issue's case as a new user meets it: truncate one file of the newest checkpoint,
    resume with auto: pirl resumes from the one before and says why; naming the damaged
    one ends with one message naming the file, not a torch traceback."""
    first = _train(tmp_path, "runner.max_epochs=2", "runner.save_interval=1")
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "exp" / "checkpoints"
    victim = root / "iter_000002" / "actor" / "actor" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    os.truncate(victim, victim.stat().st_size - 100)

    resumed = _train(tmp_path, "runner.max_epochs=3", "runner.save_interval=1", "runner.resume_dir=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping iter_000002: {victim}" in resumed.stdout
    assert "at iteration 1" in resumed.stdout
    assert (root / "iter_000003" / MANIFEST).is_file()

    (root / "iter_000003" / "runner_rank0.safetensors").write_bytes(b"\0" * 10)
    named = _train(tmp_path, "runner.max_epochs=4", f"runner.resume_dir={root / 'iter_000003'}")
    assert named.returncode == 2
    assert "PytorchStreamReader" not in named.stderr and "Traceback" not in named.stderr
    assert f"{root / 'iter_000003' / 'runner_rank0.safetensors'}: 10 bytes" in named.stderr
