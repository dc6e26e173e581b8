"""The TSF-Seq2Seq network in PyTorch, its configuration and its checkpoints.

The configuration and a model directory's metadata (:mod:`.config`, :mod:`.meta`) need no
PyTorch; the network and its checkpoints are imported on first use, so that a runtime-only
install (docs/getting-started.md, "Set up") imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tsf_trt.model.config import PRESETS, ModelConfig, resolve_config

if TYPE_CHECKING:
    from tsf_trt.model.checkpoint import import_reference, load_model, save_model
    from tsf_trt.model.tsf import Synthesis, TSFSeq2Seq

__all__ = [
    "PRESETS", "ModelConfig", "Synthesis", "TSFSeq2Seq",
    "import_reference", "load_model", "resolve_config", "save_model",
]
_TORCH_NAMES = {"import_reference": "checkpoint", "load_model": "checkpoint", "save_model": "checkpoint",
                "Synthesis": "tsf", "TSFSeq2Seq": "tsf"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from importlib import import_module

        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
