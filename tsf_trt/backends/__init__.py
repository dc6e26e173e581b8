"""Runtimes behind one interface; the pipeline never sees which one it drives.

`create_backend` takes a :class:`~tsf_trt.source.ModelSource` (or anything
`ModelSource.resolve` takes): a model directory is exported to ONNX into the cache
once when an ONNX or TensorRT backend is asked for; an export directory has no
PyTorch weights.
GPU packages are imported only when a GPU backend is asked for; without them the
request ends in a TsfError that names what is missing.
"""

from __future__ import annotations

import logging

from ..errors import TsfError
from ..extras import require_torch
from .base import Backend

#: Every name `--backend` accepts. `reference` is the torch backend run the authors'
#: way (full ConvLSTM, one slice per call): for measurements, not for use.
NAMES = ("auto", "torch", "ort", "openvino", "ort-cuda", "ort-trt", "trt", "reference")
#: Every concrete backend of this version (whether it runs here depends on the machine).
AVAILABLE = NAMES[1:]
#: `--precision` values each backend takes (auto: those of the backend it picks).
PRECISIONS = {
    "torch": ("fp32", "bf16", "fp16"),  # fp16: CUDA only (TorchBackend says so on the CPU)
    "reference": ("fp32",),
    "ort": ("fp32",),
    "openvino": ("fp32", "bf16"),
    "ort-cuda": ("fp32", "fp16"),
    "ort-trt": ("fp32", "fp16"),
    "trt": ("fp32", "fp16", "best"),
}


#: --precision auto: every backend takes it, and resolves it when built (.precision_auto).
AUTO = "auto"


def check_precision(backend: str, precision: str) -> None:
    """The one rule of which backend takes which --precision (every Backend checks it when
    it is built; RunOptions before anything loads). `auto` is taken by all."""
    allowed = PRECISIONS.get(backend, ())
    if precision not in allowed and not (precision == AUTO and backend in PRECISIONS):
        raise TsfError(f"--precision {precision} is not available for --backend {backend} "
                       f"(it takes {', '.join(allowed)})")


def create_backend(name: str, model, *, device: str = "cpu", threads: int | None = None,
                   precision: str = "fp32", decoder: str = "baked", compile: bool = False) -> Backend:
    """Build the backend `name` for `model` (TSFSeq2Seq, model directory or export directory).

    `precision`: one the backend takes, or 'auto': bf16 where it is native and passes this
    model's check, else fp32 (:mod:`.precision_auto`); the built backend's `.precision` and
    `.precision_reason` say what was chosen and why.

    `device`: 'cpu', 'cuda', 'cuda:N', or 'auto' (a GPU when one is visible and usable).
    `decoder`: ONNX Runtime and OpenVINO backends only: 'baked' (per-target graphs when the
    export has them) or 'code' (the code-input decoder), which `bench --decoders` compares.
    """
    from ..source import ModelSource

    if name not in NAMES:
        raise TsfError(f"unknown backend '{name}': use one of {', '.join(NAMES)}")
    if decoder not in ("baked", "code"):
        raise TsfError(f"decoder must be 'baked' or 'code', got '{decoder}'")
    if decoder == "code" and not (name.startswith("ort") or name == "openvino"):
        raise TsfError(f"the code-input decoder is a choice of the ONNX Runtime and OpenVINO backends, not of "
                       f"'{name}'")
    source = ModelSource.resolve(model)
    if name != "auto":
        return _create(name, source, device=device, threads=threads, precision=precision, decoder=decoder,
                       compile=compile)
    from .auto import plan

    failure: TsfError | None = None
    for choice, where in plan(source, device=device, threads=threads, precision=precision):
        try:
            return _create(choice, source, device=where, threads=threads, precision=precision, compile=compile)
        except TsfError as exc:  # e.g. a GPU backend that is installed but does not start: next one
            logging.getLogger(__name__).info("auto: %s on %s did not start (%s); trying the next", choice, where, exc)
            failure = exc
    assert failure is not None  # plan() offers at least one option or raises
    raise failure


def _create(name: str, source, *, device: str, threads: int | None, precision: str,
            decoder: str = "baked", compile: bool = False) -> Backend:
    check_precision(name, precision)  # the backend checks it too; here it fails before any export
    if name in ("torch", "reference"):
        require_torch(f"--backend {name}")  # a runtime-only install: the one line that names the extra
    if compile and name not in ("torch", "reference"):
        raise TsfError(f"--compile (torch.compile) is a choice of the torch backend, not of '{name}'")
    reason = "asked for (--precision)"
    if precision == AUTO:
        from .precision_auto import resolve

        verdict = resolve(name, source, device="cpu" if _on_cpu(name, device) else "cuda", threads=threads)
        precision, reason = verdict.precision, f"--precision auto: {verdict.why}"
    backend = _build(name, source, device=device, threads=threads, precision=precision, decoder=decoder,
                     compile=compile)
    backend.precision_reason = reason
    return backend


def _on_cpu(name: str, device: str) -> bool:
    if name in ("ort", "openvino"):
        return True
    if name in ("torch", "reference"):
        return _torch_device(device) == "cpu"
    return False


def _build(name: str, source, *, device: str, threads: int | None, precision: str, decoder: str,
           compile: bool) -> Backend:
    from .auto import gpu_index

    if name == "trt":
        from tsf_trt.engines.gpu import require_trt

        require_trt()  # before exporting anything: a missing package is a one-line error at once
        from .trt_backend import TrtBackend

        return TrtBackend.create(source.export_dir(), precision=precision, device=gpu_index(device))
    if name == "openvino":
        from .openvino_backend import OpenVinoBackend, import_openvino

        import_openvino()  # before exporting anything: a missing package is a one-line error at once
        return OpenVinoBackend(source.export_dir(), threads=threads, precision=precision, decoder=decoder)
    if name.startswith("ort"):
        from .ort_backend import OrtBackend, require_provider

        require_provider(name, gpu_index(device))  # a provider that cannot start fails before any export
        return OrtBackend(source.export_dir(), name=name, threads=threads, precision=precision,
                          device=gpu_index(device), decoder=decoder)
    from .torch_backend import TorchBackend

    return TorchBackend(source.module(), device=_torch_device(device), threads=threads,
                        mode="reference" if name == "reference" else "fast", precision=precision,
                        model_id=source.model_id, compile=compile)


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["AVAILABLE", "NAMES", "PRECISIONS", "Backend", "check_precision", "create_backend"]
