"""Typed schema of a pirl experiment. Key names and meanings follow the seed documents
(the reference system's YAML), so their snippets are valid pirl config.

Every field has a one-line doc comment; `--dry-run` prints the resolved config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ClusterConfig:
    num_nodes: int = 1  # hosts in the job
    num_gpus_per_node: int = 2  # devices (GPUs, or CPU processes) per host
    # component -> ranks: "all", "0-3", "0,2,4", "0-1,6-7". Keys may join components
    # with commas ("env,rollout,actor: all"). Every rank named must be < world size.
    component_placement: dict = field(default_factory=lambda: {"env,rollout,actor": "all"})
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
    task_type: str = "embodied"  # the only task type (seed key)
    max_epochs: int = 100  # training iterations (rollout + update)
    max_steps: int = -1  # optimizer steps cap; -1 = no cap
    val_check_interval: int = 10  # eval every N iterations; <=0 disables periodic eval
    save_interval: int = 50  # checkpoint every N iterations; <=0 disables
    keep_last_n: int = 3  # checkpoints kept; older are deleted after a successful save
    resume_dir: Optional[str] = None  # null, "auto" (latest under log_path), or a checkpoint dir
    seed: int = 1234  # base seed of the run
    eval_before_train: bool = True  # evaluate the initial policy (success "before")
    save_policy: bool = True  # at the end, write the trained policy to <log_path>/<experiment>/policy (pirl.eval reads it)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class AlgorithmConfig:
    adv_type: str = "gae"  # gae (PPO) | grpo
    loss_type: str = "actor_critic"  # actor_critic (PPO with value head) | actor (GRPO)
    reward_type: str = "chunk_level"  # chunk_level only: rewards summed over a chunk, one RL step = one chunk
    logprob_type: str = "chunk_level"  # chunk_level | action_level | token_level (pirl.flow.chain)
    rollout_epoch: int = 1  # rollouts of every env per iteration
    update_epoch: int = 1  # passes over the rollout data per iteration
    gamma: float = 0.99  # discount per chunk step, in [0, 1]
    gae_lambda: float = 0.95  # in [0, 1]
    # Truncated episodes (time limit, not a terminal state): bootstrap with γ·V(last obs)?
    # Off by default: in the seeds' benchmarks success must come within max_episode_steps,
    # so running out of time is a real failure and V(s) cannot see the clock.
    bootstrap_on_truncation: bool = False
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
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    max_grad_norm: Optional[float] = None  # alias of actor.optim.clip_grad when set


@dataclass
class VideoConfig:
    save_video: bool = False  # write episode videos of env rank 0
    info_on_video: bool = True  # draw step, reward, success and instruction on frames
    video_base_dir: str = "${runner.logger.log_path}/video/train"  # where videos are written
    fps: int = 10  # frames per second of the saved videos


@dataclass
class EnvSplitConfig:
    simulator_type: str = "reach2d"  # reach2d | maniskill | libero | metaworld | calvin
    task: Optional[Any] = None  # simulator task id(s), e.g. PickCube-v1, libero_spatial, MT10
    total_num_envs: int = 16  # across all env ranks
    max_episode_steps: int = 32  # env steps (not chunks) per episode
    auto_reset: bool = True  # reset an env when its episode ends, within the rollout
    ignore_terminations: bool = False  # True: run every episode to max_episode_steps
    use_rel_reward: bool = False  # pay r_t - r_{t-1} (RLinf's relative reward): a held success pays once
    reward_coef: float = 1.0  # scale of the env reward
    seed: int = 0  # env seed
    group_size: int = 1  # envs sharing an initial state (GRPO)
    num_workers: int = 0  # worker processes for simulators that need one env per process
    image_size: int = 64  # rendered RGB side length
    extra: dict = field(default_factory=dict)  # simulator-specific options
    calvin_root: Optional[str] = None  # CALVIN: git checkout of mees/calvin (with calvin_env); null: $CALVIN_ROOT


@dataclass
class EnvConfig:
    group_name: str = "EnvGroup"  # seed key, informational
    train: EnvSplitConfig = field(default_factory=EnvSplitConfig)  # envs of the rollouts
    eval: EnvSplitConfig = field(default_factory=EnvSplitConfig)  # envs of evaluation


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
    pipeline_stage_num: int = 1  # split each env rank's envs into S groups, pipelined
    enable_offload: bool = False  # move rollout weights off the device while the actor trains
    mode: str = "colocate"  # seed key, informational: cluster.component_placement decides
    sampling_params: SamplingParamsConfig = field(default_factory=SamplingParamsConfig)  # token policies


@dataclass
class OpenPIConfig:
    """Flow-policy settings; used by every flow model (π0, π0.5 and flow_mlp)."""

    noise_level: float = 0.5  # flow_sde noise strength a
    noise_logvar_range: list = field(default_factory=lambda: [0.08, 0.16])  # flow_noise std bounds
    # The next three repeat actor.model sizes (the seeds interpolate them); must be equal.
    action_chunk: int = "${actor.model.num_action_chunks}"  # type: ignore[assignment]
    num_steps: int = "${actor.model.num_steps}"  # type: ignore[assignment]
    train_expert_only: bool = True  # freeze the VLM (PaliGemma); train the action expert
    action_env_dim: int = "${actor.model.action_dim}"  # type: ignore[assignment]
    noise_method: str = "flow_sde"  # flow_sde | flow_noise
    # Critic head on π0 (π0's builder reads this key); follows actor.model.add_value_head
    # unless set. With algorithm.adv_type gae it must be True.
    add_value_head: bool = "${actor.model.add_value_head}"  # type: ignore[assignment]
    pi05: bool = False  # π0.5: adaRMS time conditioning, state in the prompt
    value_after_vlm: bool = False  # critic on the VLM prefix output, else on the action expert's
    joint_logprob: bool = False  # flow_sde: False, flow_noise: True (seeds)
    detach_critic_input: bool = False  # no critic gradient into the shared trunk
    config_name: str = "pi0_tiny"  # model size preset (pi0, pi05, pi0_tiny, ...)
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
    model_path: Optional[str] = None  # checkpoint directory to load; must exist when set
    action_dim: int = 2  # env action dims
    num_action_chunks: int = 4  # executed actions per chunk (C)
    action_horizon: int = "${actor.model.num_action_chunks}"  # type: ignore[assignment]  # model H >= C
    action_model_dim: int = "${actor.model.action_dim}"  # type: ignore[assignment]  # model D >= D_env
    num_steps: int = 4  # denoising steps K
    precision: str = "fp32"  # fp32 | bf16 | fp16
    prediction: str = "sample"  # flow_mlp output: sample (x̂0, v derived) | velocity (v directly)
    hidden_dim: int = 128  # flow_mlp width
    num_layers: int = 3  # flow_mlp depth
    add_value_head: bool = True  # critic head (PPO/GAE needs it; GRPO does not)
    is_lora: bool = False  # LoRA on the VLM instead of full fine-tuning
    lora_rank: int = 8  # LoRA rank r when is_lora
    gradient_checkpointing: bool = False  # π0: recompute layer activations in backward (works, tested)
    trainable: list = field(default_factory=list)  # regexes of trainable params; empty = all the builder left trainable
    frozen: list = field(default_factory=list)  # regexes of frozen params (applied after)
    openpi: OpenPIConfig = field(default_factory=OpenPIConfig)
    # OpenVLA-OFT (model_type openvla_oft), the reference system's model/openvla_oft.yaml keys:
    implement_version: str = "rlinf"  # rlinf (RLinf's checkpoints) | official (moojink/openvla-oft: FiLM, proprio)
    value_type: str = "action_level"  # critic outputs: action_level (one per executed action) | chunk_level
    use_proprio: bool = False  # official: a proprio token after the image patches
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
    value_lr: float = "${actor.optim.lr}"  # type: ignore[assignment]  # value-head learning rate
    adam_beta1: float = 0.9  # in [0, 1)
    adam_beta2: float = 0.999  # in [0, 1)
    adam_eps: float = 1e-8  # > 0
    weight_decay: float = 0.0  # AdamW decoupled decay
    clip_grad: float = 1.0  # max global grad norm (DeepSpeed gradient_clipping)
    lr_scheduler: str = "constant"  # constant | cosine
    lr_warmup_steps: int = 0  # linear warmup, optimizer steps
    min_lr: float = 0.0  # cosine floor
    total_training_steps: int = -1  # cosine horizon in optimizer steps; -1: derived


@dataclass
class ActorConfig:
    micro_batch_size: int = 32  # samples per rank per forward/backward
    global_batch_size: int = 64  # samples per optimizer step, all ranks
    seed: int = "${runner.seed}"  # type: ignore[assignment]
    enable_offload: bool = False  # move actor weights/optimizer off the device during rollout
    # DeepSpeed JSON merged with the run's values; relative: cwd, then the repo root
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
    video_cfg: VideoConfig = field(default_factory=VideoConfig)
