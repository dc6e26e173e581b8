"""tsf-trt: TSF-Seq2Seq multi-to-one MRI synthesis with TSEM, deployable to ONNX/TensorRT.

``import tsf_trt`` gives :func:`load_model` and :class:`Synthesizer`; heavy modules
(torch, nibabel) are imported on first use so that the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .model import load_model
    from .pipeline import Result, Synthesizer

__all__ = ["Result", "Synthesizer", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from .model import load_model

        return load_model
    if name in ("Synthesizer", "Result"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tsf_trt' has no attribute {name!r}")
