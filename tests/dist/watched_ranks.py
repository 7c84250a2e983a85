"""A rank under pirl's watchdog doing collectives forever, as a training loop would.
    python watched_ranks.py TIMEOUT_S [raise]   (RANK / WORLD_SIZE / MASTER_* from the test)
With "raise", the last rank raises ValueError after a few collectives."""
import sys
import time
from datetime import timedelta

import torch

from pirl.engine.watchdog import watch_ranks


def main(timeout_s: float, fail: bool) -> None:
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    with watch_ranks(rank, world, timeout_s, hint="(test)"):
        print(f"rank {rank} watching", flush=True)
        for step in range(100_000):
            if fail and rank == world - 1 and step == 5:
                raise ValueError("boom at step 5")
            torch.distributed.all_reduce(torch.ones(4))
            time.sleep(0.05)


if __name__ == "__main__":
    main(float(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "raise")
