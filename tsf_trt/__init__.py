"""tsf-trt: TSF-Seq2Seq multi-to-one MRI synthesis with TSEM, deployable to ONNX/TensorRT.

``import tsf_trt`` gives :class:`Synthesizer`, the :class:`RunOptions` it and every command take,
the :class:`Result` it returns, :class:`Volume` (a loaded NIfTI file) and :func:`load_model`; heavy
modules (torch, nibabel) are imported on first use so that the CLI starts fast. The layers, bottom
up, are the subpackages (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tsf_trt.version import __version__

if TYPE_CHECKING:
    from tsf_trt.files.volume import Volume
    from tsf_trt.model import load_model
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.result import Result

__all__ = ["Result", "RunOptions", "Synthesizer", "Volume", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from tsf_trt.model import load_model

        return load_model
    if name == "RunOptions":
        from tsf_trt.synthesis.options import RunOptions

        return RunOptions
    if name == "Synthesizer":
        from tsf_trt.synthesis.pipeline import Synthesizer

        return Synthesizer
    if name == "Result":
        from tsf_trt.synthesis.result import Result

        return Result
    if name == "Volume":
        from tsf_trt.files.volume import Volume

        return Volume
    raise AttributeError(f"module 'tsf_trt' has no attribute {name!r}")
