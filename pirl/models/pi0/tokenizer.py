"""Prompt tokenization for π0 / π0.5 (openpi's PaligemmaTokenizer formats).

π0:   <bos> + sp(cleaned prompt) + sp("\n")
π0.5: sp("Task: {prompt}, State: {bins};\nAction: ", add_bos) where the normalized state
      is discretized into 256 bins over [-1, 1] (openpi: digitize(linspace(-1, 1, 257)[:-1]) - 1).
Prompts are cleaned like openpi (strip, "_" and "\n" -> " "); then padded with id 0 and
a False mask to `max_len`, or truncated to it.

`SentencePieceTokenizer` reads PaliGemma's `paligemma_tokenizer.model` (or any
SentencePiece model: tests train a tiny one); `HFTokenizer` reads a Hugging Face
`tokenizer.json` (what lerobot loads as `google/paligemma-3b-pt-224`); `load_tokenizer`
resolves a directory or a hub id in the local Hugging Face cache (never the network).
`ByteTokenizer` is the fallback for randomly initialised tiny models when no tokenizer file
is configured.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

STATE_BINS = 256
PAD_ID = 0


class TextEncoder(Protocol):
    vocab_size: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ...


class SentencePieceTokenizer:
    def __init__(self, path: str | Path):
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer_path {path} does not exist (expected a SentencePiece .model file)")
        self.path = path
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self.sp.get_piece_size())

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return list(self.sp.encode(text, add_bos=add_bos))


class HFTokenizer:
    """A Hugging Face fast tokenizer (`tokenizer.json`), special tokens added by us only:
    the bos id comes from tokenizer_config.json's bos_token (Gemma's "<bos>" by default).
    `name` is how lerobot refers to it (a hub id or a directory)."""

    def __init__(self, path: str | Path, name: str | None = None):
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist (expected a tokenizer.json)")
        self.path, self.name = path, name or str(path.parent)
        self.tok = Tokenizer.from_file(str(path))
        config = path.parent / "tokenizer_config.json"
        bos = json.loads(config.read_text()).get("bos_token", "<bos>") if config.is_file() else "<bos>"
        if isinstance(bos, dict):  # transformers' AddedToken serialization
            bos = bos["content"]
        bos_id = self.tok.token_to_id(bos)
        if bos_id is None:
            raise ValueError(f"tokenizer {path} has no bos token {bos!r}")
        self.bos_id = bos_id
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + list(ids)


def load_tokenizer(name: str | Path) -> HFTokenizer | SentencePieceTokenizer:
    """A tokenizer directory (tokenizer.json, else tokenizer.model) or a Hugging Face hub
    id already in the local cache (as lerobot's policy_preprocessor.json names it)."""
    d = Path(name)
    if d.is_dir():
        if (d / "tokenizer.json").is_file():
            return HFTokenizer(d / "tokenizer.json", name=str(name))
        if (d / "tokenizer.model").is_file():
            return SentencePieceTokenizer(d / "tokenizer.model")
        raise FileNotFoundError(f"tokenizer directory {d} has neither tokenizer.json nor tokenizer.model")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id=str(name), filename="tokenizer.json")
    if isinstance(cached, str):
        return HFTokenizer(cached, name=str(name))
    raise FileNotFoundError(f"tokenizer {name!r} is neither a directory nor in the local Hugging Face cache: "
                            f"download it once (`huggingface-cli download {name} tokenizer.json "
                            "tokenizer_config.json`) or set actor.model.openpi.tokenizer_path")


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids (0 pad, 1 eos, 2 bos): 259 ids."""

    BOS, OFFSET = 2, 3
    vocab_size = 256 + OFFSET

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [b + self.OFFSET for b in text.encode("utf-8")]
        return ([self.BOS] if add_bos else []) + ids


def clean_prompt(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalized state (S,) in about [-1, 1] -> ints in [0, 255] (openpi's binning; values
    below -1 map to -1 exactly as openpi does)."""
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


class PromptTokenizer:
    def __init__(self, encoder: TextEncoder, max_len: int, discrete_state: bool, model_vocab: int):
        if encoder.vocab_size > model_vocab:
            raise ValueError(f"tokenizer has {encoder.vocab_size} ids but the model's vocabulary is {model_vocab}")
        self.encoder, self.max_len, self.discrete_state = encoder, max_len, discrete_state
        self._warned = False

    def token_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        text = clean_prompt(prompt)
        if self.discrete_state:
            if state is None:
                raise ValueError("π0.5 prompts with discrete_state_input need the normalized state")
            bins = " ".join(map(str, discretize_state(np.asarray(state, dtype=np.float64))))
            return self.encoder.encode(f"Task: {text}, State: {bins};\nAction: ", add_bos=True)
        return self.encoder.encode(text, add_bos=True) + self.encoder.encode("\n")

    def __call__(self, prompts: list[str], states: torch.Tensor | None = None):
        """prompts (B,) [+ normalized states (B, S)] -> tokens (B, L) long, masks (B, L) bool."""
        B = len(prompts)
        tokens = torch.full((B, self.max_len), PAD_ID, dtype=torch.long)
        masks = torch.zeros((B, self.max_len), dtype=torch.bool)
        for i, p in enumerate(prompts):
            st = states[i].double().cpu().numpy() if states is not None else None
            ids = self.token_ids(p, st)
            if len(ids) > self.max_len and not self._warned:
                # openpi truncates too, with a warning: the cut tail (for π0.5 the state
                # bins) is invisible to the model, so say so once per tokenizer.
                warnings.warn(f"prompt of {len(ids)} tokens truncated to max_token_len {self.max_len} "
                              f"(actor.model.openpi.max_token_len): {p!r}", stacklevel=2)
                self._warned = True
            ids = ids[: self.max_len]
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            masks[i, : len(ids)] = True
        return tokens, masks
