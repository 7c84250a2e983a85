"""pirl entry point: config -> threads per rank -> distributed init -> driver.run().

    deepspeed --hostfile launcher/hosts train.py --config-name reach2d_ppo_flow_sde [overrides]
    torchrun --nproc_per_node 2 train.py --config-name ...
    python train.py --config-name ... [--dry-run] [--world-size N]

The config is composed (hydra-core), loaded and validated against the world size BEFORE
any process group, simulator or model starts; a bad config exits with status 2 and one
message naming the key and the file.
"""
from __future__ import annotations

import atexit
import os
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    from pirl.config import (ConfigError, ConfigNotice, apply_hydra_runtime, build_arg_parser, derived_sizes,
                             format_dry_run, load_job, world_size_of)

    parser = build_arg_parser(prog="train.py")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    launched = int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None
    world_size = args.world_size or launched
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank != 0:  # every rank validates; one prints the notices
        warnings.simplefilter("ignore", ConfigNotice)
    try:
        job = load_job(args.config_name, args.config_path, args.overrides, world_size=world_size,
                       check_files=not args.dry_run)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    cfg = job.cfg
    if args.dry_run:
        print(format_dry_run(cfg, derived_sizes(cfg, world_size or world_size_of(cfg))))
        return 0
    apply_hydra_runtime(job, args.overrides, rank)
    from pirl.checkpoint import CheckpointError
    from pirl.driver import Driver
    from pirl.engine.dist import init_distributed, shutdown
    from pirl.engine.threads import apply_threads, threads_per_rank
    from pirl.engine.watchdog import watch_ranks

    threads, why = threads_per_rank(cfg.cluster.threads_per_rank)
    apply_threads(threads)  # before any env worker, renderer or process group starts
    dist = init_distributed(timeout_s=cfg.cluster.timeout_s)
    if dist.rank == 0:
        print(f"threads per rank: {threads} ({why})", flush=True)
    lcfg = cfg.runner.logger
    hint = (f"The newest complete checkpoint under {lcfg.log_path}/{lcfg.experiment_name}/checkpoints "
            f"resumes with runner.resume_dir=auto.")
    driver = None
    try:
        with watch_ranks(dist.rank, dist.world_size, cfg.cluster.timeout_s, hint, agreed=(CheckpointError,)):
            driver = Driver(cfg, dist)
            results = driver.run()
    except CheckpointError as e:  # a damaged or incompatible checkpoint: one message, every rank
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    finally:
        # Every rank ends the same way, also after an error: envs (and their worker
        # processes) closed, logger threads stopped, then the process group destroyed, so
        # nothing is left to be torn down by static destructors at interpreter exit.
        if driver is not None:
            driver.close(flush=False)  # a no-op after a completed run, which closed it itself
    shutdown()
    if dist.rank == 0 and results:
        print(" ".join(f"{k}={v:.4f}" for k, v in results.items()), flush=True)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: with torch, DeepSpeed and transformers
    loaded, its garbage collection of every module takes ~10 s per rank on this 2-core
    machine. Exit handlers (multiprocessing's env workers, wandb, logging) still run."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
