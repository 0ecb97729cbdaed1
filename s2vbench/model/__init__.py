"""A faithful Wan-S2V: the DiT, its audio path, FramePack, flow-matching training and sampling.

The model knows nothing of distribution or measurement; :mod:`s2vbench.parallel` plugs into its attention
seam (:mod:`s2vbench.model.attention`) and its stage methods (``prepare`` / ``run_blocks`` / ``head_tokens``).
"""

from .attention import attention, attention_backends, register_attention_backend
from .checkpoint import CheckpointError, load_checkpoint, load_state_dict
from .config import PRESETS, ClipShape, ConfigError, Preset, WanS2VConfig, get_preset
from .device import DeviceError, check_device
from .model import PreparedSequence, WanS2V
from .sequence import InputError, SequenceLayout, clip_layout, sequence_layout

__all__ = ["CheckpointError", "ClipShape", "ConfigError", "DeviceError", "InputError", "PRESETS", "PreparedSequence",
           "Preset", "SequenceLayout", "WanS2V", "WanS2VConfig", "attention", "attention_backends", "check_device",
           "clip_layout", "get_preset", "load_checkpoint", "load_state_dict", "register_attention_backend",
           "sequence_layout"]
