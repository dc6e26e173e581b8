"""What the GPU paths need, found lazily, and a clean error naming what is missing.

The base install has no GPU package: `tensorrt`, `cuda-python` and `onnxruntime-gpu`
come with the `[gpu-cu12]` or `[gpu-cu13]` extra (one per CUDA major: pyproject.toml) and
are imported only here, when a GPU path is asked for.
Without them (or without a GPU) every GPU command ends with one line that says what
is missing and how to install it, never with an ImportError.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import sys
from dataclasses import dataclass

from tsf_trt.errors import TsfError


def install_hint() -> str:
    """How to install the GPU extras for this copy of tsf-trt (tsf_trt.machine.extras.install_command;
    TensorRT's libraries come from NVIDIA's index): CUDA 12 for NVIDIA drivers >= 525, CUDA 13 >= 580."""
    from tsf_trt.machine.extras import install_command

    return (f"TensorRT and the CUDA runtime: {install_command('gpu-cu12')} (CUDA 12, NVIDIA driver >= 525), or for "
            f"CUDA 13 (driver >= 580) {install_command('gpu-cu13')}")


NO_GPU = "no NVIDIA GPU is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)"
# The driver's library by the name the CUDA runtime loads it, through the loader's search path (not
# libcuda.so: the toolkit ships a stub of that name, which loads where no driver is).
LIBCUDA = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1",)


def has_module(name: str) -> bool:
    """Whether `name` can be imported, without importing it (a GPU package may be slow to load)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt():
    if not has_module("tensorrt"):
        raise TsfError(f"the Python package tensorrt is not installed: {install_hint()}")
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything from its loader
        raise TsfError(f"tensorrt is installed but does not load ({str(exc).splitlines()[0]}): "
                       "check that its CUDA libraries match the driver") from None


def import_cudart():
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (cuda-python >= 12.6), or the
    older `cuda.cudart` location."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        if has_module(name):
            try:
                return importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001
                raise TsfError(f"cuda-python is installed but does not load ({str(exc).splitlines()[0]})") from None
    raise TsfError(f"the Python package cuda-python is not installed: {install_hint()}")


def device_count() -> int:
    """NVIDIA GPUs visible to this process (0 when there is no driver or no usable package)."""
    return cuda_devices()[0]


def cuda_devices() -> tuple[int, str | None]:
    """(visible GPUs, why there are none): the CUDA runtime's own error when counting fails,
    so that a driver too old for the runtime is not reported as a missing GPU."""
    if has_cuda_python():
        try:
            cudart = import_cudart()
            err, count = cudart.cudaGetDeviceCount()
        except Exception as exc:  # noqa: BLE001 - a broken driver install may raise from the loader
            return 0, f"the CUDA runtime cannot count GPUs ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        if err != cudart.cudaError_t.cudaSuccess:
            return 0, cuda_error_reason(cudart, err)
        return int(count), None if count else NO_GPU
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        count = 0
    return count, None if count else NO_GPU


def cuda_error_text(cudart, err) -> str:
    """'cudaErrorInsufficientDriver (CUDA driver version is insufficient ...)': the name
    and the description cuda-python gives for a status (both return (status, bytes))."""
    def text(call) -> str:
        try:
            value = call(err)[1]
        except Exception:  # noqa: BLE001 - an unknown code: keep the number
            return ""
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    name = text(cudart.cudaGetErrorName) or f"CUDA error {int(err)}"
    description = text(cudart.cudaGetErrorString)
    return f"{name} ({description})" if description else name


def driver_loads() -> bool:
    """Whether the NVIDIA driver's library (libcuda) loads here. Without it the CUDA runtime answers
    every call with cudaErrorInsufficientDriver (35), as cuda-bindings 12.9 and 13 do on a machine
    with no driver: that 35 means "no driver", not "a driver too old"."""
    for name in LIBCUDA:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def cuda_error_reason(cudart, err, doing: str = "count GPUs") -> str:
    """Why no GPU is usable, in words, from the status a runtime call (cudaGetDeviceCount: `doing`
    is "count GPUs") returned: the error's name and text, never its repr."""
    detail = cuda_error_text(cudart, err)
    if err == cudart.cudaError_t.cudaErrorNoDevice:
        return f"{NO_GPU}: {detail}"
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        if not driver_loads():
            return (f"no NVIDIA driver found ({LIBCUDA[0]} does not load; the CUDA runtime says {detail}): "
                    "install the NVIDIA driver, or run on a machine that has a GPU")
        return (f"the CUDA runtime cannot use the NVIDIA driver: {detail}; install a newer driver, or the "
                "tsf-trt GPU extra of an older CUDA major (gpu-cu12 runs on drivers >= 525)")
    return f"the CUDA runtime cannot {doing}: {detail}"


def has_cuda_python() -> bool:
    return has_module("cuda.bindings.runtime") or has_module("cuda.cudart")


def missing_for_trt() -> list[str]:
    """What the `trt` backend lacks here, in words (empty when everything is present)."""
    missing = []
    if not has_module("tensorrt"):
        missing.append("the Python package tensorrt is not installed")
    if not has_cuda_python():
        missing.append("the Python package cuda-python is not installed")
    if not missing:
        count, reason = cuda_devices()
        if count == 0:
            missing.append(reason or NO_GPU)
    return missing


def require_trt(what: str = "backend 'trt'") -> None:
    """Raise one clean TsfError listing everything `trt` lacks here."""
    missing = missing_for_trt()
    if missing:
        packages = any("package" in m for m in missing)
        raise TsfError(f"{what} is not available here: {'; '.join(missing)}" + (f"; {install_hint()}" if packages else ""))


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str   # "9.0"
    memory_bytes: int


def device_info(index: int = 0) -> GpuInfo:
    """Name, compute capability and memory of GPU `index`, from the CUDA runtime."""
    cudart = import_cudart()
    err, props = cudart.cudaGetDeviceProperties(index)
    if err == cudart.cudaError_t.cudaErrorInvalidDevice:
        raise TsfError(f"there is no GPU {index} here ({cuda_error_text(cudart, err)}); "
                       f"{device_count()} visible, numbered from 0")
    if err != cudart.cudaError_t.cudaSuccess:
        raise TsfError(f"GPU {index}: {cuda_error_reason(cudart, err, 'read its properties')}")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(index, name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}", int(props.totalGlobalMem))


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)
