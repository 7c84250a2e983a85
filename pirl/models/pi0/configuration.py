"""Sizes and switches of π0 / π0.5, kept apart from the modules (lerobot's split).

Presets (`actor.model.openpi.config_name`):
    pi0, pi05          real sizes: SigLIP So400m/14 at 224 px, Gemma 2B + Gemma 300M expert
    pi0_mid, pi05_mid  a mid size that fits a 2-core CPU (benchmarks)
    pi0_tiny, pi05_tiny  widths 32-64, 2 layers, 28 px images (tests)

Joint attention concatenates both experts' tokens into one softmax, so the two Gemmas
must agree on depth, head count, KV-head count and head dim; `validate` checks that.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# π0 / π0.5 pad states and actions to 32 dims whatever the robot (openpi's model dim).
MODEL_ACTION_DIM = 32
# PaliGemma's vocabulary (SentencePiece 257152 tokens incl. <image>/<loc>/<seg> tokens).
PALIGEMMA_VOCAB = 257152
# Camera slots, in openpi's order; missing cameras are masked, never dropped.
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclass(frozen=True)
class GemmaSpec:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = PALIGEMMA_VOCAB
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-6


@dataclass(frozen=True)
class SiglipSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_tokens(self) -> int:
        """Image tokens per camera: (image_size / patch)^2 (256 at 224 px, patch 14)."""
        return (self.image_size // self.patch_size) ** 2


GEMMA_2B = GemmaSpec(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
GEMMA_300M = GemmaSpec(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
SIGLIP_SO400M = SiglipSpec(hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304)

GEMMA_MID = GemmaSpec(width=512, depth=6, mlp_dim=2048, num_heads=4, num_kv_heads=1, head_dim=64, vocab_size=1024)
GEMMA_MID_EXPERT = GemmaSpec(width=256, depth=6, mlp_dim=1024, num_heads=4, num_kv_heads=1, head_dim=64, vocab_size=1024)
SIGLIP_MID = SiglipSpec(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, image_size=112)

GEMMA_TINY = GemmaSpec(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=16, vocab_size=512)
GEMMA_TINY_EXPERT = GemmaSpec(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16, vocab_size=512)
SIGLIP_TINY = SiglipSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=28)


@dataclass(frozen=True)
class Pi0Config:
    paligemma: GemmaSpec = GEMMA_2B
    expert: GemmaSpec = GEMMA_300M
    vision: SiglipSpec = SIGLIP_SO400M
    pi05: bool = False  # adaRMS time conditioning, no state token, state bins in the prompt
    action_dim: int = MODEL_ACTION_DIM  # D: model action/state dim (padded)
    action_horizon: int = 50  # H: actions per chunk the model predicts
    max_token_len: int = 48  # prompt tokens (openpi: 48 for π0, 200 for π0.5)
    discrete_state_input: bool = False  # π0.5: state as 256 bins in the prompt
    image_keys: tuple = IMAGE_KEYS
    # RL heads (pirl; absent from openpi/lerobot checkpoints)
    add_value_head: bool = True
    value_after_vlm: bool = False  # critic on the mean VLM prefix output, else on expert outputs
    detach_critic_input: bool = False
    add_noise_head: bool = False  # flow_noise: learned per-dim std from expert outputs
    noise_std_range: tuple = (0.08, 0.16)  # `openpi.noise_logvar_range`: bounds of the learned std

    def validate(self) -> Pi0Config:
        p, e = self.paligemma, self.expert
        for key in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(p, key) != getattr(e, key):
                raise ValueError(f"π0 joint attention needs paligemma.{key} == expert.{key}, "
                                 f"got {getattr(p, key)} and {getattr(e, key)}")
        if p.num_heads % p.num_kv_heads:
            raise ValueError(f"num_heads {p.num_heads} must be a multiple of num_kv_heads {p.num_kv_heads}")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(f"image_size {self.vision.image_size} not a multiple of patch {self.vision.patch_size}")
        lo, hi = self.noise_std_range
        if not 0 < lo < hi:
            raise ValueError(f"noise_logvar_range must be 0 < low < high, got {self.noise_std_range}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Pi0Config:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(Pi0Config)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown π0 config keys {unknown}; expected a subset of {sorted(known)}")
        for key, cls in (("paligemma", GemmaSpec), ("expert", GemmaSpec), ("vision", SiglipSpec)):
            if isinstance(d.get(key), dict):
                d[key] = cls(**d[key])
        for key in ("image_keys", "noise_std_range"):
            if key in d:
                d[key] = tuple(d[key])
        return Pi0Config(**d).validate()


PRESETS: dict[str, Pi0Config] = {
    "pi0": Pi0Config(),
    "pi05": Pi0Config(pi05=True, max_token_len=200, discrete_state_input=True),
    "pi0_mid": Pi0Config(paligemma=GEMMA_MID, expert=GEMMA_MID_EXPERT, vision=SIGLIP_MID, action_horizon=16),
    "pi05_mid": Pi0Config(paligemma=GEMMA_MID, expert=GEMMA_MID_EXPERT, vision=SIGLIP_MID, action_horizon=16,
                          pi05=True, max_token_len=64, discrete_state_input=True),
    "pi0_tiny": Pi0Config(paligemma=GEMMA_TINY, expert=GEMMA_TINY_EXPERT, vision=SIGLIP_TINY,
                          action_dim=8, action_horizon=4, max_token_len=16),
    "pi05_tiny": Pi0Config(paligemma=GEMMA_TINY, expert=GEMMA_TINY_EXPERT, vision=SIGLIP_TINY,
                           action_dim=8, action_horizon=4, max_token_len=48, pi05=True,
                           discrete_state_input=True),
}


# openpi training-config names, as the reference system's experiments give them in
# actor.model.openpi.config_name (its rlinf/models/embodiment/openpi/dataconfig): the model
# each one builds. pi05_* there set discrete_state_input False (the state stays out of the
# prompt); horizons as each config's Pi0Config.
_PI0, _PI05 = PRESETS["pi0"], PRESETS["pi05"]
PRESETS.update({
    "pi0_libero": _PI0,
    "pi05_libero": dataclasses.replace(_PI05, action_horizon=10, discrete_state_input=False),
    "pi0_maniskill": _PI0,
    "pi05_maniskill": dataclasses.replace(_PI05, action_horizon=10, discrete_state_input=False),
    "pi0_metaworld": dataclasses.replace(_PI0, action_horizon=5),
    "pi05_metaworld": dataclasses.replace(_PI05, action_horizon=5, discrete_state_input=False),
    "pi0_calvin": dataclasses.replace(_PI0, action_horizon=5),
    "pi05_calvin": dataclasses.replace(_PI05, action_horizon=5, discrete_state_input=False),
    "pi05_gsenv": dataclasses.replace(_PI05, action_horizon=5, discrete_state_input=False),
})
# Data transforms of those configs that the policy must mirror: pi0_libero trains on
# delta actions for the 6 arm dims, the gripper absolute (openpi's extra_delta_transform).
DELTA_ACTION_MASKS: dict[str, tuple[bool, ...]] = {"pi0_libero": (True,) * 6 + (False,)}


def preset(name: str, **overrides) -> Pi0Config:
    if name not in PRESETS:
        raise ValueError(f"actor.model.openpi.config_name must be one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides).validate()


def _replace_spec(spec, d: dict | None):
    return dataclasses.replace(spec, **d) if d else spec


def config_from_model_cfg(model_cfg) -> Pi0Config:
    """`actor.model` (OmegaConf or the schema dataclass) -> Pi0Config.

    Keys read: openpi.config_name (preset), openpi.pi05, openpi.add_value_head,
    openpi.value_after_vlm, openpi.detach_critic_input, openpi.noise_method,
    openpi.noise_logvar_range, openpi.action_horizon and openpi.action_dim (null: the
    preset's), and optional overrides
    openpi.{paligemma,expert,vision} (dicts of spec fields), openpi.max_token_len,
    openpi.discrete_state_input (read with defaults until the schema has them)."""
    op = _get(model_cfg, "openpi", None)
    if op is None:
        raise ValueError("actor.model.openpi is missing: π0 needs its openpi section")
    base = preset(str(_get(op, "config_name", "pi0_tiny")))
    pi05 = bool(_get(op, "pi05", base.pi05))
    horizon = int(_get(op, "action_horizon", base.action_horizon))
    dim = int(_get(op, "action_dim", base.action_dim))
    env_dim = int(_get(model_cfg, "action_dim", dim))
    chunk = int(_get(model_cfg, "num_action_chunks", horizon))
    if env_dim > dim:
        raise ValueError(f"actor.model.action_dim {env_dim} > actor.model.openpi.action_dim {dim}")
    if chunk > horizon:
        raise ValueError(f"actor.model.num_action_chunks {chunk} > actor.model.openpi.action_horizon {horizon}")
    rng = _get(op, "noise_logvar_range", base.noise_std_range)
    return dataclasses.replace(
        base,
        paligemma=_replace_spec(base.paligemma, _plain(_get(op, "paligemma", None))),
        expert=_replace_spec(base.expert, _plain(_get(op, "expert", None))),
        vision=_replace_spec(base.vision, _plain(_get(op, "vision", None))),
        pi05=pi05,
        discrete_state_input=bool(_get(op, "discrete_state_input",
                                       base.discrete_state_input if pi05 == base.pi05 else pi05)),
        max_token_len=int(_get(op, "max_token_len", base.max_token_len)),
        action_horizon=horizon,
        action_dim=dim,
        add_value_head=bool(_get(op, "add_value_head", _get(model_cfg, "add_value_head", True))),
        value_after_vlm=bool(_get(op, "value_after_vlm", False)),
        detach_critic_input=bool(_get(op, "detach_critic_input", False)),
        add_noise_head=str(_get(op, "noise_method", "flow_sde")) == "flow_noise",
        noise_std_range=tuple(float(x) for x in rng),
    ).validate()


def _get(cfg, key: str, default):
    """Attribute or mapping access with a default (OmegaConf, dataclass or dict)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        value = getattr(cfg, key)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def _plain(x):
    if x is None:
        return None
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    return dict(x)
