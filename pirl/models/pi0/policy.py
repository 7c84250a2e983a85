"""π0 / π0.5 behind the FlowPolicy interface; the chain math stays in pirl.flow.

Rollout (`sample`): one prefix pass fills a read-only KV cache; the velocity closure runs
only the action expert against it for each of the K steps. Training (`evaluate`): one
prefix pass (under no_grad when the VLM is frozen), then `chain_logprob` calls the same
closure on the stored stochastic step (joint_logprob False: one expert pass) or on every
step (True).

Critic placement (`value_after_vlm`): on the mean of the valid prefix outputs, or on the
mean of the executed action tokens of the expert at the scored (stochastic) step(s); in
eval mode (no stochastic step) at the first step (t=1). The value read in `sample` is
therefore the same function of (obs, chain, step_mask) that `evaluate` recomputes.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from pirl.data.buffer import FieldSpec
from pirl.flow import FlowSpec, chain_logprob, executed, sample_chain, select_steps
from pirl.flow.matching import pad_demonstrations
from pirl.models.io import atomic_dir
from pirl.models.pi0.checkpoint import LEROBOT, OPENPI, CheckpointError, export_lerobot, export_openpi, save_pirl
from pirl.models.pi0.lora import merged_state_dict
from pirl.models.pi0.modeling import Pi0Model
from pirl.models.pi0.processor import Pi0Processor
from pirl.models.pi0.tokenizer import ByteTokenizer, HFTokenizer
from pirl.models.policy import ActionSample, ChunkEval, FlowPolicy

def prefix_inputs(fi: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prefix tensors of `forward_inputs` in Pi0Model's argument order: images, image_masks, tokens, token_masks."""
    return fi["images"], fi["image_masks"], fi["tokens"], fi["token_masks"]


class _StepValues:
    """Collects critic values from expert passes, weighted by which rows each step scores.

    The closure only sees t, so the step index is recovered as k = round((1 − t)·K)."""

    def __init__(self, step_mask: torch.Tensor | None, K: int):
        self.step_mask, self.K = step_mask, K
        self.total: torch.Tensor | None = None  # (B,) weighted sum of values
        self.weight: torch.Tensor | None = None  # (B,) sum of weights

    def add(self, t: torch.Tensor, v: torch.Tensor) -> None:
        k = torch.round((1.0 - t.float()) * self.K).long().clamp(0, self.K - 1)  # (B,)
        rows = torch.arange(t.shape[0], device=t.device)
        w = (self.step_mask[rows, k].float() if self.step_mask is not None else (k == 0).float()).to(v.device)
        self.total = w * v if self.total is None else self.total + w * v
        self.weight = w if self.weight is None else self.weight + w

    def result(self) -> torch.Tensor:
        assert self.total is not None and self.weight is not None, "no expert pass was recorded"
        return self.total / self.weight.clamp(min=1.0)


class Pi0Policy(FlowPolicy):
    def __init__(self, model: Pi0Model, processor: Pi0Processor, spec: FlowSpec,
                 state_dim: int | None = None):
        super().__init__()
        if spec.action_chunk > model.cfg.action_horizon or spec.action_env_dim > model.cfg.action_dim:
            raise ValueError(f"action_chunk {spec.action_chunk} / action_env_dim {spec.action_env_dim} exceed "
                             f"the model's horizon {model.cfg.action_horizon} / dim {model.cfg.action_dim}")
        if spec.noise_method == "flow_noise" and not model.cfg.add_noise_head:
            raise ValueError("noise_method flow_noise needs the model's noise head (add_noise_head)")
        self.model, self.processor, self.spec = model, processor, spec
        self.chain_shape = (model.cfg.action_horizon, model.cfg.action_dim)
        self.state_dim = state_dim

    # ---- helpers ----------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.model.action_in_proj.weight.device

    def _vlm_trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.paligemma_with_expert.paligemma.parameters())

    def _prefix(self, fi: dict[str, torch.Tensor], grad: bool):
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            return self.model.prefix_forward(*prefix_inputs(fi))

    def _closure(self, fi, kv, pad, values: _StepValues | None):
        state = fi["state"]
        critic_on_expert = self.model.cfg.add_value_head and not self.model.cfg.value_after_vlm

        def velocity_fn(x: torch.Tensor, t: torch.Tensor):
            so = self.model.suffix_forward(kv, pad, state, x, t)
            if critic_on_expert and values is not None:
                values.add(t, self.model.value_from_suffix(so, self.spec.action_chunk))
            return self.model.velocity(so), self.model.noise_std(so)

        return velocity_fn

    def _values(self, prefix_out, pad, values: _StepValues) -> torch.Tensor:
        if not self.model.cfg.add_value_head:
            return torch.zeros(prefix_out.shape[0], device=prefix_out.device)
        if self.model.cfg.value_after_vlm:
            return self.model.value_from_prefix(prefix_out, pad)
        return values.result()

    # ---- Policy -----------------------------------------------------------------------
    def input_spec(self) -> dict[str, FieldSpec]:
        """What `preprocess` returns (pirl.models.pi0.processor), per sample."""
        if self.state_dim is None:
            raise ValueError("Pi0Policy.input_spec needs the env's state size: build it with "
                             "build_pi0_policy(model_cfg, state_dim)")
        cfg, f32 = self.model.cfg, torch.float32
        S, NC, L = cfg.vision.image_size, len(cfg.image_keys), self.processor.tokenizer.max_len
        return {
            "images": FieldSpec((NC, 3, S, S), f32, "camera slots in [-1, 1]"),
            "image_masks": FieldSpec((NC,), torch.bool, "False for cameras the env lacks"),
            "tokens": FieldSpec((L,), torch.long, "prompt token ids"),
            "token_masks": FieldSpec((L,), torch.bool, "real (not padding) prompt tokens"),
            "state": FieldSpec((cfg.action_dim,), f32, "normalized state, padded to the model dim"),
            "raw_state": FieldSpec((self.state_dim,), f32, "env-unit state, for delta actions"),
        }

    def preprocess(self, obs: dict) -> dict[str, torch.Tensor]:
        self.processor.training = self.training
        device = self._device()
        return {k: v.to(device) for k, v in self.processor(obs).items()}

    @torch.no_grad()
    def sample(self, forward_inputs: dict[str, torch.Tensor], mode: str = "train",
               generator: torch.Generator | None = None) -> ActionSample:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        fi = forward_inputs
        device = self._device()
        B = fi["state"].shape[0]
        cfg = self.model.cfg
        prefix_out, kv, pad = self._prefix(fi, grad=False)
        step_mask = select_steps(B, self.spec, generator, device) if mode == "train" else None
        values = _StepValues(step_mask, self.spec.num_steps)
        x1 = torch.randn((B, cfg.action_horizon, cfg.action_dim), generator=generator,
                         device=generator.device if generator is not None else device).to(device)
        chains, lp = sample_chain(self._closure(fi, kv, pad, values), x1, self.spec, step_mask, generator)
        actions = self.processor.postprocess(chains[:, -1], fi["raw_state"])[:, : self.spec.action_chunk]
        if step_mask is None:
            step_mask = torch.zeros(B, self.spec.num_steps, dtype=torch.bool, device=device)
        return ActionSample(actions=actions, logprob=executed(lp, self.spec),
                            values=self._values(prefix_out, pad, values).float(),
                            replay={"chains": chains, "step_mask": step_mask}, forward_inputs=fi)

    def evaluate(self, forward_inputs: dict[str, torch.Tensor], replay: dict[str, torch.Tensor]) -> ChunkEval:
        fi, chains, step_mask = forward_inputs, replay["chains"], replay["step_mask"]
        prefix_out, kv, pad = self._prefix(fi, grad=self._vlm_trainable())
        values = _StepValues(step_mask, self.spec.num_steps)
        lp, ent = chain_logprob(self._closure(fi, kv, pad, values), chains, step_mask, self.spec)
        return ChunkEval(logprob=executed(lp, self.spec), entropy=executed(ent, self.spec),
                         values=self._values(prefix_out, pad, values).float())

    @torch.no_grad()
    def value(self, forward_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model.cfg.add_value_head and self.model.cfg.value_after_vlm:
            prefix_out, _, pad = self._prefix(forward_inputs, grad=False)
            return self.model.value_from_prefix(prefix_out, pad).float()
        return self.sample(forward_inputs, mode="eval").values

    def sft_loss(self, forward_inputs: dict[str, torch.Tensor], actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Env-unit chunks (B, C, D_env) -> model units (deltas, normalization, padding to
        (H, D)); the loss covers the C demonstrated steps and the D_env real dims."""
        fi = forward_inputs
        a = self.processor.to_delta(actions.float().to(fi["raw_state"].device), fi["raw_state"])
        a = self.processor.normalize_actions(a)
        padded, mask = pad_demonstrations(a, self.model.cfg.action_horizon, self.model.cfg.action_dim)
        loss, _ = self.model.sft_loss(*prefix_inputs(fi), fi["state"], padded, mask,
                                      generator=generator)
        return loss

    def save_pretrained(self, directory, meta=None) -> Path:
        """pirl's π0 format (pirl.models.pi0.checkpoint), LoRA adapters merged into the base
        weights, with the norm stats and the prompt tokenizer; written whole, then renamed."""
        has_lora = any(".lora_" in n for n, _ in self.model.named_parameters())
        tensors = merged_state_dict(self.model) if has_lora else None
        with atomic_dir(directory) as tmp:
            save_pirl(self.model, tmp, self.processor.norm_stats, tensors=tensors,
                      tokenizer=self.processor.tokenizer.encoder)
            if meta:
                (tmp / "train_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return Path(directory)

    def export(self, directory, fmt: str, state_dim: int | None = None, tokenizer_name: str | None = None) -> Path:
        """Write the policy for openpi (`fmt` "openpi", its PyTorch layout) or lerobot
        ("lerobot", a folder its `from_pretrained` loads), LoRA merged, written whole then
        renamed. lerobot needs the env's state dims (default: the state stats' length) and
        the tokenizer's lerobot name (default: the HF tokenizer's own name, else PaliGemma's)."""
        if fmt not in (OPENPI, LEROBOT):
            raise ValueError(f"export format must be {OPENPI!r} or {LEROBOT!r}, got {fmt!r}")
        has_lora = any(".lora_" in n for n, _ in self.model.named_parameters())
        tensors = merged_state_dict(self.model) if has_lora else None
        stats = self.processor.norm_stats
        if fmt == OPENPI:
            with atomic_dir(directory) as tmp:
                export_openpi(self.model, tmp, stats, tensors=tensors)
            return Path(directory)
        if stats is None:
            raise CheckpointError("export to lerobot needs norm stats (its processor files carry them)")
        encoder = self.processor.tokenizer.encoder
        if tokenizer_name is None and isinstance(encoder, ByteTokenizer):
            raise CheckpointError("lerobot has no byte tokenizer: give tokenizer_name (a tokenizer directory or "
                                  "hub id lerobot can load)")
        if tokenizer_name is None and isinstance(encoder, HFTokenizer):
            tokenizer_name = encoder.name
        moded = {k: replace(v, mode=self.processor.mode(k)) for k, v in stats.items()}
        with atomic_dir(directory) as tmp:
            export_lerobot(self.model, tmp, moded, state_dim=state_dim or int(stats["state"].mean.shape[0]),
                           action_env_dim=self.spec.action_env_dim,
                           delta_action_mask=self.processor.pcfg.delta_action_mask, tensors=tensors,
                           tokenizer_name=tokenizer_name)
        return Path(directory)
