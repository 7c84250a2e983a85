"""ManiSkill3 for real (SAPIEN CPU backend, lavapipe Vulkan rendering): envs in worker
processes against a ManiSkill env stepped directly in this process, GRPO groups, seeded
determinism, a worker killed mid-rollout, and the clear error for absent task assets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs import make_env
from pirl.envs.maniskill import check_task_assets, make_gym_env

pytestmark = pytest.mark.sim

SIZE = 64
CHUNK = 3


@pytest.fixture(scope="module")
def pick_env():
    cfg = EnvSplitConfig(env_type="maniskill", max_episode_steps=50, num_workers=2,
                         init_params={"id": "PickCube-v1", "sim_backend": "cpu",
                                      "sensor_configs": {"width": SIZE, "height": SIZE}})
    env = make_env(cfg, 2, seed=13)
    yield env
    env.close()


def test_matches_maniskill_stepped_directly(pick_env):
    env = pick_env
    assert env.action_dim == 7 and env.state_dim == 9  # 7-D end-effector control; Panda qpos
    obs = env.reset(group_size=1)
    assert obs["main_images"].shape == (2, SIZE, SIZE, 3) and obs["main_images"].dtype == torch.uint8
    assert obs["states"].shape == (2, 9) and obs["states"].dtype == torch.float32
    assert obs["task_descriptions"][0] == "pick up the red cube and move it to the goal position"
    assert not torch.equal(obs["main_images"][0], obs["main_images"][1])  # seeds 13, 14 differ
    raw = make_gym_env("PickCube-v1", 1, SIZE, "pd_ee_delta_pose", "cpu", "base_camera")
    try:
        raw.reset(seed=14)  # env 1 of group_size 1 -> seed 13 + 1
        first = raw.unwrapped.get_obs()
        np.testing.assert_array_equal(first["sensor_data"]["base_camera"]["rgb"][0].numpy(), obs["main_images"][1].numpy())
        act = torch.rand(2, CHUNK, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1
        obs, rew, term, trunc, infos = env.chunk_step(act)
        for c in range(CHUNK):
            _, _, _, _, info = raw.step(act[1, c][None])
            assert bool(info["success"][0]) == bool(infos["success"][1, c])
        qpos = raw.unwrapped.agent.robot.get_qpos()[0].numpy()
        np.testing.assert_allclose(obs["states"][1].numpy(), qpos, atol=1e-6)
        rgb = raw.unwrapped.get_obs()["sensor_data"]["base_camera"]["rgb"][0].numpy()
        np.testing.assert_array_equal(obs["main_images"][1].numpy(), rgb)
        assert rew.shape == (2, CHUNK) and rew.dtype == torch.float32
    finally:
        raw.close()


def test_groups_determinism_and_worker_kill(pick_env):
    env = pick_env
    a = env.reset(seed=4, group_size=2)
    assert torch.equal(a["main_images"][0], a["main_images"][1]) and torch.equal(a["states"][0], a["states"][1])
    act = torch.rand(2, CHUNK, 7, generator=torch.Generator().manual_seed(2)) * 2 - 1
    o1 = env.chunk_step(act)[0]
    b = env.reset(seed=4, group_size=2)
    assert torch.equal(a["main_images"], b["main_images"])
    o2 = env.chunk_step(act)[0]
    assert torch.equal(o1["states"], o2["states"]) and torch.equal(o1["main_images"], o2["main_images"])
    # a worker dies mid-rollout: its env's episode is cut and marked invalid, the run goes on
    restarts = env.backend.restarts
    env.backend.kill_worker(0)
    obs, _, _, trunc, infos = env.chunk_step(act)
    np.testing.assert_array_equal(infos["valid"].numpy(), [False, True])
    assert env.backend.restarts == restarts + 1 and bool(trunc[0, -1]) and bool(infos["done"][0])
    obs, _, _, _, infos = env.chunk_step(act)
    assert infos["valid"].all() and obs["main_images"].shape == (2, SIZE, SIZE, 3)


def test_absent_assets_and_unknown_tasks_fail_clearly():
    with pytest.raises(FileNotFoundError, match=r"bridge_v2_real2sim.*download_asset"):
        check_task_assets("PutCarrotOnPlateInScene-v1")
    cfg = EnvSplitConfig(env_type="maniskill", max_episode_steps=8,
                         init_params={"id": "PutCarrotOnPlateInScene-v1", "sim_backend": "cpu"})
    with pytest.raises(FileNotFoundError, match="tasks/bridge_v2_real2sim_dataset"):
        make_env(cfg, 1, seed=0)
    with pytest.raises(ValueError, match="PutOnPlateInScene25Main-v3.*not registered"):
        check_task_assets("PutOnPlateInScene25Main-v3")
