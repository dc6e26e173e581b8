"""What a benchmark ran on, and what the machine itself can do, measured in the same run.

Why: a latency figure is meaningless without the CPU/GPU, the thread count, the load
from other processes and the runtime versions next to it; and an efficiency figure
needs the machine's own dense matrix-multiply rate (GEMM), measured now rather than
taken from a datasheet, so that both see the same clocks, threads and contention.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

NOT_INSTALLED = "not installed"
GEMM_SIZE_CPU = 2048   # fp32: 17 GFLOP per product, a fraction of a second on two cores
GEMM_SIZE_GPU = 8192   # fp16 on a GPU: large enough to reach tensor-core throughput
GEMM_MIN_SECONDS = 0.3  # repeat until this much time is spent, best run counts


def package_version(*distributions: str) -> str:
    """Version of the first installed distribution among `distributions` (metadata only: no import)."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where that file is not there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def gpu_info() -> dict[str, Any] | None:
    """Name, driver and CUDA version of GPU 0 as torch sees it; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
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
    import torch

    from tsf_trt import __version__
    from tsf_trt.cache_dir import cpu_name

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(),
        "threads": threads or torch.get_num_threads(),
        "load_average_1m": load,
        "gpu": gpu_info(),
        "platform": platform.platform(),
        "versions": {
            "tsf_trt": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "onnx": package_version("onnx"),
            "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),
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


def gemm_rate(threads: int | None = None) -> dict[str, Any]:
    """The machine's dense GEMM rate in GFLOP/s: fp32 torch.matmul on the CPU (with the
    benchmark's threads), and fp16 on GPU 0 when CUDA exists."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = GEMM_SIZE_CPU
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    cpu = 2 * n**3 / _best_seconds(lambda: torch.matmul(a, b)) / 1e9
    result: dict[str, Any] = {"cpu_fp32_gflops": cpu, "cpu_size": n, "cpu_threads": torch.get_num_threads(),
                              "gpu_fp16_gflops": None, "gpu_size": None}
    if torch.cuda.is_available():
        m = GEMM_SIZE_GPU
        x = torch.randn(m, m, device="cuda", dtype=torch.float16)
        y = torch.randn(m, m, device="cuda", dtype=torch.float16)
        seconds = _best_seconds(lambda: torch.matmul(x, y), torch.cuda.synchronize)
        result.update(gpu_fp16_gflops=2 * m**3 / seconds / 1e9, gpu_size=m)
    return result


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
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self.rss_bytes = self._peak_rss()
        self.gpu_bytes = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None

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
