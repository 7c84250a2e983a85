"""The CALVIN adapter (pirl.envs.calvin) through ChunkedVecEnv: observation mapping, action
and gripper handling, chain progress, reward, termination, both truncation budgets, worker
processes and the protocol run.

Every behavioural test runs twice: against the in-process stand-in of calvin_env's
reset / step / get_info surface (pirl.envs.calvin_standin; always, CI included) and against
the real calvin_env of a checkout named by $CALVIN_ROOT (tier `sim`; skipped with a message
naming the variable when it is not set). Subtasks are completed the same way on both: the
scene is changed through the simulator's own reset(robot_obs, scene_obs) (a door moved, the
led switched), then one adapter step lets calvin_env's task oracle see it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl.config.schema import EnvSplitConfig
from pirl.envs import make_env
from pirl.envs.calvin import (CLONE_HINT, CalvinEnv, CalvinFactory, CheckoutSource, binarize_action,
                              find_calvin_root, resolve_suite, scene_config)
from pirl.envs.calvin_metrics import chain_metrics, run_chains
from pirl.envs.calvin_sequences import get_sequences, scene_obs_for
from pirl.envs.calvin_standin import StandInSource
from pirl.envs.chunked import ChunkedVecEnv, LocalBackend
from pirl.envs.vector import WorkerBackend

CALVIN_ROOT = os.environ.get("CALVIN_ROOT")
REAL = pytest.param("real", marks=[pytest.mark.sim, pytest.mark.skipif(
    not CALVIN_ROOT, reason="set CALVIN_ROOT to a git checkout of mees/calvin (with its calvin_env submodule) "
                            "to run the CALVIN tests against the real calvin_env")])
KINDS = ["standin", REAL]
CHUNK = 5
# Chain 77: turn_off_led, move_slider_left, open_drawer, rotate_blue_block_right, lift_blue_block_table
# (its first three subtasks can be done by changing the scene on calvin_env too).
CHAIN = 77
# scene_obs entries a task changes, and to what: the door joints and the led.
SCENE_CHANGES = {"move_slider_left": (0, 0.28), "move_slider_right": (0, 0.0), "open_drawer": (1, 0.22),
                 "close_drawer": (1, 0.0), "turn_on_led": (5, 1.0), "turn_off_led": (5, 0.0)}


def source(kind: str):
    return StandInSource() if kind == "standin" else CheckoutSource(CALVIN_ROOT)


def vec_env(kind: str, num_envs: int = 2, scenes=("D",), max_steps: int = 40, **kw) -> ChunkedVecEnv:
    env_kw = {k: kw.pop(k) for k in ("subtask_max_steps", "instructions", "render") if k in kw}
    factory = CalvinFactory(source(kind), list(scenes), 1, **env_kw)
    kw.setdefault("auto_reset", False)
    kw.setdefault("use_rel_reward", True)
    kw.setdefault("reward_mode", "dense")
    return ChunkedVecEnv(LocalBackend([factory(i) for i in range(num_envs)]), max_steps, **kw)


def still(num_envs: int, chunk: int = CHUNK) -> torch.Tensor:
    """Actions that hold the robot still with the gripper open."""
    a = torch.zeros(num_envs, chunk, 7)
    a[..., 6] = 1.0
    return a


def change_scene(sim, index: int, value: float) -> None:
    """Move the scene through the simulator's reset, keeping the robot where it is."""
    obs = sim.get_obs()
    scene = obs["scene_obs"].copy()
    scene[index] = value
    sim.reset(robot_obs=obs["robot_obs"], scene_obs=scene)


def envs_of(env: ChunkedVecEnv) -> list[CalvinEnv]:
    return env.backend.envs


# --------------------------------------------------------------------- observation mapping

@pytest.mark.parametrize("kind", KINDS)
def test_observation_mapping(kind):
    env = vec_env(kind, num_envs=2)
    try:
        obs = env.reset(seed=CHAIN)
        assert obs["main_images"].shape == (2, 200, 200, 3) and obs["main_images"].dtype == torch.uint8
        assert obs["wrist_images"].shape == (2, 84, 84, 3) and obs["wrist_images"].dtype == torch.uint8
        assert obs["states"].shape == (2, 7) and obs["states"].dtype == torch.float32
        seqs = get_sequences()
        for i, e in enumerate(envs_of(env)):
            start, chain = seqs[CHAIN + i]
            assert e.chain == chain
            raw = e.sim.get_obs()
            np.testing.assert_array_equal(obs["states"][i].numpy(), raw["robot_obs"][:7].astype(np.float32))
            np.testing.assert_array_equal(obs["main_images"][i].numpy(), raw["rgb_obs"]["rgb_static"])
            np.testing.assert_array_equal(obs["wrist_images"][i].numpy(), raw["rgb_obs"]["rgb_gripper"])
            # the start state of the chain: robot pose and every block where the protocol puts it
            robot, scene = scene_obs_for(start)
            np.testing.assert_allclose(raw["robot_obs"][:7], robot[:7], atol=2e-3)
            blocks = e.sim.get_info()["scene_info"]["movable_objects"]
            for k, name in enumerate(("block_red", "block_blue", "block_pink")):  # after reset's one physics step
                np.testing.assert_allclose(blocks[name]["current_pos"], scene[6 + 6 * k:9 + 6 * k], atol=1e-3)
        assert obs["task_descriptions"][0] == envs_of(env)[0].instructions["turn_off_led"][0]
        assert obs["main_images"].float().std() > 5  # a drawn scene, not a blank frame
    finally:
        env.close()


@pytest.mark.parametrize("kind", KINDS)
def test_scene_a_blocks_follow_the_evaluation_order(kind):
    """Scene A lists its blocks in another order than the evaluation's start states; the
    adapter reorders them, so each block starts where the protocol puts it."""
    env = vec_env(kind, num_envs=1, scenes=("A",))
    try:
        env.reset(seed=CHAIN)
        e = envs_of(env)[0]
        assert e.task_name == "scene_A"
        _, scene = scene_obs_for(get_sequences()[CHAIN][0])
        blocks = e.sim.get_info()["scene_info"]["movable_objects"]
        for k, name in enumerate(("block_red", "block_blue", "block_pink")):
            np.testing.assert_allclose(blocks[name]["current_pos"], scene[6 + 6 * k:9 + 6 * k], atol=1e-3)
    finally:
        env.close()


def test_render_off_gives_state_only():
    env = vec_env("standin", num_envs=1, render=False)
    try:
        obs = env.reset(seed=3)
        assert set(obs) == {"states", "task_descriptions"}
    finally:
        env.close()


# -------------------------------------------------------------------------------- actions

def test_binarize_action():
    a = binarize_action(np.array([3.0, -2.0, 0.5, 0.0, -1.5, 1.0, 0.3]))
    np.testing.assert_array_equal(a, [1.0, -1.0, 0.5, 0.0, -1.0, 1.0, 1.0])
    for g, want in ((0.3, 1.0), (1e-6, 1.0), (0.0, -1.0), (-0.2, -1.0), (-7.0, -1.0)):
        assert binarize_action(np.r_[np.zeros(6), g])[6] == want


@pytest.mark.parametrize("kind", KINDS)
def test_actions_match_the_simulator_stepped_directly(kind):
    """The adapter's states and images after a chunk of random actions equal those of the
    same simulator built on its own and stepped with the clipped, binarized actions."""
    env = vec_env(kind, num_envs=1, max_steps=100)
    ref_sim, _ = source(kind).build("D", 200, 84, False)
    try:
        env.reset(seed=CHAIN)
        robot, scene = scene_obs_for(get_sequences()[CHAIN][0])
        ref_sim.reset(robot_obs=robot, scene_obs=scene)
        gen = torch.Generator().manual_seed(0)
        acts = torch.rand(1, CHUNK, 7, generator=gen) * 3 - 1.5  # beyond [-1, 1]: clipped
        acts[0, :, 6] = torch.tensor([0.3, -0.2, 0.0, 0.9, -1.0])
        obs, *_ = env.chunk_step(acts)
        sim = envs_of(env)[0].sim
        for c in range(CHUNK):
            ref_obs, _, _, _ = ref_sim.step(binarize_action(acts[0, c].numpy()))
        assert sim.get_obs()["robot_obs"][14] == -1.0  # the last gripper action: -1.0 -> close
        np.testing.assert_allclose(obs["states"][0].numpy(), ref_obs["robot_obs"][:7], atol=1e-6)
        np.testing.assert_array_equal(obs["main_images"][0].numpy(), ref_obs["rgb_obs"]["rgb_static"])
        np.testing.assert_array_equal(obs["wrist_images"][0].numpy(), ref_obs["rgb_obs"]["rgb_gripper"])
    finally:
        env.close()
        ref_sim.close()
        ref_sim.cid = -1  # calvin_env's __del__ would close the client once more (CalvinEnv.close does this)


@pytest.mark.parametrize("kind", KINDS)
def test_gripper_action_is_binarized(kind):
    env = vec_env(kind, num_envs=1, max_steps=100)
    try:
        env.reset(seed=CHAIN)
        sim = envs_of(env)[0].sim
        for g, want in ((0.3, 1.0), (-0.2, -1.0), (0.0, -1.0), (2.5, 1.0)):
            a = torch.zeros(1, 1, 7)
            a[0, 0, 6] = g
            env.chunk_step(a)
            assert sim.get_obs()["robot_obs"][14] == want
    finally:
        env.close()


# ----------------------------------------------------- chain progress, reward, termination

@pytest.mark.parametrize("kind", KINDS)
def test_chain_progress_reward_and_instructions(kind):
    env = vec_env(kind, num_envs=2, max_steps=60, reward_coef=2.0)
    try:
        obs = env.reset(seed=CHAIN)
        e = envs_of(env)[0]
        chain = e.chain
        assert chain[:3] == ("turn_off_led", "move_slider_left", "open_drawer")
        for done_so_far, task in enumerate(chain[:3]):
            assert obs["task_descriptions"][0] == e.instructions[task][0]
            # one still chunk first: nothing happens, no reward
            obs, rew, term, trunc, infos = env.chunk_step(still(2))
            assert rew.eq(0).all() and not term.any() and not trunc.any()
            change_scene(e.sim, *SCENE_CHANGES[task])
            obs, rew, term, trunc, infos = env.chunk_step(still(2))
            # reward_coef once, on the step that completes the subtask; env 1 untouched
            assert rew[0].tolist() == [2.0, 0, 0, 0, 0] and rew[1].eq(0).all()
            assert e.completed == done_so_far + 1 and envs_of(env)[1].completed == 0
            assert infos["episode"]["avg_len"][0] == done_so_far + 1
            assert obs["task_descriptions"][0] == e.instructions[chain[done_so_far + 1]][0]
            assert not term.any()
        assert infos["episode"]["return"][0] == 6.0
    finally:
        env.close()


@pytest.mark.parametrize("relative, want", [(True, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                                            (False, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1])])
def test_reward_is_progress_paid_as_increments(relative, want):
    env = vec_env("standin", num_envs=1, use_rel_reward=relative)
    try:
        env.reset(seed=CHAIN)
        change_scene(envs_of(env)[0].sim, *SCENE_CHANGES["turn_off_led"])
        _, r1, *_ = env.chunk_step(still(1))
        _, r2, *_ = env.chunk_step(still(1))
        assert torch.cat([r1, r2], 1)[0].tolist() == want
    finally:
        env.close()


# the stand-in knows block tasks too, so it can finish chain 77
STANDIN_CHANGES = {**SCENE_CHANGES, "rotate_blue_block_right": (17, None), "lift_blue_block_table": (14, None)}


def test_chain_completion_terminates_with_success():
    env = vec_env("standin", num_envs=1, max_steps=60)
    try:
        env.reset(seed=CHAIN)
        e = envs_of(env)[0]
        for task in e.chain:
            index, value = STANDIN_CHANGES[task]
            scene = e.sim.get_obs()["scene_obs"]
            if value is None:  # rotate by -90 degrees / lift by 10 cm
                value = scene[index] - np.pi / 2 if task.startswith("rotate") else scene[index] + 0.1
            change_scene(e.sim, index, value)
            obs, rew, term, trunc, infos = env.chunk_step(still(1, chunk=3))
            assert rew[0, 0] == 1.0
        # the 5th subtask ends the episode at its first step: terminated, success, done
        assert term[0].tolist() == [True, True, True] and not trunc.any()
        assert infos["done"][0] and infos["success"][0].tolist() == [True, False, False]
        assert infos["episode"]["success_once"][0] == 1.0 and infos["episode"]["avg_len"][0] == 5.0
        assert infos["episode"]["episode_len"][0] == 13  # subtask k done at step 3k - 2
    finally:
        env.close()


# -------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("kind", KINDS)
def test_subtask_budget_truncates(kind):
    """subtask_max_steps 7: env 0 completes its first subtask at step 6, which starts a
    fresh budget, so it is truncated at step 13; env 1 at step 7."""
    env = vec_env(kind, num_envs=2, max_steps=100, subtask_max_steps=7)
    try:
        env.reset(seed=CHAIN)
        e = envs_of(env)[0]
        _, _, _, trunc, infos = env.chunk_step(still(2))  # steps 1-5
        assert not trunc.any()
        change_scene(e.sim, *SCENE_CHANGES["turn_off_led"])
        _, rew, _, trunc, infos = env.chunk_step(still(2))  # steps 6-10: env 0 done at 6; env 1 out at 7
        assert rew[0, 0] == 1.0
        assert trunc[1].tolist() == [False, True, True, True, True] and infos["done"][1]
        assert infos["episode"]["episode_len"][1] == 7 and infos["episode"]["avg_len"][1] == 0
        assert not trunc[0].any()
        _, _, term, trunc, infos = env.chunk_step(still(2))  # steps 11-15: env 0 out at 13
        assert trunc[0].tolist() == [False, False, True, True, True] and not term.any()
        assert infos["episode"]["episode_len"][0] == 13 and infos["episode"]["avg_len"][0] == 1
    finally:
        env.close()


@pytest.mark.parametrize("kind", KINDS)
def test_chain_budget_truncates(kind):
    """No subtask budget: max_episode_steps (the reference system's 480, here 8) ends the chain."""
    env = vec_env(kind, num_envs=1, max_steps=8)
    try:
        env.reset(seed=CHAIN)
        _, _, _, trunc, _ = env.chunk_step(still(1))
        _, _, term, trunc, infos = env.chunk_step(still(1))
        assert trunc[0].tolist() == [False, False, True, True, True] and not term.any()
        assert infos["done"][0] and infos["episode"]["episode_len"][0] == 8
    finally:
        env.close()


# ------------------------------------------------------------------ instructions, scenes

def test_training_instructions_are_paraphrases_drawn_from_the_seed():
    env = vec_env("standin", num_envs=3, instructions="train")
    try:
        a = env.reset(seed=CHAIN)["task_descriptions"]
        b = env.reset(seed=CHAIN)["task_descriptions"]
        assert a == b  # a pure function of the reset seed
        paraphrases = envs_of(env)[0].instructions
        for i, e in enumerate(envs_of(env)):
            assert a[i] in paraphrases[e.chain[0]]
        drawn = set()
        for k in range(12):  # seeds 77, 1077, ...: the same chain (seed % 1000), paraphrases by seed
            env.reset(seed=1000 * k + CHAIN)
            assert envs_of(env)[0].chain == envs_of(env)[0].sequences[CHAIN][1]
            drawn.add(envs_of(env)[0].task_description)
        assert len(drawn) > 1
    finally:
        env.close()


def test_suites_and_scenes_by_group():
    assert resolve_suite("calvin_abc") == ("calvin_abc", ("A", "B", "C"))
    assert resolve_suite("calvin_d")[1] == ("D",) and resolve_suite("calvin_abcd")[1] == ("A", "B", "C", "D")
    with pytest.raises(ValueError, match=r"one of \['calvin_abc', 'calvin_abcd', 'calvin_d'\]"):
        resolve_suite("calvin_e")
    factory = CalvinFactory(StandInSource(), ["A", "B", "C"], group_size=2)
    assert [factory.scene_of(i) for i in range(8)] == ["A", "A", "B", "B", "C", "C", "A", "A"]
    assert factory(3).task_name == "scene_B"


# ------------------------------------------------------------------------ worker processes

def test_worker_processes_update_the_instruction():
    """In a worker the chain advances by the policy's own actions: moving the tcp down
    presses the stand-in's button, which switches the led off (chain 77's first task)."""
    factory = CalvinFactory(StandInSource(), ["D"], 1, subtask_max_steps=50)
    env = ChunkedVecEnv(WorkerBackend(factory, 2, 1, timeout_s=120), 40, auto_reset=False,
                        use_rel_reward=True, reward_mode="dense")
    try:
        obs = env.reset(seed=CHAIN)
        assert obs["task_descriptions"][0] == "turn off led"
        down = still(2, chunk=8)
        down[0, :, 2] = -1.0  # env 0 moves down 2 cm a step: below 0.45 m at step 7
        obs, rew, _, _, infos = env.chunk_step(down)
        assert rew[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 0] and rew[1].eq(0).all()
        assert obs["task_descriptions"][0] == "move slider left"
        assert infos["episode"]["avg_len"].tolist() == [1.0, 0.0]
    finally:
        env.close()


# ---------------------------------------------------------------------- the protocol run

def test_run_chains_on_the_standin():
    """Chains 0-6 in envs of 3: the policy presses the button in every chunk, so exactly the
    chains that start with a led task reach length 1; each ends by its 10-step budget."""
    env = vec_env("standin", num_envs=3, max_steps=60, subtask_max_steps=10)

    def act(obs):  # 7 steps down (the tcp passes 0.45 m at the 7th: a press), 3 back up
        a = still(obs["states"].shape[0], chunk=10)
        a[:, :7, 2], a[:, 7:, 2] = -1.0, 1.0
        return a

    try:
        lengths, chains = run_chains(env, act, num_chains=7)
    finally:
        env.close()
    seqs = get_sequences()
    assert chains == [seqs[c][1] for c in range(7)]
    led_first = [int(seqs[c][1][0] in ("turn_on_led", "turn_off_led")) for c in range(7)]
    assert lengths == led_first and sum(led_first) >= 1
    result = chain_metrics(lengths, chains)
    assert result.success[0] == pytest.approx(sum(led_first) / 7) and result.success[1] == 0


def test_run_chains_needs_auto_reset_off():
    env = vec_env("standin", num_envs=1, auto_reset=True)
    try:
        with pytest.raises(ValueError, match="auto_reset False"):
            run_chains(env, lambda obs: still(1), num_chains=1)
    finally:
        env.close()


# ------------------------------------------------------------------------ the checkout

def _fake_checkout(root: Path, skip: str = "") -> Path:
    """A directory tree with the files find_calvin_root looks for, minus `skip`."""
    files = [".git/HEAD", "calvin_env/.git", "calvin_env/calvin_env/__init__.py", "calvin_env/data/x",
             "calvin_env/conf/x", "calvin_models/conf/callbacks/rollout/tasks/new_playtable_tasks.yaml",
             "calvin_models/conf/annotations/new_playtable.yaml",
             "calvin_models/conf/annotations/new_playtable_validation.yaml"]
    for f in files:
        if skip and f.startswith(skip):
            continue
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    return root


@pytest.mark.parametrize("skip, message", [
    (".git", "has no .git: calvin_env reads its commit hash at start"),
    ("calvin_env/calvin_env", "the calvin_env submodule is not checked out (git submodule update --init"),
    ("calvin_env/.git", "the calvin_env submodule is not a git checkout"),
    ("calvin_env/data", "calvin_env/data is missing"),
    ("calvin_env/conf", "calvin_env/conf is missing"),
    ("calvin_models/conf/callbacks", "new_playtable_tasks.yaml is missing"),
    ("calvin_models/conf/annotations/new_playtable_validation", "new_playtable_validation.yaml is missing"),
])
def test_checkout_errors_name_what_is_missing(tmp_path, skip, message):
    root = _fake_checkout(tmp_path / "calvin", skip)
    with pytest.raises(FileNotFoundError, match="env.train.calvin_root") as e:
        find_calvin_root(str(root), "env.train.calvin_root")
    assert message in str(e.value)


def test_checkout_from_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("CALVIN_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"set env.eval.calvin_root or \$CALVIN_ROOT") as e:
        find_calvin_root(None, "env.eval.calvin_root")
    assert CLONE_HINT in str(e.value)
    root = _fake_checkout(tmp_path / "calvin")
    monkeypatch.setenv("CALVIN_ROOT", str(root))
    assert find_calvin_root(None).root == root.resolve()
    monkeypatch.setenv("CALVIN_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"from \$CALVIN_ROOT: .*nowhere is not a directory"):
        find_calvin_root(None)


def test_make_env_checks_before_building(tmp_path, monkeypatch):
    monkeypatch.delenv("CALVIN_ROOT", raising=False)
    cfg = EnvSplitConfig(env_type="calvin", task_suite_name="calvin_d", max_episode_steps=40,
                         init_params={"camera_heights": 200, "camera_widths": 200})
    with pytest.raises(FileNotFoundError, match="CALVIN needs a git checkout"):
        make_env(cfg, 1, seed=0)
    bad = EnvSplitConfig(env_type="calvin", task_suite_name="calvin_x", max_episode_steps=40)
    with pytest.raises(ValueError, match="for CALVIN must be one of"):
        make_env(bad, 1, seed=0)
    typo = EnvSplitConfig(env_type="calvin", task_suite_name="calvin_d", max_episode_steps=40,
                          init_params={"subtask_steps": 360})
    with pytest.raises(ValueError, match=r"calvin takes no subtask_steps"):
        make_env(typo, 1, seed=0)


def test_config_validation_names_the_key(tmp_path, monkeypatch):
    from pirl.config import load_config
    from pirl.config.validate import ConfigError

    monkeypatch.delenv("CALVIN_ROOT", raising=False)
    overrides = ["env.train.env_type=calvin", "env.train.task_suite_name=calvin_abc", "~env.train.init_params",
                 "runner.val_check_interval=0",
                 "runner.eval_before_train=false", f"env.train.calvin_root={tmp_path}"]
    with pytest.raises(ConfigError, match=r"env.train.calvin_root: .* has no .git"):
        load_config("reach2d_ppo_flow_sde", None, overrides)


@pytest.mark.sim
@pytest.mark.skipif(not CALVIN_ROOT, reason="set CALVIN_ROOT to a mees/calvin checkout to test its scene configs")
def test_real_scene_configs_reordered():
    checkout = find_calvin_root(CALVIN_ROOT)
    for scene in "ABCD":
        assert list(scene_config(checkout, scene).objects.movable_objects) == ["block_red", "block_blue",
                                                                               "block_pink"]


# ------------------------------------------------------------------------- the configs

@pytest.mark.parametrize("group, train_suite, instructions", [("calvin_abc", "calvin_abc", "train"),
                                                              ("calvin_d", "calvin_d", "train"),
                                                              ("calvin_abcd", "calvin_abcd", "train")])
def test_experiment_config_with_each_env_group(tmp_path, monkeypatch, group, train_suite, instructions):
    """The reference system's calvin_abc_d_ppo_openpi_pi05 composes and validates (the
    checkout is checked before anything starts) with its hyper-parameters and sizes."""
    from pirl.config import derived_sizes, load_config

    monkeypatch.delenv("CALVIN_ROOT", raising=False)
    root = _fake_checkout(tmp_path / "calvin")
    cfg = load_config("calvin_abc_d_ppo_openpi_pi05", None, [f"env@env.train={group}",
                                                             f"env.train.calvin_root={root}"])
    train, ev = cfg.env.train, cfg.env.eval
    assert (train.env_type, train.task_suite_name, ev.task_suite_name) == ("calvin", train_suite, "calvin_d")
    assert ev.calvin_root == str(root) and train.init_params.instructions == instructions
    assert ev.init_params.instructions == "validation"
    ip = train.init_params
    assert (train.total_num_envs, train.max_episode_steps, ip.camera_heights, ip.wrist_image_size) == (64, 480, 200, 84)
    assert train.use_rel_reward and train.reward_mode == "dense"
    m, alg, opt = cfg.actor.model, cfg.algorithm, cfg.actor.optim
    assert (m.num_action_chunks, m.num_steps, m.action_dim, m.openpi.config_name, m.openpi.noise_level) == (
        5, 5, 7, "pi05_calvin", 0.5)
    assert (train.rollout_epoch, alg.update_epoch, alg.clip_ratio_high, opt.lr, opt.value_lr) == (8, 4, 0.2, 5e-6, 1e-4)
    sizes = derived_sizes(cfg, 8)
    assert sizes["samples_per_rollout"] == 64 * 8 * (480 // 5) == 49152
    assert sizes["envs_per_env_rank"] == 8


def test_training_logs_report_the_average_length():
    """The env workers' episode means carry CALVIN's avg_len next to the seeds' metrics."""
    from pirl.workers.env_worker import episode_means, finished_episodes as _finished_episodes

    env = vec_env("standin", num_envs=2, max_steps=5)
    try:
        env.reset(seed=CHAIN)
        change_scene(envs_of(env)[0].sim, *SCENE_CHANGES["turn_off_led"])
        _, _, _, _, infos = env.chunk_step(still(2))  # both truncated at step 5; env 0 did one subtask
        means = episode_means(_finished_episodes(infos, env.task_names))
    finally:
        env.close()
    assert means["env/avg_len"] == 0.5 and means["env/scene_D/avg_len"] == 0.5
    assert means["env/success_once"] == 0.0 and means["env/num_episodes"] == 2


def test_pirl_eval_reports_chain_metrics():
    """pirl.eval's episode loop over a CALVIN split: each episode's chain length comes back
    with its seed, and the report has success at length 1..5 and the average length."""
    from types import SimpleNamespace

    from pirl.eval import calvin_summary, markdown_table, run_episodes, summarize

    class PressButton:  # the policy: 7 steps down (the stand-in's button), 3 back up
        def preprocess(self, obs):
            return obs

        def sample(self, obs, mode, gen):
            a = still(obs["states"].shape[0], chunk=10)
            a[:, :7, 2], a[:, 7:, 2] = -1.0, 1.0
            return SimpleNamespace(actions=a)

    env = vec_env("standin", num_envs=3, max_steps=60, subtask_max_steps=10)
    try:
        results = run_episodes(PressButton(), env, ["scene_D"], per_task=6, chunk=10, base_seed=0, rank=0,
                               world=1, sampling="ode")
    finally:
        env.close()
    seqs = get_sequences()
    assert [r.seed for r in results] == list(range(6))
    want = [int(seqs[r.seed][1][0] in ("turn_on_led", "turn_off_led")) for r in results]
    assert [r.chain_len for r in results] == want
    report = summarize(results, 6, {"calvin": calvin_summary(results)})
    assert report.meta["calvin"]["calvin/success_len_1"] == pytest.approx(sum(want) / 6)
    assert report.meta["calvin"]["calvin/avg_len"] == pytest.approx(sum(want) / 6)
    assert "Avg. Subtasks" in markdown_table(report)
