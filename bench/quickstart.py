"""The MetaWorld main job (`make train`) for several seeds: a tiny π0 from random weights,
SFT on a few scripted MetaWorld episodes with camera images, flow-SDE PPO on 2 ranks
through the DeepSpeed launcher under ZeRO-3, eval before and after (python -m pirl.eval).

    python bench/quickstart.py                               # seeds 0 1 2
    python bench/quickstart.py --seeds 0 --write docs/benchmarks.md
    python bench/quickstart.py --from-runs results/quickstart_bench --write docs/benchmarks.md

Each seed is one `make train RUN=<root>/seed<s> SEED=<s>` (the README's command), timed
whole (install excluded: run `make install metaworld` first). The section
"## Quickstart: MetaWorld" of --write gets the per-seed and per-task table and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION = "## Quickstart: MetaWorld"
CONFIG = "metaworld_quickstart_ppo_openpi"


def loadavg() -> str:
    return " / ".join(open("/proc/loadavg").read().split()[:3])


def run_seed(root: Path, seed: int, extra: list[str], timeout_s: float) -> float:
    """One `make train` for `seed`, its output in <run>/make_train.log. In its own session:
    on timeout the whole job (make, the launcher, its ranks) is killed, not make alone, which
    would leave the ranks running, and a file instead of a pipe keeps the log of a cut run."""
    run = root / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    t0 = time.perf_counter()
    with open(run / "make_train.log", "w") as log:
        proc = subprocess.Popen(["make", "train", f"RUN={run}", f"SEED={seed}", *extra], cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"make train (seed {seed}) ran past {timeout_s:.0f} s: {run / 'make_train.log'}") from None
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"make train (seed {seed}) exited {rc}: {run / 'make_train.log'}")
    (run / "wall_s.txt").write_text(f"{wall:.1f}\n")
    # timings on the shared machine mean little without the load they were taken at
    (run / "load.txt").write_text(f"{load_before} -> {loadavg()}\n")
    return wall


def load(root: Path, seed: int):
    from pirl.eval import Report

    run = root / f"seed{seed}"
    before = Report.from_json(json.loads((run / "eval_sft" / "eval.json").read_text()))
    after = Report.from_json(json.loads((run / "eval_rl" / "eval.json").read_text()))
    wall = float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").is_file() else float("nan")
    load_txt = (run / "load.txt").read_text().strip() if (run / "load.txt").is_file() else "-"
    return before, after, wall, load_txt


def markdown(root: Path, seeds: list[int], command: str, load_avg: str) -> str:
    from pirl.eval import _pct

    rows = {s: load(root, s) for s in seeds}
    first = rows[seeds[0]][0]
    tasks = sorted(first.tasks)
    lines = [SECTION, "",
             f"`{command}` (each seed is `make train SEED=s`: `python -m pirl.sft` -> `python -m pirl.eval` -> "
             f"`launcher/run.sh {CONFIG}` (2 ranks, ZeRO-3) -> `python -m pirl.eval`), on the 2-core CPU machine "
             f"shared with other jobs (load average at the end: {load_avg}; per seed in the last column). "
             f"{first.overall.episodes // max(1, len(tasks))} eval episodes per task, deterministic (ODE) sampling, "
             "every episode from its own initial state; success % with Wilson 95% intervals.", "",
             "| seed | SFT overall % | SFT 95% CI | RL overall % | RL 95% CI | change (points) | "
             + " | ".join(f"{t} SFT -> RL" for t in tasks) + " | make train s | load before -> after |",
             "|---|---|---|---|---|---|" + "---|" * len(tasks) + "---|---|"]
    gains = []
    for s in seeds:
        b, a, wall, load_txt = rows[s]
        gains.append(100 * (a.overall.success_rate - b.overall.success_rate))
        per_task = " | ".join(f"{_pct(b.tasks[t].success_rate)} -> {_pct(a.tasks[t].success_rate)}" for t in tasks)
        lines.append(f"| {s} | {_pct(b.overall.success_rate)} | [{_pct(b.overall.ci95[0])}, {_pct(b.overall.ci95[1])}] | "
                     f"{_pct(a.overall.success_rate)} | [{_pct(a.overall.ci95[0])}, {_pct(a.overall.ci95[1])}] | "
                     f"{gains[-1]:+.1f} | {per_task} | {wall:.0f} | {load_txt} |")
    mean = sum(gains) / len(gains)
    lines += ["", f"Mean change over {len(seeds)} seeds: {mean:+.1f} points (min {min(gains):+.1f}, "
              f"max {max(gains):+.1f}); target >= +20 on every seed and within 20 minutes.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.learning import replace_section

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=ROOT / "results" / "quickstart_bench")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one seed's make train may take")
    ap.add_argument("--from-runs", type=Path, default=None, help="tabulate finished runs under this root, run nothing")
    ap.add_argument("--write", type=Path, default=None, help="markdown file whose Quickstart section to replace")
    ap.add_argument("make_args", nargs="*", help="extra make variables, e.g. ARGS=runner.max_epochs=10")
    args = ap.parse_args(argv)
    root = args.from_runs or args.root
    if args.from_runs is None:
        for s in args.seeds:
            wall = run_seed(root, s, args.make_args, args.timeout)
            b, a, _, _ = load(root, s)
            print(f"seed {s}: {100 * b.overall.success_rate:.1f}% -> {100 * a.overall.success_rate:.1f}% "
                  f"({wall:.0f} s)", flush=True)
    load_avg = loadavg()
    command = "python bench/quickstart.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(root, args.seeds, command.strip(), load_avg)
    print(table)
    if args.write:
        replace_section(args.write, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
