"""Every backend's name and the --precision values each takes: the one rule of which backend takes
which precision (:func:`check_precision`), asked by RunOptions before anything loads and by the
Backend base class when a backend is built directly."""

from __future__ import annotations

from tsf_trt.errors import TsfError

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
    "openvino": ("fp32", "bf16", "int8"),  # int8: the export's int8 graphs (tsf-trt export --precision int8)
    "ort-cuda": ("fp32", "fp16"),
    "ort-trt": ("fp32", "fp16"),
    "trt": ("fp32", "fp16", "best"),
}


#: --precision auto: every backend takes it; it is resolved when built (tsf_trt.synthesis.precision_auto).
AUTO = "auto"


def check_precision(backend: str, precision: str) -> None:
    """The one rule of which backend takes which --precision (every Backend checks it when
    it is built; RunOptions before anything loads). `auto` is taken by all."""
    allowed = PRECISIONS.get(backend, ())
    if precision not in allowed and not (precision == AUTO and backend in PRECISIONS):
        raise TsfError(f"--precision {precision} is not available for --backend {backend} "
                       f"(it takes {', '.join(allowed)})")
