"""pirl entry point: config -> distributed init -> runner.run().

    deepspeed --hostfile launcher/hosts train.py --config-name reach2d_ppo_flow_sde [key=value ...]
    torchrun --nproc_per_node 2 train.py --config-name ...
    python train.py --config-name ... [--dry-run] [--world-size N]

The config is loaded and validated against the world size BEFORE any process group,
simulator or model starts; a bad config exits with status 2 and one message naming the key.
"""
from __future__ import annotations

import atexit
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from pirl.config import ConfigError, build_arg_parser, derived_sizes, format_dry_run, load_config, world_size_of

    parser = build_arg_parser(prog="train.py")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    launched = int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None
    world_size = args.world_size or launched
    try:
        cfg = load_config(args.config_name, args.config_path, args.overrides, world_size=world_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_dry_run(cfg, derived_sizes(cfg, world_size or world_size_of(cfg))))
        return 0
    from pirl.checkpoint import CheckpointError
    from pirl.engine.dist import init_distributed, shutdown
    from pirl.engine.watchdog import watch_ranks
    from pirl.runner import Runner

    dist = init_distributed(timeout_s=cfg.cluster.timeout_s)
    lcfg = cfg.runner.logger
    hint = (f"The newest complete checkpoint under {lcfg.log_path}/{lcfg.experiment_name}/checkpoints "
            f"resumes with runner.resume_dir=auto.")
    runner = None
    try:
        with watch_ranks(dist.rank, dist.world_size, cfg.cluster.timeout_s, hint, agreed=(CheckpointError,)):
            runner = Runner(cfg, dist)
            results = runner.run()
    except CheckpointError as e:  # a damaged or incompatible checkpoint: one message, every rank
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    finally:
        # Every rank ends the same way, also after an error: envs (and their worker
        # processes) closed, logger threads stopped, then the process group destroyed, so
        # nothing is left to be torn down by static destructors at interpreter exit.
        if runner is not None:
            runner.close()
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
