"""LIBERO for real (robosuite + MuJoCo, EGL): config written without a prompt, assets found
(or a clear error), both cameras and the 8-D state, fixed init states per seed, a few chunk
steps, and the fast-render settings leaving physics equal and images nearly so."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")

from pirl.config.schema import EnvSplitConfig  # noqa: E402
from pirl.envs import make_env  # noqa: E402
from pirl.envs.libero import (  # noqa: E402
    LiberoEnv,
    ensure_libero_config,
    find_libero_assets,
    quat_to_axis_angle,
    resolve_tasks,
)

pytestmark = pytest.mark.sim

SIZE = 64
CHUNK = 2


def test_config_assets_and_task_specs(tmp_path):
    cfg = ensure_libero_config(str(tmp_path / "cfg"))
    paths = yaml.safe_load(cfg.read_text())
    assert set(paths) == {"benchmark_root", "bddl_files", "init_states", "datasets", "assets"}
    assert os.path.isdir(paths["bddl_files"]) and os.path.isdir(paths["init_states"])
    assert (find_libero_assets() / "scenes").is_dir()
    with pytest.raises(FileNotFoundError, match=r"env.\*.init_params.assets_path: /nonexistent"):
        find_libero_assets("/nonexistent")
    assert resolve_tasks("libero_goal:3") == ("libero_goal", [3])
    assert resolve_tasks("libero_90")[1] == list(range(90))
    with pytest.raises(ValueError, match="unknown LIBERO suite"):
        resolve_tasks("libero_100")


def test_axis_angle_matches_rotation_vector():
    rng = np.random.default_rng(0)
    for _ in range(5):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0.1, 3.0)
        quat = np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])  # (x, y, z, w)
        np.testing.assert_allclose(quat_to_axis_angle(quat), axis * angle, atol=1e-9)


@pytest.fixture(scope="module")
def spatial_env():
    cfg = EnvSplitConfig(env_type="libero", task_suite_name="libero_spatial:0", max_episode_steps=6,
                         init_params={"camera_heights": SIZE, "camera_widths": SIZE, "settle_steps": 2})
    env = make_env(cfg, 2, seed=3)
    yield env
    env.close()


def test_cameras_state_init_states_and_chunks(spatial_env):
    env = spatial_env
    assert env.action_dim == 7 and env.state_dim == 8
    a = env.reset(seed=3, group_size=2)
    assert a["main_images"].shape == (2, SIZE, SIZE, 3) and a["wrist_images"].shape == (2, SIZE, SIZE, 3)
    assert a["main_images"].dtype == torch.uint8 and a["states"].shape == (2, 8)
    assert a["task_descriptions"][0].startswith("pick up the black bowl between the plate and the ramekin")
    # a GRPO group shares its initial state, images included
    assert torch.equal(a["states"][0], a["states"][1]) and torch.equal(a["main_images"][0], a["main_images"][1])
    assert not torch.equal(a["main_images"][0], a["wrist_images"][0])
    act = (torch.rand(2, CHUNK, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.5
    o1, rew, term, trunc, infos = env.chunk_step(act)
    assert rew.shape == (2, CHUNK) and not infos["done"].any()
    assert not torch.equal(o1["states"], a["states"])  # the arm moved
    # seeded: the same seed restores the same init state and the same chunk result
    b = env.reset(seed=3, group_size=2)
    assert torch.equal(a["states"], b["states"]) and torch.equal(a["main_images"], b["main_images"])
    o2 = env.chunk_step(act)[0]
    assert torch.equal(o1["states"], o2["states"]) and torch.equal(o1["wrist_images"], o2["wrist_images"])
    # 6 steps per episode, chunks of 2: the 3rd chunk truncates and auto-resets to a new init state
    env.chunk_step(act)
    obs, _, _, trunc, infos = env.chunk_step(act)
    assert infos["done"].all() and trunc[:, -1].all() and infos["episode"]["episode_len"].eq(6).all()


def test_fast_render_keeps_physics_and_view():
    """Multisampling off changes only edge pixels slightly; states are identical."""
    fast = LiberoEnv("libero_spatial", 0, image_size=SIZE, settle_steps=2, fast_render=True)
    fast.reset(5)
    f = fast.observe()
    fast.close()
    plain = LiberoEnv("libero_spatial", 0, image_size=SIZE, settle_steps=2, fast_render=False)
    plain.reset(5)
    p = plain.observe()
    plain.close()
    np.testing.assert_array_equal(f["state"], p["state"])
    for key in ("main_image", "wrist_image"):
        a, b = f[key].astype(np.float64), p[key].astype(np.float64)
        assert np.median(np.abs(a - b)) == 0  # most pixels are bit-identical
        # the differences are edge aliasing: they average out over 3x3 neighbourhoods
        blurred = np.abs(box3(a) - box3(b)).mean()
        assert blurred < 3.0, f"{key}: mean abs diff of 3x3-blurred images {blurred:.2f}"


def box3(img: np.ndarray) -> np.ndarray:
    """3x3 box filter (H, W, 3), edges replicated."""
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
