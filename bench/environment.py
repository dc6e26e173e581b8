"""What a benchmark ran on, and what the machine itself can do, measured in the same run.

Why: a latency figure is meaningless without the CPU/GPU, the thread count, the load
from other processes and the runtime versions next to it; and an efficiency figure
needs the machine's own dense matrix-multiply rate (GEMM), measured now rather than
taken from a datasheet, so that both see the same clocks, threads and contention.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.machine.cpu import BF16_FLAGS, cpu_flags, cpu_name, native_bf16_flags, physical_cores

NOT_INSTALLED = "not installed"
# CPU: 2.1 GFLOP per product. 1024 rather than 2048: up to 6 libraries x precisions are timed in
# about 2 s on two cores, and on a 2-core AVX2 EPYC 2048 reached no higher rates (measured).
GEMM_SIZE_CPU = 1024
GEMM_SIZE_GPU = 8192   # fp16 on a GPU: large enough to reach tensor-core throughput
GEMM_MIN_SECONDS = 0.25  # per library: repeat until this much time is spent, best run counts


def optional_torch() -> Any | None:
    """torch where it is installed (the [torch] extra), else None: the runtime install (ONNX Runtime,
    OpenVINO) benchmarks without it, its torch rows skipped with the reason."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def package_version(*distributions: str) -> str:
    """Version of the first installed distribution among `distributions` (metadata only: no import)."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def gpu_info() -> dict[str, Any] | None:
    """Name, driver and CUDA version of GPU 0 as torch sees it; None without CUDA (or torch)."""
    torch = optional_torch()
    if torch is None or not torch.cuda.is_available():
        return None
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    return {"name": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}


def environment(threads: int | None) -> dict[str, Any]:
    """The environment block of a report (see bench/SCHEMA.md)."""
    from tsf_trt.version import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    torch = optional_torch()
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(),
        "threads": threads or (torch.get_num_threads() if torch else usable),
        "load_average_1m": load,
        "gpu": gpu_info(),
        "platform": platform.platform(),
        "versions": {
            "tsf_trt": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__ if torch else NOT_INSTALLED,
            "onnx": package_version("onnx"),
            "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),
            "openvino": package_version("openvino"),
            "tensorrt": package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
        },
    }


def _best_seconds(run, sync=lambda: None) -> float:
    """Best wall time of `run` after one warm-up, over at least 3 runs and GEMM_MIN_SECONDS."""
    run()
    sync()
    best, spent, count = float("inf"), 0.0, 0
    while count < 3 or spent < GEMM_MIN_SECONDS:
        start = time.perf_counter()
        run()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, count = min(best, elapsed), spent + elapsed, count + 1
    return best


Product = Callable[[], object]
#: (size, threads) -> one prepared n x n product; raises where its library cannot run it.
Factory = Callable[[int, int | None], Product]


@functools.lru_cache(maxsize=2)  # the same operands for every library: made once (read only)
def _operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    return gen.standard_normal((n, n), dtype=np.float32), gen.standard_normal((n, n), dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _int8_operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    return gen.integers(0, 256, (n, n), dtype=np.uint8), gen.integers(-64, 64, (n, n), dtype=np.int8)


def _torch_matmul(dtype: str) -> Factory:
    def make(n: int, threads: int | None) -> Product:
        import torch  # threads: set once for torch by gemm_rate, as the torch rows run

        a, b = (torch.from_numpy(x).to(getattr(torch, dtype)) for x in _operands(n))
        return lambda: torch.matmul(a, b)
    return make


def _ort_session(nodes: list, inputs: list, output, threads: int | None):
    """ONNX Runtime session of a one-node graph with the rows' thread settings (OrtBackend._open's)."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "gemm", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_matmul(n: int, threads: int | None) -> Product:
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    session = _ort_session([helper.make_node("MatMul", ["a", "b"], ["c"])], info[:2], info[2], threads)
    a, b = _operands(n)
    return lambda: session.run(None, {"a": a, "b": b})


def _ort_matmul_integer(n: int, threads: int | None) -> Product:
    """uint8 x int8 -> int32, ONNX Runtime's quantised GEMM (what its int8 convolutions run on); the
    int8 operand in [-64, 64), as ONNX Runtime's reduce_range: AVX2's u8 x s8 multiply-add saturates
    at int16 otherwise (measured here: wrong products)."""
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
            helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])]
    session = _ort_session([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], info[:2], info[2], threads)
    a, b = _int8_operands(n)
    return lambda: session.run(None, {"a": a, "b": b})


@functools.lru_cache(maxsize=1)
def _openvino_core():
    import openvino

    return openvino.Core()


def _openvino_matmul(precision: str) -> Factory:
    """An f32 MatMul model compiled for the CPU at inference precision `precision` ('f32', 'bf16'),
    checked on the compiled model: OpenVINO falls back to f32 where the CPU lacks bf16."""
    def make(n: int, threads: int | None) -> Product:
        import openvino
        import openvino.opset13 as ops

        a, b = (ops.parameter([n, n], np.float32) for _ in range(2))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = _openvino_core().compile_model(openvino.Model([ops.matmul(a, b, False, False)], [a, b]),
                                                  "CPU", config)
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        if ran != getattr(openvino.Type, precision):
            raise ValueError(f"OpenVINO compiled it at {ran.to_string()}, not {precision}")
        request = compiled.create_infer_request()
        for index, operand in enumerate(_operands(n)):
            request.set_input_tensor(index, openvino.Tensor(operand))  # shares the array: no copy per run
        return lambda: request.infer(share_outputs=True)
    return make


#: Every GEMM available per CPU precision; the fastest is the peak (torch's fp32 matmul runs at
#: half of ONNX Runtime's and OpenVINO's on some CPUs). No OpenVINO int8: it needs a quantised graph.
CPU_CANDIDATES: dict[str, list[tuple[str, Factory]]] = {
    "fp32": [("torch", _torch_matmul("float32")), ("onnxruntime", _ort_matmul), ("openvino", _openvino_matmul("f32"))],
    "bf16": [("torch", _torch_matmul("bfloat16")), ("openvino", _openvino_matmul("bf16"))],
    "int8": [("onnxruntime", _ort_matmul_integer)],
}


def openvino_capabilities() -> list[str] | None:
    """OpenVINO's CPU OPTIMIZATION_CAPABILITIES (it lists BF16 where the CPU runs bf16); None without it."""
    try:
        return [str(c) for c in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except (ImportError, RuntimeError):  # not installed, or no CPU plugin
        return None


def bf16_support() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, and the evidence. Why ask: elsewhere torch and
    OpenVINO emulate it (torch measured at 0.1-0.4 GFLOP/s on an AVX2 CPU), which is no peak."""
    flags, capabilities = native_bf16_flags(cpu_flags()), openvino_capabilities()
    native = bool(flags) or "BF16" in (capabilities or [])
    listed = ", ".join(capabilities) if capabilities is not None else NOT_INSTALLED
    return native, (f"CPU flags: {', '.join(flags) or 'no ' + ' or '.join(sorted(BF16_FLAGS))}; "
                    f"OpenVINO CPU capabilities: {listed}")


def measure_peak(candidates: list[tuple[str, Factory]], n: int, threads: int | None,
                 seconds: Callable[[Product], float] = _best_seconds) -> dict[str, Any]:
    """The fastest of `candidates` on n x n products: `gflops` and the `library` that won, every
    candidate's rate, and why the others could not run."""
    rates: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for library, make in candidates:
        try:
            rates[library] = 2 * n**3 / seconds(make(n, threads)) / 1e9
        except ImportError:
            unavailable[library] = NOT_INSTALLED
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the product is recorded, not fatal
            unavailable[library] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    winner = max(rates, key=rates.__getitem__, default=None)
    reason = None if winner else "no library could run it: " + "; ".join(f"{k} {v}" for k, v in unavailable.items())
    return {"gflops": rates[winner] if winner else None, "library": winner, "native": True,
            "candidates": rates, "unavailable": unavailable, "reason": reason}


def not_measured(reason: str, native: bool) -> dict[str, Any]:
    """A peak entry without a figure (the same keys as measure_peak's)."""
    return {"gflops": None, "library": None, "native": native, "candidates": {}, "unavailable": {}, "reason": reason}


def gemm_rate(threads: int | None = None) -> dict[str, Any]:
    """The machine's dense GEMM peaks in GFLOP/s per precision (bench/SCHEMA.md, `gemm`): on the CPU
    the fastest library at fp32, bf16 (only where native) and int8, with the benchmark's threads;
    fp16 torch.matmul on GPU 0 when CUDA exists."""
    torch = optional_torch()
    if threads and torch:
        torch.set_num_threads(threads)
    start, n = time.perf_counter(), GEMM_SIZE_CPU
    native, evidence = bf16_support()
    bf16 = measure_peak(CPU_CANDIDATES["bf16"], n, threads) if native else not_measured(
        "not native on this CPU (an emulated rate is no peak)", False)
    peaks = {"cpu fp32": measure_peak(CPU_CANDIDATES["fp32"], n, threads),
             "cpu bf16": {**bf16, "evidence": evidence},
             "cpu int8": measure_peak(CPU_CANDIDATES["int8"], n, threads)}
    gpu_size = None
    if torch and torch.cuda.is_available():
        gpu_size = GEMM_SIZE_GPU

        def cuda_fp16(m: int, _threads: int | None) -> Product:
            x, y = (torch.randn(m, m, device="cuda", dtype=torch.float16) for _ in range(2))
            return lambda: torch.matmul(x, y)
        peaks["gpu fp16"] = measure_peak([("torch", cuda_fp16)], gpu_size, None,
                                         lambda run: _best_seconds(run, torch.cuda.synchronize))
    return {"cpu_size": n, "threads": threads, "cpu_threads": torch.get_num_threads() if torch else None,
            "gpu_size": gpu_size,
            "peaks": peaks, "seconds": time.perf_counter() - start}


class PeakMemory:
    """Peak resident memory (and GPU memory through torch's allocator) over a block of work.

    On Linux the process's high-water mark is reset by writing 5 to /proc/self/clear_refs,
    so each row gets its own peak; elsewhere the figure is the process's peak so far
    (ru_maxrss), which `method` says.
    """

    def __init__(self) -> None:
        self.method = "VmHWM after reset" if self._reset_rss() else "ru_maxrss (process peak so far)"

    @staticmethod
    def _reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def __enter__(self) -> "PeakMemory":
        self._reset_rss()
        torch = optional_torch()
        if torch and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        torch = optional_torch()
        self.rss_bytes = self._peak_rss()
        self.gpu_bytes = int(torch.cuda.max_memory_allocated()) if torch and torch.cuda.is_available() else None

    @staticmethod
    def _peak_rss() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if platform.system() == "Darwin" else peak * 1024)


def transfer_seconds(bytes_in: int, bytes_out: int) -> tuple[float, float]:
    """Host-to-device and device-to-host seconds for copies of these sizes (pinned host memory).

    Why separately: the backends move data inside encode and decode and GPU work is
    asynchronous, so the pipeline's stage clocks cannot split transfers out; copying the
    same number of bytes alone, synchronised, gives what they cost.
    """
    import torch

    def copy(nbytes: int, to_device: bool) -> float:
        host = torch.empty(max(1, nbytes // 4), dtype=torch.float32, pin_memory=True)
        device = torch.empty_like(host, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        (device.copy_(host, non_blocking=True) if to_device else host.copy_(device, non_blocking=True))
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return copy(bytes_in, True), copy(bytes_out, False)
