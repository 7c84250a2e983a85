"""The reference system's configs in pirl: every shipped experiment composes, validates and
passes the dry run at its world size; an experiment written in the reference system's
layout (tests/fixtures/reference_layout) loads with its defaults list unchanged; the keys
pirl maps get their notice and the keys it refuses their message (pirl/config/reference.py);
Hydra's runtime (logging, output folder) only when a config asks for it."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pirl.config import REPO_ROOT, ConfigError, ConfigNotice, derived_sizes, format_dry_run, load_config, world_size_of
from pirl.config.compose import apply_hydra_runtime, load_job
from pirl.config.reference import RESTRICTED, SHARDING_TO_DS_CONFIG

sys.path.insert(0, str(Path(__file__).parent))
from seed_runs import SEED_EXPERIMENTS  # noqa: E402

CONFIGS = REPO_ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
FIXTURES = Path(__file__).parent / "fixtures" / "reference_layout"
USER = "libero_goal_ppo_openpi_user"


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def notices_of(fn, *args, **kwargs) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(x.message) for x in w if issubclass(x.category, ConfigNotice)]


# ------------------------------------------------------------------ shipped experiments

def test_every_seed_experiment_is_shipped():
    assert set(SEED_EXPERIMENTS) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_experiment_composes_validates_and_dry_runs_at_its_world_size(name, tmp_path):
    cfg = load_config(name, check_files=False)  # --dry-run: the checkpoint may not be downloaded
    ws = world_size_of(cfg)
    report = format_dry_run(cfg, derived_sizes(cfg, ws))
    assert f"given ({ws} ranks)" in report and "samples per rollout" in report
    # with the checkpoint in place, the full check passes (CALVIN's checkout and GSEnv's
    # assets: their own tests, on a fake checkout and synthetic assets)
    if cfg.actor.model.model_path is not None and cfg.env.train.env_type not in ("calvin", "gsenv"):
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        cfg = load_config(name, overrides=[f"actor.model.model_path={ckpt}"])
        assert cfg.actor.model.model_path == str(ckpt)


@pytest.mark.parametrize("name", SEED_EXPERIMENTS)
def test_seed_experiment_keeps_the_seeds_settings(name):
    cfg = load_config(name, check_files=False)
    m, alg, e = cfg.actor.model, cfg.algorithm, cfg.env
    assert cfg.runner.logger.experiment_name == name
    assert world_size_of(cfg) == (4 if name.endswith("quickstart") else 8) and m.model_type == "openpi"
    assert m.openpi.pi05 is None and m.openpi.config_name.startswith("pi05_" if name.endswith("_pi05") else "pi0_")
    assert e.train.env_type == e.eval.env_type == name.split("_")[0]
    assert (alg.adv_type, alg.loss_type) == (("grpo", "actor") if "_grpo_" in name else ("gae", "actor_critic"))
    if alg.adv_type == "grpo":  # groups share a reset state; no critic
        assert e.train.group_size == alg.group_size == 8 and e.train.use_fixed_reset_state_ids
        assert not m.add_value_head and alg.filter_rewards
    assert e.eval.ignore_terminations and e.eval.auto_reset and not e.train.ignore_terminations
    quick = name.endswith("quickstart")
    if name.startswith("libero"):
        suite = name.split("_")[1]
        assert e.train.task_suite_name == e.eval.task_suite_name == f"libero_{suite}"
        steps = {"spatial": 240, "object": 240, "goal": 320, "10": 480}[suite]
        assert e.train.max_episode_steps == e.train.max_steps_per_rollout_epoch == steps
        assert (e.train.total_num_envs, e.train.rollout_epoch) == ((32, 2) if quick else (64, 8))
        assert (cfg.actor.micro_batch_size, cfg.actor.global_batch_size) == ((64, 256) if quick else (128, 2048))
        assert m.openpi.num_images_in_input == 2 and e.train.init_params.camera_heights == 256
        assert m.num_action_chunks == (10 if suite == "10" else 5)
        assert cfg.actor.optim.lr == pytest.approx(1e-6 if quick else 5e-6)
        assert cfg.actor.enable_offload == cfg.rollout.enable_offload == quick
    if name.startswith("maniskill"):  # flow-noise with the learned noise head, 320 envs
        assert m.openpi.noise_method == "flow_noise" and m.openpi.joint_logprob and alg.entropy_bonus == 0.005
        assert e.train.total_num_envs == 320 and cfg.actor.global_batch_size == 5120
        assert alg.bootstrap_type == "always" and m.openpi.action_horizon == 8
        assert e.train.init_params.id == "PutOnPlateInScene25Main-v3"
    if name.startswith("metaworld"):
        assert m.action_dim == 4 and m.num_action_chunks == 5 and m.openpi.num_images_in_input == 1
        assert e.train.task_suite_name == ("metaworld_45_ind" if "_45_" in name else "metaworld_50")
        assert e.eval.task_suite_name == ("metaworld_45_ood" if "_45_" in name else "metaworld_50")
    sizes = derived_sizes(cfg, world_size_of(cfg))
    assert sizes["samples_per_rollout"] % cfg.actor.global_batch_size == 0


def test_train_py_dry_run_of_a_seed_experiment():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--config-name", "libero_spatial_ppo_openpi",
                           "--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line[:31].strip(): line[31:].split() for line in proc.stdout.split("# derived sizes\n")[1].splitlines()[2:]}
    # 64 envs x 8 rollout epochs x 240 / 5 chunk steps = 24576 samples; 2048 per step on 8 ranks
    assert rows["samples per rollout"][0] == "24576" and rows["grad-accumulation steps"][0] == "2"
    assert rows["optimizer steps per iteration"][0] == "48"  # 12 minibatches x update_epoch 4


# ------------------------------------------------------------------ the reference layout

@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The fixture experiment in a folder of its own, as a user keeps it; no EMBODIED_PATH."""
    d = tmp_path / "examples" / "embodiment" / "config"
    d.mkdir(parents=True)
    (d / f"{USER}.yaml").write_text((FIXTURES / f"{USER}.yaml").read_text())
    monkeypatch.delenv("EMBODIED_PATH", raising=False)
    return d


def test_reference_layout_experiment_loads_unchanged(user_dir, tmp_path):
    ckpt = tmp_path / "MY_CHECKPOINT"
    ckpt.mkdir()
    job, notices = notices_of(load_job, USER, str(user_dir), [f"actor.model.model_path={ckpt}"])
    cfg = job.cfg
    # the env group (pirl's env/libero_goal, found through the search path) at both splits
    assert cfg.env.train.task_suite_name == cfg.env.eval.task_suite_name == "libero_goal"
    assert cfg.env.train.rollout_epoch == 4 and cfg.env.eval.rollout_epoch == 1
    assert cfg.env.eval.video_cfg.video_base_dir == "../results/video/eval"
    assert cfg.env.train.video_cfg.video_base_dir == "../results/video/train"
    # the model group at actor.model, the experiment's keys on top
    assert cfg.actor.model.openpi.config_name == "pi0_libero" and cfg.actor.model.num_action_chunks == 5
    assert cfg.actor.model.openpi.action_chunk == 5 and cfg.actor.model.openpi.detach_critic_input is True
    # FSDP no_shard -> ZeRO stage 0; the weight syncer and the FSDP backend are notices, not silence
    assert Path(cfg.actor.ds_config) == REPO_ROOT / SHARDING_TO_DS_CONFIG["no_shard"]
    assert json.loads(Path(cfg.actor.ds_config).read_text())["zero_optimization"]["stage"] == 0
    assert cfg.actor.model.precision == "bf16"  # null: openpi's own
    assert any("actor.fsdp_config" in n and "zero0.json" in n for n in notices)
    assert any(n.startswith("weight_syncer") for n in notices)
    assert any(n.startswith("actor.training_backend: fsdp") for n in notices)
    assert cfg.rollout.model.model_path == str(ckpt)  # the replica is the actor's weights
    assert "fsdp_config" not in cfg.actor and "weight_syncer" not in cfg
    # Hydra's choice of job logging is known; nothing was written or configured yet
    assert job.hydra.runtime.choices["hydra/job_logging"] == "stdout"
    assert os.environ["EMBODIED_PATH"] == str(user_dir.parent)  # as the reference's launch script sets it


def test_reference_layout_with_pirl_overrides(user_dir, tmp_path):
    ckpt = tmp_path / "MY_CHECKPOINT"
    ckpt.mkdir()
    over = [f"actor.model.model_path={ckpt}", "actor.fsdp_config.sharding_strategy=full_shard",
            "actor.fsdp_config.mixed_precision.param_dtype=fp32", "actor.fsdp_config.mixed_precision.reduce_dtype=fp32",
            "actor.fsdp_config.mixed_precision.buffer_dtype=fp32", "actor.model.precision=fp32"]
    cfg = load_config(USER, str(user_dir), over, world_size=2)
    assert Path(cfg.actor.ds_config).name == "zero3.json" and cfg.actor.model.precision == "fp32"
    msg = error_of(load_config, USER, str(user_dir), [*over, "actor.ds_config=ds_configs/zero2.json"])
    assert msg.startswith("actor.fsdp_config.sharding_strategy maps to actor.ds_config='ds_configs/zero3.json', "
                          "but actor.ds_config is set to 'ds_configs/zero2.json'")
    msg = error_of(load_config, USER, str(user_dir), [*over[:-1], "actor.model.precision=bf16"])
    assert "actor.fsdp_config.mixed_precision.param_dtype maps to actor.model.precision='fp32'" in msg


@pytest.mark.parametrize("override, expected", [
    ("actor.fsdp_config.sharding_strategy=hybrid_shard",
     "actor.fsdp_config.sharding_strategy: 'hybrid_shard' has no DeepSpeed counterpart here"),
    ("actor.fsdp_config.strategy=megatron", "actor.fsdp_config.strategy: 'megatron' is not one of fsdp, fsdp2"),
    ("actor.fsdp_config.forward_prefetch=True",
     "actor.fsdp_config.forward_prefetch: True tunes FSDP, which pirl does not run"),
    ("actor.fsdp_config.cpu_offload=True",
     "actor.fsdp_config.cpu_offload: True needs sharding_strategy full_shard"),
    ("actor.fsdp_config.mixed_precision.reduce_dtype=fp32",
     "actor.fsdp_config.mixed_precision: {'param_dtype': 'bf16', 'reduce_dtype': 'fp32'"),
    ("actor.fsdp_config.mixed_precision.param_dtype=int8", "mixed_precision.param_dtype: 'int8' is not one of"),
    ("+actor.fsdp_config.nope=1", "unknown key actor.fsdp_config.nope: pirl maps"),
    ("actor.training_backend=megatron", "actor.training_backend: 'megatron'; pirl trains with DeepSpeed ZeRO"),
    ("weight_syncer.type=rsync", "weight_syncer.type: 'rsync' is not one of patch, bucket"),
    ("reward.use_reward_model=True", "reward.use_reward_model: True; pirl has no separate reward model"),
    ("critic.use_critic_model=True", "critic.use_critic_model: True; pirl has no separate critic model"),
    ("+critic.model_path=x", "unknown key critic.model_path: pirl reads only critic.use_critic_model"),
])
def test_reference_keys_pirl_cannot_honour_are_refused_by_name(user_dir, override, expected):
    over = ["actor.model.precision=bf16", override]
    msg = error_of(load_config, USER, str(user_dir), over, check_files=False)
    assert expected in msg
    assert "(override" in msg or f"{USER}.yaml" in msg  # where it came from


# Values pirl does not take, one per RESTRICTED key (the ones it takes are in the seeds'
# experiments and the fixture above).
REFUSED_VALUES = {
    "runner.ckpt_path": "/tmp/x.pt", "algorithm.kl_beta": 0.1, "actor.optim.critic_warmup_steps": 20,
    "actor.model.use_proprio": False, "actor.model.model_name": "openvla", "actor.model.openpi.noise_anneal": True,
    "actor.model.openpi.use_dsrl": True, "actor.model.openpi.value_vlm_mode": "last_token",
    "rollout.generation_backend": "vllm", "rollout.recompute_logprobs": True, "rollout.model.model_path": "/other",
    "rollout.model.precision": "fp16", "env.enable_offload": True, "env.eval.rollout_epoch": 2,
}
for _split in ("train", "eval"):
    REFUSED_VALUES |= {f"env.{_split}.use_ordered_reset_state_ids": True, f"env.{_split}.specific_reset_id": 3,
                       f"env.{_split}.use_step_penalty": True, f"env.{_split}.reset_gripper_open": False,
                       f"env.{_split}.enable_offload": True}


def test_every_restricted_key_has_a_refusal_case():
    assert {r.key for r in RESTRICTED} == set(REFUSED_VALUES)


@pytest.mark.parametrize("key", sorted(REFUSED_VALUES))
def test_restricted_key_refused_with_what_pirl_offers(key):
    value = REFUSED_VALUES[key]
    msg = error_of(load_config, "libero_spatial_ppo_openpi", None, [f"{key}={json.dumps(value)}"], check_files=False)
    assert msg.startswith(f"{key}: {value!r} is not taken by pirl: ")
    assert f"(override '{key}=" in msg
    instead = next(r.instead for r in RESTRICTED if r.key == key)
    assert instead in msg and len(instead) > 20


def test_reference_scheduler_keys():
    over = ["actor.optim.lr_scheduler=cosine", "+actor.optim.min_lr_rate=0.1", "+actor.optim.num_cycles=0.5",
            "actor.optim.lr_warmup_steps=-1"]
    cfg, notices = notices_of(load_config, "libero_spatial_ppo_openpi", None, over, check_files=False)
    assert cfg.actor.optim.min_lr == pytest.approx(5e-7) and cfg.actor.optim.lr_warmup_steps == -1
    assert any(n.startswith("actor.optim.min_lr_rate 0.1 -> actor.optim.min_lr 5e-07") for n in notices)
    msg = error_of(load_config, "libero_spatial_ppo_openpi", None, [*over[:2], "+actor.optim.num_cycles=1.0"],
                   check_files=False)
    assert msg.startswith("actor.optim.num_cycles: 1.0; pirl's cosine runs once from lr down to min_lr")
    msg = error_of(load_config, "libero_spatial_ppo_openpi", None, [*over[:2], "actor.optim.min_lr=1e-6"],
                   check_files=False)
    assert "actor.optim.min_lr_rate maps to actor.optim.min_lr=5e-07, but actor.optim.min_lr is set to 1e-06" in msg
    _, notices = notices_of(load_config, "libero_spatial_ppo_openpi", None,
                            ["actor.optim.lr_scheduler=cosine", "actor.optim.total_training_steps=1000"],
                            check_files=False)
    assert any("1000 optimizer steps (the reference system counts iterations" in n for n in notices)


def test_keys_without_effect_get_a_notice():
    _, notices = notices_of(load_config, "libero_spatial_ppo_openpi", None,
                            ["algorithm.reward_coef=5.0", "rollout.unnorm_key=libero_10"], check_files=False)
    assert any(n.startswith("algorithm.reward_coef: 5.0 scales nothing") for n in notices)
    assert any(n.startswith("rollout.unnorm_key: 'libero_10' is an OpenVLA statistics key") for n in notices)
    _, notices = notices_of(load_config, "libero_spatial_ppo_openpi", None, check_files=False)
    assert notices == []  # pirl's own experiments are written in pirl's terms


# ------------------------------------------------------------------ Hydra's runtime, on request

def test_hydra_writes_nothing_and_configures_no_logging_unless_asked(tmp_path, monkeypatch):
    import logging

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers = list(root.handlers)
    job = load_job("reach2d_ppo_flow_sde")
    assert apply_hydra_runtime(job, [], rank=0) is None
    assert list(tmp_path.iterdir()) == [] and root.handlers == handlers  # no outputs/, no .hydra/, no handler
    over = ["hydra.output_subdir=.hydra", f"hydra.run.dir={tmp_path / 'run'}", "hydra/job_logging=stdout"]
    job = load_job("reach2d_ppo_flow_sde", overrides=over)
    try:
        folder = apply_hydra_runtime(job, over, rank=0)
        assert folder == tmp_path / "run" / ".hydra"
        saved = OmegaConf.load(folder / "config.yaml")
        assert saved.runner.logger.experiment_name == "reach2d_ppo_flow_sde"
        assert yaml.safe_load((folder / "overrides.yaml").read_text()) == over
        assert any(isinstance(h, logging.StreamHandler) for h in root.handlers)  # stdout logging, as asked
        assert apply_hydra_runtime(job, over, rank=1) is None  # rank 0 writes
    finally:
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
