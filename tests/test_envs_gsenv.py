"""GSEnv for real on a synthetic asset folder: ManiSkill3 physics (SAPIEN CPU), splat
rendering with pirl's torch rasterizer, through pirl's env protocol and worker processes.

Independent references: SAPIEN's own link poses (forward kinematics of the capture
transforms), SAPIEN's camera matrices, SAPIEN's render of the meshes (splat silhouettes), a
scripted pick-and-place (success as the task defines it), and on a GPU gsplat against the
torch rasterizer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs import make_env

pytestmark = pytest.mark.sim

WIDTH = 64  # image width; the 4:3 camera renders 64x48


@pytest.fixture(scope="session")
def gs_assets(tmp_path_factory):
    from pirl.envs.gsenv.synthetic import write_synthetic_assets

    return write_synthetic_assets(tmp_path_factory.mktemp("gsenv_assets"), seed=0)


def _small_camera(width: int) -> dict:
    from pirl.envs.gsenv.camera import HEIGHT, INTRINSICS, WIDTH as FULL

    s = width / FULL
    return {"width": width, "height": round(HEIGHT * s), **{k: v * s for k, v in INTRINSICS.items()}}


def test_capture_kinematics_camera_and_silhouettes_match_sapien(gs_assets):
    import gymnasium as gym

    from pirl.envs.gsenv import task
    from pirl.envs.gsenv.camera import Camera
    from pirl.envs.gsenv.env import GSEnvCore
    from pirl.envs.gsenv.robot import link_poses

    torch.set_num_threads(1)
    cam = _small_camera(96)
    core = GSEnvCore(str(gs_assets), image_size=96, camera=cam)
    sapien_env = gym.make(task.TASK_ID, assets_path=str(gs_assets), camera=cam, obs_mode="rgb+segmentation",
                          sim_backend="cpu", render_mode=None)
    try:
        u = core.u
        # capture transforms: URDF forward kinematics == SAPIEN's links at the default configuration
        u.agent.robot.set_qpos(torch.tensor(u.assets.default_qpos)[None])
        fk = link_poses(u.assets.urdf, u.assets.default_qpos, core.links)
        torch.testing.assert_close(core.poses()[0, :len(core.links)].double(), fk, rtol=0, atol=2e-6)
        # camera: SAPIEN's OpenCV extrinsic and intrinsic of the task's sensor == pirl's
        params = sapien_env.unwrapped.get_sensor_params()[task.CAMERA_UID]
        ours = Camera.from_config(cam)
        torch.testing.assert_close(params["extrinsic_cv"][0].double(), ours.viewmat()[:3], rtol=0, atol=1e-6)
        torch.testing.assert_close(params["intrinsic_cv"][0].double(), ours.K, rtol=0, atol=1e-4)
        # the splats sit where SAPIEN draws the meshes, at reset and after random moves
        rng = np.random.default_rng(0)
        table_id = int(sapien_env.unwrapped.table.per_scene_id[0])
        for seed in (3, 4):
            core.env.reset(seed=seed)
            obs, _ = sapien_env.reset(seed=seed)
            for _ in range(3):
                a = rng.uniform(-1, 1, (1, 7)).astype(np.float32)
                a[:, :6] *= 0.5
                core.env.step(a)
                obs, *_ = sapien_env.step(a)
            seg = obs["sensor_data"][task.CAMERA_UID]["segmentation"][0, ..., 0]
            sapien_mask = (seg != 0) & (seg != table_id)  # robot, cube, plate
            _, alpha = core.renderer.foreground(core.poses())
            splat_mask = alpha[0, ..., 0] > 0.5
            iou = float((sapien_mask & splat_mask).sum()) / float((sapien_mask | splat_mask).sum())
            assert iou > 0.75, iou  # discs of std 4-8 mm widen the silhouettes by about a pixel
            cube_id = int(sapien_env.unwrapped.cube.per_scene_id[0])
            ys, xs = torch.nonzero(seg == cube_id, as_tuple=True)
            uv, _ = ours.project(sapien_env.unwrapped.cube.pose.p.double())
            # the cube's SAPIEN pixels centre near its projected centre (its top face shifts it a little)
            assert float((torch.stack([xs, ys], -1).double().mean(0) + 0.5 - uv[0]).norm()) < 2.0
            img = core.images()
            assert img.shape == (1, 72, 96, 3) and img.dtype == torch.uint8
    finally:
        core.close()
        sapien_env.close()


def _expert(state: np.ndarray, phase: list[int]) -> np.ndarray:
    """Scripted pick-and-place on ManiSkill's full state, which ends with the TCP, cube and
    plate poses (7 each: position, quaternion). The arm is not gravity compensated (balance_passive_force False),
    so the target moves by 0.7 x the remaining error of the real TCP: integral action."""
    tcp, cube, plate = state[-21:-18], state[-14:-11], state[-7:-4]
    goals = [cube + [0, 0, 0.08], cube, None, np.r_[cube[:2], 0.15], np.r_[plate[:2], 0.15],
             np.r_[plate[:2], plate[2] + 0.06], None]
    p, hold = phase
    goal = goals[min(p, 6)]
    grip = -1.0 if 2 <= p <= 5 else 1.0
    if goal is None:  # close (or open) the gripper in place
        phase[1] = hold + 1
        if hold >= 4:
            phase[:] = [p + 1, 0]
        goal = tcp
    elif np.linalg.norm(goal - tcp) < 0.012:
        phase[0] = p + 1
    return np.r_[np.clip(0.7 * (goal - tcp), -0.1, 0.1), 0.0, 0.0, 0.0, grip].astype(np.float32)


def _split(assets, **kw) -> EnvSplitConfig:
    extra = {"assets_path": str(assets), "sim_backend": "cpu", "render": kw.pop("render", True),
             "state_mode": kw.pop("state_mode", "joint")}
    return EnvSplitConfig(simulator_type="gsenv", task="PutCubeOnPlate-v0", image_size=WIDTH, extra=extra, **kw)


def test_protocol_images_determinism_and_a_scripted_success(gs_assets):
    env = make_env(_split(gs_assets, max_episode_steps=60, state_mode="full", num_workers=2), 2, seed=7)
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
        phase = [0, 0]
        still = np.r_[np.zeros(6), 1.0].astype(np.float32)
        for step in range(60):
            a = torch.from_numpy(np.stack([_expert(obs["states"][0].numpy(), phase), still]))[:, None]
            obs, rew, term, trunc, info = env.chunk_step(a)
            if bool(info["done"][0]):
                break
        assert bool(term[0, 0]) and bool(info["success"][0, 0]) and float(rew[0, 0]) == 1.0, step
        assert float(info["episode"]["success_once"][0]) == 1.0 and 20 <= step + 1 <= 45
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
        make_env(EnvSplitConfig(simulator_type="gsenv", task="PickCube-v1", extra={"assets_path": str(gs_assets)}),
                 1, seed=0)


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
