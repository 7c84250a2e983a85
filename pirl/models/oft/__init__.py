"""OpenVLA-OFT as an RL policy: token actions decoded in parallel (configuration, modeling,
action tokens and statistics, processor, sampling filters, checkpoints, LoRA)."""
from __future__ import annotations

from pirl.models.oft.checkpoint import CheckpointError, load_weights, save_pirl
from pirl.models.oft.configuration import OFTConfig, preset
from pirl.models.oft.modeling import OFTModel
from pirl.models.oft.processor import OFTProcessor
from pirl.models.oft.sampling import SamplingParams

__all__ = ["CheckpointError", "OFTConfig", "OFTModel", "OFTProcessor", "SamplingParams", "load_weights", "preset",
           "save_pirl"]
