"""Env observations <-> OpenVLA-OFT tensors. Each step is a small pure function with a test.

In (`OFTProcessor.__call__`): obs dict (pirl.envs.base) ->
    images          (B, N_cam, 3, S, S) uint8   main camera, then wrist camera(s); resized,
                                                optionally center-cropped, stored as uint8
                                                (8x smaller than the fp32 pixels in the buffer)
    input_ids       (B, L) int64                <s>, left pads, "In: What action should the
                                                robot take to {instruction}?\\nOut:", "▁"
    attention_mask  (B, L) bool                 False on pads
    proprio         (B, P) fp32                 normalized proprio (use_proprio only; as given
                                                without statistics, normalization none)
`pixel_values(images)` -> (B, N_cam·towers·3, S, S) fp32, each tower's normalization,
channel-stacked per camera (Prismatic's fused-backbone contract).
Out (`OFTProcessor.to_env`): bin indices (B, C, D) -> env actions (B, C, D) fp32.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from pirl.models.oft.action_tokenizer import ActionTokenizer, Bounds
from pirl.models.oft.configuration import BOS_ID, STOP_ID, OFTConfig, ViTSpec

PROMPT = "In: What action should the robot take to {}?\nOut:"
SPACE_PIECE = "▁"  # SentencePiece's word-boundary piece: Llama-2 id 29871
CENTER_CROP_SCALE = 0.9  # fraction of the image AREA kept by `center_crop` (OpenVLA-OFT's eval)
CAMERA_OBS_KEYS = ("main_images", "wrist_images")


class SentencePieceEncoder:
    """Llama-2's SentencePiece model (a checkpoint's tokenizer.model, or one a test trains)."""

    def __init__(self, path: str | Path):
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {path} does not exist (expected Llama's SentencePiece tokenizer.model)")
        self.path = path
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self.sp.get_piece_size())
        if (self.sp.bos_id(), self.sp.eos_id()) != (BOS_ID, STOP_ID):
            raise ValueError(f"tokenizer {path}: bos/eos ids are {self.sp.bos_id()}/{self.sp.eos_id()}, "
                             f"OpenVLA needs Llama's {BOS_ID}/{STOP_ID}")
        self.space_id = int(self.sp.piece_to_id(SPACE_PIECE))
        if self.space_id == self.sp.unk_id():
            raise ValueError(f"tokenizer {path} has no {SPACE_PIECE!r} piece, which ends every OpenVLA prompt")

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))


class HashedWordEncoder:
    """For randomly initialised models without a tokenizer file: each whitespace-separated
    word (punctuation stays attached) becomes one id, 4 + crc32(word) mod (V − 4), with
    0 unk, 1 <s>, 2 </s>, 3 "▁" reserved. A prompt is ~15 ids (bytes would be ~70), which
    keeps the tiny models' sequences short; distinct words may share an id (a random model
    has no vocabulary to respect). `vocab_size` is the model's tokenizer vocabulary."""

    OFFSET, SPACE = 4, 3

    def __init__(self, vocab_size: int):
        if vocab_size <= 2 * self.OFFSET:
            raise ValueError(f"the hashed-word tokenizer needs a vocabulary of > {2 * self.OFFSET} ids, got {vocab_size}")
        self.vocab_size, self.space_id = vocab_size, self.SPACE

    def encode(self, text: str) -> list[int]:
        buckets = self.vocab_size - self.OFFSET
        return [self.OFFSET + zlib.crc32(w.encode("utf-8")) % buckets for w in text.split()]


class PromptTokenizer:
    def __init__(self, encoder: SentencePieceEncoder | HashedWordEncoder, max_len: int):
        self.encoder, self.max_len = encoder, max_len
        self.vocab_size = encoder.vocab_size

    def token_ids(self, instruction: str) -> list[int]:
        # "Out: " ends in the bare "▁" token (29871 for Llama-2), as in OpenVLA training.
        return [BOS_ID] + self.encoder.encode(PROMPT.format(instruction.lower())) + [self.encoder.space_id]

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> input_ids (B, L) int64, attention_mask (B, L) bool: <s> first, then pads, then
        the prompt (the reference system's left padding with <s> moved to the front)."""
        B, L = len(instructions), self.max_len
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for i, text in enumerate(instructions):
            toks = self.token_ids(text)
            if len(toks) > L:
                raise ValueError(f"prompt of {len(toks)} tokens exceeds actor.model.max_prompt_length {L}: {text!r}")
            ids[i, 0], mask[i, 0] = BOS_ID, True
            ids[i, L - len(toks) + 1:] = torch.tensor(toks[1:], dtype=torch.long)
            mask[i, L - len(toks) + 1:] = True
        return ids, mask


def crop_and_resize(images: torch.Tensor, size: int, scale: float = CENTER_CROP_SCALE) -> torch.Tensor:
    """OpenVLA-OFT's `center_crop`: the central box holding `scale` of the image area,
    bilinearly resampled to (size, size) exactly as tf.image.crop_and_resize does (output
    row i reads input row y1·(H−1) + i·(y2−y1)·(H−1)/(size−1), box in [0, 1] units), then
    converted back to uint8 the way tf.image.convert_image_dtype saturates: ⌊x·255.5⌋ of
    x in [0, 1]. uint8 (B, 3, H, W) -> uint8 (B, 3, size, size)."""
    B, C, H, W = images.shape
    side = math.sqrt(scale)
    lo, hi = (1 - side) / 2, (1 + side) / 2

    def coords(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = lo * (n - 1) + torch.arange(size, dtype=torch.float64) * (hi - lo) * (n - 1) / (size - 1)
        i0 = pos.floor().long()
        return i0, (i0 + 1).clamp(max=n - 1), (pos - i0).float()

    (y0, y1, wy), (x0, x1, wx) = coords(H), coords(W)
    img = images.float() / 255.0
    rows0, rows1 = img[:, :, y0], img[:, :, y1]
    top = rows0[..., x0] * (1 - wx) + rows0[..., x1] * wx
    bottom = rows1[..., x0] * (1 - wx) + rows1[..., x1] * wx
    out = (top * (1 - wy[:, None]) + bottom * wy[:, None]).clamp(0, 1)
    return (out * 255.5).floor().clamp(max=255).to(torch.uint8)


def prepare_images(images: torch.Tensor, size: int, center_crop: bool) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, 3, size, size): the center crop (resampled straight to
    `size`, as the reference system crops before its processor), else Prismatic's
    resize-naive (bicubic) when the size differs."""
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2)
    if center_crop:
        return crop_and_resize(x, size)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)


def pixel_values(images: torch.Tensor, towers: tuple[ViTSpec, ...]) -> torch.Tensor:
    """uint8 (B, N_cam, 3, S, S) -> fp32 (B, N_cam·towers·3, S, S): per camera, one copy per
    tower normalized with its mean/std (DINOv2: ImageNet; SigLIP: 0.5)."""
    x = images.float() / 255.0
    chans = []
    for cam in range(x.shape[1]):
        for spec in towers:
            mean = torch.tensor(spec.mean, device=x.device)[:, None, None]
            std = torch.tensor(spec.std, device=x.device)[:, None, None]
            chans.append((x[:, cam] - mean) / std)
    return torch.cat(chans, dim=1)


def binarize_gripper(actions: torch.Tensor) -> torch.Tensor:
    """LIBERO's gripper: OpenVLA predicts g in [0, 1] with 1 = open; LIBERO wants −1 = open,
    +1 = close: sign(2g − 1)·(−1) (the reference system's prepare_actions_for_libero)."""
    out = actions.clone()
    out[..., -1] = -torch.sign(2 * out[..., -1] - 1)
    return out


class OFTProcessor:
    def __init__(self, cfg: OFTConfig, tokenizer: PromptTokenizer, action_bounds: Bounds | None,
                 proprio_bounds: Bounds | None, center_crop: bool, gripper_binarize: bool):
        if tokenizer.vocab_size != cfg.tokenizer_vocab:
            raise ValueError(f"the prompt tokenizer has {tokenizer.vocab_size} ids but the model's action ids "
                             f"assume {cfg.tokenizer_vocab} (llm vocab_size − pad_to_multiple_of)")
        if tokenizer.max_len != cfg.max_prompt_length:
            raise ValueError("tokenizer max_len and max_prompt_length differ")
        if action_bounds is not None and action_bounds.low.numel() != cfg.action_dim:
            raise ValueError(f"action statistics cover {action_bounds.low.numel()} dims, the model has "
                             f"{cfg.action_dim} (actor.model.action_dim)")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.action_bounds, self.proprio_bounds = action_bounds, proprio_bounds
        self.center_crop, self.gripper_binarize = center_crop, gripper_binarize
        self.actions = ActionTokenizer(cfg.n_action_bins)

    def __call__(self, obs: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        size = cfg.vision[0].image_size
        cams: list[torch.Tensor] = []
        for key in CAMERA_OBS_KEYS:
            if len(cams) == cfg.num_images_in_input:
                break
            if key not in obs:
                raise ValueError(f"num_images_in_input {cfg.num_images_in_input} needs obs[{key!r}], which the env "
                                 "does not provide")
            img = torch.as_tensor(obs[key])
            views = img.unbind(1) if img.dim() == 5 else (img,)  # wrist_images may be (B, N, H, W, 3)
            cams += [prepare_images(v, size, self.center_crop) for v in views]
        if len(cams) != cfg.num_images_in_input:
            raise ValueError(f"the env gives {len(cams)} cameras, the model takes num_images_in_input "
                             f"{cfg.num_images_in_input}")
        ids, mask = self.tokenizer(list(obs["task_descriptions"]))
        out = {"images": torch.stack(cams, dim=1), "input_ids": ids, "attention_mask": mask}
        if cfg.use_proprio:
            states = torch.as_tensor(obs["states"]).float()
            if states.shape[-1] != cfg.proprio_dim:
                raise ValueError(f"states have {states.shape[-1]} dims, actor.model.proprio_dim is {cfg.proprio_dim}")
            out["proprio"] = self.proprio_bounds.normalize(states) if self.proprio_bounds is not None else states
        return out

    def to_normalized(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.actions.detokenize(tokens)

    def to_env(self, tokens: torch.Tensor) -> torch.Tensor:
        """bin indices (B, C, D) -> env actions (B, C, D) fp32: bin centres, unnormalized
        with the dataset statistics, the LIBERO gripper convention if set. The model's
        action_dim is the env's (actor.model.action_dim)."""
        a = self.actions.detokenize(tokens)
        if self.action_bounds is not None:
            a = self.action_bounds.unnormalize(a)
        if self.gripper_binarize:
            a = binarize_gripper(a)
        return a

    def to_tokens(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions (B, C, D) in env units -> bin indices (B, C, D) (demonstrations)."""
        if actions.shape[-1] != self.cfg.action_dim:
            raise ValueError(f"demonstrated actions have {actions.shape[-1]} dims, the model {self.cfg.action_dim}")
        a = self.action_bounds.normalize(actions) if self.action_bounds is not None else actions.float()
        return self.actions.tokenize(a)
