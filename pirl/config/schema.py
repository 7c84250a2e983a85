"""Typed schema of a pirl experiment, in the reference system's key layout (RLinf's
`examples/embodiment/config/`): env groups mounted at `env.train` / `env.eval`, model
groups at `actor.model`, per-split `rollout_epoch`, `video_cfg`,
`max_steps_per_rollout_epoch`, `init_params`, ... Every key here means what it means
there; keys of the reference system that pirl maps onto its own (FSDP -> DeepSpeed) or
refuses are handled before this schema sees them (pirl/config/reference.py).

Every field has a one-line doc comment; `--dry-run` prints the resolved config.
configs/README.md lists the keys that differ from the reference system and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


# The model's own precision where actor.model.precision is null (the reference's π0 groups):
# openpi loads π0 in bf16, the reference's OpenVLA-OFT group trains in bf16, flow_mlp is a
# small fp32 MLP.
MODEL_PRECISION = {"openpi": "bf16", "openvla_oft": "bf16", "flow_mlp": "fp32"}


def precision_of(model_cfg) -> str:
    """actor.model.precision, null meaning the model's own (MODEL_PRECISION)."""
    return model_cfg.precision or MODEL_PRECISION.get(model_cfg.model_type, "fp32")


@dataclass
class ClusterConfig:
    num_nodes: int = 1  # hosts in the job
    num_gpus_per_node: int = 8  # devices (GPUs, or CPU processes) per host; pirl's (the reference reads Ray's)
    # component -> ranks: "all", "0-3", "0,2,4", "0-1,6-7". Keys may join components
    # with commas ("env,rollout,actor: all"). Every rank named must be < world size.
    # Required: a file or an override must give it (a merge with a default would place a
    # component twice).
    component_placement: dict = field(default_factory=dict)
    # CPU threads per rank (torch, env workers, the software renderer); null: the host's
    # cores / its ranks (pirl/engine/threads.py)
    threads_per_rank: Optional[int] = None
    # A rank that dies or stops answering for this long ends the job: every other rank exits
    # naming it (pirl/engine/watchdog.py). Also the rendezvous and collective timeout.
    timeout_s: float = 600.0


@dataclass
class LoggerConfig:
    log_path: str = "results"  # root of logs, TensorBoard events, checkpoints, videos
    project_name: str = "pirl"  # WandB / SwanLab project
    experiment_name: str = "default"  # run name; also the log sub-directory
    logger_backends: list = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, swanlab
    wandb_mode: str = "auto"  # auto (offline without network), online, offline, disabled
    log_all_ranks: bool = False  # print logs from every rank, not only rank 0


@dataclass
class RunnerConfig:
    task_type: str = "embodied"  # the only task type
    max_epochs: int = 100  # training iterations (rollout + update)
    max_steps: int = -1  # optimizer steps cap; -1 = no cap
    only_eval: bool = False  # evaluate the policy (env.eval) and exit, no training
    val_check_interval: int = 10  # eval every N iterations; <=0 disables periodic eval
    save_interval: int = 50  # checkpoint every N iterations; <=0 disables
    keep_last_n: int = 3  # checkpoints kept; older are deleted after a successful save
    resume_dir: Optional[str] = None  # null, "auto" (latest under log_path), or a checkpoint dir
    # The reference system's .pt weights loaded after the model is built: pirl loads
    # weights from actor.model.model_path and resumes from resume_dir; only null is taken.
    ckpt_path: Optional[str] = None
    seed: int = 1234  # base seed of the run
    eval_before_train: bool = True  # evaluate the initial policy (success "before")
    save_policy: bool = True  # at the end, write the trained policy to <log_path>/<experiment>/policy (pirl.eval reads it)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class AlgorithmConfig:
    adv_type: str = "gae"  # gae (PPO) | grpo
    loss_type: str = "actor_critic"  # actor_critic (PPO with value head) | actor (GRPO)
    reward_type: str = "chunk_level"  # chunk_level: rewards summed over a chunk, one RL step = one chunk
    logprob_type: str = "chunk_level"  # chunk_level | action_level | token_level (pirl.flow.chain)
    entropy_type: str = "token_level"  # reduction of the entropy bonus, as logprob_type
    update_epoch: int = 1  # passes over the rollout data per iteration
    gamma: float = 0.99  # discount per chunk step, in [0, 1]
    gae_lambda: float = 0.95  # in [0, 1]
    # With env.train.auto_reset and a critic, add γ·V(last obs) to the reward of an episode's
    # last chunk: standard on truncation (time limit), always on every end (also
    # terminations); none never (pirl's reach2d runs: success must come within
    # max_episode_steps there, and V(s) cannot see the clock).
    bootstrap_type: str = "standard"
    normalize_advantages: bool = True  # over valid entries
    group_size: int = 1  # GRPO: consecutive envs that share an initial state
    filter_rewards: bool = False  # GRPO: drop groups whose mean success is outside [low, high]
    rewards_lower_bound: float = 0.1  # in [0, 1], <= rewards_upper_bound
    rewards_upper_bound: float = 0.9  # in [0, 1]
    clip_ratio_low: float = 0.2  # PPO ratio clip below: 1 - low
    clip_ratio_high: float = 0.28  # PPO ratio clip above: 1 + high (clip-higher)
    clip_ratio_c: Optional[float] = None  # dual-clip constant (> 1), None disables
    value_clip: Optional[float] = 0.2  # clip of value updates around the old value; None disables
    value_loss_type: str = "huber"  # huber | mse
    huber_delta: float = 10.0  # huber value loss: quadratic below, linear above
    value_loss_coef: float = 1.0  # weight of the value loss in actor_critic
    entropy_bonus: float = 0.0  # flow-sde: 0.0; flow-noise: 0.005 (seeds)
    loss_agg_func: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    kl_beta: float = 0.0  # KL penalty to a reference policy: pirl has none, only 0.0 is taken
    kl_penalty: str = "kl"  # the KL estimator, used only with kl_beta > 0: kl | abs | mse | low_var_kl | full
    # Read by no code of the reference system's embodied path either; env.<split>.reward_coef
    # scales rewards. Kept so its experiments load; a value other than 1.0 gets a notice.
    reward_coef: float = 1.0


@dataclass
class VideoConfig:
    save_video: bool = False  # write episode videos of env rank 0
    info_on_video: bool = True  # draw step, reward, success and instruction on frames
    video_base_dir: str = "${runner.logger.log_path}/video/train"  # where videos are written
    fps: int = 10  # frames per second of the saved videos


@dataclass
class EnvSplitConfig:
    """One env split (`env.train` or `env.eval`), the reference system's env group."""

    env_type: str = "reach2d"  # reach2d | maniskill | libero | metaworld | calvin | gsenv (pirl.envs.SIMULATORS)
    # libero: libero_spatial | libero_object | libero_goal | libero_10 | libero_90 (pirl:
    # "<suite>:<task index>" for one task); metaworld: metaworld_50 | metaworld_45_ind (ML45's
    # 45 train tasks) | metaworld_45_ood (its 5 held out) (pirl: MT10, or a task: reach-v3);
    # calvin: calvin_abc | calvin_d | calvin_abcd. ManiSkill and GSEnv name their task in
    # init_params.id. pirl: MetaWorld also takes a list of tasks.
    task_suite_name: Optional[Any] = None
    total_num_envs: int = 16  # across all env ranks
    rollout_epoch: int = 1  # rollouts of every env per iteration (eval: 1)
    max_episode_steps: int = 32  # env steps (not chunks) before an episode is truncated
    # Env steps of one rollout epoch (with auto_reset episodes continue across it);
    # a multiple of actor.model.num_action_chunks.
    max_steps_per_rollout_epoch: int = "${.max_episode_steps}"  # type: ignore[assignment]
    auto_reset: bool = True  # reset an env when its episode ends, within the rollout
    ignore_terminations: bool = False  # True: run every episode to max_episode_steps
    use_rel_reward: bool = False  # pay r_t - r_{t-1} (RLinf's relative reward): a held success pays once
    reward_coef: float = 1.0  # scale of the env reward
    reward_mode: str = "sparse"  # sparse: success as reward (seeds) | dense: the simulator's shaped reward
    seed: int = 0  # env seed
    group_size: int = 1  # envs sharing an initial state (GRPO)
    # True: envs of a group of group_size share their reset state (GRPO needs it); False:
    # every env draws its own.
    use_fixed_reset_state_ids: bool = True
    # The reference system's flag for the eval split (and ordered eval resets): pirl knows
    # the split and seeds eval episodes itself; accepted as given.
    is_eval: bool = False
    use_ordered_reset_state_ids: bool = False  # reset states in order instead of drawn: only False is taken
    specific_reset_id: Optional[int] = None  # pin every reset to one state: only null is taken (pirl: "<suite>:<task>")
    use_step_penalty: bool = False  # per-step penalty: pirl has none, only False is taken
    reset_gripper_open: bool = True  # LIBERO: the gripper opens during the settle steps; only True is taken
    enable_offload: bool = False  # offload the simulator between rollouts: only False is taken
    num_workers: int = 0  # worker processes for simulators that need one env per process
    video_cfg: VideoConfig = field(default_factory=VideoConfig)  # episode videos of this split
    # Simulator constructor options (pirl.envs: each simulator names the keys it takes),
    # e.g. libero camera_heights / camera_widths, maniskill id / control_mode / sim_backend.
    init_params: dict = field(default_factory=dict)
    calvin_root: Optional[str] = None  # CALVIN: git checkout of mees/calvin (with calvin_env); null: $CALVIN_ROOT


@dataclass
class EnvConfig:
    group_name: str = "EnvGroup"  # the reference system's worker-group name, informational
    train: EnvSplitConfig = field(default_factory=EnvSplitConfig)  # envs of the rollouts
    eval: EnvSplitConfig = field(default_factory=EnvSplitConfig)  # envs of evaluation
    enable_offload: bool = False  # offload simulators between rollouts: only False is taken


@dataclass
class RolloutModelConfig:
    """The reference system's rollout worker loads its own copy; pirl's rollout replica is
    the actor's weights, synced after every update, so both must name the same model."""

    model_path: Optional[str] = "${actor.model.model_path}"  # must equal actor.model.model_path
    precision: Optional[str] = "${actor.model.precision}"  # must equal actor.model.precision


@dataclass
class SamplingParamsConfig:
    """How a token policy (OpenVLA-OFT) draws its action bins; the actor re-scores the stored
    bins under the same train-time filter (pirl/models/oft/sampling.py)."""

    do_sample: bool = True  # False: greedy (argmax) in rollout and eval
    temperature_train: float = 1.0  # > 0: rollout temperature, also of the actor's log-probs
    temperature_eval: float = 1.0  # eval temperature; <= 0: greedy eval
    top_k: int = -1  # keep the k most probable bins; <= 0: all
    top_p: float = 1.0  # nucleus: the most probable bins holding this mass, in (0, 1]
    repetition_penalty: float = 1.0  # parallel decoding repeats no tokens: only 1.0 is taken


@dataclass
class RolloutConfig:
    group_name: str = "RolloutGroup"  # worker-group name, informational
    pipeline_stage_num: int = 1  # split each env rank's envs into S groups, pipelined
    enable_offload: bool = False  # move rollout weights off the device while the actor trains
    generation_backend: str = "huggingface"  # pirl samples with its own torch model: only huggingface is taken
    recompute_logprobs: bool = False  # True: recompute old log-probs with the actor: only False is taken
    unnorm_key: Optional[str] = None  # the reference's rollout copy of actor.model.unnorm_key; not read
    mode: str = "colocate"  # informational: cluster.component_placement decides
    model: RolloutModelConfig = field(default_factory=RolloutModelConfig)
    sampling_params: SamplingParamsConfig = field(default_factory=SamplingParamsConfig)  # token policies


@dataclass
class OpenPIConfig:
    """Flow-policy settings; used by every flow model (π0, π0.5 and flow_mlp). Unset
    (null) size keys take the value of the `config_name` preset."""

    config_name: str = "pi0_tiny"  # model preset (pirl/models/pi0/configuration.py: pi0, pi05, pi0_libero, ...)
    num_images_in_input: int = 2  # cameras fed to the model: 1 main, 2 main + wrist
    noise_level: float = 0.5  # flow_sde noise strength a
    noise_logvar_range: list = field(default_factory=lambda: [0.08, 0.16])  # flow_noise std bounds
    noise_anneal: bool = False  # anneal noise_level over training: pirl has none, only False is taken
    noise_params: Optional[list] = None  # [start, end, steps] of noise_anneal; unused without it
    # The next three repeat actor.model keys (the seeds interpolate them); must be equal.
    action_chunk: int = "${..num_action_chunks}"  # type: ignore[assignment]
    num_steps: int = "${..num_steps}"  # type: ignore[assignment]
    action_env_dim: int = "${..action_dim}"  # type: ignore[assignment]
    # Model sizes; null: the preset's (flow_mlp: num_action_chunks and actor.model.action_dim).
    action_horizon: Optional[int] = None  # H >= num_action_chunks: actions the model predicts per chunk
    action_dim: Optional[int] = None  # D >= env action dims: the model's padded action (and state) width
    train_expert_only: bool = True  # freeze the VLM (PaliGemma); train the action expert
    noise_method: str = "flow_sde"  # flow_sde | flow_noise
    # Critic head on π0 (π0's builder reads this key); follows actor.model.add_value_head
    # unless set. With algorithm.adv_type gae it must be True.
    add_value_head: bool = "${..add_value_head}"  # type: ignore[assignment]
    pi05: Optional[bool] = None  # π0.5: adaRMS time conditioning, state in the prompt; null: the preset's
    value_after_vlm: bool = False  # critic on the VLM prefix output, else on the action expert's
    value_vlm_mode: str = "mean_token"  # pooling of the VLM output for value_after_vlm: mean_token only
    joint_logprob: bool = False  # flow_sde: False, flow_noise: True (seeds)
    # No critic gradient into the shared trunk; null: the reference's default for the model
    # (False).
    detach_critic_input: Optional[bool] = None
    use_dsrl: bool = False  # DSRL (latent-noise actor): pirl has none, only False is taken; dsrl_* unused without it
    dsrl_state_dim: int = 8
    dsrl_action_noise_dim: int = 32
    dsrl_num_q_heads: int = 10
    dsrl_agg_q: str = "mean"
    dsrl_image_latent_dim: int = 64
    dsrl_state_latent_dim: int = 64
    dsrl_hidden_dims: list = field(default_factory=lambda: [128, 128, 128])
    # Preset overrides (pirl/models/pi0/configuration.py); null keeps the preset's value.
    max_token_len: Optional[int] = None  # prompt tokens (openpi: 48 for π0, 200 for π0.5)
    discrete_state_input: Optional[bool] = None  # state as 256 bins in the prompt (π0.5)
    paligemma: Optional[dict] = None  # GemmaSpec fields of the VLM, e.g. {depth: 4}
    expert: Optional[dict] = None  # GemmaSpec fields of the action expert
    vision: Optional[dict] = None  # SiglipSpec fields of the image encoder
    tokenizer_path: Optional[str] = None  # PaliGemma SentencePiece model (paligemma_tokenizer.model)
    norm_stats_path: Optional[str] = None  # norm_stats.json; default: found beside the checkpoint
    asset_id: Optional[str] = None  # assets/<asset_id>/norm_stats.json of an openpi checkpoint
    normalization: Optional[str] = None  # zscore | quantile; null: zscore for π0, quantile for π0.5
    delta_action_mask: Optional[list] = None  # per action dim: True where actions are deltas of the state
    train_augment: bool = False  # train-time image augmentation in the processor
    lora_targets: list = field(default_factory=lambda: ["vlm"])  # towers with LoRA: vlm, expert, vision
    checkpoint_format: Optional[str] = None  # pirl | openpi | openpi_jax | lerobot; null: detected from the files


@dataclass
class OFTModelConfig:
    """pirl's OpenVLA-OFT settings (model_type openvla_oft); the reference system's own OFT
    keys sit flat in actor.model."""

    config_name: str = "openvla_7b"  # size preset (pirl/models/oft/configuration.py): openvla_7b | oft_tiny
    attention: str = "bidirectional"  # bidirectional (OFT's parallel decoding) | causal (OpenVLA's)
    normalization: str = "bounds_q99"  # bounds_q99 | bounds (min/max) | none (a model without statistics)
    lora_targets: list = field(default_factory=lambda: ["decoder", "lm_head", "vision", "projector"])  # is_lora towers
    gripper: str = "none"  # none | libero (gripper g in [0, 1] -> -sign(2g - 1), LIBERO's convention)
    tokenizer_path: Optional[str] = None  # Llama SentencePiece tokenizer.model; null: the checkpoint's (bytes without one)
    statistics_path: Optional[str] = None  # dataset_statistics.json to use instead of the checkpoint's
    vision: Optional[list] = None  # per-tower ViTSpec overrides of the preset, e.g. [{depth: 2}, {depth: 2}]
    llm: Optional[dict] = None  # LlamaSpec overrides of the preset, e.g. {num_layers: 4}


@dataclass
class ModelConfig:
    model_type: str = "flow_mlp"  # flow_mlp | openpi | openvla_oft
    model_name: Optional[str] = None  # the reference's second spelling of model_type; must equal it
    model_path: Optional[str] = None  # checkpoint directory to load; must exist when set
    # fp32 | bf16 | fp16; null: the model's own (openpi: bf16, as openpi loads π0; flow_mlp: fp32)
    precision: Optional[str] = None
    action_dim: int = 7  # env action dims
    num_action_chunks: int = 4  # executed actions per chunk (C)
    num_steps: int = 4  # denoising steps K
    # The robot state as an input; null: the model's own (π0 and flow_mlp always read it, only
    # null / True is taken for them; OpenVLA-OFT official: a proprio token after the patches).
    use_proprio: Optional[bool] = None
    prediction: str = "sample"  # flow_mlp output: sample (x̂0, v derived) | velocity (v directly)
    hidden_dim: int = 128  # flow_mlp width
    num_layers: int = 3  # flow_mlp depth
    add_value_head: bool = True  # critic head (PPO/GAE needs it; GRPO does not)
    is_lora: bool = False  # LoRA on the VLM instead of full fine-tuning
    lora_rank: int = 32  # LoRA rank r when is_lora
    gradient_checkpointing: bool = False  # π0: recompute layer activations in backward (works, tested)
    trainable: list = field(default_factory=list)  # regexes of trainable params; empty = all the builder left trainable
    frozen: list = field(default_factory=list)  # regexes of frozen params (applied after)
    openpi: OpenPIConfig = field(default_factory=OpenPIConfig)
    # OpenVLA-OFT (model_type openvla_oft), the reference system's model/openvla_oft.yaml keys:
    implement_version: str = "rlinf"  # rlinf (RLinf's checkpoints) | official (moojink/openvla-oft: FiLM, proprio)
    value_type: str = "action_level"  # critic outputs: action_level (one per executed action) | chunk_level
    proprio_dim: int = 8  # proprio state dims (use_proprio)
    use_film: bool = False  # official: FiLM of the vision blocks by the prompt
    unnorm_key: Optional[str] = None  # dataset of dataset_statistics.json (or <key>_no_noops); null: the only one
    center_crop: bool = False  # crop the central 90% of the image area, resized back (OFT's eval crop)
    max_prompt_length: int = 50  # prompt tokens incl. <s> and the final "▁", left-padded
    num_images_in_input: int = 1  # cameras: main, then wrist
    vocab_size: Optional[int] = None  # Llama's tokenizer vocabulary; checked against the model when set
    hidden_size: Optional[int] = None  # Llama width; checked against the model when set
    image_size: Optional[list] = None  # [S, S]; checked against the model when set
    lora_path: Optional[str] = None  # peft adapter folder folded into model_path's weights at load
    attn_implementation: str = "sdpa"  # sdpa | eager (flash_attention_2 cannot take OFT's bidirectional mask)
    low_cpu_mem_usage: bool = True  # informational: pirl loads tensors straight into the built model
    trust_remote_code: bool = False  # informational: pirl builds OpenVLA from transformers blocks, no remote code
    policy_setup: str = "widowx_bridge"  # informational: ManiSkill's gripper mapping lives in the env adapter
    oft: OFTModelConfig = field(default_factory=OFTModelConfig)


@dataclass
class OptimConfig:
    lr: float = 3e-4  # policy learning rate
    value_lr: float = "${.lr}"  # type: ignore[assignment]  # value-head learning rate
    adam_beta1: float = 0.9  # in [0, 1)
    adam_beta2: float = 0.999  # in [0, 1)
    adam_eps: float = 1e-8  # > 0
    weight_decay: float = 0.0  # AdamW decoupled decay
    clip_grad: float = 1.0  # max global grad norm (DeepSpeed gradient_clipping)
    lr_scheduler: str = "constant"  # constant | cosine
    lr_warmup_steps: int = 0  # linear warmup, optimizer steps; -1 (the reference's default): none
    min_lr: float = 0.0  # cosine floor
    total_training_steps: int = -1  # cosine horizon in optimizer steps; -1: derived
    critic_warmup_steps: int = 0  # iterations training the critic alone first: pirl has none, only 0 is taken


@dataclass
class ActorConfig:
    group_name: str = "ActorGroup"  # worker-group name, informational
    micro_batch_size: int = 32  # samples per rank per forward/backward
    global_batch_size: int = 64  # samples per optimizer step, all ranks
    seed: int = "${runner.seed}"  # type: ignore[assignment]
    enable_offload: bool = False  # move actor weights/optimizer off the device during rollout
    # DeepSpeed JSON merged with the run's values; relative: cwd, then the repo root. The
    # reference's actor.fsdp_config.sharding_strategy sets it (pirl/config/reference.py).
    ds_config: str = "ds_configs/zero3.json"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class PirlConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)


# Keys the reference system has that this schema does not (actor.fsdp_config,
# weight_syncer, reward, critic, ...): pirl/config/reference.py maps them with a notice or
# refuses them by name, before a config meets this schema.
