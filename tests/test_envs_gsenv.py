"""GSEnv for real on a synthetic asset folder: ManiSkill3 physics (SAPIEN CPU), splat
rendering with pirl's torch rasterizer, through pirl's env protocol and worker processes.

Independent references: SAPIEN's own link poses (forward kinematics of the capture
transforms), SAPIEN's camera matrices, SAPIEN's render of the meshes (splat silhouettes), a
scripted pick-and-place (success as the task defines it), and on a GPU gsplat against the
torch rasterizer."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs import make_env
from pirl.envs.gsenv.expert import PickPlaceExpert

pytestmark = pytest.mark.sim

WIDTH = 64  # image width; the 4:3 camera renders 64x48
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gs_assets(tmp_path_factory):
    from pirl.envs.gsenv.synthetic import write_synthetic_assets

    return write_synthetic_assets(tmp_path_factory.mktemp("gsenv_assets"), seed=0)


def _small_camera(width: int) -> dict:
    from pirl.envs.gsenv.camera import HEIGHT, INTRINSICS, WIDTH as FULL

    s = width / FULL
    return {"width": width, "height": round(HEIGHT * s), **{k: v * s for k, v in INTRINSICS.items()}}


def test_capture_kinematics_and_camera_match_sapien(gs_assets):
    from pirl.envs.gsenv import task
    from pirl.envs.gsenv.camera import Camera
    from pirl.envs.gsenv.env import GSEnvCore
    from pirl.envs.gsenv.robot import link_poses

    torch.set_num_threads(1)
    cam = _small_camera(96)
    core = GSEnvCore(str(gs_assets), image_size=96, camera=cam)
    try:
        u = core.u
        # capture transforms: URDF forward kinematics == SAPIEN's links at the default configuration
        u.agent.robot.set_qpos(torch.tensor(u.assets.default_qpos)[None])
        fk = link_poses(u.assets.urdf, u.assets.default_qpos, core.links)
        torch.testing.assert_close(core.poses()[0, :len(core.links)].double(), fk, rtol=0, atol=2e-6)
        # camera: SAPIEN's OpenCV extrinsic and intrinsic of the task's sensor == pirl's
        params = u.get_sensor_params()[task.CAMERA_UID]
        ours = Camera.from_config(cam)
        torch.testing.assert_close(params["extrinsic_cv"][0].double(), ours.viewmat()[:3], rtol=0, atol=1e-6)
        torch.testing.assert_close(params["intrinsic_cv"][0].double(), ours.K, rtol=0, atol=1e-4)
        # objects rest on the table (their mesh's lowest point at z = 0), apart, not yet a success
        core.env.reset(seed=5)
        cube, plate = u.cube.pose.p[0], u.plate.pose.p[0]
        assert abs(float(cube[2]) - 0.02) < 1e-3 and abs(float(plate[2]) - 0.006) < 1e-3
        assert float((cube[:2] - plate[:2]).norm()) > 0.1 and not bool(u.evaluate()["success"][0])
        img = core.images()
        assert img.shape == (1, 72, 96, 3) and img.dtype == torch.uint8
        # a second env in the same process (num_workers 0) leaves the first one's results exact
        acts = np.random.default_rng(1).uniform(-1, 1, (5, 1, 7)).astype(np.float32)
        alone = _rollout(core, 9, acts)
        other = GSEnvCore(str(gs_assets), image_size=96, camera=cam)
        try:
            other.env.reset(seed=10)
            core.env.reset(seed=9)
            for a in acts:
                other.env.step(-a)
                core.env.step(a)
            torch.testing.assert_close(core.states(), alone[0], rtol=0, atol=0)
            assert torch.equal(core.images(), alone[1])
        finally:
            other.close()
        # SAPIEN's mesh render against the splats (silhouette IoU): bench/gsenv.py, recorded in
        # docs/benchmarks.md; SAPIEN's first render on lavapipe costs 10-30 s, too much for a test.
    finally:
        core.close()


def _rollout(core, seed: int, acts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    core.env.reset(seed=seed)
    for a in acts:
        core.env.step(a)
    return core.states(), core.images()


def _split(assets, **kw) -> EnvSplitConfig:
    params = {"id": "PutCubeOnPlate-v0", "assets_path": str(assets), "sim_backend": "cpu", "camera_widths": WIDTH,
              "render": kw.pop("render", True), "state_mode": kw.pop("state_mode", "joint")}
    return EnvSplitConfig(env_type="gsenv", init_params=params, **kw)


def test_protocol_images_determinism_and_a_scripted_success(gs_assets):
    env = make_env(_split(gs_assets, max_episode_steps=60, state_mode="full", num_workers=1), 2, seed=7)
    try:
        # qpos, qvel, the EE controller's target pose, then the TCP, cube and plate poses
        assert env.action_dim == 7 and env.state_dim == 9 + 9 + 7 + 3 * 7
        obs = env.reset(group_size=1)
        assert obs["main_images"].shape == (2, 48, WIDTH, 3) and obs["main_images"].dtype == torch.uint8
        assert obs["task_descriptions"] == ["pick up the cube and put it on the plate"] * 2
        assert not torch.equal(obs["states"][0], obs["states"][1])  # seeds 7 and 8 differ
        again = env.reset(seed=7, group_size=2)  # one GRPO group: both envs start from seed 7
        torch.testing.assert_close(again["states"][0], again["states"][1], rtol=0, atol=0)
        assert torch.equal(again["main_images"][0], again["main_images"][1])
        torch.testing.assert_close(again["states"][0], obs["states"][0], rtol=0, atol=0)
        assert torch.equal(again["main_images"][0], obs["main_images"][0])
        # the scripted expert in env 0 (env 1 holds still): success ends env 0's episode
        expert = PickPlaceExpert()
        still = np.r_[np.zeros(6), 1.0].astype(np.float32)
        steps = 0
        while steps < 60:
            a = torch.from_numpy(np.stack([expert(obs["states"][0].numpy()), still]))[:, None]
            obs, rew, term, trunc, info = env.chunk_step(a)
            steps += 1
            if bool(info["done"][0]):
                break
        assert bool(term[0, 0]) and bool(info["success"][0, 0]) and float(rew[0, 0]) == 1.0, steps
        assert float(info["episode"]["success_once"][0]) == 1.0 and 20 <= steps <= 45
        assert not bool(info["success"][1, 0]) and float(rew[1].sum()) == 0.0
        cube, plate = info["final_obs"]["states"][0, -14:-11], info["final_obs"]["states"][0, -7:-4]
        assert float((cube[:2] - plate[:2]).norm()) < 0.07 and 0.0 <= float(cube[2] - plate[2]) <= 0.07
    finally:
        env.close()


def test_missing_asset_file_is_named_before_any_worker_starts(gs_assets, tmp_path):
    import shutil

    broken = tmp_path / "assets"
    shutil.copytree(gs_assets, broken)
    (broken / "object" / "plate" / "object_3dgs_abs.ply").unlink()
    with pytest.raises(FileNotFoundError, match=r"assets_path: .*plate splats .*object_3dgs_abs\.ply does not exist"):
        make_env(_split(broken, max_episode_steps=10), 1, seed=0)
    with pytest.raises(ValueError, match="GSEnv has the task PutCubeOnPlate-v0"):
        make_env(EnvSplitConfig(env_type="gsenv", init_params={"id": "PickCube-v1", "assets_path": str(gs_assets)}),
                 1, seed=0)


# The seeds' experiment on a CPU: tiny π0.5 (random weights) instead of the SFT checkpoint,
# the synthetic assets, CPU sim, one train env of 2 chunk steps (a batch of 2), one eval env,
# 64x48 images.
CPU_RUN = ("model@actor.model=pi05_tiny", "actor.model.model_path=null", "actor.model.openpi.config_name=pi05_tiny",
           "actor.model.openpi.action_dim=16", "actor.model.openpi.max_token_len=48", "actor.model.precision=fp32",
           "actor.model.action_dim=7", "actor.ds_config=ds_configs/zero2.json",
           "env.train.init_params.sim_backend=cpu", f"env.train.init_params.camera_widths={WIDTH}",
           "env.train.total_num_envs=1", "env.eval.total_num_envs=1", "env.train.max_episode_steps=10",
           "env.eval.max_episode_steps=10", "env.train.rollout_epoch=1", "algorithm.update_epoch=1",
           "actor.micro_batch_size=2",
           "actor.global_batch_size=2", "runner.max_epochs=1", "runner.val_check_interval=0", "runner.save_interval=0",
           "runner.eval_before_train=False", "cluster.num_gpus_per_node=1")


@pytest.mark.dist
def test_gsenv_ppo_openpi_pi05_runs_an_iteration_on_cpu(gs_assets, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "train.py", "--config-name", "gsenv_ppo_openpi_pi05", *CPU_RUN,
                           f"env.train.init_params.assets_path={gs_assets}", f"runner.logger.log_path={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = out.split("iter 1 |", 1)[1].splitlines()[0]
    for key in ("loss", "value_loss", "grad_norm"):
        value = re.search(rf"\b{key}=([-0-9.e+nainf]+)", line)
        assert value and math.isfinite(float(value.group(1))), line
    assert re.search(r"env/success_once=[0-9.]+", line) and "success after:" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat runs on CUDA only: no GPU here (CUDA unavailable)")
def test_gsplat_matches_torch_rasterizer_on_gpu(gs_assets):
    from pirl.envs.gsenv.rasterize import GsplatRasterizer, TorchRasterizer
    from pirl.envs.gsenv.env import GSEnvCore

    core = GSEnvCore(str(gs_assets), image_size=160, render_backend="torch")
    try:
        core.env.reset(seed=0)
        r = core.renderer
        means, covs, colors = r._placed(core.poses())
        args = (r._viewmat, r._K, r.camera.width, r.camera.height)
        ref_rgb, ref_a = TorchRasterizer()(means, covs, colors, r.splats.opacities, *args)
        dev = torch.device("cuda")
        rgb, a = GsplatRasterizer()(means.to(dev), covs.to(dev), colors.to(dev), r.splats.opacities.to(dev),
                                    *(x.to(dev) for x in args[:2]), *args[2:])
        assert float(ref_a.mean()) > 0.05
        # float32 sums in another order; pixels right at the T = 1e-4 stop may differ by one splat
        assert float((rgb.cpu() - ref_rgb).abs().mean()) < 1e-4
        assert float(((rgb.cpu() - ref_rgb).abs() > 1e-2).float().mean()) < 1e-3
        torch.testing.assert_close(a.cpu().mean(), ref_a.mean(), rtol=1e-4, atol=0)
    finally:
        core.close()
