"""MetaWorld for real (MuJoCo, EGL rendering): the pirl env against MetaWorld's own env
driven step by step with the same actions, GRPO groups, seeded determinism, auto-reset,
termination masks, worker processes and a decoded video."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from pirl.config.schema import EnvSplitConfig, VideoConfig  # noqa: E402
from pirl.envs import make_env  # noqa: E402
from pirl.envs.chunked import episode_seed  # noqa: E402
from pirl.envs.metaworld import resolve_tasks  # noqa: E402

pytestmark = pytest.mark.sim

SIZE = 64
CHUNK = 4


def mw_cfg(**kw) -> EnvSplitConfig:
    base = dict(env_type="metaworld", task_suite_name="reach-v3", max_episode_steps=80,
                init_params={"camera_heights": SIZE, "camera_widths": SIZE})
    base.update(kw)
    base["init_params"] = {"camera_heights": SIZE, "camera_widths": SIZE, **base["init_params"]}
    return EnvSplitConfig(**base)


def expert_chunk(states: torch.Tensor, task: str = "reach-v3") -> torch.Tensor:
    """(B, C, 4) actions of MetaWorld's scripted expert, held for the chunk."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()
    acts = np.stack([policy.get_action(s.numpy().astype(np.float64)) for s in states])
    return torch.from_numpy(acts).float()[:, None].expand(-1, CHUNK, -1).contiguous()


def raw_env(seed: int, task: str = "reach-v3"):
    """MetaWorld's env set up independently: configuration seed % 50 of MT1(task, seed=0)."""
    import metaworld

    bench = metaworld.MT1(task, seed=0)
    env = bench.train_classes[task]()
    env.max_path_length = 10_000
    env.set_task(bench.train_tasks[seed % len(bench.train_tasks)])
    obs, _ = env.reset()
    return env, obs


@pytest.fixture(scope="module")
def reach_env():
    env = make_env(mw_cfg(), 4, seed=21)
    yield env
    env.close()


def test_matches_metaworld_stepped_directly(reach_env):
    env = reach_env
    obs = env.reset(group_size=1)
    assert obs["states"].shape == (4, 39) and obs["states"].dtype == torch.float32
    assert obs["main_images"].shape == (4, SIZE, SIZE, 3) and obs["main_images"].dtype == torch.uint8
    assert obs["main_images"].float().std() > 5  # a rendered scene, not a blank frame
    assert obs["task_descriptions"] == ["reach a goal position"] * 4
    refs = [raw_env(21 + i) for i in range(4)]
    np.testing.assert_allclose(obs["states"].numpy(), np.stack([o for _, o in refs]), atol=1e-5)
    ended = np.zeros(4, bool)
    for _ in range(16):
        act = expert_chunk(obs["states"])
        obs, rew, term, trunc, infos = env.chunk_step(act)
        for i, (raw, _) in enumerate(refs):
            if ended[i]:
                continue
            for c in range(CHUNK):
                o, _, _, _, info = raw.step(act[i, c].numpy().astype(np.float64))
                assert rew[i, c].item() == float(info["success"])
                assert term[i, c].item() == bool(info["success"])
                if info["success"]:
                    assert term[i, c:].all() and rew[i, c + 1:].eq(0).all()
                    break
            if infos["done"][i]:
                ended[i] = True
                np.testing.assert_allclose(infos["final_obs"]["states"][i].numpy(), o, atol=1e-5)
                assert infos["episode"]["success_once"][i].item() == 1.0
    assert ended.all(), "the scripted expert reaches the goal within 64 steps"
    for raw, _ in refs:
        raw.close()


def test_groups_determinism_and_auto_reset(reach_env):
    env = reach_env
    a = env.reset(seed=7, group_size=2)
    s = a["states"]
    assert torch.equal(s[0], s[1]) and torch.equal(s[2], s[3]) and not torch.equal(s[0], s[2])
    assert torch.equal(a["main_images"][0], a["main_images"][1])
    obs = a
    for _ in range(16):
        obs, _, _, _, infos = env.chunk_step(expert_chunk(obs["states"]))
        if infos["done"].any():
            break
    i = int(torch.nonzero(infos["done"])[0])
    # after auto-reset the env starts the episode whose seed is episode_seed(base, env, 1)
    _, fresh = raw_env(episode_seed(7, i, 1))
    np.testing.assert_allclose(obs["states"][i].numpy(), fresh, atol=1e-5)
    b = env.reset(seed=7, group_size=2)
    assert torch.equal(a["states"], b["states"]) and torch.equal(a["main_images"], b["main_images"])


def test_no_auto_reset_keeps_done_and_truncates():
    env = make_env(mw_cfg(max_episode_steps=6, auto_reset=False, init_params={"render": False}), 2, seed=3)
    try:
        obs = env.reset()
        assert "main_images" not in obs  # state-only mode
        zeros = torch.zeros(2, CHUNK, 4)
        _, _, term, trunc, infos = env.chunk_step(zeros)
        assert not infos["done"].any()
        _, rew, term, trunc, infos = env.chunk_step(zeros)
        # 6 steps: truncated at the 2nd step of the 2nd chunk, flags stay set after it
        np.testing.assert_array_equal(trunc.numpy(), [[False, True, True, True]] * 2)
        assert infos["done"].all() and not term.any() and infos["episode"]["episode_len"].eq(6).all()
        _, rew, term, trunc, infos = env.chunk_step(zeros)
        assert trunc.all() and not infos["done"].any() and rew.eq(0).all()
    finally:
        env.close()


def test_workers_match_local_and_multitask_groups(tmp_path):
    video = VideoConfig(save_video=True, video_base_dir=str(tmp_path / "video"))
    cfg = mw_cfg(task_suite_name="metaworld_45_ood", num_workers=2, group_size=2, video_cfg=video)
    env = make_env(cfg, 4, seed=5, rank=3)
    local = make_env(mw_cfg(task_suite_name="ML45:test", group_size=2), 4, seed=5, record=False)
    try:
        assert env.task_names == ["bin-picking-v3", "bin-picking-v3", "box-close-v3", "box-close-v3"]
        o1, o2 = env.reset(group_size=2), local.reset(group_size=2)
        assert torch.equal(o1["states"], o2["states"]) and torch.equal(o1["main_images"], o2["main_images"])
        act = torch.rand(4, CHUNK, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
        for _ in range(2):
            r1, r2 = env.chunk_step(act), local.chunk_step(act)
            assert torch.equal(r1[0]["states"], r2[0]["states"]) and torch.equal(r1[1], r2[1])
    finally:
        env.close()
        local.close()
    import imageio.v2 as imageio

    path = tmp_path / "video" / "rank_3" / "rollout_0000.mp4"
    frames = imageio.mimread(path)
    assert len(frames) == 3  # reset + 2 chunk steps
    from pirl.envs.video import MIN_TEXT_SIDE

    side = SIZE * -(-MIN_TEXT_SIDE // SIZE)  # small renders are enlarged for the drawn text
    assert frames[0].shape == (2 * side, 2 * side, 3)  # 4 envs tiled 2 x 2
    assert np.asarray(frames[-1]).std() > 5


def test_task_specs():
    assert resolve_tasks("MT10")[1][:2] == ["reach-v3", "push-v3"] and len(resolve_tasks("MT50")[1]) == 50
    assert len(resolve_tasks("ML45")[1]) == 45
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        resolve_tasks("reach-v9")
    with pytest.raises(ValueError, match="metaworld takes no camera"):
        make_env(mw_cfg(init_params={"camera": "x"}), 1, seed=0)
