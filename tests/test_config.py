"""pirl.config: composition through hydra-core in the reference system's layout,
interpolation, overrides, validation errors (each message must name its key and the file),
derived sizes against an enumeration reference, the seeds' YAML snippets
(tests/fixtures/seed_snippets) and the dry-run report. The reference system's own keys
(mapped or refused) and the shipped experiments: tests/test_config_reference.py."""
import json
import math
import random
import re
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pirl.config import (
    REPO_ROOT,
    ConfigError,
    ConfigNotice,
    derived_sizes,
    format_dry_run,
    load_config,
    world_size_of,
)
from pirl.config.compose import REPLACED_WHOLE, main
from pirl.config.validate import model_action_sizes

EXPERIMENTS = ("reach2d_ppo_flow_sde", "reach2d_ppo_flow_noise", "reach2d_grpo_flow_sde")
BASE = "reach2d_ppo_flow_sde"
SNIPPETS = sorted((Path(__file__).parent / "fixtures" / "seed_snippets").glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    """A fixture as Hydra reads it (OmegaConf's YAML: `1e-6` is a float)."""
    return OmegaConf.to_container(OmegaConf.load(path)) or {}


@pytest.fixture
def ds_json(tmp_path):
    """A DeepSpeed JSON of our own, so these tests do not depend on ds_configs/."""
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}))
    return str(p)


@pytest.fixture
def load(ds_json):
    def _load(*overrides, name=BASE, world_size=None, config_path=None):
        return load_config(name, config_path, [f"actor.ds_config={ds_json}", *overrides],
                           world_size)
    return _load


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ------------------------------------------------------------------ composition

@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_from_groups(load, name):
    cfg = load(name=name)
    assert cfg.actor.model.model_type == "flow_mlp"  # model group, mounted at actor.model
    assert cfg.env.train.env_type == cfg.env.eval.env_type == "reach2d"  # env group at both splits
    assert cfg.env.eval.ignore_terminations and not cfg.env.train.ignore_terminations  # the experiment's
    assert cfg.actor.model.action_dim == 2
    assert OmegaConf.to_container(cfg.cluster.component_placement) == {"env,rollout,actor": "all"}
    assert world_size_of(cfg) == 2
    assert cfg.runner.logger.experiment_name == name  # the experiment's own keys (_self_)
    assert cfg.env.train.total_num_envs == 32 and cfg.env.train.max_episode_steps == 16
    assert cfg.env.train.max_steps_per_rollout_epoch == 16 and cfg.env.train.rollout_epoch == 1
    assert cfg.actor.model.num_action_chunks == 4 and cfg.actor.model.num_steps == 4
    alg = {"reach2d_ppo_flow_sde": ("gae", "flow_sde", False, 0.0),
           "reach2d_ppo_flow_noise": ("gae", "flow_noise", True, 0.005),
           "reach2d_grpo_flow_sde": ("grpo", "flow_sde", False, 0.0)}[name]
    op = cfg.actor.model.openpi
    assert (cfg.algorithm.adv_type, op.noise_method, op.joint_logprob,
            cfg.algorithm.entropy_bonus) == alg
    if name.startswith("reach2d_grpo"):
        assert cfg.env.train.group_size == cfg.algorithm.group_size == 4
        assert cfg.actor.model.add_value_head is False
        assert op.add_value_head is False  # follows actor.model.add_value_head


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_experiments_validate_as_written(name):
    cfg = load_config(name)
    ds = Path(cfg.actor.ds_config)
    assert ds.is_absolute() and ds.is_file() and ds.name == "zero2.json"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_dir(tmp_path, ds_json):
    """A config tree of our own to test merge order: groups mounted at packages, _self_,
    plain-name inheritance, nested defaults, a `@package _global_` group."""
    d = tmp_path / "cfgs"
    _write(d / "model" / "small.yaml", "hidden_dim: 16\nnum_layers: 2\n")
    _write(d / "model" / "wide.yaml", "defaults:\n  - small\n  - _self_\nhidden_dim: 512\n")
    _write(d / "seed" / "a.yaml", "# @package _global_\nrunner:\n  seed: 11\n")
    _write(d / "base.yaml", f"actor:\n  ds_config: {ds_json}\nrunner:\n  seed: 5\n"
           "  logger:\n    experiment_name: base\n"
           "cluster:\n  num_gpus_per_node: 2\n  component_placement:\n    env,rollout,actor: all\n")
    _write(d / "self_first.yaml",
           "defaults:\n  - base\n  - _self_\n  - seed: a\nrunner:\n  seed: 99\n")
    _write(d / "self_last.yaml", "defaults:\n  - base\n  - seed: a\n  - _self_\nrunner:\n  seed: 99\n")
    _write(d / "no_self.yaml", "defaults:\n  - base\n  - seed: a\nrunner:\n  seed: 98\n")
    _write(d / "child.yaml",
           "defaults:\n  - base\n  - model@actor.model: wide\n  - _self_\n"
           "runner:\n  logger:\n    experiment_name: child\n")
    return d


def test_merge_order_follows_defaults_and_self(config_dir):
    def seed(name):
        return load_config(name, str(config_dir)).runner.seed
    assert seed("self_first") == 11  # the group after _self_ wins
    assert seed("self_last") == 99
    assert seed("no_self") == 98  # _self_ defaults to last


def test_inheritance_and_nested_group_defaults(config_dir):
    cfg = load_config("child", str(config_dir))
    assert cfg.runner.seed == 5  # from base.yaml
    assert cfg.runner.logger.experiment_name == "child"
    assert cfg.actor.model.hidden_dim == 512 and cfg.actor.model.num_layers == 2
    cfg = load_config("child", str(config_dir), ["model@actor.model=small"])  # group choice override
    assert cfg.actor.model.hidden_dim == 16
    cfg = load_config("base", str(config_dir), ["+model@actor.model=small"])  # appended to the defaults
    assert cfg.actor.model.hidden_dim == 16


def test_group_choice_override_on_shipped_configs(load):
    cfg = load("model@actor.model=pi0_tiny")
    assert cfg.actor.model.model_type == "openpi"
    assert cfg.actor.model.openpi.config_name == "pi0_tiny"
    assert cfg.actor.model.openpi.action_dim == 16 and cfg.actor.model.action_dim == 2
    cfg = load("algorithm=ppo_flow_noise")
    assert cfg.actor.model.openpi.noise_method == "flow_noise"


def test_composition_errors(config_dir, load):
    msg = error_of(load, "model@actor.model=pi0_huge")
    assert "Could not find 'model/pi0_huge'" in msg and "flow_mlp" in msg and "pi0_tiny" in msg
    assert "configs/reach2d_ppo_flow_sde.yaml" in msg
    msg = error_of(load_config, "child", str(config_dir), ["seed=a"])
    assert "Could not override 'seed'" in msg and "No match in the defaults list" in msg
    msg = error_of(load_config, "nope", str(config_dir))
    assert "--config-name" in msg and "child" in msg  # the experiments there are listed
    assert "--config-path" in error_of(load_config, BASE, str(config_dir / "missing"))
    _write(config_dir / "loop_a.yaml", "defaults:\n  - loop_b\n")
    _write(config_dir / "loop_b.yaml", "defaults:\n  - loop_a\n")
    assert "loop_a" in error_of(load_config, "loop_a", str(config_dir))
    _write(config_dir / "dup.yaml", "runner:\n  seed: 1\nrunner:\n  seed: 2\n")
    msg = error_of(load_config, "dup", str(config_dir))
    assert "dup.yaml" in msg and "duplicate key" in msg and "runner" in msg
    _write(config_dir / "bad_entry.yaml", "defaults:\n  - [a, b]\n")
    assert "bad_entry" in error_of(load_config, "bad_entry", str(config_dir))


def test_group_can_be_dropped_with_null(config_dir):
    cfg = load_config("child", str(config_dir), ["~model@actor.model"])
    assert cfg.actor.model.hidden_dim == 128  # the schema default


# ------------------------------------------------------------------ interpolation

def test_absolute_interpolation_resolved_and_typed(load):
    cfg = load("actor.model.num_action_chunks=2")
    op = cfg.actor.model.openpi
    assert op.action_chunk == 2 and isinstance(op.action_chunk, int)
    assert model_action_sizes(cfg.actor.model) == (2, 2)  # flow_mlp: the chunk, the env dims
    cfg = load("runner.logger.log_path=/tmp/pirl_runs")
    assert cfg.env.train.video_cfg.video_base_dir == "/tmp/pirl_runs/reach2d_ppo_flow_sde/video/train"
    assert cfg.actor.seed == cfg.runner.seed  # "${runner.seed}" in the schema
    assert cfg.actor.optim.value_lr == 1.0e-3


def test_relative_interpolation(config_dir):
    _write(config_dir / "rel.yaml",
           "defaults:\n  - base\n  - _self_\nactor:\n  model:\n    num_action_chunks: 8\n"
           "    openpi:\n      action_chunk: ${..num_action_chunks}\n"
           "env:\n  train:\n    max_episode_steps: 32\n    total_num_envs: 64\n"
           "  eval:\n    max_episode_steps: 40\n    max_steps_per_rollout_epoch: ${.max_episode_steps}\n")
    cfg = load_config("rel", str(config_dir), ["env.eval.max_episode_steps=24",
                                               "actor.micro_batch_size=8", "actor.model.action_dim=2"])
    assert cfg.actor.model.openpi.action_chunk == 8
    assert cfg.env.eval.max_steps_per_rollout_epoch == 24  # relative to its split
    assert cfg.env.train.max_steps_per_rollout_epoch == 32  # the schema's ${.max_episode_steps}


def test_interpolation_errors_name_the_key(load):
    msg = error_of(load, "actor.model.num_action_chunks=${actor.model.nope}")
    assert msg.startswith("actor.model.num_action_chunks")
    msg = error_of(load, "actor.model.num_steps=${runner.logger.log_path}")
    assert msg.startswith("actor.model.num_steps") and "Integer" in msg


# ------------------------------------------------------------------ overrides

def test_override_values_are_typed(load, tmp_path):
    cfg = load("actor.optim.lr=1e-6", "actor.model.trainable=[expert, value_head]",
               "runner.resume_dir=auto", "env.train.task_suite_name=libero_spatial:3",
               "runner.eval_before_train=false",
               "env.train.init_params={num_targets: 2, speed: 0.25}",
               "runner.logger.logger_backends=[tensorboard,wandb]", "runner.only_eval=True")
    assert cfg.actor.optim.lr == pytest.approx(1e-6) and isinstance(cfg.actor.optim.lr, float)
    assert list(cfg.actor.model.trainable) == ["expert", "value_head"]
    assert cfg.runner.resume_dir == "auto"
    assert cfg.env.train.task_suite_name == "libero_spatial:3"
    assert cfg.runner.eval_before_train is False and cfg.runner.only_eval is True
    # mappings merge key by key: success_radius and image_size stay from the env group
    assert OmegaConf.to_container(cfg.env.train.init_params) == {
        "num_targets": 2, "speed": 0.25, "success_radius": 0.15, "image_size": 64}
    assert list(cfg.runner.logger.logger_backends) == ["tensorboard", "wandb"]
    cfg = load("runner.resume_dir=null")
    assert cfg.runner.resume_dir is None


def test_schema_keys_no_file_wrote_take_plain_overrides(load):
    # runner.only_eval and env.eval.use_fixed_reset_state_ids are in no file: no `+` needed
    cfg = load("runner.only_eval=True", "env.eval.use_fixed_reset_state_ids=False")
    assert cfg.runner.only_eval and not cfg.env.eval.use_fixed_reset_state_ids
    # `~key` drops what the files set: the schema default comes back
    assert load("~actor.optim.value_lr").actor.optim.value_lr == load().actor.optim.lr
    assert load("~runner.logger.experiment_name").runner.logger.experiment_name == "default"


def test_unquoted_joined_key_in_a_flow_mapping_gets_a_hint(load):
    # YAML reads {env,rollout,actor: all} as three keys (env: null, rollout: null, actor: all)
    msg = error_of(load, "cluster.component_placement={env,rollout,actor: all}")
    assert msg.startswith("cluster.component_placement.env: ")
    assert "{'env,rollout,actor': all}" in msg


def test_placement_override_replaces_whole(load):
    cfg = load("cluster.component_placement={env: 0-3, rollout: 4-7, actor: 0-7}",
               "rollout.pipeline_stage_num=2", "actor.micro_batch_size=4", world_size=8)
    assert OmegaConf.to_container(cfg.cluster.component_placement) == {
        "env": "0-3", "rollout": "4-7", "actor": "0-7"}
    assert "cluster.component_placement" in REPLACED_WHOLE
    msg = error_of(load, "cluster.component_placement.env=0", world_size=2)
    assert msg.startswith("cluster.component_placement.env: component 'env' is placed twice")
    assert "given whole" in msg


@pytest.mark.parametrize("override, fragments", [
    ("actor.micro_bach_size=3", ["unknown key actor.micro_bach_size",
                                 "did you mean actor.micro_batch_size?"]),
    ("actor.rollout_epoch=2", ["unknown key actor.rollout_epoch",
                               "did you mean env.train.rollout_epoch?"]),
    ("algorithm.rollout_epoch=2", ["did you mean env.train.rollout_epoch?"]),
    ("rollout_epoch=2", ["unknown key rollout_epoch; did you mean env.train.rollout_epoch?"]),
    ("video_cfg.save_video=True", ["unknown key video_cfg", "did you mean env.train.video_cfg?"]),
    ("total_num_envs=16", ["did you mean env.train.total_num_envs?"]),
    ("env.train.simulator_type=libero", ["did you mean env.train.env_type?"]),
    ("runner.loger.project_name=x", ["unknown key runner.loger", "did you mean runner.logger?"]),
    ("actor.micro_batch_size=abc", ["actor.micro_batch_size: expected an int, got 'abc'"]),
    ("actor.micro_batch_size=2.5", ["actor.micro_batch_size: expected an int, got 2.5"]),
    ("actor.micro_batch_size=null", ["actor.micro_batch_size: may not be null"]),
    ("actor.optim.lr=fast", ["actor.optim.lr: expected a number, got 'fast'"]),
    ("runner.eval_before_train=1", ["runner.eval_before_train: expected a bool"]),
    ("actor.model.trainable=expert", ["actor.model.trainable: expected a list"]),
    ("actor.optim=3", ["actor.optim: is a section"]),
    ("+actor.foo=1", ["unknown key actor.foo"]),
    ("++actor.foo=1", ["unknown key actor.foo"]),
    ("~actor.nope", ["Could not delete from config. 'actor.nope' does not exist"]),
    ("actor.seed", ["Error parsing override 'actor.seed'", "key=value"]),
    ("actor..seed=1", ["override 'actor..seed=1'"]),
    ("actor.seed=[1", ["override 'actor.seed=[1'", "no viable alternative"]),
    ("cluster.component_placement={env: [0", ["override 'cluster.component_placement={env: [0'",
                                             "not valid YAML"]),
])
def test_override_errors(load, override, fragments):
    msg = error_of(load, override)
    for f in fragments:
        assert f in msg


def test_unknown_and_mistyped_keys_in_files_name_the_file(config_dir):
    _write(config_dir / "typo.yaml", "defaults:\n  - base\n  - _self_\nalgorithm:\n  gama: 0.9\n")
    msg = error_of(load_config, "typo", str(config_dir))
    assert "unknown key algorithm.gama; did you mean algorithm.gamma?" in msg and "typo.yaml" in msg
    _write(config_dir / "mistyped.yaml", "defaults:\n  - base\n  - _self_\nenv:\n  train:\n"
           "    total_num_envs: many\n")
    msg = error_of(load_config, "mistyped", str(config_dir))
    assert msg.startswith("env.train.total_num_envs: expected an int") and "mistyped.yaml" in msg
    _write(config_dir / "toplevel.yaml", "defaults:\n  - base\n  - _self_\nactors:\n  x: 1\n")
    msg = error_of(load_config, "toplevel", str(config_dir))
    assert "unknown key actors; did you mean actor?" in msg and "toplevel.yaml" in msg
    # a group file is named, not the experiment that includes it
    _write(config_dir / "model" / "typo.yaml", "hiden_dim: 3\n")
    msg = error_of(load_config, "child", str(config_dir), ["model@actor.model=typo"])
    assert "unknown key actor.model.hiden_dim; did you mean actor.model.hidden_dim?" in msg
    assert "model/typo.yaml" in msg


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("overrides, world, expected", [
    (["actor.micro_batch_size=32", "actor.global_batch_size=100"], None,
     "actor.global_batch_size: 100 is not a multiple of actor.micro_batch_size (32) x actor ranks (2)"),
    (["actor.global_batch_size=96", "actor.micro_batch_size=4"], None,
     "actor.global_batch_size: 96 does not divide the samples per rollout 128"),
    (["env.train.max_episode_steps=18"], None,
     "env.train.max_episode_steps: 18 is not a multiple of actor.model.num_action_chunks (4)"),
    (["env.eval.max_episode_steps=10"], None,
     "env.eval.max_episode_steps: 10 is not a multiple of actor.model.num_action_chunks (4)"),
    (["actor.model.openpi.action_horizon=2"], None,
     "actor.model.num_action_chunks: 4 executed actions exceed actor.model.openpi.action_horizon (2)"),
    (["actor.model.openpi.action_dim=1"], None,
     "actor.model.action_dim: 2 env action dims exceed actor.model.openpi.action_dim (1)"),
    (["model@actor.model=pi0_tiny", "actor.model.openpi.action_horizon=null", "actor.model.num_action_chunks=8",
      "env.train.max_episode_steps=16", "env.eval.max_episode_steps=16", "actor.global_batch_size=32"], None,
     "actor.model.num_action_chunks: 8 executed actions exceed actor.model.openpi.action_horizon "
     "(4, from the pi0_tiny preset)"),
    (["model@actor.model=pi0_tiny", "actor.model.openpi.config_name=pi9"], None,
     "actor.model.openpi.config_name: 'pi9' is not one of"),
    (["env.train.max_steps_per_rollout_epoch=10"], None,
     "env.train.max_steps_per_rollout_epoch: 10 is not a multiple of actor.model.num_action_chunks (4)"),
    (["env.train.init_params.num_tragets=2"], None,
     "env.train.init_params: reach2d takes no num_tragets; it takes"),
    (["env.train.init_params.image_size=[2, 3]"], None, "env.train.init_params"),
    (["algorithm.bootstrap_type=sometimes"], None,
     "algorithm.bootstrap_type: 'sometimes' is not one of standard, always, none"),
    (["algorithm.entropy_type=chunk"], None, "algorithm.entropy_type: 'chunk' is not one of"),
    (["algorithm.loss_agg_func=sum"], None, "algorithm.loss_agg_func: 'sum' is not one of"),
    (["env.train.reward_mode=shaped"], None, "env.train.reward_mode: 'shaped' is not one of sparse, dense"),
    (["env.train.rollout_epoch=0"], None, "env.train.rollout_epoch: 0 is not a positive integer"),
    (["cluster.component_placement={env: 0-3, rollout: 4-7, actor: 0-7}"], 2,
     "cluster.component_placement.env: rank set '0-3': rank 2 is beyond the world size 2"),
    (["cluster.component_placement={env: 0-, rollout: 1, actor: all}"], 2,
     "cluster.component_placement.env: rank set '0-': cannot read '0-'"),
    (["cluster.component_placement={env: 1-0, rollout: 1, actor: all}"], 2,
     "cluster.component_placement.env: rank set '1-0': range '1-0' is reversed"),
    (["cluster.component_placement={env: '0,0', rollout: 1, actor: all}"], 2,
     "cluster.component_placement.env: rank set '0,0': rank 0 is listed twice"),
    (["cluster.component_placement={env: 0, rollout: 1}"], 2,
     "cluster.component_placement: no ranks given for actor"),
    (["cluster.component_placement={env: 0, rollout: 1, actor: 0-1}"], 4,
     "cluster.component_placement: ranks 2-3 of the world size 4 run no component"),
    (["cluster.component_placement={env: 0, rollout: 1, critic: 0-1}"], 2,
     "cluster.component_placement.critic: unknown component 'critic'"),
    (["env.train.total_num_envs=36", "rollout.pipeline_stage_num=4"], None,
     "env.train.total_num_envs: 36 is not a multiple of env ranks (2) x rollout.pipeline_stage_num (4)"),
    (["env.eval.total_num_envs=3"], None,
     "env.eval.total_num_envs: 3 is not a multiple of env ranks (2)"),
    (["cluster.component_placement={env: 0, rollout: 0-3, actor: all}", "env.train.total_num_envs=6",
      "env.eval.total_num_envs=4", "actor.global_batch_size=48"], 4,
     "env.train.total_num_envs: 6 is not a multiple of rollout ranks (4)"),
    (["actor.micro_batch_size=0"], None, "actor.micro_batch_size: 0 is not a positive integer"),
    (["env.train.total_num_envs=-32"], None, "env.train.total_num_envs: -32 is not a positive integer"),
    (["rollout.pipeline_stage_num=0"], None, "rollout.pipeline_stage_num: 0 is not a positive integer"),
    (["algorithm.gamma=1.5"], None, "algorithm.gamma: 1.5 is not in [0, 1]"),
    (["algorithm.gae_lambda=-0.1"], None, "algorithm.gae_lambda: -0.1 is not in [0, 1]"),
    (["actor.optim.adam_beta2=1.0"], None, "actor.optim.adam_beta2: 1.0 is not in [0, 1)"),
    (["actor.optim.lr=0"], None, "actor.optim.lr: 0.0 is not > 0"),
    (["algorithm.entropy_bonus=-0.01"], None, "algorithm.entropy_bonus: -0.01 is not >= 0"),
    (["actor.model.openpi.noise_method=flow_ode"], None,
     "actor.model.openpi.noise_method: 'flow_ode' is not one of flow_sde, flow_noise"),
    (["algorithm.logprob_type=step_level"], None,
     "algorithm.logprob_type: 'step_level' is not one of chunk_level, action_level, token_level"),
    (["algorithm.reward_type=action_level"], None, "algorithm.reward_type: 'action_level' is not one of chunk_level"),
    (["algorithm.adv_type=reinforce"], None, "algorithm.adv_type: 'reinforce' is not one of gae, grpo"),
    (["runner.logger.logger_backends=[tensorboard, mlflow]"], None,
     "runner.logger.logger_backends: 'mlflow' is not one of tensorboard, wandb, swanlab"),
    (["runner.logger.logger_backends=[wandb, wandb]"], None,
     "runner.logger.logger_backends: ['wandb', 'wandb'] names a backend twice"),
    (["runner.logger.wandb_mode=cloud"], None, "runner.logger.wandb_mode: 'cloud' is not one of"),
    (["actor.model.precision=fp8"], None, "actor.model.precision: 'fp8' is not one of fp32, bf16, fp16"),
    (["env.train.env_type=mujoco"], None, "env.train.env_type: 'mujoco' is not one of"),
    (["actor.model.openpi.noise_logvar_range=[0.2, 0.1]"], None,
     "actor.model.openpi.noise_logvar_range: [0.2, 0.1] must be two numbers"),
    (["actor.model.openpi.noise_logvar_range=[0.1]"], None, "actor.model.openpi.noise_logvar_range"),
    (["algorithm.clip_ratio_c=0.5"], None, "algorithm.clip_ratio_c: 0.5 must be > 1"),
    (["actor.optim.total_training_steps=0"], None, "actor.optim.total_training_steps: 0 must be -1"),
    (["algorithm.rewards_lower_bound=0.8", "algorithm.rewards_upper_bound=0.2"], None,
     "algorithm.rewards_lower_bound: 0.8 is above algorithm.rewards_upper_bound (0.2)"),
    (["actor.model.frozen=['(unclosed']"], None, "actor.model.frozen: '(unclosed' is not a valid regex"),
    (["actor.model.openpi.num_steps=5"], None,
     "actor.model.openpi.num_steps: 5 differs from actor.model.num_steps (4)"),
    (["actor.model.openpi.action_env_dim=7"], None,
     "actor.model.openpi.action_env_dim: 7 differs from actor.model.action_dim (2)"),
    (["algorithm.loss_type=actor"], None, "algorithm.adv_type: gae needs a critic"),
    (["actor.model.add_value_head=false"], None, "algorithm.adv_type: gae needs a critic"),
    (["model@actor.model=pi0_tiny", "actor.model.openpi.add_value_head=false"], None,
     "actor.model.openpi.add_value_head: False, but algorithm.adv_type gae needs the critic"),
])
def test_validation_errors_name_the_key(load, overrides, world, expected):
    msg = error_of(load, *overrides, world_size=world)
    assert expected in msg


def test_validation_errors_name_the_file(config_dir):
    _write(config_dir / "small_batch.yaml", "defaults:\n  - base\n  - _self_\n"
           "actor:\n  micro_batch_size: 24\n")
    msg = error_of(load_config, "small_batch", str(config_dir))
    assert msg.startswith("actor.global_batch_size: 64 is not a multiple of actor.micro_batch_size (24)")
    # the key at fault came from the schema default; the file is named for micro_batch_size's
    # cousin only when it set the key itself
    _write(config_dir / "big_envs.yaml", "defaults:\n  - base\n  - _self_\n"
           "env:\n  train:\n    total_num_envs: 17\n")
    msg = error_of(load_config, "big_envs", str(config_dir))
    assert "env.train.total_num_envs: 17 is not a multiple of env ranks (2)" in msg
    assert "big_envs.yaml" in msg


def test_missing_value_names_the_key_and_file(config_dir):
    _write(config_dir / "env" / "needs.yaml", "env_type: reach2d\ntotal_num_envs: ???\n")
    _write(config_dir / "uses.yaml", "defaults:\n  - base\n  - env@env.train: needs\n  - _self_\n")
    msg = error_of(load_config, "uses", str(config_dir))
    assert msg.startswith("env.train.total_num_envs: no value") and "env/needs.yaml" in msg


@pytest.mark.parametrize("overrides, expected", [
    (["algorithm.group_size=5"], "env.train.total_num_envs: 32 is not a multiple of algorithm.group_size (5)"),
    (["algorithm.group_size=1"], "algorithm.group_size: 1; GRPO compares episodes within a group"),
    (["env.train.group_size=2"], "env.train.group_size: 2 differs from algorithm.group_size (4)"),
    (["env.train.use_fixed_reset_state_ids=False"], "env.train.use_fixed_reset_state_ids: False, but GRPO"),
    (["algorithm.group_size=32"], "env.train.total_num_envs: 32 envs give 16 per env rank and "
                                  "pipeline stage, not a multiple of env.train.group_size (32)"),
])
def test_grpo_group_errors(load, overrides, expected):
    assert expected in error_of(load, *overrides, name="reach2d_grpo_flow_sde")


def test_eval_env_checked_only_when_eval_runs(load):
    cfg = load("env.eval.total_num_envs=3", "runner.val_check_interval=0",
               "runner.eval_before_train=false")
    assert cfg.env.eval.total_num_envs == 3
    msg = error_of(load, "env.eval.total_num_envs=3", "runner.val_check_interval=0",
                   "runner.eval_before_train=false", "runner.only_eval=True")
    assert "env.eval.total_num_envs: 3" in msg


def test_world_size_argument_checked(load):
    assert "--world-size: 0 is not a positive integer" in error_of(load, world_size=0)


# ------------------------------------------------------------------ paths

def test_model_path_must_exist_and_comes_back_absolute(load, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_ckpt"
    msg = error_of(load, f"actor.model.model_path={missing}")
    assert msg.startswith(f"actor.model.model_path: checkpoint '{missing}' does not exist")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    monkeypatch.chdir(tmp_path)  # relative: the working directory first ...
    assert load("actor.model.model_path=ckpt").actor.model.model_path == str(ckpt)
    # ... then the repo root (the folder holding train.py and configs/)
    assert load("actor.model.model_path=configs").actor.model.model_path == str(REPO_ROOT / "configs")
    msg = error_of(load, "actor.model.model_path=nowhere/ckpt")
    assert "actor.model.model_path" in msg and str(REPO_ROOT) in msg and str(tmp_path) in msg


def test_resume_dir(load, tmp_path):
    assert load("runner.resume_dir=auto").runner.resume_dir == "auto"
    assert load("runner.resume_dir=null").runner.resume_dir is None
    msg = error_of(load, f"runner.resume_dir={tmp_path / 'global_step_10'}")
    assert msg.startswith("runner.resume_dir: checkpoint directory") and "does not exist" in msg
    step = tmp_path / "global_step_10"
    step.mkdir()
    assert load(f"runner.resume_dir={step}").runner.resume_dir == str(step)


def test_ds_config_must_exist_and_be_json(tmp_path, monkeypatch):
    msg = error_of(load_config, BASE, None, [f"actor.ds_config={tmp_path / 'zero9.json'}"])
    assert msg.startswith("actor.ds_config: DeepSpeed config") and "does not exist" in msg
    bad = _write(tmp_path / "bad.json", "{stage: 3")
    assert "actor.ds_config" in error_of(load_config, BASE, None, [f"actor.ds_config={bad}"])
    arr = _write(tmp_path / "arr.json", "[1, 2]")
    assert "must hold a JSON object" in error_of(load_config, BASE, None, [f"actor.ds_config={arr}"])
    _write(tmp_path / "mine.json", '{"zero_optimization": {"stage": 3}}')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(BASE, None, ["actor.ds_config=mine.json"])
    assert cfg.actor.ds_config == str(tmp_path / "mine.json")


# ------------------------------------------------------------------ legacy alias

def test_legacy_trainer_logger_wandb_alias(load):
    with pytest.warns(ConfigNotice, match="runner.logger"):
        cfg = load("trainer.logger.wandb.enable=true", "trainer.logger.wandb.project_name=RLinf",
                   "trainer.logger.wandb.experiment_name=openvla-libero")
    log = cfg.runner.logger
    assert list(log.logger_backends) == ["tensorboard", "wandb"]
    assert (log.project_name, log.experiment_name) == ("RLinf", "openvla-libero")
    with pytest.warns(ConfigNotice):
        cfg = load("runner.logger.logger_backends=[wandb,tensorboard]",
                   "trainer.logger.wandb.enable=false")
    assert list(cfg.runner.logger.logger_backends) == ["tensorboard"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigNotice)
        msg = error_of(load, "trainer.logger.wandb.entity=me")
        assert "unknown key trainer.logger.wandb.entity" in msg
        assert "unknown key trainer.optim" in error_of(load, "trainer.optim.lr=1")
        assert "trainer.logger.wandb.enable: expected a bool" in error_of(
            load, "trainer.logger.wandb.enable=yes please")


# ------------------------------------------------------------------ seed snippets

def _header(path: Path) -> dict:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith("# source: "), f"{path.name}: first line must name the source"
    fields = dict(part.strip().split(": ", 1) for part in first[2:].split("; "))
    return fields


def _mounted(path: Path) -> dict:
    """The snippet placed in the full config tree, as its header says."""
    data = load_yaml(path)
    mounts = [m.strip() for m in _header(path)["mount"].split(",")]
    out: dict = {}
    for key, value in data.items():
        target = next((m.split("->")[1].strip() for m in mounts if m.split("->")[0].strip() == key
                       and "->" in m), None)
        if target is None:
            assert "root" in mounts, f"{path.name}: no mount for {key}"
            out[key] = value
        else:
            node = out
            for k in target.split("."):
                node = node.setdefault(k, {})
            node[key] = value
    return out


def _dotlist(tree: dict, prefix: str = "") -> list[str]:
    """key=value overrides for a tree; placement (and other replaced-whole nodes) stays one
    value, written as JSON (valid YAML)."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in REPLACED_WHOLE:
            out += _dotlist(value, path + ".")
        else:
            out.append(f"{path}={json.dumps(value)}")
    return out


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in REPLACED_WHOLE and key != "trainer":
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _assert_landed(cfg, tree: dict) -> None:
    for path, value in _leaves(tree):
        if path == "trainer":
            w = value["logger"]["wandb"]
            assert "wandb" in cfg.runner.logger.logger_backends
            assert cfg.runner.logger.project_name == w["project_name"]
            assert cfg.runner.logger.experiment_name == w["experiment_name"]
            continue
        got = OmegaConf.select(cfg, path)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if isinstance(value, str) and re.fullmatch(r"\$\{[^}]+\}", value):
            ref = value[2:-1]
            assert got == OmegaConf.select(cfg, ref), path
        elif isinstance(value, str) and "${" in value:
            assert "${" not in got and got.endswith(value.split("}", 1)[1]), path
        elif isinstance(value, float):
            assert got == pytest.approx(value), path
        else:
            assert got == value, path


def test_every_seed_yaml_block_has_a_fixture():
    # 30 YAML blocks in the five seed docs (9 + 5 + 6 + 5 + 5); names carry doc and topic
    assert len(SNIPPETS) == 30
    assert [p.name[:2] for p in SNIPPETS] == [f"{i:02d}" for i in range(1, 31)]
    for p in SNIPPETS:
        h = _header(p)
        assert re.fullmatch(r"00[0-4]_[0-9a-f]{16}\.txt line \d+ \(.+\)", h["source"]), p.name
        assert int(h["world_size"]) in (2, 4, 8, 16)


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_seed_snippet_as_overrides(load, path):
    tree = _mounted(path)
    h = _header(path)
    ws, extra = int(h["world_size"]), h.get("overrides", "").split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigNotice)  # the legacy trainer block warns
        cfg = load(*_dotlist(tree), *extra, world_size=ws)
    _assert_landed(cfg, tree)
    derived_sizes(cfg, ws)  # fits the seed's world


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_seed_snippet_in_an_experiment_file(path, tmp_path, ds_json):
    """The snippet pasted into an experiment that inherits the base one."""
    d = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", d)
    tree = _mounted(path)
    _write(d / "seeded.yaml", yaml.safe_dump(
        {"defaults": [BASE, "_self_"], **tree, "actor": {
            **tree.get("actor", {}), "ds_config": ds_json}}, allow_unicode=True))
    h = _header(path)
    ws, extra = int(h["world_size"]), h.get("overrides", "").split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigNotice)
        cfg = load_config("seeded", str(d), extra, world_size=ws)
    _assert_landed(cfg, tree)


# ------------------------------------------------------------------ derived sizes

def _reference_sizes(cfg, world: int, placement: dict[str, list[int]]) -> dict:
    """Sizes by enumeration: deal envs to (env rank, stage) slots and to rollout ranks,
    count chunk steps one env step at a time, split samples into minibatches."""
    stages = cfg.rollout.pipeline_stage_num
    env_ranks, rollout_ranks, actor_ranks = (placement[c] for c in ("env", "rollout", "actor"))
    slots = [(r, s) for r in env_ranks for s in range(stages)]
    per_slot = {slot: 0 for slot in slots}
    for i in range(cfg.env.train.total_num_envs):  # contiguous blocks per slot
        per_slot[slots[i * len(slots) // cfg.env.train.total_num_envs]] += 1
    per_rank = {r: sum(per_slot[(r, s)] for s in range(stages)) for r in env_ranks}
    chunk_steps = 0
    t = 0
    while t < cfg.env.train.max_steps_per_rollout_epoch:  # one chunk = num_action_chunks env steps
        t += cfg.actor.model.num_action_chunks
        chunk_steps += 1
    samples = sum(chunk_steps for _ in range(cfg.env.train.total_num_envs)
                  for _ in range(cfg.env.train.rollout_epoch))
    minibatches = 0
    left = samples
    while left > 0:
        left -= cfg.actor.global_batch_size
        minibatches += 1
    micro_calls = 0
    consumed = 0
    while consumed < cfg.actor.global_batch_size:  # one micro-batch on every actor rank
        consumed += cfg.actor.micro_batch_size * len(actor_ranks)
        micro_calls += 1
    return {
        "world_size": world, "env_ranks": len(env_ranks), "rollout_ranks": len(rollout_ranks),
        "actor_ranks": len(actor_ranks), "envs_per_env_rank": per_rank[env_ranks[0]],
        "envs_per_stage": per_slot[slots[0]],
        "rollout_batch": cfg.env.train.total_num_envs // stages // len(rollout_ranks),
        "chunk_steps_per_epoch": chunk_steps, "samples_per_rollout": samples,
        "samples_per_actor_rank": samples // len(actor_ranks), "grad_accum_steps": micro_calls,
        "optimizer_steps_per_iteration": minibatches * cfg.algorithm.update_epoch,
    }


SEED_LAYOUTS = [  # (placement overrides, world size, stages, expected hand-computed sizes)
    ("{env: 0-3, rollout: 4-7, actor: 0-7}", 8, 2,
     dict(env_ranks=4, rollout_ranks=4, actor_ranks=8, envs_per_env_rank=8, envs_per_stage=4,
          rollout_batch=4, samples_per_rollout=128, samples_per_actor_rank=16,
          grad_accum_steps=2, optimizer_steps_per_iteration=4, colocated=False)),
    ("{'env,rollout,actor': all}", 8, 1,
     dict(env_ranks=8, rollout_ranks=8, actor_ranks=8, envs_per_env_rank=4, envs_per_stage=4,
          rollout_batch=4, samples_per_rollout=128, samples_per_actor_rank=16,
          grad_accum_steps=2, optimizer_steps_per_iteration=4, colocated=True)),
    ("{env: 0-1, rollout: 2-5, actor: 6-7}", 8, 1,
     dict(env_ranks=2, rollout_ranks=4, actor_ranks=2, envs_per_env_rank=16, envs_per_stage=16,
          rollout_batch=8, samples_per_rollout=128, samples_per_actor_rank=64,
          grad_accum_steps=8, optimizer_steps_per_iteration=4, colocated=False)),
    ("{env: 0-7, rollout: 8-15, actor: 0-15}", 16, 2,
     dict(env_ranks=8, rollout_ranks=8, actor_ranks=16, envs_per_env_rank=4, envs_per_stage=2,
          rollout_batch=2, samples_per_rollout=128, samples_per_actor_rank=8,
          grad_accum_steps=1, optimizer_steps_per_iteration=4, colocated=False)),
    ("{env: 0-3, rollout: 4-7, actor: 8-15}", 16, 1,
     dict(env_ranks=4, rollout_ranks=4, actor_ranks=8, envs_per_env_rank=8, envs_per_stage=8,
          rollout_batch=8, samples_per_rollout=128, samples_per_actor_rank=16,
          grad_accum_steps=2, optimizer_steps_per_iteration=4, colocated=False)),
]


@pytest.mark.parametrize("placement, world, stages, expected", SEED_LAYOUTS)
def test_derived_sizes_on_seed_layouts(load, placement, world, stages, expected):
    cfg = load(f"cluster.component_placement={placement}", f"rollout.pipeline_stage_num={stages}",
               f"cluster.num_gpus_per_node={world // 2}", "cluster.num_nodes=2",
               "actor.micro_batch_size=4", world_size=world)
    sizes = derived_sizes(cfg, world)
    for key, value in expected.items():
        assert sizes[key] == value, key
    assert sizes["chunk_steps_per_epoch"] == 4 and sizes["world_size"] == world
    # the config describes the same world: both columns agree
    other = sizes["at_config_world_size"]
    assert other == {k: v for k, v in sizes.items() if k != "at_config_world_size"}


def test_derived_sizes_quickstart_on_4_ranks(load):
    cfg = load("env.train.rollout_epoch=2", "actor.micro_batch_size=64",
               "actor.global_batch_size=256", "actor.optim.lr=1e-6", world_size=4)
    s = derived_sizes(cfg, 4)
    assert (s["samples_per_rollout"], s["grad_accum_steps"], s["optimizer_steps_per_iteration"],
            s["envs_per_env_rank"]) == (256, 1, 2, 8)
    other = s["at_config_world_size"]  # cluster/local: 1 x 2 ranks
    assert other["world_size"] == 2 and other["grad_accum_steps"] == 2


def test_derived_sizes_match_enumeration_on_random_layouts(ds_json):
    rng = random.Random(1234)
    checked = 0
    for _ in range(100):
        if checked == 12:
            break
        world = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
        # env and rollout counts that pair (pirl.engine.placement.pair_env_rollout): one divides the other
        pairable = [k for k in range(1, world) if k % (world - k) == 0 or (world - k) % k == 0]
        split = rng.choice(pairable) if pairable and rng.random() < 0.6 else None
        if split is None:
            placement = {"env": list(range(world)), "rollout": list(range(world)),
                         "actor": list(range(world))}
            spec = "{'env,rollout,actor': all}"
        else:
            placement = {"env": list(range(split)), "rollout": list(range(split, world)),
                         "actor": list(range(world))}
            spec = f"{{env: 0-{split - 1}, rollout: {split}-{world - 1}, actor: all}}"
        stages = rng.choice([1, 2, 3])
        chunks = rng.choice([1, 2, 4, 5])
        steps = chunks * rng.randint(1, 6)
        epoch_steps = chunks * rng.randint(1, 6)  # a rollout epoch may span several episodes
        # envs split over env ranks x stages and rollout ranks x stages, trajectories over actor ranks
        lcm = math.lcm(len(placement["env"]) * stages, len(placement["rollout"]) * stages, world)
        envs = lcm * rng.randint(1, 3)
        epochs = rng.randint(1, 3)
        micro = rng.choice([1, 2, 4])
        samples = envs * epochs * (epoch_steps // chunks)
        candidates = [g for g in range(micro * world, samples + 1, micro * world) if samples % g == 0]
        if not candidates:
            continue
        gb = rng.choice(candidates)
        ov = [f"cluster.component_placement={spec}", f"rollout.pipeline_stage_num={stages}",
              f"actor.model.num_action_chunks={chunks}", f"env.train.max_episode_steps={steps}",
              f"env.train.max_steps_per_rollout_epoch={epoch_steps}",
              f"env.eval.max_episode_steps={steps}", f"env.train.total_num_envs={envs}",
              f"env.eval.total_num_envs={envs}", f"env.train.rollout_epoch={epochs}",
              f"actor.micro_batch_size={micro}", f"actor.global_batch_size={gb}",
              f"algorithm.update_epoch={rng.randint(1, 4)}", f"actor.ds_config={ds_json}"]
        cfg = load_config(BASE, None, ov, world)
        sizes = derived_sizes(cfg, world)
        ref = _reference_sizes(cfg, world, placement)
        assert {k: sizes[k] for k in ref} == ref, ov
        checked += 1
    assert checked == 12


# ------------------------------------------------------------------ dry run

def test_format_dry_run_prints_resolved_yaml_and_sizes(load):
    cfg = load("cluster.component_placement={env: 0-3, rollout: 4-7, actor: 0-7}",
               "rollout.pipeline_stage_num=2", "actor.micro_batch_size=4", world_size=8)
    text = format_dry_run(cfg, derived_sizes(cfg, 8))
    yaml_part, table = text.split("# derived sizes\n")
    assert yaml.safe_load(yaml_part) == OmegaConf.to_container(cfg, resolve=True)
    assert "${" not in yaml_part
    rows = {line[:31].strip(): line[31:].split() for line in table.splitlines()[2:]}
    assert rows["world size"][:2] == ["8", "2"]  # given, config (1 x 2)
    assert rows["env ranks"][0] == "0-3" and rows["actor ranks"][:2] == ["0-7", "(8)"]
    assert rows["grad-accumulation steps"][0] == "2"
    assert rows["optimizer steps per iteration"][0] == "4"
    assert "config world size: cluster.component_placement.env" in table
    one = format_dry_run(cfg, derived_sizes(load(), 2))
    assert "config (" not in one  # one column when the world sizes agree


def test_cli_main(capsys, ds_json):
    assert main(["--config-name", BASE, "--world-size", "2", f"actor.ds_config={ds_json}"]) == 0
    out = capsys.readouterr().out
    assert "# derived sizes" in out and "samples per rollout" in out
    assert main(["--config-name", BASE, "actor.micro_batch_size=3"]) == 2
    assert "config error: actor.global_batch_size: 64 is not a multiple" in capsys.readouterr().err
