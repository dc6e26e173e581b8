"""What ONNX Runtime's GPU providers need around their sessions, and what is known to go wrong
with them: the CUDA and cuDNN libraries loaded first, TF32 kept out of fp32, and the TensorRT EP's
weakly typed FP16 builds on ONNX Runtime >= 1.27. Used by :mod:`tsf_trt.backends.ort_backend` and
by `--backend auto` (:mod:`tsf_trt.synthesis.auto`). Written from ONNX Runtime's and NVIDIA's
documentation and the onnxruntime-gpu 1.26.0 / 1.31.1 wheels; NOT yet run on a GPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator

_log = logging.getLogger(__name__)


_preloaded = False


def preload_gpu_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu's `cuda` and `cudnn` extras install
    (NVIDIA's wheels, off the loader's path) before the first GPU session, once per process:
    `onnxruntime.preload_dlls()`, ONNX Runtime >= 1.21 (older ones use the system's libraries).
    It prints what it could not load: that goes to the log, not to stdout, where results go."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        _log.info("onnxruntime %s has no preload_dlls (1.21 and later have): its GPU providers use the "
                  "system's CUDA and cuDNN libraries", ort.__version__)
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # noqa: BLE001 - a provider that then cannot start is reported by provider_problem
        _log.info("onnxruntime.preload_dlls failed (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    said = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue()).split())
    if said:
        _log.info("onnxruntime.preload_dlls: %s", said)
    _preload_tensorrt_libraries()


def _preload_tensorrt_libraries() -> None:
    """Load TensorRT's libraries from NVIDIA's `tensorrt_libs` wheel, when installed, so that the
    TensorRT EP's dlopen of libnvinfer.so.10 finds them: pip puts them off the loader's path and
    `preload_dlls` loads only CUDA's and cuDNN's. Importing `tensorrt_libs` loads them (the
    tensorrt 10.16 bindings' own __init__ relies on that import "to have taken care of it"); not
    verified on a GPU machine, where a missing library shows as the provider falling back to the CPU."""
    try:
        import tensorrt_libs  # noqa: F401 - imported for its side effect
    except Exception as exc:  # noqa: BLE001 - not installed, or its libraries do not load here
        _log.info("no TensorRT libraries preloaded (%s)", type(exc).__name__)


#: NVIDIA's process-wide switch that turns TF32 off in its libraries (cuDNN's documentation, quoted
#: in microsoft/onnxruntime pull request #19426). ONNX Runtime's TensorRT EP has no TF32 option (none
#: among the `trt_*` option names in the 1.26.0 and 1.31.1 provider libraries) and TensorRT allows
#: TF32 by default (BuilderFlag.TF32), so this variable is the one lever left for `ort-trt`.
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


@contextlib.contextmanager
def tensorrt_without_tf32() -> Iterator[None]:
    """NVIDIA_TF32_OVERRIDE=0 while a TensorRT EP session is created, removed after (a value the
    user set is left as it is); the variable is process-wide, so other threads see it meanwhile.
    Expected to cover the engine builds, as every input has an explicit profile, but NOT verified
    on a GPU, neither when the EP builds nor that TensorRT's builder reads the variable: gpu_check's
    ort-trt fp32 against the CPU shows whether fp32 stays FP32."""
    if TF32_OVERRIDE in os.environ:
        yield
        return
    os.environ[TF32_OVERRIDE] = "0"
    try:
        yield
    finally:
        os.environ.pop(TF32_OVERRIDE, None)


#: microsoft/onnxruntime pull request #29779 (open when this was written): from ONNX Runtime 1.27 the
#: TensorRT EP takes TensorRT 11's code path on TensorRT 10 (a wrong version macro), so it builds FP16
#: graphs weakly typed: the PR measured an FP16 network at ~31 % of its speed. Every release from
#: WEAK_FP16_SINCE on is taken as affected until the PR ships; re-check then and set WEAK_FP16_FIXED
#: to its first release.
WEAK_FP16_SINCE = (1, 27)
WEAK_FP16_FIXED: tuple[int, int] | None = None


def _major_minor(version: str) -> tuple[int, int]:
    numbers = re.match(r"(\d+)\.(\d+)", version)
    return (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)


def weak_fp16_problem(ort_version: str, tensorrt_version: str | None) -> str | None:
    """Why ort-trt's fp16 may build a weakly typed network with ONNX Runtime `ort_version` and the
    TensorRT `tensorrt_version` its TensorRT EP loads (None: unknown, taken as 10, the major that
    every onnxruntime-gpu wheel read links, libnvinfer.so.10); None when it builds strongly typed."""
    release = _major_minor(ort_version)
    trt_major = _major_minor(tensorrt_version)[0] if tensorrt_version else 10
    if release < WEAK_FP16_SINCE or trt_major >= 11 or (WEAK_FP16_FIXED is not None and release >= WEAK_FP16_FIXED):
        return None
    return (f"ONNX Runtime {ort_version} with TensorRT {tensorrt_version or '10'} may build FP16 graphs weakly "
            "typed, at a fraction of FP16 speed (microsoft/onnxruntime PR #29779)")


#: The Python distributions that install the TensorRT libraries ONNX Runtime's TensorRT EP loads.
TENSORRT_DISTRIBUTIONS = ("tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-cu13", "tensorrt-cu12", "tensorrt")


def ort_trt_versions(ort) -> tuple[str, str | None]:
    """(the version of `ort`, the onnxruntime module; the installed TensorRT libraries' version or
    None), read without loading TensorRT."""
    from importlib import metadata

    for name in TENSORRT_DISTRIBUTIONS:
        try:
            return ort.__version__, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ort.__version__, None


def ort_trt_fp16_problem(ort) -> str | None:
    """:func:`weak_fp16_problem` for `ort` (the onnxruntime module) and the TensorRT installed here."""
    return weak_fp16_problem(*ort_trt_versions(ort))
