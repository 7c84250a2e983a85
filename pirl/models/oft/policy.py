"""OpenVLA-OFT behind the policy interface: one parallel pass per chunk, token log-probs.

Rollout (`sample`): one forward -> action logits (B, C·D, 256) -> filtered with
`rollout.sampling_params` (temperature_train, top_k, top_p) -> one bin per token ->
env actions (bin centres, unnormalized). The drawn bins are the replay, `action_tokens
(B, C, D) int64`. Training (`evaluate`): the same forward with gradients, the stored
bins re-scored under the same filter, so for unchanged weights the log-probs equal the
rollout's. One token per action dim (the model's action_dim is the env's): log-probs and
entropies are (B, C, D), the layout of a flow policy's element log-probs, and `algorithm.logprob_type` reduces them
alike (token_level: per token; action_level: per action; chunk_level: per chunk).
Eval mode draws at temperature_eval, or greedily (temperature_eval <= 0 or not do_sample).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from pirl.data.buffer import FieldSpec
from pirl.models.io import atomic_dir
from pirl.models.oft.checkpoint import save_pirl
from pirl.models.oft.configuration import ACTION_LEVEL
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import OFTProcessor, pixel_values
from pirl.models.oft.sampling import SamplingParams, draw, filter_logits, token_entropy, token_logprob
from pirl.models.pi0.lora import merged_state_dict
from pirl.models.policy import ActionSample, ChunkEval, Policy

MODES = ("train", "eval")


class OFTPolicy(Policy):
    def __init__(self, model: OFTModel, processor: OFTProcessor, sampling: SamplingParams, statistics: dict,
                 unnorm_key: str | None):
        super().__init__()
        self.model, self.processor, self.sampling = model, processor, sampling
        self.statistics, self.unnorm_key = statistics, unnorm_key
        cfg = model.cfg
        self.C, self.D = cfg.num_action_chunks, cfg.action_dim
        self.value_shape = (self.C,) if cfg.value_type == ACTION_LEVEL else ()

    # ---- specs ------------------------------------------------------------------------
    def input_spec(self) -> dict[str, FieldSpec]:
        cfg = self.model.cfg
        S, L = cfg.vision[0].image_size, cfg.max_prompt_length
        spec = {
            "images": FieldSpec((cfg.num_images_in_input, 3, S, S), torch.uint8, "cameras, resized (and cropped)"),
            "input_ids": FieldSpec((L,), torch.long, "prompt ids: <s>, left pads, prompt, '▁'"),
            "attention_mask": FieldSpec((L,), torch.bool, "False on pads"),
        }
        if cfg.use_proprio:
            spec["proprio"] = FieldSpec((cfg.proprio_dim,), torch.float32, "normalized proprio state")
        return spec

    def replay_spec(self) -> dict[str, FieldSpec]:
        return {"action_tokens": FieldSpec((self.C, self.D), torch.long, "drawn bin per action dim, in [0, 256)")}

    # ---- helpers ----------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.model.projector.fc1.weight.device

    def _forward(self, fi: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits (B, C, D, n_bins) fp32, values (B, *value_shape) fp32."""
        px = pixel_values(fi["images"], self.model.cfg.vision)
        logits, values = self.model(fi["input_ids"], fi["attention_mask"], px, fi.get("proprio"))
        return logits.view(logits.shape[0], self.C, self.D, -1), values

    def _filtered(self, logits: torch.Tensor, mode: str) -> torch.Tensor:
        s = self.sampling
        return filter_logits(logits, s.temperature(mode), s.top_k, s.top_p)

    # ---- Policy -----------------------------------------------------------------------
    def preprocess(self, obs: dict) -> dict[str, torch.Tensor]:
        device = self._device()
        return {k: v.to(device) for k, v in self.processor(obs).items()}

    @torch.no_grad()
    def sample(self, forward_inputs: dict[str, torch.Tensor], mode: str = "train",
               generator: torch.Generator | None = None) -> ActionSample:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        logits, values = self._forward(forward_inputs)
        if self.sampling.greedy(mode):
            tokens = logits.argmax(-1)
            logprob = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        else:
            filtered = self._filtered(logits, mode)
            tokens = draw(filtered, generator)
            logprob = token_logprob(filtered, tokens)
        return ActionSample(actions=self.processor.to_env(tokens), logprob=logprob,
                            values=values, replay={"action_tokens": tokens}, forward_inputs=forward_inputs)

    def evaluate(self, forward_inputs: dict[str, torch.Tensor], replay: dict[str, torch.Tensor]) -> ChunkEval:
        logits, values = self._forward(forward_inputs)
        filtered = self._filtered(logits, "train")
        tokens = replay["action_tokens"]
        return ChunkEval(logprob=token_logprob(filtered, tokens), entropy=token_entropy(filtered), values=values)

    @torch.no_grad()
    def value(self, forward_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(forward_inputs)[1]

    def sft_loss(self, forward_inputs: dict[str, torch.Tensor], actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """OpenVLA's next-token cross-entropy of the demonstrated bins (env units -> the
        statistics' normalization -> bins), over the 256 action ids the policy samples
        from, every demonstrated token weighted equally. actions (B, C, D) env units."""
        logits, _ = self._forward(forward_inputs)
        target = self.processor.to_tokens(actions.to(logits.device))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    def save_pretrained(self, directory, meta=None) -> Path:
        """pirl's OFT format (pirl.models.oft.checkpoint), LoRA merged into the base weights,
        with the dataset statistics and the prompt tokenizer; written whole, then renamed."""
        has_lora = any(".lora_" in n for n, _ in self.model.named_parameters())
        tensors = merged_state_dict(self.model) if has_lora else None
        with atomic_dir(directory) as tmp:
            save_pirl(self.model, tmp, self.statistics, self.processor.tokenizer.encoder, tensors=tensors)
            if meta:
                (tmp / "train_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return Path(directory)
