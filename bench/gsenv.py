"""GSEnv (PutCubeOnPlate-v0, Gaussian-splat rendering): speed and fidelity.

    python bench/gsenv.py                          # synthetic assets, every CPU measurement
    python bench/gsenv.py --assets DIR --widths 160 640 --seeds 16
    python bench/gsenv.py --only gsplat            # on a CUDA machine with the gs extra

Measured, each printed as a markdown table:
  physics   env steps/s of the CPU sim (500 Hz physics, 10 Hz control), no rendering
  render    ms per frame of pirl's torch rasterizer at each image width (table cached), with
            the foreground splats in view and the (pixel, splat) pairs composited
  protocol  env steps/s through make_env (worker processes), chunks of 5, one render per chunk
  iou       splat silhouettes vs SAPIEN's render of the meshes (segmentation of robot, cube
            and plate), at reset and after random moves: the camera, link and object
            transforms checked against SAPIEN's own renderer
  expert    the scripted pick-and-place (pirl.envs.gsenv.expert): success rate and steps
  gsplat    CUDA only: gsplat ms per frame at 640x480 for B envs in one call, and its
            difference from the torch rasterizer
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def physics(assets: str, steps: int) -> list[str]:
    from pirl.envs.gsenv.env import GSEnvCore

    core = GSEnvCore(assets, render=False)
    try:
        core.env.reset(seed=0)
        rng = np.random.default_rng(0)
        acts = rng.uniform(-1, 1, (steps, 1, 7)).astype(np.float32) * np.r_[[0.3] * 6, 1.0]
        start = time.perf_counter()
        for a in acts:
            core.env.step(a)
        rate = steps / (time.perf_counter() - start)
    finally:
        core.close()
    return ["| sim | env steps/s |", "|---|---|", f"| CPU, 1 env, 50 substeps per step | {rate:.1f} |"]


def render(assets: str, widths: list[int], repeats: int) -> list[str]:
    from pirl.envs.gsenv.env import GSEnvCore
    from pirl.envs.gsenv.rasterize import box_pixels, project

    rows = ["| width x height | foreground splats in view | pairs | ms / frame (median) |", "|---|---|---|---|"]
    for width in widths:
        core = GSEnvCore(assets, image_size=width, render_backend="torch")
        try:
            core.env.reset(seed=0)
            r = core.renderer
            poses = core.poses()
            r.render(poses)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                r.render(poses)
                times.append(time.perf_counter() - start)
            means, covs, _ = r._placed(poses)
            proj = project(means[0], covs[0], r.splats.opacities, r._viewmat, r._K, r.camera.width, r.camera.height)
            pairs = box_pixels(proj, r.camera.width, r.camera.height)[0].numel()
            visible = int((proj.radii > 0).all(-1).sum())
            rows.append(f"| {r.camera.width} x {r.camera.height} | {visible} of {len(r.splats.means)} | {pairs} "
                        f"| {1e3 * statistics.median(times):.1f} |")
        finally:
            core.close()
    return rows


def protocol(assets: str, width: int, workers: int, chunks: int) -> list[str]:
    from pirl.config.schema import EnvSplitConfig
    from pirl.envs import make_env

    rows = ["| workers | width | env steps/s (chunk 5, rendered once per chunk) |", "|---|---|---|"]
    for n in sorted({1, workers}):
        cfg = EnvSplitConfig(env_type="gsenv", max_episode_steps=10_000, num_workers=n,
                             init_params={"id": "PutCubeOnPlate-v0", "camera_widths": width, "assets_path": assets,
                                          "sim_backend": "cpu"})
        env = make_env(cfg, n, seed=0)
        try:
            env.reset()
            gen = torch.Generator().manual_seed(0)
            scale = torch.tensor([0.3] * 6 + [1.0])
            acts = [(torch.rand(n, 5, 7, generator=gen) * 2 - 1) * scale for _ in range(chunks + 1)]
            env.chunk_step(acts[0])
            start = time.perf_counter()
            for a in acts[1:]:
                env.chunk_step(a)
            rate = n * 5 * chunks / (time.perf_counter() - start)
        finally:
            env.close()
        rows.append(f"| {n} | {width} | {rate:.1f} |")
    return rows


def iou(assets: str, width: int, seeds: int) -> list[str]:
    from pirl.envs.gsenv import task
    from pirl.envs.gsenv.camera import HEIGHT, INTRINSICS, WIDTH
    from pirl.envs.gsenv.env import GSEnvCore

    s = width / WIDTH
    cam = {"width": width, "height": round(HEIGHT * s), **{k: v * s for k, v in INTRINSICS.items()}}
    core = GSEnvCore(assets, image_size=width, camera=cam, obs_mode="segmentation", render_backend="torch")
    values = []
    try:
        u = core.u
        table = int(u.table.per_scene_id[0])
        rng = np.random.default_rng(0)
        for seed in range(seeds):
            obs, _ = core.env.reset(seed=seed)
            for step in range(4):
                if step:
                    a = rng.uniform(-1, 1, (1, 7)).astype(np.float32) * np.r_[[0.5] * 6, 1.0]
                    obs, *_ = core.env.step(a)
                seg = obs["sensor_data"][task.CAMERA_UID]["segmentation"][0, ..., 0]
                sapien_mask = (seg != 0) & (seg != table)
                splat_mask = core.renderer.foreground(core.poses())[1][0, ..., 0] > 0.5
                values.append(float((sapien_mask & splat_mask).sum()) / float((sapien_mask | splat_mask).sum()))
    finally:
        core.close()
    return ["| width | frames | IoU mean | IoU min |", "|---|---|---|---|",
            f"| {width} | {len(values)} | {statistics.mean(values):.3f} | {min(values):.3f} |"]


def expert(assets: str, seeds: int) -> list[str]:
    from pirl.envs.gsenv.env import GSEnvCore
    from pirl.envs.gsenv.expert import PickPlaceExpert

    core = GSEnvCore(assets, render=False, state_mode="full")
    steps_to_success = []
    try:
        for seed in range(seeds):
            core.env.reset(seed=seed)
            policy = PickPlaceExpert()
            for step in range(1, 101):
                _, _, _, _, info = core.env.step(policy(core.states()[0].numpy())[None])
                if bool(info["success"][0]):
                    steps_to_success.append(step)
                    break
    finally:
        core.close()
    median = statistics.median(steps_to_success) if steps_to_success else float("nan")
    return ["| episodes | success | median steps to success |", "|---|---|---|",
            f"| {seeds} | {len(steps_to_success) / seeds:.3f} | {median} |"]


def gsplat(assets: str, batches: list[int], repeats: int) -> list[str]:
    if not torch.cuda.is_available():
        return ["gsplat: no CUDA device here; run `python bench/gsenv.py --only gsplat` on a GPU machine"]
    from pirl.envs.gsenv.env import GSEnvCore
    from pirl.envs.gsenv.rasterize import GsplatRasterizer, TorchRasterizer

    core = GSEnvCore(assets, image_size=640, render_backend="torch")
    rows = ["| B (envs per call) | gsplat ms / call | ms / frame |", "|---|---|---|"]
    try:
        core.env.reset(seed=0)
        r = core.renderer
        means, covs, colors = r._placed(core.poses())
        args = (r._viewmat, r._K, r.camera.width, r.camera.height)
        dev = torch.device("cuda")
        gs = GsplatRasterizer()
        ref, ref_a = TorchRasterizer()(means, covs, colors, r.splats.opacities, *args)
        out, out_a = gs(means.to(dev), covs.to(dev), colors.to(dev), r.splats.opacities.to(dev),
                        args[0].to(dev), args[1].to(dev), *args[2:])
        diff = (out.cpu() - ref).abs()
        for b in batches:
            m, c, col = (t.to(dev).expand(b, *t.shape[1:]).contiguous() for t in (means, covs, colors))
            call = (m, c, col, r.splats.opacities.to(dev), args[0].to(dev), args[1].to(dev), r.camera.width,
                    r.camera.height)
            gs(*call)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                gs(*call)
            torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - start) / repeats
            rows.append(f"| {b} | {ms:.2f} | {ms / b:.3f} |")
    finally:
        core.close()
    rows.append(f"\ngsplat vs torch at 640x480: mean |Δrgb| {float(diff.mean()):.2e}, max {float(diff.max()):.2e}, "
                f"|Δalpha| mean {float((out_a.cpu() - ref_a).abs().mean()):.2e}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", help="asset folder (default: a synthetic one, written to a temp dir)")
    p.add_argument("--only", nargs="+", default=["physics", "render", "protocol", "iou", "expert", "gsplat"])
    p.add_argument("--widths", nargs="+", type=int, default=[64, 160, 320, 640])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        assets = args.assets
        if assets is None:
            from pirl.envs.gsenv.synthetic import write_synthetic_assets

            assets = str(write_synthetic_assets(Path(tmp) / "assets"))
        run = {
            "physics": lambda: physics(assets, 200),
            "render": lambda: render(assets, args.widths, args.repeats),
            "protocol": lambda: protocol(assets, 160, args.workers, 8),
            "iou": lambda: iou(assets, 160, args.seeds),
            "expert": lambda: expert(assets, args.seeds),
            "gsplat": lambda: gsplat(assets, [1, 16, 64], args.repeats),
        }
        for name in args.only:
            print(f"\n### {name}\n")
            print("\n".join(run[name]()), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
