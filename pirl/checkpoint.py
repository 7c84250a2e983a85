"""Checkpoints: DeepSpeed engine state + runner state, written atomically, each with a
manifest written last, pruned to `runner.keep_last_n`.

Layout under <log_path>/<experiment_name>/checkpoints/:
    iter_000010/actor/...                    DeepSpeed save_checkpoint (weights, optimizer, scheduler)
    iter_000010/runner_rank{r}.json          rank r's runner state: JSON, tensors referenced by name
    iter_000010/runner_rank{r}.safetensors   ... and those tensors
    iter_000010/config.yaml                  the resolved config
    iter_000010/manifest.json                written last: size and sha256 of every other file
    latest                                   name of the newest complete checkpoint

A checkpoint is complete when its manifest exists, intact when every file it lists has
the recorded size and sha256. Saving: every rank writes into `iter_N.tmp`; then every rank
hashes (and fsyncs) its share of the files, rank 0 writes the manifest, renames the folder
to `iter_N` and updates `latest`. A crash at any point before the rename leaves a `.tmp`
folder that no resume considers and the next save removes; the last good checkpoint is
never touched. Old checkpoints are deleted only after a new one is complete.

Resuming (`runner.resume_dir`): "auto" takes the newest complete, intact checkpoint and
says which newer ones it skipped and why; a named checkpoint that is incomplete or
damaged is an error naming the file. Every rank checks its share of the files and all
agree on the answer, so the whole job resumes from the same folder.

Safe loading: pirl's own files load without unpickling (JSON, safetensors, YAML).
DeepSpeed's files under actor/ (mp_rank_*_model_states.pt, *_optim_states.pt) are read by
DeepSpeed with `torch.load(weights_only=False)`: only resume from folders you trust
(docs/multinode.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"^iter_(\d{6,})$")
MANIFEST = "manifest.json"
FORMAT = "pirl-checkpoint/1"
HASH_CHUNK = 8 << 20  # bytes read at a time while hashing
# JSON markers of values JSON has no type for; a state dict may not use them as keys.
_TENSOR, _NDARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the folder or file."""


# ---------------------------------------------------------------- runner state, no pickle

def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A state of dicts (str keys), lists, tuples, str / int / float / bool / None, tensors
    and numpy arrays -> (a JSON-able tree, {name: tensor}); tensors become {"__tensor__": name}."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            tensors[path] = v.detach().cpu().contiguous().clone()
            return {_TENSOR: path}
        if isinstance(v, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(v).copy())
            return {_NDARRAY: path}
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str) or k in (_TENSOR, _NDARRAY, _TUPLE):
                    raise TypeError(f"runner state: key {k!r} at {path or '<root>'} must be a str other than "
                                    f"{_TENSOR}, {_NDARRAY}, {_TUPLE}")
                out[k] = enc(x, f"{path}.{k}" if path else k)
            return out
        if isinstance(v, tuple):
            return {_TUPLE: [enc(x, f"{path}.{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{path}.{i}") for i, x in enumerate(v)]
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            return v.item()
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        raise TypeError(f"runner state: {path or '<root>'} is a {type(v).__name__}; checkpoints hold tensors, "
                        f"numpy arrays and JSON values only (nothing that needs unpickling)")

    return enc(state, ""), tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of encode_state."""
    if isinstance(tree, list):
        return [decode_state(x, tensors) for x in tree]
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_NDARRAY}:
            return tensors[tree[_NDARRAY]].numpy()
        if set(tree) == {_TUPLE}:
            return tuple(decode_state(x, tensors) for x in tree[_TUPLE])
        return {k: decode_state(v, tensors) for k, v in tree.items()}
    return tree


def save_state(state: dict, stem: Path) -> None:
    """`stem`.json + `stem`.safetensors."""
    tree, tensors = encode_state(state)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(tree))


def load_state(stem: Path) -> dict:
    tree = json.loads(stem.with_suffix(".json").read_text())
    return decode_state(tree, load_file(str(stem.with_suffix(".safetensors"))))


# ---------------------------------------------------------------- manifest

def file_digest(path: Path, fsync: bool = False) -> dict[str, Any]:
    """{"size", "sha256"} of a file; fsync=True also flushes it to stable storage."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def list_files(folder: Path) -> list[str]:
    """Every file under folder, as sorted relative POSIX paths, the manifest excluded."""
    out = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(f for f in out if f != MANIFEST)


def check_files(folder: Path, files: dict[str, dict], names: list[str]) -> str | None:
    """The first problem with `names` (of the manifest's `files`) in folder, or None."""
    for name in names:
        path, want = folder / name, files[name]
        if not path.is_file():
            return f"{path}: missing (the manifest lists it)"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path}: {size} bytes, the manifest records {want['size']} (truncated or rewritten)"
        if file_digest(path)["sha256"] != want["sha256"]:
            return f"{path}: sha256 differs from the manifest's (the file was changed or damaged)"
    return None


def read_manifest(folder: Path) -> dict:
    """The manifest of a checkpoint folder; CheckpointError if it is missing or unreadable."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}, so the checkpoint is incomplete (its save did not finish, "
                              f"or it was written before pirl recorded manifests)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    return manifest


# ---------------------------------------------------------------- collectives

def _world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _gather(obj: Any) -> list[Any]:
    """obj of every rank, in rank order (a list of one without a process group)."""
    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root (`iter_N`, complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("iter_")))


def _aside(path: Path, suffix: str) -> Path:
    """A free name beside path: iter_N.<suffix>, iter_N.<suffix>1, ..."""
    k, target = 0, path.with_name(f"{path.name}.{suffix}")
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.{suffix}{k}")
    return target


class CheckpointManager:
    """save(iteration, actor, state) -> folder; resume_path() -> folder or None;
    load(folder, actor) -> state. `state` holds tensors, numpy arrays and JSON values."""

    def __init__(self, cfg, dist, log: Callable[[str], None] | None = None):
        self.cfg, self.rank, self.world = cfg, dist.rank, dist.world_size
        lcfg = cfg.runner.logger
        self.root = Path(lcfg.log_path) / lcfg.experiment_name / "checkpoints"
        self.keep = cfg.runner.keep_last_n
        self.log = log or (lambda msg: print(msg, flush=True) if dist.rank == 0 else None)
        self._verified: Path | None = None

    # ---- integrity ---------------------------------------------------------------------
    def check(self, folder: Path) -> str | None:
        """None if `folder` is a complete, intact checkpoint written by this many ranks,
        else the reason (naming the file). Collective: every rank hashes 1/world of the files."""
        fatal = problem = None
        try:
            manifest = read_manifest(folder)
            if manifest.get("world_size") != self.world:
                fatal = (f"{folder} was written by {manifest.get('world_size')} ranks and this run has "
                         f"{self.world}: resume with the same world size (its ZeRO partitions and runner "
                         f"states are per rank)")
            else:
                names = sorted(manifest["files"])
                problem = check_files(folder, manifest["files"], names[self.rank::self.world])
        except CheckpointError as e:
            problem = str(e)
        verdicts = _gather((fatal, problem))  # every rank decides on the same evidence
        for f, _ in verdicts:
            if f is not None:
                raise CheckpointError(f)
        found = [p for _, p in verdicts if p is not None]
        return found[0] if found else None

    def resume_path(self) -> Path | None:
        """`runner.resume_dir`: null (fresh run), "auto" (the newest complete, intact
        checkpoint here, if any) or a checkpoint folder (an error unless intact)."""
        spec = self.cfg.runner.resume_dir
        if spec is None or spec == "":
            return None
        if spec != "auto":
            path = Path(spec)
            if not path.is_dir():
                raise CheckpointError(f"runner.resume_dir: {path} is not a directory")
            problem = self.check(path)
            if problem is not None:
                raise CheckpointError(f"runner.resume_dir: cannot resume from {path}: {problem}")
            self._verified = path
            return path
        for folder in reversed(list_checkpoints(self.root)):
            problem = self.check(folder)
            if problem is None:
                self._verified = folder
                return folder
            self.log(f"resume_dir=auto: skipping {folder.name}: {problem}")
        self.log(f"resume_dir=auto: no complete, intact checkpoint under {self.root}: starting at iteration 0")
        return None

    # ---- save ----------------------------------------------------------------------------
    def save(self, iteration: int, actor, state: dict) -> Path:
        final = self.root / f"iter_{iteration:06d}"
        tmp = self.root / f"iter_{iteration:06d}.tmp"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        if actor is not None:  # None on a rank with no actor role (pirl.driver)
            actor.save(str(tmp / "actor"), client_state={"iteration": iteration})
        save_state(state, tmp / f"runner_rank{self.rank}")
        if self.rank == 0:
            OmegaConf.save(self.cfg, tmp / "config.yaml", resolve=True)
        _barrier()
        self._write_manifest(tmp, iteration)
        if self.rank == 0:
            if final.exists():  # saved before, then resumed from an older one: keep its bytes
                moved = _aside(final, "replaced")
                os.replace(final, moved)
                self.log(f"checkpoint {final.name} existed (a resume from an older one); moved it to {moved.name}")
            os.replace(tmp, final)
            pointer = self.root / "latest.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, self.root / "latest")
            _fsync_dir(self.root)
            self._prune()
        _barrier()
        return final

    def _write_manifest(self, tmp: Path, iteration: int) -> None:
        """Every rank lists the folder (all must see the same files: a shared filesystem),
        hashes and fsyncs its share; rank 0 writes the manifest, last."""
        names = list_files(tmp)
        listings = _gather(names)
        if any(other != names for other in listings):
            counts = ", ".join(f"rank {r}: {len(x)}" for r, x in enumerate(listings))
            raise CheckpointError(
                f"ranks see different files in {tmp} ({counts}) on host {socket.gethostname()}: "
                f"runner.logger.log_path must be on a filesystem every host shares")
        mine = {n: file_digest(tmp / n, fsync=True) for n in names[self.rank::self.world]}
        digests: dict[str, dict] = {}
        for part in _gather(mine):
            digests.update(part)
        if self.rank == 0:
            manifest = {"format": FORMAT, "iteration": iteration, "world_size": self.world,
                        "files": {n: digests[n] for n in names}}
            part = tmp / (MANIFEST + ".part")
            with open(part, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, tmp / MANIFEST)
            _fsync_dir(tmp)

    def _prune(self) -> None:
        """Delete complete checkpoints beyond the newest `keep`; incomplete ones stay."""
        complete = [p for p in list_checkpoints(self.root) if (p / MANIFEST).is_file()]
        for old in complete[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- load ----------------------------------------------------------------------------
    def load(self, path: Path, actor) -> dict:
        """DeepSpeed state into `actor`, and this rank's runner state (no unpickling)."""
        path = Path(path)
        if self._verified != path:
            problem = self.check(path)
            if problem is not None:
                raise CheckpointError(f"cannot resume from {path}: {problem}")
        if actor is not None:
            actor.load(str(path / "actor"))
        return load_state(path / f"runner_rank{self.rank}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in folder durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
