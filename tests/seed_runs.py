"""One training iteration of each of the seeds' experiments on a CPU, in one process
(tests/test_seed_experiments.py runs it per simulator).

    python tests/seed_runs.py LOG_DIR NAME [NAME ...]

Every experiment is the shipped config with a tiny-model override (`tiny_overrides`): the
tiny π0 / π0.5 preset (random weights) in place of the full-size one the SFT checkpoint
would bring, the model group's other settings kept, one train env (a GRPO group of 2) and
one eval env of one chunk step each, 32 px cameras, one optimizer step, no videos. Everything
else (algorithm, noise method, log-prob and entropy levels, bootstrap, reset rules, env
group, ZeRO stage) is the experiment's own. One process builds the process group once, and
a simulator's envs once for all the experiments that use the same ones: the backend cache
below (the runs differ in the episode rules ChunkedVecEnv applies, not in the simulator).
Prints one JSON line per experiment: {"name", "metrics", "results"}.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

# The seeds' experiments (000_*..004_*): the reference system's names, one config each.
SEED_EXPERIMENTS = [f"libero_{s}_{a}_openpi{m}" for s in ("spatial", "object", "goal", "10")
                    for a in ("ppo", "grpo") for m in ("", "_pi05")] + [
    "libero_spatial_ppo_openpi_quickstart", "maniskill_ppo_openpi", "maniskill_ppo_openpi_pi05",
    "metaworld_50_ppo_openpi", "metaworld_50_ppo_openpi_pi05", "metaworld_45_ppo_openpi"]

# env_type -> init_params overrides: small cameras, simulators in this process where they
# allow it; ManiSkill's seeds' benchmark (PutOnPlateInScene25Main) is not in mani-skill
# 3.0.1, so its runs use PickCube-v1 on the same ManiSkill adapter.
SIM_OVERRIDES = {
    "libero": ["init_params.camera_heights=32", "init_params.camera_widths=32", "num_workers=0",
               "init_params.settle_steps=2"],
    "metaworld": ["init_params.camera_heights=32", "init_params.camera_widths=32", "num_workers=0"],
    "maniskill": ["init_params.id=PickCube-v1", "init_params.sim_backend=cpu",
                  "init_params.sensor_configs={width: 32, height: 32}", "num_workers=0"],
}
# State width the tiny model pads to: MetaWorld's Sawyer state has 39 dims.
MODEL_DIM = {"libero": 16, "maniskill": 16, "metaworld": 40}


def tiny_overrides(name: str, log_dir: Path) -> list[str]:
    """The overrides of the one-iteration CPU run of experiment `name`."""
    from pirl.config import load_config

    cfg = load_config(name, check_files=False)
    chunk = cfg.actor.model.num_action_chunks
    env_type = cfg.env.train.env_type
    op = cfg.actor.model.openpi
    tiny = "pi05_tiny" if op.config_name.startswith("pi05") else "pi0_tiny"
    # The model group stays; only its sizes shrink: the tiny preset of the same family, the
    # experiment's horizon (or exactly its chunk), random weights, fp32 on the CPU.
    over = ["actor.model.model_path=null", f"actor.model.openpi.config_name={tiny}",
            f"actor.model.openpi.action_horizon={op.action_horizon or chunk}",
            f"actor.model.openpi.action_dim={MODEL_DIM[env_type]}", "actor.model.precision=fp32",
            f"actor.model.openpi.max_token_len={160 if tiny == 'pi05_tiny' else 128}",  # whole instructions, byte tokens
            "cluster.num_gpus_per_node=1", "runner.max_epochs=1", "runner.val_check_interval=0",
            "runner.save_interval=0", "runner.eval_before_train=False", f"runner.logger.log_path={log_dir}",
            "runner.logger.logger_backends=[tensorboard]", "actor.micro_batch_size=1", "algorithm.update_epoch=1",
            "env.eval.total_num_envs=1", "env.train.rollout_epoch=1"]
    if cfg.algorithm.adv_type == "grpo":  # one group of 2 envs: 2 samples, 2 micro-batches a step
        over += ["algorithm.group_size=2", "env.train.total_num_envs=2", "actor.global_batch_size=2"]
    else:  # one env, which the eval split shares (a simulator build and reset cost seconds)
        over += ["env.train.total_num_envs=1", "actor.global_batch_size=1"]
    for split in ("train", "eval"):  # one chunk step an episode
        over += [f"env.{split}.max_episode_steps={chunk}", f"env.{split}.max_steps_per_rollout_epoch={chunk}",
                 f"env.{split}.video_cfg.save_video=False"]
        over += [f"env.{split}.{o}" for o in SIM_OVERRIDES[env_type]]
    return over


def _cache_backends() -> dict:
    """Wrap pirl.envs' backend builder: one build per distinct simulator set-up; the
    ChunkedVecEnvs of later runs wrap the same backend (closing it is deferred to exit)."""
    import pirl.envs as envs

    built: dict[str, object] = {}
    build = envs._make_backend

    def cached(kind, split_cfg, params, size, num_envs):
        key = json.dumps([kind, split_cfg.task_suite_name, params, size, num_envs, split_cfg.group_size,
                          split_cfg.num_workers], sort_keys=True, default=str)
        if key not in built:
            backend = build(kind, split_cfg, params, size, num_envs)
            backend._close_at_exit = backend.close  # type: ignore[attr-defined]
            backend.close = lambda: None  # type: ignore[method-assign]
            built[key] = backend
        return built[key]

    envs._make_backend = cached
    return built


def main(log_dir: str, names: list[str]) -> int:
    import torch

    from pirl.config import load_config
    from pirl.engine.dist import init_distributed
    from pirl.runner import Runner

    cache = _cache_backends()
    dist = init_distributed()
    for name in names:
        cfg = load_config(name, overrides=tiny_overrides(name, Path(log_dir)), world_size=1)
        runner = Runner(cfg, dist)
        metrics: dict[str, float] = {}
        log = runner.logger.log

        def keep(m: dict, step: int, _log=log, _seen=metrics) -> None:  # what the iteration logged
            _seen.update(m)
            _log(m, step)

        runner.logger.log = keep  # type: ignore[method-assign]
        results = runner.run()
        clean = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
        print(json.dumps({"name": name, "metrics": clean, "results": results,
                          "ds_stage": runner.actor.zero_stage}), flush=True)
        del runner
    for backend in cache.values():
        backend._close_at_exit()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
