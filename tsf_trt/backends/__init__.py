"""Runtimes behind one interface; the pipeline never sees which one it drives.

`create_backend` also decides what a model argument is: a loaded TSFSeq2Seq, a
model directory (PyTorch weights; exported to ONNX into the cache once when an
ONNX backend is asked for), or an export directory (ONNX graphs only).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError, TsfError
from .base import Backend

#: Every name `--backend` accepts. `reference` is the torch backend run the authors'
#: way (full ConvLSTM, one slice per call): for measurements, not for use.
NAMES = ("auto", "torch", "ort", "ort-cuda", "ort-trt", "trt", "reference")
#: Implemented in this version; `trt` arrives with the TensorRT issue.
AVAILABLE = ("torch", "ort", "ort-cuda", "ort-trt", "reference")


def create_backend(name: str, model, *, device: str = "cpu", threads: int | None = None,
                   precision: str = "fp32") -> Backend:
    """Build the backend `name` for `model` (TSFSeq2Seq, model directory or export directory)."""
    from tsf_trt.export.cache import ensure_export
    from tsf_trt.export.manifest import is_export_dir

    if name not in NAMES:
        raise TsfError(f"unknown backend '{name}': use one of {', '.join(NAMES)}")
    if name == "auto":
        from .auto import choose_backend

        name = "torch" if precision != "fp32" else choose_backend(model, device=device, threads=threads)
    if name not in AVAILABLE:
        raise TsfError(f"backend '{name}' is not available in this version of tsf-trt "
                       f"(available: {', '.join(AVAILABLE)})")
    if precision != "fp32" and name not in ("torch", "auto"):
        raise TsfError(f"--precision {precision} is for the torch backend (got --backend {name})")
    exported = isinstance(model, (str, Path)) and is_export_dir(model)
    if name.startswith("ort"):
        from .ort_backend import OrtBackend

        return OrtBackend(model if exported else ensure_export(model), name=name, threads=threads)
    if exported:
        raise ModelError(Path(model), f"is an export directory (ONNX graphs only): backend '{name}' needs the "
                                      "PyTorch model directory; use --backend ort for this one")
    from ..model import TSFSeq2Seq, load_model
    from .torch_backend import TorchBackend

    if not isinstance(model, TSFSeq2Seq):
        model = load_model(model)
    return TorchBackend(model, device=device, threads=threads, mode="reference" if name == "reference" else "fast",
                        precision=precision)


__all__ = ["AVAILABLE", "NAMES", "Backend", "create_backend"]
