"""The TSF-Seq2Seq network in PyTorch, its configuration and its checkpoints."""

from .checkpoint import import_reference, load_model, save_model
from .config import PRESETS, ModelConfig, resolve_config
from .tsf import Synthesis, TSFSeq2Seq

__all__ = [
    "PRESETS", "ModelConfig", "Synthesis", "TSFSeq2Seq",
    "import_reference", "load_model", "resolve_config", "save_model",
]
