"""Evaluate a policy checkpoint on an env config: N episodes per task, in parallel over
the eval envs of every rank (worker processes where env.eval.num_workers says so, ranks
through the launcher), success per task and overall with Wilson 95% intervals, episode
lengths, a JSON report, a markdown table and videos of a few episodes.

    python -m pirl.eval --config-name EXP --checkpoint DIR [--episodes N] [--sampling ode|sde]
                        [--out DIR] [--videos K] [key=value ...]
    deepspeed ... pirl/eval.py ...  (or torchrun): several ranks split the episodes
    python -m pirl.eval --compare BEFORE.json AFTER.json [--out FILE.md]   before/after table

Episodes: every episode starts from its own reset seed. Wave w of rank r resets its B
envs with base seed env.eval.seed + (w·R + r)·B, env i getting base + i (pirl.envs.chunked
.group_seeds), so no two episodes of a run share a seed; env i runs task i % num_tasks.
Waves repeat until every task has N episodes; the first N of each task (in (wave, rank,
env) order) are reported. Episodes end at success (unless env.eval.ignore_terminations)
or after env.eval.max_episode_steps env steps; `success` is success_once.

Sampling: `ode` (default) is the deterministic denoising chain; `sde` samples as the
rollout does (the configured noise method), seeded per rank and wave.

The checkpoint is refused before any env starts when its recorded contract (pirl.models
.contract: num_steps, action chunk, action and state dims, model type) or its norm stats
contradict the config.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

Z95 = 1.959963984540054  # standard normal quantile of 0.975


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): the p whose normal
    test at level z does not reject k/n; stays inside [0, 1] and is not degenerate at
    k = 0 or k = n, unlike the normal (Wald) interval."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class EpisodeResult:
    task: str
    success: bool
    length: int  # env steps
    seed: int  # the episode's reset seed
    order: int = 0  # (wave, rank, env) rank in the run, for "the first N"
    chain_len: int | None = None  # CALVIN: subtasks of the episode's chain done in a row (0-5)


@dataclass
class TaskStats:
    episodes: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    episode_len_mean: float
    episode_len_success_mean: float  # nan without successes

    @staticmethod
    def of(results: list[EpisodeResult]) -> TaskStats:
        n = len(results)
        k = sum(r.success for r in results)
        lens = [r.length for r in results]
        ok = [r.length for r in results if r.success]
        return TaskStats(n, k, k / n if n else math.nan, wilson_interval(k, n),
                         sum(lens) / n if n else math.nan, sum(ok) / len(ok) if ok else math.nan)


@dataclass
class Report:
    overall: TaskStats
    tasks: dict[str, TaskStats]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def d(s: TaskStats) -> dict:
            return {"episodes": s.episodes, "successes": s.successes, "success_rate": s.success_rate,
                    "ci95": list(s.ci95), "episode_len_mean": s.episode_len_mean,
                    "episode_len_success_mean": s.episode_len_success_mean}

        return {"overall": d(self.overall), "tasks": {t: d(s) for t, s in self.tasks.items()}, "meta": self.meta}

    @staticmethod
    def from_json(raw: dict) -> Report:
        def s(d: dict) -> TaskStats:
            return TaskStats(int(d["episodes"]), int(d["successes"]), float(d["success_rate"]), tuple(d["ci95"]),
                             float(d["episode_len_mean"]), float(d["episode_len_success_mean"]))

        return Report(s(raw["overall"]), {t: s(v) for t, v in raw["tasks"].items()}, raw.get("meta", {}))


def summarize(results: list[EpisodeResult], per_task: int | None = None, meta: dict | None = None) -> Report:
    """Per-task and overall statistics; with `per_task`, only the first N episodes (by
    `order`) of each task count."""
    by_task: dict[str, list[EpisodeResult]] = {}
    for r in sorted(results, key=lambda r: r.order):
        lst = by_task.setdefault(r.task, [])
        if per_task is None or len(lst) < per_task:
            lst.append(r)
    kept = [r for lst in by_task.values() for r in lst]
    return Report(TaskStats.of(kept), {t: TaskStats.of(v) for t, v in sorted(by_task.items())}, meta or {})


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}"


def markdown_table(report: Report) -> str:
    rows = ["| task | episodes | success % | 95% CI | mean length | mean length (successes) |",
            "|---|---|---|---|---|---|"]
    items = list(report.tasks.items()) + [("**overall**", report.overall)]
    for name, s in items:
        ok_len = "-" if math.isnan(s.episode_len_success_mean) else f"{s.episode_len_success_mean:.1f}"
        rows.append(f"| {name} | {s.episodes} | {_pct(s.success_rate)} | [{_pct(s.ci95[0])}, {_pct(s.ci95[1])}] "
                    f"| {s.episode_len_mean:.1f} | {ok_len} |")
    if "calvin" in report.meta:  # chain lengths: success at length 1..5, average length
        rows += ["", report.meta["calvin"]["table"]]
    return "\n".join(rows)


def compare_table(before: Report, after: Report, labels: tuple[str, str] = ("SFT", "RL")) -> str:
    """Before / after success per task and overall, with intervals and the change in points."""
    a, b = labels
    rows = [f"| task | {a} success % | {a} 95% CI | {b} success % | {b} 95% CI | change (points) |",
            "|---|---|---|---|---|---|"]
    tasks = sorted(set(before.tasks) | set(after.tasks))
    pairs = [(t, before.tasks.get(t), after.tasks.get(t)) for t in tasks] + [("**overall**", before.overall, after.overall)]
    for name, x, y in pairs:
        if x is None or y is None:
            raise ValueError(f"task {name!r} is in only one of the two reports")
        rows.append(f"| {name} | {_pct(x.success_rate)} | [{_pct(x.ci95[0])}, {_pct(x.ci95[1])}] | "
                    f"{_pct(y.success_rate)} | [{_pct(y.ci95[0])}, {_pct(y.ci95[1])}] | "
                    f"{100 * (y.success_rate - x.success_rate):+.1f} |")
    return "\n".join(rows)


# ---- running episodes ----------------------------------------------------------------


def episode_counts(num_envs: int, num_tasks: int, world: int) -> list[int]:
    """Episodes per task one wave yields: env i of every rank runs task i % num_tasks."""
    return [world * len(range(t, num_envs, num_tasks)) for t in range(num_tasks)]


def run_episodes(policy, env, task_names: list[str], per_task: int, chunk: int, base_seed: int, rank: int,
                 world: int, sampling: str, video=None) -> list[EpisodeResult]:
    """This rank's episodes (env built with auto_reset off); see the module doc for seeds."""
    import torch

    B = env.num_envs
    counts = episode_counts(B, len(task_names), world)
    if min(counts) == 0:
        raise ValueError(f"env.eval has {B} envs per rank, fewer than its {len(task_names)} tasks: "
                         "every task needs an env on every rank")
    waves = max(math.ceil(per_task / c) for c in counts)
    n_chunks = math.ceil(env.max_episode_steps / chunk)
    mode = "eval" if sampling == "ode" else "train"
    out: list[EpisodeResult] = []
    for w in range(waves):
        seed = base_seed + (w * world + rank) * B
        gen = torch.Generator().manual_seed(seed)
        if video is not None and w == 0:
            env.video = video
        obs = env.reset(seed=seed)
        success = torch.zeros(B, dtype=torch.bool)
        length = torch.zeros(B, dtype=torch.long)
        chain_len = torch.full((B,), -1, dtype=torch.long)  # CALVIN's avg_len stat; -1: none
        done = torch.zeros(B, dtype=torch.bool)
        for _ in range(n_chunks):
            sample = policy.sample(policy.preprocess(obs), mode, gen)
            obs, _, _, _, info = env.chunk_step(sample.actions.cpu())
            newly = info["done"] & ~done
            success[newly] = info["episode"]["success_once"][newly] > 0
            length[newly] = info["episode"]["episode_len"][newly].long()
            if "avg_len" in info["episode"]:
                chain_len[newly] = info["episode"]["avg_len"][newly].long()
            done |= info["done"]
            if bool(done.all()):
                break
        if getattr(env, "video", None) is not None:
            env.video.close()
            env.video = None
        names = getattr(env, "task_names", None) or task_names * B
        for i in range(B):
            out.append(EpisodeResult(str(names[i]), bool(success[i]), int(length[i]), seed + i,
                                     order=(w * world + rank) * B + i,
                                     chain_len=int(chain_len[i]) if chain_len[i] >= 0 else None))
    return out


def calvin_summary(results: list[EpisodeResult], num_sequences: int = 1000) -> dict:
    """CALVIN's metrics of the episodes (success at chain length 1..5, average length, with
    intervals; per-task success), each episode's chain named by its reset seed."""
    from pirl.envs.calvin_metrics import chain_metrics, chains_of_seeds

    kept = sorted((r for r in results if r.chain_len is not None), key=lambda r: r.seed)
    lengths = [r.chain_len for r in kept if r.chain_len is not None]
    chain = chain_metrics(lengths, chains_of_seeds([r.seed for r in kept], num_sequences))
    return {**chain.metrics(), "table": chain.table(), "task_success": chain.task_success}


def _gather(results: list[EpisodeResult]) -> list[EpisodeResult]:
    import torch

    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return results
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, results)
    return [r for p in parts for r in p]


def eval_task_names(split) -> list[str]:
    """Task names of an env section, in the order envs are assigned them."""
    from pirl.envs import task_spec

    sim = split.env_type
    if sim == "metaworld":
        from pirl.envs.metaworld import resolve_tasks

        return resolve_tasks(task_spec(split))[1]
    if sim == "libero":
        from pirl.envs.libero import resolve_tasks as libero_tasks

        suite, indices = libero_tasks(task_spec(split))
        return [f"{suite}:{i}" for i in indices]
    if sim == "maniskill":
        task = task_spec(split)
        return [str(t) for t in task] if isinstance(task, (list, tuple)) else [str(task or "PickCube-v1")]
    return [sim]


def evaluate_checkpoint(cfg, checkpoint: str, per_task: int, sampling: str, out_dir: Path | None,
                        videos: int, dist) -> Report | None:
    """Run the evaluation on every rank; rank 0 returns the report (others None)."""
    import torch

    from pirl.envs import make_env
    from pirl.envs.video import VideoRecorder
    from pirl.models import build_policy
    from pirl.models.contract import check_fits, read_checkpoint_meta
    from pirl.sft import env_state_dim

    split = cfg.env.eval
    names = eval_task_names(split)
    from omegaconf import OmegaConf

    envs_per_rank = int(split.total_num_envs) // dist.world_size
    plain = OmegaConf.to_container(split, resolve=True)
    assert isinstance(plain, dict)
    env_cfg = {str(k): v for k, v in plain.items()} | {"auto_reset": False, "group_size": 1}
    env = None
    state_dim = env_state_dim(cfg)
    if state_dim is None:  # only a built env tells (ManiSkill: by control and state mode)
        env = make_env(env_cfg, envs_per_rank, seed=int(split.seed), rank=dist.rank)
        state_dim = env.state_dim
    torch.manual_seed(int(cfg.runner.seed))
    policy = build_policy(cfg.actor.model, state_dim=state_dim, sampling=cfg.rollout.sampling_params)
    policy = policy.to(dist.device).eval()
    check_fits(checkpoint, cfg, state_dim, getattr(getattr(policy, "processor", None), "norm_stats", None))
    if env is None:
        env = make_env(env_cfg, envs_per_rank, seed=int(split.seed), rank=dist.rank)
    video = None
    if videos > 0 and dist.rank == 0 and out_dir is not None:
        video = VideoRecorder(str(out_dir / "videos"), rank=0, fps=split.video_cfg.fps, info_on_video=True,
                              max_envs=videos, name="eval")
    try:
        with torch.no_grad():
            local = run_episodes(policy, env, names, per_task, int(cfg.actor.model.num_action_chunks),
                                 int(split.seed), dist.rank, dist.world_size, sampling, video)
    finally:
        env.close()
    results = _gather(local)
    if dist.rank != 0:
        return None
    seeds = [r.seed for r in results]
    assert len(set(seeds)) == len(seeds), "eval episodes must not share reset seeds"
    meta = {"checkpoint": str(checkpoint), "sampling": sampling, "episodes_per_task": per_task,
            "ranks": dist.world_size, "envs_per_rank": envs_per_rank, "env": OmegaConf.to_container(split, resolve=True),
            "checkpoint_meta": read_checkpoint_meta(checkpoint), "videos": [str(p) for p in (video.paths if video else [])]}
    report = summarize(results, per_task, meta)
    if split.env_type == "calvin":  # CALVIN's chain metrics over the same episodes
        report.meta["calvin"] = calvin_summary(results, split.init_params.get("num_sequences", 1000))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
        (out_dir / "eval.md").write_text(markdown_table(report) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    import os

    from pirl.config import ConfigError, build_arg_parser, load_config

    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--compare"]:
        return _compare(argv[1:])
    ap = build_arg_parser(prog="python -m pirl.eval")
    ap.description = __doc__.split("\n\n")[0]
    ap.add_argument("--checkpoint", required=True, help="policy directory (pirl.sft output, or an RL run's policy/)")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task (all ranks together)")
    ap.add_argument("--sampling", choices=("ode", "sde"), default="ode",
                    help="ode: deterministic denoising; sde: stochastic, as the rollout samples")
    ap.add_argument("--out", default=None, help="folder for eval.json, eval.md and videos/")
    ap.add_argument("--videos", type=int, default=4, help="episodes (rank 0's first envs) recorded to video")
    # the DeepSpeed launcher passes --local_rank to every rank
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        if not Path(args.checkpoint).is_dir():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such folder")
        launched = int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else None
        cfg = load_config(args.config_name, args.config_path,
                          [*args.overrides, f"actor.model.model_path={Path(args.checkpoint).resolve()}"],
                          world_size=args.world_size or launched)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"pirl.eval: {e}", file=sys.stderr)
        return 2
    from pirl.engine.dist import init_distributed, shutdown
    from pirl.models.contract import PolicyMismatch

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    dist = init_distributed()
    try:
        report = evaluate_checkpoint(cfg, args.checkpoint, args.episodes, args.sampling,
                                     Path(args.out) if args.out else None, args.videos, dist)
    except (PolicyMismatch, ValueError) as e:
        print(f"pirl.eval: {e}", file=sys.stderr)
        shutdown()
        return 2
    if report is not None:
        print(markdown_table(report), flush=True)
        if args.out:
            print(f"wrote {Path(args.out) / 'eval.json'}, eval.md" + (", videos/" if report.meta["videos"] else ""))
    shutdown()
    return 0


def _compare(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pirl.eval --compare")
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    ap.add_argument("--labels", nargs=2, default=("SFT", "RL"))
    args = ap.parse_args(argv)
    try:
        before, after = (Report.from_json(json.loads(Path(p).read_text())) for p in (args.before, args.after))
        table = compare_table(before, after, tuple(args.labels))
    except (OSError, KeyError, ValueError) as e:
        print(f"pirl.eval --compare: {e}", file=sys.stderr)
        return 2
    print(table, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
