"""Process-group set-up for every launcher: `deepspeed`, `torchrun`, SLURM `srun`, or plain
`python train.py` (one process). DeepSpeed initializes the group (gloo on CPU, NCCL on CUDA)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_runtime_env() -> None:
    """Environment DeepSpeed needs on this machine before it is imported: the CPU
    accelerator when there is no GPU, and a persistent cache for the C++ ops it compiles
    on first use (25-100 s once, then loaded)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))


def _env_from_slurm() -> None:
    """DeepSpeed does not read SLURM_*: map srun's task ids onto torch.distributed's."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Join (or, for a plain single process, create) the default process group.
    `timeout_s` (cluster.timeout_s) bounds the rendezvous and every collective."""
    set_runtime_env()
    import deepspeed

    _env_from_slurm()
    if "RANK" not in os.environ:  # plain `python train.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
        deepspeed.init_distributed(dist_backend=backend, verbose=False, **kwargs)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place-safe sum across ranks of a (small) tensor; identity without a group."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def shutdown() -> None:
    """End the job's process group on every rank: a barrier (no rank leaves while another
    still talks to it), then destroy the group. Without it the gloo / NCCL threads are torn
    down by static destructors at interpreter exit, in no fixed order, and a rank can abort
    with "terminate called without an active exception" (return code -6) after its work
    is done."""
    if torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    shm_buffer_path().unlink(missing_ok=True)


def shm_buffer_path() -> Path:
    """The /dev/shm all-reduce buffer DeepSpeed's CPU comm op creates for this rank when
    all ranks share a host (deepspeed/ops/csrc/cpu/comm/shm.cpp names it
    deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>). DeepSpeed never
    unlinks it: ~67 MB of RAM a rank and run stay taken until reboot. Every other rank has
    it mapped by the time shutdown's barrier passes, so unlinking then is safe."""
    env = os.environ
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_"
            f"{env.get('MASTER_PORT', '')}_{env.get('RANK', '0')}")
    return Path("/dev/shm") / name
