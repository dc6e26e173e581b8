"""One concrete backend built for a model: its name and precision are already decided.

The choice of which backend and which precision (`auto`) sits above this module
(tsf_trt.synthesis.backend, .auto, .precision_auto); the runtimes themselves are
tsf_trt.backends, below. A model directory is exported to ONNX into the cache once when an
ONNX or TensorRT backend is built; an export directory has no PyTorch weights.
"""

from __future__ import annotations

from tsf_trt.backends import Backend
from tsf_trt.errors import TsfError
from tsf_trt.machine.extras import require_torch
from tsf_trt.synthesis.source import ModelSource


def gpu_index(device: str) -> int:
    """'cuda:1' -> 1; 'cuda', 'auto' and 'cpu' -> 0 (the first visible GPU)."""
    if device.startswith("cuda:"):
        try:
            return int(device.split(":", 1)[1])
        except ValueError:
            raise TsfError(f"--device: expected cuda:N with N a GPU index, got '{device}'") from None
    return 0


def torch_device(device: str) -> str:
    """Where torch runs for `device`: 'auto' is CUDA when this PyTorch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def on_cpu(name: str, device: str) -> bool:
    """Whether backend `name` asked for `device` computes on the CPU."""
    if name in ("ort", "openvino"):
        return True
    if name in ("torch", "reference"):
        return torch_device(device) == "cpu"
    return False


def build_backend(name: str, source: ModelSource, *, device: str, threads: int | None, precision: str,
                  decoder: str = "baked", compile: bool = False) -> Backend:
    """Backend `name` (not `auto`) at `precision` (not `auto`) on `device`. A missing package or a
    provider that cannot start is a one-line error before anything is exported."""
    if name in ("torch", "reference"):
        require_torch(f"--backend {name}")  # a runtime-only install: the one line that names the extra
        from tsf_trt.backends.torch_backend import TorchBackend

        return TorchBackend(source.module(), device=torch_device(device), threads=threads,
                            mode="reference" if name == "reference" else "fast", precision=precision,
                            model_id=source.model_id, compile=compile)
    if name == "trt":
        from tsf_trt.engines.gpu import require_trt

        require_trt()
        from tsf_trt.backends.trt_backend import TrtBackend

        return TrtBackend.create(source.export_dir(), precision=precision, device=gpu_index(device))
    if name == "openvino":
        from tsf_trt.backends.openvino_backend import OpenVinoBackend, import_openvino

        import_openvino()
        return OpenVinoBackend(source.export_dir(), threads=threads, precision=precision, decoder=decoder)
    from tsf_trt.backends.ort_backend import OrtBackend, require_provider

    require_provider(name, gpu_index(device))
    return OrtBackend(source.export_dir(), name=name, threads=threads, precision=precision,
                      device=gpu_index(device), decoder=decoder)
