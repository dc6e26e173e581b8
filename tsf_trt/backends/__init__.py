"""Runtimes behind one interface; the pipeline never sees which one it drives."""

from __future__ import annotations

from pathlib import Path

from ..errors import TsfError
from .base import Backend

#: Every name `--backend` accepts, in the order `auto` prefers them once they exist.
NAMES = ("auto", "torch", "ort", "ort-cuda", "ort-trt", "trt")
#: What is implemented in this version; the others arrive with the export (ort*)
#: and TensorRT (trt) issues and are refused with a clear message until then.
AVAILABLE = ("torch",)


def create_backend(name: str, model, *, device: str = "cpu", threads: int | None = None) -> Backend:
    """Build the backend `name` for `model` (a loaded TSFSeq2Seq or a model directory)."""
    if name not in NAMES:
        raise TsfError(f"unknown backend '{name}': use one of {', '.join(NAMES)}")
    if name == "auto":
        name = "torch"
    if name not in AVAILABLE:
        raise TsfError(
            f"backend '{name}' is not available in this version of tsf-trt "
            f"(available: {', '.join(AVAILABLE)})"
        )
    from ..model import load_model
    from .torch_backend import TorchBackend

    if isinstance(model, (str, Path)):
        model = load_model(model)
    return TorchBackend(model, device=device, threads=threads)


__all__ = ["AVAILABLE", "NAMES", "Backend", "create_backend"]
