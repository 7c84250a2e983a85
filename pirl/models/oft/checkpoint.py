"""Strict OpenVLA-OFT checkpoint loading (OpenVLA / OpenVLA-OFT Hugging Face layout, pirl)
and saving (pirl).

Every layout is reduced to pirl's parameter names by an explicit key map, then the whole
checkpoint is validated (missing, unexpected, mis-shaped, wrong-dtype tensors, all listed in
one error) before a single tensor is copied: a failed load leaves the model as it was.

Layouts (a directory):
    hf    OpenVLA's `save_pretrained` layout, which RLinf's OFT checkpoints (variant rlinf)
          and moojink/openvla-oft's merged checkpoints (variant official) share:
          config.json (model_type "openvla", text_config, n_action_bins, norm_stats, ...),
          model.safetensors or model.safetensors.index.json + shards, dataset_statistics.json,
          tokenizer.model (+ tokenizer_config.json, special_tokens_map.json ...). The towers
          are timm ViTs (fused `attn.qkv`, LayerScale `ls1.scale_factor`, SigLIP `attn_pool`).
          official extras: `proprio_projector--<step>_checkpoint.pt` (use_proprio) and
          `vision_backbone--<step>_checkpoint.pt` (use_film): the whole FiLM-wrapped vision
          backbone, blocks under `blocks.N.block.`, FiLM under `blocks.N.scale/shift`, its
          LoRA adapters unmerged (`base_layer`, `lora_A.default`, `lora_B.default`); the LoRA
          scale is lora_alpha / r from lora_adapter/adapter_config.json, else the official
          loader's alpha = min(r, 16). That file replaces the vision weights of the main one.
          A separate peft adapter folder (`actor.model.lora_path`, e.g. RLinf's ManiSkill
          base LoRA) is folded into the base weights the same way.
    pirl  model.safetensors + pirl_config.json (OFTConfig) + dataset_statistics.json +
          tokenizer.model.
The layout is read from the files present, never guessed from the path string.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pirl.models.io import read_json, tensor_mismatches
from pirl.models.oft.action_tokenizer import DATASET_STATISTICS
from pirl.models.oft.configuration import DINOV2, OFTConfig
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import HashedWordEncoder, SentencePieceEncoder
from pirl.models.pi0.checkpoint import WEIGHTS, WEIGHTS_INDEX, CheckpointError, read_tensors

HF, PIRL = "hf", "pirl"
FORMATS = (HF, PIRL)
HF_CONFIG = "config.json"
PIRL_CONFIG = "pirl_config.json"
TOKENIZER = "tokenizer.model"
HASHED_WORDS = "hashed_words"
FILM_FILE, PROPRIO_FILE = "vision_backbone", "proprio_projector"  # `<name>--<step>_checkpoint.pt`
ADAPTER_CONFIG = Path("lora_adapter") / "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# pirl's own critic: an OpenVLA checkpoint never has it; it keeps its init.
PIRL_ONLY = re.compile(r"^value_head\.")
TOWERS = ("featurizer", "fused_featurizer")


# ---- timm tower names -> pirl's (transformers layers) ----------------------------------
def _block_rules(kind: str) -> list[tuple[str, str]]:
    """(timm suffix regex, pirl suffix template) inside `blocks.N.`; qkv is split separately."""
    if kind == DINOV2:
        return [(r"norm1\.(weight|bias)", r"norm1.\1"), (r"norm2\.(weight|bias)", r"norm2.\1"),
                (r"attn\.proj\.(weight|bias)", r"attention.o_proj.\1"),
                (r"ls1\.scale_factor", "layer_scale1.lambda1"), (r"ls2\.scale_factor", "layer_scale2.lambda1"),
                (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2")]
    return [(r"norm1\.(weight|bias)", r"layer_norm1.\1"), (r"norm2\.(weight|bias)", r"layer_norm2.\1"),
            (r"attn\.proj\.(weight|bias)", r"self_attn.out_proj.\1"),
            (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2")]


TOWER_RULES = [(r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"), (r"norm\.(weight|bias)", r"norm.\1"),
               (r"(cls_token|reg_token|pos_embed)", r"\1"),
               (r"attn_pool\.latent", "attn_pool.probe"),
               (r"attn_pool\.proj\.(weight|bias)", r"attn_pool.attention.out_proj.\1"),
               (r"attn_pool\.norm\.(weight|bias)", r"attn_pool.layernorm.\1"),
               (r"attn_pool\.mlp\.(fc1|fc2)\.(weight|bias)", r"attn_pool.mlp.\1.\2")]


def map_tower(rest: str, value: torch.Tensor, kind: str) -> dict[str, torch.Tensor] | None:
    """One timm tensor (name inside the tower) -> pirl tensors (qkv splits into three), or
    None when no rule names it (it is then reported as unexpected)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if m:
        i, sub = m.groups()
        attn = "attention" if kind == DINOV2 else "self_attn"
        q = re.fullmatch(r"attn\.qkv\.(weight|bias)", sub)
        if q:
            parts = value.chunk(3, dim=0)  # timm's fused rows: [q; k; v]
            return {f"blocks.{i}.{attn}.{n}_proj.{q[1]}": p for n, p in zip("qkv", parts)}
        for pat, repl in _block_rules(kind):
            if re.fullmatch(pat, sub):
                return {f"blocks.{i}." + re.sub(pat, repl, sub): value}
        return None
    q = re.fullmatch(r"attn_pool\.(q|kv)\.(weight|bias)", rest)
    if q and kind != DINOV2:  # merged below into nn.MultiheadAttention's in_proj (rows [q; k; v])
        return {f"attn_pool.attention.in_proj_{q[2]}#{q[1]}": value}
    for pat, repl in TOWER_RULES:
        if re.fullmatch(pat, rest):
            return {re.sub(pat, repl, rest): value}
    return None


def _merge_pool_qkv(out: dict[str, torch.Tensor], problems: list[str]) -> None:
    for key in [k for k in out if k.endswith("#q")]:
        base = key[:-2]
        kv = out.pop(base + "#kv", None)
        q = out.pop(key)
        if kv is None:
            problems.append(f"{base}: attn_pool.q without attn_pool.kv")
            continue
        out[base] = torch.cat([q, kv], dim=0)
    for key in [k for k in out if k.endswith("#kv")]:
        problems.append(f"{key[:-3]}: attn_pool.kv without attn_pool.q")
        out.pop(key)


def map_hf_keys(tensors: dict[str, torch.Tensor], cfg: OFTConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OpenVLA HF names -> pirl names. -> (mapped tensors, keys no rule maps)."""
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    towers = dict(zip(TOWERS, cfg.vision))
    for k, v in tensors.items():
        m = re.fullmatch(r"vision_backbone\.(featurizer|fused_featurizer)\.(.+)", k)
        if m is None:
            out[k] = v  # projector.*, language_model.*, value_head.*: pirl keeps the names
            continue
        spec = towers.get(m[1])
        mapped = map_tower(m[2], v, spec.kind) if spec is not None else None
        if mapped is None:
            unmapped.append(k)
            continue
        for name, t in mapped.items():
            out[f"vision_backbone.{m[1]}.{name}"] = t
    _merge_pool_qkv(out, unmapped)
    return out, unmapped


# ---- official OFT component files ------------------------------------------------------
def find_component(path: Path, name: str) -> Path:
    """The one `<name>--<step>_checkpoint.pt` (official OFT's naming) in `path`."""
    found = sorted(p for p in path.iterdir() if p.name.startswith(f"{name}--") and p.name.endswith("checkpoint.pt"))
    if len(found) != 1:
        raise CheckpointError(f"{path}: expected exactly one {name}--<step>_checkpoint.pt, found "
                              f"{[p.name for p in found]}")
    return found[0]


def load_component(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign pickles
        raise CheckpointError(f"cannot read {file}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state dict of tensors")
    # DDP-trained components carry a "module." prefix (official OFT strips it the same way).
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def lora_alpha(path: Path, rank: int) -> float:
    cfg = path / ADAPTER_CONFIG
    if cfg.is_file():
        return float(json.loads(cfg.read_text())["lora_alpha"])
    return float(min(rank, 16))  # official OFT's LoraConfig(lora_alpha=min(lora_rank, 16))


def fold_pairs(weights: dict[str, torch.Tensor], adapters: dict[str, tuple[torch.Tensor, torch.Tensor]],
               alpha_of, where: str) -> dict[str, torch.Tensor]:
    """W + (alpha / r)·B·A for every module `X` in `adapters` {X: (A (r, in), B (out, r))},
    into `weights`[X.weight] (fp32 product, stored in W's dtype). `alpha_of(r)` gives alpha."""
    out = dict(weights)
    for module, (A, B) in adapters.items():
        key = module + ".weight"
        if key not in out:
            raise CheckpointError(f"{where}: LoRA adapter for {module}, which has no base weight {key}")
        W = out[key]
        if (B.shape[0], A.shape[1]) != tuple(W.shape) or A.shape[0] != B.shape[1]:
            raise CheckpointError(f"{where}: LoRA adapter {module}: A {tuple(A.shape)} and B {tuple(B.shape)} do "
                                  f"not fit its weight {tuple(W.shape)}")
        r = A.shape[0]
        out[key] = (W.float() + alpha_of(r) / r * (B.float() @ A.float())).to(W.dtype)
    return out


def _lora_pairs(state: dict[str, torch.Tensor], a_suffix: str, b_suffix: str, where: str):
    pairs = {}
    for a_key in [k for k in state if k.endswith(a_suffix)]:
        module = a_key[: -len(a_suffix)]
        if module + b_suffix not in state:
            raise CheckpointError(f"{where}: LoRA adapter {module} has lora_A but no lora_B")
        pairs[module] = (state[a_key], state[module + b_suffix])
    return pairs


def fold_lora(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """peft's in-model names (`X.base_layer.weight`, `X.lora_A.default.weight`,
    `X.lora_B.default.weight`) -> plain `X.weight` with the adapter folded in."""
    plain = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    pairs = _lora_pairs(state, ".lora_A.default.weight", ".lora_B.default.weight", str(path))
    return fold_pairs(plain, pairs, lambda r: lora_alpha(path, r), str(path))


def fold_adapter(tensors: dict[str, torch.Tensor], adapter: str | Path) -> dict[str, torch.Tensor]:
    """`actor.model.lora_path`: a peft adapter folder (adapter_config.json +
    adapter_model.safetensors, keys `base_model.model.X.lora_A.weight` over the OpenVLA HF
    names, the reference system's LoRA of its OFT checkpoints) folded into the base
    tensors, before the key map (a fused timm qkv takes its adapter whole)."""
    adapter = Path(adapter)
    cfg_file, weights = adapter / "adapter_config.json", adapter / ADAPTER_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(f"actor.model.lora_path {adapter}: expected adapter_config.json and {ADAPTER_WEIGHTS}")
    alpha = _read_json(cfg_file).get("lora_alpha")
    if not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{cfg_file}: lora_alpha must be a number, got {alpha!r}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is truncated or corrupt: {e}") from e
    prefix = "base_model.model."
    stray = sorted(k for k in state if not k.startswith(prefix) or not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if stray:
        raise CheckpointError(f"{weights}: tensors that are not LoRA A/B matrices: {stray[:20]}")
    state = {k[len(prefix):]: v for k, v in state.items()}
    pairs = _lora_pairs(state, ".lora_A.weight", ".lora_B.weight", str(weights))
    return fold_pairs(tensors, pairs, lambda r: float(alpha), str(weights))


def map_film_file(state: dict[str, torch.Tensor], cfg: OFTConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """FiLMedPrismaticVisionBackbone state (LoRA folded) -> pirl names: `blocks.N.block.X`
    is the tower's block, `blocks.N.scale|shift` its FiLM."""
    plain: dict[str, torch.Tensor] = {}
    film: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = re.fullmatch(r"(vision_backbone\.(?:featurizer|fused_featurizer))\.blocks\.(\d+)\.(scale|shift)\.(weight|bias)", k)
        if m:
            film[f"{m[1]}.film.{m[2]}.{m[3]}.{m[4]}"] = v
        else:
            plain[re.sub(r"\.blocks\.(\d+)\.block\.", r".blocks.\1.", k)] = v
    mapped, unmapped = map_hf_keys(plain, cfg)
    return {**mapped, **film}, unmapped


# ---- layout, config, validation --------------------------------------------------------
def _read_json(p: Path) -> dict:
    return read_json(p, CheckpointError)


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.is_dir() or not ((path / WEIGHTS).is_file() or (path / WEIGHTS_INDEX).is_file()):
        raise CheckpointError(f"checkpoint {path} is not a directory with {WEIGHTS} (or {WEIGHTS_INDEX})")
    if (path / PIRL_CONFIG).is_file():
        return PIRL
    if (path / HF_CONFIG).is_file() and _read_json(path / HF_CONFIG).get("model_type") == "openvla":
        return HF
    raise CheckpointError(f"checkpoint {path}: expected {PIRL_CONFIG} (pirl) or {HF_CONFIG} with model_type "
                          "'openvla' (OpenVLA / OpenVLA-OFT Hugging Face layout)")


def check_config(path: str | Path, fmt: str, cfg: OFTConfig) -> None:
    """The sizes a checkpoint declares must be the run's (each mismatch named)."""
    path = Path(path)
    if fmt == PIRL:
        saved = OFTConfig.from_dict(_read_json(path / PIRL_CONFIG)["oft_config"])
        # The critic is the run's choice (a PPO run may add one to an SFT checkpoint).
        skip = {"add_value_head", "value_type", "value_hidden", "attention"}
        diffs = [f"{f}: checkpoint {getattr(saved, f)!r} vs run {getattr(cfg, f)!r}"
                 for f in saved.to_dict() if f not in skip and getattr(saved, f) != getattr(cfg, f)]
    else:
        meta = _read_json(path / HF_CONFIG)
        tc = meta.get("text_config", {})
        llm = cfg.llm
        expect = {
            "text_config.vocab_size": (tc.get("vocab_size"), llm.vocab_size),
            "text_config.hidden_size": (tc.get("hidden_size"), llm.hidden_size),
            "text_config.intermediate_size": (tc.get("intermediate_size"), llm.intermediate_size),
            "text_config.num_hidden_layers": (tc.get("num_hidden_layers"), llm.num_layers),
            "text_config.num_attention_heads": (tc.get("num_attention_heads"), llm.num_heads),
            "text_config.num_key_value_heads": (tc.get("num_key_value_heads", tc.get("num_attention_heads")),
                                                llm.num_kv_heads),
            "text_config.rms_norm_eps": (tc.get("rms_norm_eps"), llm.rms_eps),
            "text_config.rope_theta": (tc.get("rope_theta", 10_000.0), llm.rope_theta),
            "n_action_bins": (meta.get("n_action_bins"), cfg.n_action_bins),
            "pad_to_multiple_of": (meta.get("pad_to_multiple_of"), cfg.pad_to_multiple_of),
            "use_fused_vision_backbone": (meta.get("use_fused_vision_backbone"), len(cfg.vision) == 2),
            "image_sizes": (meta.get("image_sizes"), [v.image_size for v in cfg.vision]),
        }
        diffs = [f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in expect.items()
                 if not (a == b or (isinstance(a, float) and isinstance(b, float) and abs(a - b) < 1e-12))]
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match actor.model's OFT config: " + "; ".join(diffs))


def expected_tensors(model: OFTModel) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def validate(model: OFTModel, tensors: dict[str, torch.Tensor], fmt: str, unmapped: list[str]) -> None:
    expected = expected_tensors(model)
    optional = (lambda k: bool(PIRL_ONLY.match(k))) if fmt == HF else (lambda k: False)
    missing = sorted(k for k in expected if k not in tensors and not optional(k))
    unexpected = sorted(set(unmapped) | {k for k in tensors if k not in expected})
    problems = tensor_mismatches(expected, tensors, missing, unexpected)
    if problems:
        raise CheckpointError(f"{fmt} checkpoint does not match the OFT model: " + "; ".join(problems))


def read_checkpoint(path: str | Path, cfg: OFTConfig, fmt: str,
                    adapter: str | Path | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """All tensors of a checkpoint under pirl's names (official extras and a LoRA adapter
    folder merged in)."""
    path = Path(path)
    tensors = read_tensors(path)
    if adapter is not None:
        tensors = fold_adapter(tensors, adapter)
    if fmt == PIRL:
        return tensors, []
    mapped, unmapped = map_hf_keys(tensors, cfg)
    if cfg.use_film:
        film, film_unmapped = map_film_file(fold_lora(load_component(find_component(path, FILM_FILE)), path), cfg)
        mapped.update(film)  # the FiLM file holds the whole vision backbone it was trained with
        unmapped += film_unmapped
    if cfg.use_proprio:
        proprio = load_component(find_component(path, PROPRIO_FILE))
        mapped.update({f"proprio_projector.{k}": v for k, v in proprio.items()})
    return mapped, unmapped


def load_weights(model: OFTModel, path: str | Path, fmt: str | None = None, adapter: str | Path | None = None) -> str:
    """Strictly load a checkpoint directory (+ a LoRA adapter folder) into `model`; returns
    the layout used."""
    fmt = fmt or detect_format(path)
    check_config(path, fmt, model.cfg)
    tensors, unmapped = read_checkpoint(path, model.cfg, fmt, adapter)
    validate(model, tensors, fmt, unmapped)
    expected = expected_tensors(model)
    with torch.no_grad():
        for k, v in tensors.items():
            expected[k].copy_(v.to(expected[k].dtype))
    return fmt


def read_statistics_of(path: str | Path, fmt: str) -> dict:
    """{unnorm_key: {...}}: config.json's norm_stats updated by dataset_statistics.json (as
    the reference system merges them); {} when neither has any."""
    path = Path(path)
    stats: dict = {}
    if fmt == HF:
        stats.update(_read_json(path / HF_CONFIG).get("norm_stats") or {})
    if (path / DATASET_STATISTICS).is_file():
        stats.update(_read_json(path / DATASET_STATISTICS))
    return stats


def read_tokenizer(path: str | Path, fmt: str, vocab_size: int) -> SentencePieceEncoder | HashedWordEncoder:
    """The checkpoint's tokenizer.model (Llama's SentencePiece model), or the hashed-word tokenizer
    a pirl checkpoint of a randomly initialised model records."""
    path = Path(path)
    if fmt == PIRL and _read_json(path / PIRL_CONFIG).get("tokenizer") == HASHED_WORDS:
        return HashedWordEncoder(vocab_size)
    if not (path / TOKENIZER).is_file():
        raise CheckpointError(f"checkpoint {path} has no {TOKENIZER} (Llama's SentencePiece model); "
                              "give actor.model.oft.tokenizer_path")
    return SentencePieceEncoder(path / TOKENIZER)


def save_pirl(model: OFTModel, path: str | Path, statistics: dict, encoder: SentencePieceEncoder | HashedWordEncoder,
              tensors: dict[str, torch.Tensor] | None = None) -> None:
    """safetensors + pirl_config.json + dataset_statistics.json + tokenizer.model (or the
    hashed-word tokenizer's name) into `path` (a fresh folder; callers wrap it in
    pirl.models.io.atomic_dir). `tensors` overrides the model's state (LoRA merged)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = tensors if tensors is not None else expected_tensors(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS))
    meta = {"format": PIRL, "oft_config": model.cfg.to_dict()}
    if isinstance(encoder, SentencePieceEncoder):
        shutil.copyfile(encoder.path, path / TOKENIZER)
        meta["tokenizer"] = TOKENIZER
    else:
        meta["tokenizer"] = HASHED_WORDS
    (path / PIRL_CONFIG).write_text(json.dumps(meta, indent=1))
    (path / DATASET_STATISTICS).write_text(json.dumps(statistics, indent=1))
