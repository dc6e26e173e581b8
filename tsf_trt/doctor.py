"""`tsf-trt doctor`: what this machine has, and which backends really run on it.

Why a command of its own: a GPU runtime can be installed and still not run (ONNX Runtime
lists a provider whose CUDA libraries are missing and silently falls back to the CPU; a
TensorRT wheel for another CUDA major than the driver's), and every other command only
finds that out in the middle of a job. Each probe here reuses the check the backend itself
runs (`provider_problem`'s one-node graph, `missing_for_trt`, `gpu_problem`), catches its
own failure and reports it as text, so the report is complete on a machine where a
package is absent or broken. :func:`collect` is the library entry point; the CLI only
prints it.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from tsf_trt.bench.environment import NOT_INSTALLED, package_version
from tsf_trt.machine.cpu import cpu_flags, cpu_name, physical_cores
from tsf_trt.machine.extras import install_command

#: `tsf-trt doctor`'s exit status when not one backend works here (0 otherwise: it is a report).
EXIT_NO_BACKEND = 3
#: The instruction-set extensions that decide CPU speed here (/proc/cpuinfo names).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
#: How to install what a CPU backend lacks (torch: torch_install()).
INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install openvino",
}
#: The gpu-cu13 extra needs an NVIDIA driver of this major version or newer (engines/gpu.py install_hint).
CUDA13_DRIVER = 580
#: gpu_problem() asks of the model what it can run; a model directory can run on every backend.
_ANY_MODEL = SimpleNamespace(kind="model")


@dataclass
class BackendStatus:
    """One `--backend` here: `works`, or the one thing `missing` (and `install`, the command
    that installs it, when pip can), or `fails` (installed, but does not start)."""

    name: str
    status: str                   # "works" | "missing" | "fails" | "unknown"
    missing: str | None = None    # the first thing that stops it, in words
    install: str | None = None    # the command that fixes it; None when no package does (e.g. no GPU)
    note: str | None = None       # where it runs when it works, or the probe's own words


@dataclass
class Report:
    system: dict[str, Any]
    cpu: dict[str, Any]
    gpus: list[dict[str, Any]]
    cuda: dict[str, Any]
    packages: dict[str, str]
    onnxruntime_providers: dict[str, str]
    torch: dict[str, Any]
    openvino: dict[str, Any]
    cache: dict[str, Any]
    backends: list[BackendStatus] = field(default_factory=list)

    def working(self) -> list[str]:
        return [b.name for b in self.backends if b.status == "works"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backends"] = {b.pop("name"): b for b in data["backends"]}
        return data


def collect() -> Report:
    """Every probe, each one failing on its own (its failure becomes the text of its field)."""
    with warnings.catch_warnings():  # ONNX Runtime warns as it falls back: the report says it in words
        warnings.simplefilter("ignore")
        broken = None
        try:
            from tsf_trt.backends import AVAILABLE
            from tsf_trt.backends.ort_backend import provider_problem

            provider_problem.cache_clear()  # a report of now, not of an earlier call in this process
        except Exception as exc:  # noqa: BLE001 - e.g. the backends' own imports are missing
            AVAILABLE, broken = (), BackendStatus("*", "fails", f"tsf_trt.backends does not import ({_line(exc)})")
        gpus, gpu_note = _safe(_gpus, ([], None))
        driver = _safe(_driver_version, None)
        report = Report(system=_safe(_system, {}), cpu=_safe(_cpu, {}), gpus=gpus,
                        cuda=_safe(lambda: _cuda(driver, gpu_note), {}), packages=_safe(_packages, {}),
                        onnxruntime_providers=_safe(_providers, {}), torch=_safe(_torch, {}),
                        openvino=_safe(_openvino, {}), cache=_safe(_cache, {}))
        for name in AVAILABLE:  # read now: the tuple grows as backends are added
            report.backends.append(backend_status(name, report))
    if broken:
        report.backends.append(broken)
    return report


def backend_status(name: str, report: Report) -> BackendStatus:
    probe = _BACKENDS.get(name)
    if probe is None:
        return BackendStatus(name, "unknown", "tsf-trt doctor has no check for this backend yet")
    try:
        return probe(name, report)
    except Exception as exc:  # noqa: BLE001 - a probe's own failure is part of the report
        return BackendStatus(name, "fails", f"its check failed: {_line(exc)}")


# -- the machine ------------------------------------------------------------------------------

def _system() -> dict[str, Any]:
    from tsf_trt.version import __version__

    return {"tsf_trt": __version__, "os": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "executable": sys.executable}


def _cpu() -> dict[str, Any]:
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    quota = _cgroup_cpus()
    flags = cpu_flags()
    return {"model": cpu_name(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "cgroup_cpu_limit": quota, "physical_cores": physical_cores(),
            "flags": {f: f in flags for f in CPU_FLAGS} if flags is not None else "unknown (no /proc/cpuinfo)"}


def _cgroup_cpus() -> float | None:
    """CPUs a container's quota allows (cgroup v2, then v1); None without one: an affinity mask
    can promise more cores than the quota lets the process use."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            words = Path("/sys/fs/cgroup", quota_file).read_text().split()
            quota, period = words[0], (words[1] if period_file is None
                                       else Path("/sys/fs/cgroup", period_file).read_text().strip())
            return None if quota in ("max", "-1") else round(int(quota) / int(period), 2)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    """Visible GPUs, from the CUDA runtime (cuda-bindings), else torch, else nvidia-smi; and
    why there are none, when there are none."""
    from tsf_trt.engines.gpu import cuda_devices, device_info, has_cuda_python

    reasons = []
    if has_cuda_python():
        count, why = cuda_devices()  # the CUDA runtime's own error when it cannot count them
        if count:
            return [_gpu(g.index, g.name, g.compute_capability, g.memory_bytes, "cuda-bindings")
                    for g in map(device_info, range(count))], None
        reasons.append(f"cuda-bindings: {why}")
    try:
        import torch

        if torch.cuda.is_available():
            return [_gpu(i, p.name, f"{p.major}.{p.minor}", p.total_memory, "torch") for i, p in
                    enumerate(map(torch.cuda.get_device_properties, range(torch.cuda.device_count())))], None
        reasons.append("torch sees none" if torch.version.cuda else "torch is a CPU build")
    except ImportError:
        pass
    smi = _nvidia_smi("index,name,compute_cap,memory.total")
    if smi:
        return [_gpu(int(i), name, cc, float(mib) * 2**20, "nvidia-smi") for i, name, cc, mib in smi], None
    reasons.append("nvidia-smi " + ("lists none" if shutil.which("nvidia-smi") else "is not on PATH"))
    return [], "; ".join(reasons)


def _gpu(index: int, name: str, compute_capability: str, memory_bytes: float, seen_by: str) -> dict[str, Any]:
    return {"index": index, "name": name, "compute_capability": compute_capability,
            "memory_gib": round(memory_bytes / 2**30, 1), "seen_by": seen_by}


def _nvidia_smi(fields: str) -> list[list[str]]:
    """nvidia-smi's CSV rows for `fields`; [] without it or when it fails (no driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode:
        return []
    return [[c.strip() for c in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def _driver_version() -> str | None:
    rows = _nvidia_smi("driver_version")
    if rows:
        return rows[0][0]
    try:  # the kernel module's own line: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06 ..."
        words = Path("/proc/driver/nvidia/version").read_text().split("Kernel Module", 1)[1].split()
        return words[0]
    except (OSError, IndexError):
        return None


def _cuda(driver: str | None, gpu_note: str | None) -> dict[str, Any]:
    from tsf_trt.engines.gpu import has_cuda_python, import_cudart
    from tsf_trt.errors import TsfError

    result: dict[str, Any] = {"driver": driver, "driver_cuda": None, "runtime": None, "no_gpu_because": gpu_note,
                              "torch_built_for": None}
    try:
        result["torch_built_for"] = importlib.import_module("torch").version.cuda
    except ImportError:
        pass
    if not has_cuda_python():
        return result
    try:
        cudart = import_cudart()
    except TsfError as exc:
        result["runtime"] = str(exc)
        return result
    for key, call in (("runtime", cudart.cudaRuntimeGetVersion), ("driver_cuda", cudart.cudaDriverGetVersion)):
        error, version = call()  # e.g. 12090: CUDA 12.9
        if error == cudart.cudaError_t.cudaSuccess and version:
            result[key] = f"{version // 1000}.{version % 1000 // 10}"
    return result


def _packages() -> dict[str, str]:
    """Installed versions, from package metadata (no import: a broken GPU package cannot hang it)."""
    return {"numpy": package_version("numpy"), "torch": package_version("torch"),
            "onnx": package_version("onnx"), "onnxruntime": package_version("onnxruntime-gpu", "onnxruntime"),
            "openvino": package_version("openvino"),
            "tensorrt": package_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
            "cuda-bindings": package_version("cuda-bindings", "cuda-python")}


def _providers() -> dict[str, str]:
    """Each provider this onnxruntime lists -> "attaches", or why a session falls back without it."""
    from tsf_trt.backends.ort_backend import provider_problem

    ort = importlib.import_module("onnxruntime")
    listed = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]  # a remote endpoint
    return {p: _safe(lambda p=p: provider_problem(p) or "attaches", "") for p in listed}


def _torch() -> dict[str, Any]:
    torch = importlib.import_module("torch")
    cuda = torch.cuda.is_available()
    return {"version": torch.__version__, "cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0,
            "threads": torch.get_num_threads()}


def _openvino() -> dict[str, Any]:
    ov = importlib.import_module("openvino")
    core = ov.Core()
    return {"version": ov.get_version(), "devices": list(core.available_devices),
            "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}


def _cache() -> dict[str, Any]:
    from tsf_trt.machine.cache_dir import cache_root, writable_dir

    root = cache_root()
    return {"path": str(root), "writable": writable_dir(root) is not None,
            "set_by": "TSF_TRT_CACHE" if os.environ.get("TSF_TRT_CACHE") else "default"}


# -- the backends -----------------------------------------------------------------------------

def _module_status(name: str, module: str, install: str) -> BackendStatus | None:
    """`name` missing `module` (not installed) or failing on it (it does not load); None when it imports."""
    try:
        importlib.import_module(module)
        return None
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name.split(".")[0]):
            return BackendStatus(name, "missing", f"the Python package {module} is not installed", install)
        problem = exc
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything from its loader
        problem = exc
    return BackendStatus(name, "fails", f"{module} is installed but does not load ({_line(problem)})",
                         f"{install} --force-reinstall")


def _torch_backend(name: str, report: Report) -> BackendStatus:
    status = _module_status(name, "torch", torch_install(bool(report.gpus)))
    if status:
        return status
    import torch

    torch.ones(2).add_(1)  # a torch whose kernels do not load fails here, in the report
    return BackendStatus(name, "works", note="CPU" + (", CUDA" if torch.cuda.is_available() else
                                                     " (this torch sees no CUDA GPU)"))


def _ort_backend(name: str, report: Report) -> BackendStatus:
    from tsf_trt.backends.ort_backend import provider_problem

    status = _module_status(name, "onnxruntime", INSTALL["onnxruntime"]) or _module_status(
        name, "onnx", "pip install onnx")
    if status:
        return status
    problem = provider_problem("CPUExecutionProvider")
    return BackendStatus(name, "fails", problem) if problem else BackendStatus(name, "works", note="CPU")


def _openvino_backend(name: str, report: Report) -> BackendStatus:
    status = _module_status(name, "openvino", INSTALL["openvino"])
    if status:
        return status
    import numpy as np
    import openvino as ov

    x = ov.opset13.parameter([1, 4], ov.Type.f32, name="x")  # a one-node graph, compiled and run on the CPU
    compiled = ov.Core().compile_model(ov.Model([ov.opset13.relu(x)], [x], "probe"), "CPU")
    out = compiled(np.array([[-1, 0, 1, 2]], np.float32))[0]
    if not np.array_equal(out, [[0, 0, 1, 2]]):
        return BackendStatus(name, "fails", f"a one-node graph computed {out.tolist()} on the CPU")
    return BackendStatus(name, "works", note="CPU")


def torch_install(gpu: bool) -> str:
    """The torch extra as this copy installs it (tsf_trt.machine.extras.install_command); without a GPU
    PyTorch's CPU build first (PyPI's default build is CUDA's, gigabytes that would not run here)."""
    extra = install_command("torch")
    return extra if gpu else f"pip install torch --index-url https://download.pytorch.org/whl/cpu && {extra}"


def gpu_install(driver: str | None, backend: str = "trt") -> str:
    """The gpu extra for this driver: gpu-cu13 from driver CUDA13_DRIVER on, else gpu-cu12 (CUDA
    12 also runs on newer drivers, so it is the choice when the driver is unknown); ort-trt
    always gpu-cu12: ONNX Runtime's TensorRT provider loads TensorRT 10 (engines/gpu.py install_hint)."""
    try:
        cu13 = backend != "ort-trt" and int(str(driver).split(".")[0]) >= CUDA13_DRIVER
    except ValueError:
        cu13 = False
    return install_command(f"gpu-cu{13 if cu13 else 12}")


def _gpu_backend(name: str, report: Report) -> BackendStatus:
    """The first of: a visible GPU, the packages, a runtime that starts (what gpu_problem checks)."""
    from tsf_trt.synthesis.auto import gpu_problem

    install = gpu_install(report.cuda.get("driver"), name)
    if not report.gpus:
        why = report.cuda.get("no_gpu_because")
        return BackendStatus(name, "missing", "an NVIDIA GPU (none is visible" + (f": {why})" if why else ")"),
                             None, note=f"with a GPU and its driver: {install}" + (
                                 "" if name == "ort-trt" else f" (gpu-cu13 with a driver >= {CUDA13_DRIVER})"))
    if name == "trt":
        from tsf_trt.engines.gpu import missing_for_trt

        packages = [m.split("package ", 1)[1].split()[0] for m in missing_for_trt() if "package " in m]
        if packages:
            return BackendStatus(name, "missing", f"the Python package{'s' * (len(packages) > 1)} "
                                 f"{' and '.join(packages)} {'are' if len(packages) > 1 else 'is'} not installed",
                                 install)
    else:
        status = _module_status(name, "onnxruntime", install)
        if status:
            return status
        from tsf_trt.backends.ort_backend import PROVIDERS

        provider = PROVIDERS[name][0]
        if provider not in importlib.import_module("onnxruntime").get_available_providers():
            return BackendStatus(name, "missing", f"onnxruntime-gpu (this onnxruntime has no {provider})",
                                 f"pip uninstall -y onnxruntime onnxruntime-gpu && {install}")
    problem = gpu_problem(name, _ANY_MODEL, 0)
    if problem is None and name == "trt":  # installed is not loadable: a TensorRT for another CUDA
        from tsf_trt.engines.gpu import tensorrt_version
        from tsf_trt.errors import TsfError

        try:
            tensorrt_version()
        except TsfError as exc:
            problem = str(exc)
    if problem is None:
        return BackendStatus(name, "works", note="GPU 0")
    return BackendStatus(name, "fails", problem, install if "librar" in problem else None)


_BACKENDS: dict[str, Callable[[str, Report], BackendStatus]] = {
    "torch": _torch_backend, "reference": _torch_backend, "ort": _ort_backend, "openvino": _openvino_backend,
    "ort-cuda": _gpu_backend, "ort-trt": _gpu_backend, "trt": _gpu_backend,
}


def _safe(probe: Callable[[], Any], default: Any) -> Any:
    """`probe()`, or its failure as text in the shape of `default` (one probe's failure must
    not end the report)."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001
        text = NOT_INSTALLED if isinstance(exc, ModuleNotFoundError) else f"error: {_line(exc)}"
        if isinstance(default, dict):
            return {"error": text}
        return ([], text) if isinstance(default, tuple) else text


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
