"""Demonstration sources for `python -m pirl.sft`: LeRobotDataset v2.1 / v3.0 (parquet +
mp4) and LIBERO HDF5 files the tests write themselves with pyarrow, PyAV and h5py, read
back by pirl.demos and compared value by value; chunking; and SFT through the DeepSpeed
actor engine on each file source (norm stats in the checkpoint equal float64 statistics
of the written data)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl.demos import Episode, chunk_episodes, detect_source, load_episodes

ROOT = Path(__file__).resolve().parents[1]
FPS = 10


def _frames(rng, T, size=32):
    """Smooth random images (video coding keeps them within a few levels)."""
    base = rng.integers(0, 256, (T, 4, 4, 3)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(base).permute(0, 3, 1, 2), size=(size, size),
                                         mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).round().clamp(0, 255).numpy().astype(np.uint8)


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv444p"
        s.options = {"crf": "0"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _episodes(rng, lengths, state_dim=8, action_dim=7):
    """Random states; actions a fixed smooth function of the state (something SFT can fit)."""
    W = rng.standard_normal((state_dim, action_dim)) / np.sqrt(state_dim)
    out = []
    for i, T in enumerate(lengths):
        state = rng.standard_normal((T, state_dim)).astype(np.float32)
        out.append({"state": state, "action": np.tanh(state @ W).astype(np.float32),
                    "main": _frames(rng, T), "wrist": _frames(rng, T), "task": i % 2})
    return out


TASKS = ["pick up the red block", "open the drawer"]
FEATURES = {"observation.state": {"dtype": "float32", "shape": [8]}, "action": {"dtype": "float32", "shape": [7]},
            "observation.images.image": {"dtype": "video", "shape": [32, 32, 3]},
            "observation.images.wrist_image": {"dtype": "video", "shape": [32, 32, 3]}}
CAMS = {"main": "observation.images.image", "wrist": "observation.images.wrist_image"}


def _frame_table(eps, first_index=0):
    import pyarrow as pa

    rows = {"observation.state": [], "action": [], "timestamp": [], "frame_index": [], "episode_index": [],
            "index": [], "task_index": []}
    idx = 0
    for e_i, e in enumerate(eps):
        for t in range(len(e["state"])):
            rows["observation.state"].append(e["state"][t].tolist())
            rows["action"].append(e["action"][t].tolist())
            rows["timestamp"].append(t / FPS)
            rows["frame_index"].append(t)
            rows["episode_index"].append(first_index + e_i)
            rows["index"].append(idx)
            rows["task_index"].append(e["task"])
            idx += 1
    return pa.table(rows)


def write_lerobot_v21(root: Path, eps) -> None:
    import pyarrow.parquet as pq

    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": FPS, "chunks_size": 1000, "features": FEATURES,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [TASKS[e["task"]]], "length": len(e["state"])}) + "\n"
        for i, e in enumerate(eps)))
    for i, e in enumerate(eps):
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table([e], first_index=i), path)
        for slot, key in CAMS.items():
            _write_mp4(root / f"videos/chunk-000/{key}/episode_{i:06d}.mp4", e[slot])


def write_lerobot_v30(root: Path, eps) -> None:
    """All episodes in one data file and one mp4 per camera, each episode a time segment."""
    import pandas as pd
    import pyarrow.parquet as pq

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": "v3.0", "fps": FPS, "chunks_size": 1000, "features": FEATURES,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": range(len(TASKS))}, index=pd.Index(TASKS, name="task")).to_parquet(
        root / "meta" / "tasks.parquet")
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(_frame_table(eps), root / "data/chunk-000/file-000.parquet")
    for slot, key in CAMS.items():
        _write_mp4(root / f"videos/{key}/chunk-000/file-000.mp4", np.concatenate([e[slot] for e in eps]))
    rows, start = [], 0
    for i, e in enumerate(eps):
        T = len(e["state"])
        row = {"episode_index": i, "tasks": [TASKS[e["task"]]], "length": T, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + T}
        for key in CAMS.values():
            row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start / FPS, f"videos/{key}/to_timestamp": (start + T) / FPS}
        rows.append(row)
        start += T
    pd.DataFrame(rows).to_parquet(root / "meta/episodes/chunk-000/file-000.parquet")


def write_libero_hdf5(path: Path, rng, lengths) -> list[dict]:
    import h5py

    eps = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "put the bowl on the plate"})
        for k, T in enumerate(lengths):
            g = data.create_group(f"demo_{k}")
            e = {"ee_pos": rng.standard_normal((T, 3)), "ee_ori": rng.standard_normal((T, 3)),
                 "gripper_states": rng.standard_normal((T, 2)),
                 "agentview_rgb": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
                 "eye_in_hand_rgb": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8)}
            state = np.concatenate([e["ee_pos"], e["ee_ori"], e["gripper_states"]], axis=1)
            e["actions"] = np.tanh(state[:, :7] - 0.5 * state[:, 1:]).astype(np.float32)  # a function of the state
            g.create_dataset("actions", data=e["actions"])
            for key in ("ee_pos", "ee_ori", "gripper_states", "agentview_rgb", "eye_in_hand_rgb"):
                g.create_dataset(f"obs/{key}", data=e[key])
            eps.append(e)
    return eps


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_dataset_read_back(version, tmp_path):
    rng = np.random.default_rng(0)
    eps = _episodes(rng, [7, 5, 9])
    (write_lerobot_v21 if version == "v2.1" else write_lerobot_v30)(tmp_path / "ds", eps)
    assert detect_source(str(tmp_path / "ds")) == "lerobot"
    got = load_episodes(str(tmp_path / "ds"))
    assert len(got) == 3
    for e, g in zip(eps, got):
        np.testing.assert_array_equal(g.states, e["state"])
        np.testing.assert_array_equal(g.actions, e["action"])
        assert g.task_description == TASKS[e["task"]]
        for slot, have in (("main", g.main_images), ("wrist", g.wrist_images)):
            assert have.shape == e[slot].shape and have.dtype == np.uint8
            # lossless x264 in yuv444p: only the colour-space round trip differs
            assert np.abs(have.astype(int) - e[slot].astype(int)).max() <= 3


def test_libero_hdf5_read_back(tmp_path):
    rng = np.random.default_rng(1)
    eps = write_libero_hdf5(tmp_path / "task.hdf5", rng, [6, 4])
    assert detect_source(str(tmp_path / "task.hdf5")) == "libero_hdf5" == detect_source(str(tmp_path))
    got = load_episodes(str(tmp_path / "task.hdf5"))
    for e, g in zip(eps, got):
        want_state = np.concatenate([e["ee_pos"], e["ee_ori"], e["gripper_states"]], axis=1).astype(np.float32)
        np.testing.assert_array_equal(g.states, want_state)
        np.testing.assert_array_equal(g.actions, e["actions"])
        np.testing.assert_array_equal(g.main_images, np.rot90(e["agentview_rgb"], 2, axes=(1, 2)))
        np.testing.assert_array_equal(g.wrist_images, np.rot90(e["eye_in_hand_rgb"], 2, axes=(1, 2)))
        assert g.task_description == "put the bowl on the plate"


def test_chunk_episodes_every_frame_holds_the_last_action():
    rng = np.random.default_rng(2)
    T, C = 5, 3
    acts = rng.standard_normal((T, 2)).astype(np.float32)
    ep = Episode(states=rng.standard_normal((T, 4)).astype(np.float32), actions=acts, task_description="x",
                 main_images=rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8))
    d = chunk_episodes([ep, ep], C)
    assert len(d) == 2 * T and d.actions.shape == (2 * T, C, 2)
    for t in range(T):  # frame t: actions t, t+1, t+2, clamped to the last frame
        want = acts[[min(t + k, T - 1) for k in range(C)]]
        np.testing.assert_array_equal(d.actions[t].numpy(), want)
    np.testing.assert_array_equal(d.observations["main_images"][T].numpy(), ep.main_images[0])
    with pytest.raises(ValueError, match="states but"):
        Episode(states=np.zeros((3, 2), np.float32), actions=np.zeros((2, 2), np.float32), task_description="")


@pytest.mark.sim
def test_metaworld_experts_recorded_through_the_env_pipeline():
    """Scripted experts succeed; what was recorded is what the env shows at those states."""
    from pirl.config import load_config
    from pirl.demos.experts import record_metaworld_experts
    from pirl.envs import make_env

    cfg = load_config("metaworld_quickstart_ppo_openpi", overrides=["env.train.task_suite_name=[reach-v3,handle-press-v3]",
                                                                     "env.train.init_params.camera_heights=32",
                                                                     "env.train.init_params.camera_widths=32"])
    eps, failed = record_metaworld_experts(cfg.env.train, episodes_per_task=2, num_envs=4, seed=0, seed_offset=10)
    assert failed == 0 and sorted(e.task_name for e in eps) == ["handle-press-v3"] * 2 + ["reach-v3"] * 2
    for e in eps:
        T = len(e.states)
        assert 5 < T < int(cfg.env.train.max_episode_steps) and e.actions.shape == (T, 4)
        assert e.main_images.shape == (T, 32, 32, 3) and np.abs(e.actions).max() <= 1.0
    # the first frame of env i is the reset observation of seed offset + i, rendered by make_env
    env = make_env(dict(cfg.env.train) | {"auto_reset": False}, 4, seed=10)
    obs = env.reset(seed=10)
    env.close()
    first = {(e.task_name, e.states[0].tobytes()): e for e in eps}
    for i in range(4):
        e = first[(env.task_names[i], obs["states"][i].numpy().tobytes())]
        np.testing.assert_array_equal(e.main_images[0], obs["main_images"][i].numpy())
    d = chunk_episodes(eps, 4)
    assert len(d) == sum(len(e.states) for e in eps) and d.observations["main_images"].shape[1:] == (32, 32, 3)


def _sft(config, out: Path, demos: str, *overrides, steps=60):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pirl.sft", "--config-name", config, "--out", str(out),
                           "--demos", demos, "--steps", str(steps), "--batch-size", "16", "--lr", "3e-3",
                           f"runner.logger.log_path={out.parent / 'logs'}", "runner.logger.logger_backends=[tensorboard]",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _loss_curve(stdout: str) -> tuple[float, float]:
    import re

    m = re.search(r"flow-matching loss ([0-9.]+) -> ([0-9.]+)", stdout)
    return float(m.group(1)), float(m.group(2))


def _check_norm_stats(ckpt: Path, states: np.ndarray, actions: np.ndarray, chunk: int, lengths):
    """norm_stats.json vs float64 statistics of the written data (chunked as pirl.sft does)."""
    stats = json.loads((ckpt / "norm_stats.json").read_text())["norm_stats"]
    np.testing.assert_allclose(stats["state"]["mean"], states.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["state"]["std"], states.astype(np.float64).std(0, ddof=1), rtol=1e-4)
    rows, start = [], 0
    for T in lengths:  # every frame t contributes actions t .. t+C-1 (clamped to the episode)
        for t in range(T):
            rows += [actions[start + min(t + k, T - 1)] for k in range(chunk)]
        start += T
    np.testing.assert_allclose(stats["actions"]["mean"], np.mean(rows, axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["actions"]["q99"], np.quantile(np.asarray(rows, np.float64), 0.99, axis=0),
                               rtol=1e-5, atol=1e-6)


# The tiny π0 of the MetaWorld quickstart, on a LIBERO-shaped env (8-D state, 7-D actions:
# what LeRobot's LIBERO datasets and LIBERO's HDF5 files hold); ZeRO-2 keeps 60 steps short.
LIBERO_SHAPED = ["env@env.train=libero_spatial", "env.train.task_suite_name=libero_spatial:0",
                 "actor.model.action_dim=7", "actor.model.openpi.action_dim=8", "actor.ds_config=ds_configs/zero2.json"]


@pytest.mark.dist
def test_sft_on_a_lerobot_dataset(tmp_path):
    rng = np.random.default_rng(3)
    lengths = [12, 10, 14, 8]
    eps = _episodes(rng, lengths)
    write_lerobot_v30(tmp_path / "ds", eps)
    out = _sft("metaworld_quickstart_ppo_openpi", tmp_path / "ckpt", str(tmp_path / "ds"), *LIBERO_SHAPED)
    first, last = _loss_curve(out)  # means of the first and last 15 steps
    assert last < 0.85 * first, out[-2000:]
    meta = json.loads((tmp_path / "ckpt" / "train_meta.json").read_text())
    assert meta["sft_episodes"] == 4 and meta["sft_samples"] == sum(lengths)
    assert meta["policy"]["action_dim"] == 7 and meta["policy"]["state_dim"] == 8
    _check_norm_stats(tmp_path / "ckpt", np.concatenate([e["state"] for e in eps]),
                      np.concatenate([e["action"] for e in eps]), 4, lengths)
    assert list((tmp_path / "logs" / "metaworld_quickstart_ppo_openpi_sft" / "tensorboard").iterdir())


@pytest.mark.dist
def test_sft_on_libero_hdf5(tmp_path):
    rng = np.random.default_rng(4)
    lengths = [11, 9, 13]
    eps = write_libero_hdf5(tmp_path / "demos.hdf5", rng, lengths)
    out = _sft("metaworld_quickstart_ppo_openpi", tmp_path / "ckpt", str(tmp_path / "demos.hdf5"), *LIBERO_SHAPED)
    first, last = _loss_curve(out)
    assert last < 0.85 * first, out[-2000:]
    states = np.concatenate([np.concatenate([e["ee_pos"], e["ee_ori"], e["gripper_states"]], 1) for e in eps])
    _check_norm_stats(tmp_path / "ckpt", states.astype(np.float32), np.concatenate([e["actions"] for e in eps]), 4,
                      lengths)


@pytest.mark.dist
def test_sft_refuses_demos_of_another_env(tmp_path):
    rng = np.random.default_rng(5)
    write_libero_hdf5(tmp_path / "demos.hdf5", rng, [5])
    proc = subprocess.run([sys.executable, "-m", "pirl.sft", "--config-name", "metaworld_quickstart_ppo_openpi",
                           "--out", str(tmp_path / "ckpt"), "--demos", str(tmp_path / "demos.hdf5"), "--steps", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "7-D actions, actor.model.action_dim is 4" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "ckpt").exists()
