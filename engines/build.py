"""ONNX graph -> serialized TensorRT engine, with the TensorRT Python API (>= 10).

Written from TensorRT's documentation; NOT yet run on a GPU (no GPU was available
while it was written): docs/gpu.md.

* Networks are strongly typed (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`, which
  TensorRT 11 keeps as a no-op since every network is strongly typed there), so the
  ONNX graph's element types decide precision: FP16 engines are built from the FP16
  variant of the graph (:mod:`tsf_trt.engines.fp16`), the same way on 10 and 11.
* Every engine clears the TF32 flag where it exists (TensorRT sets it by default), so that
  "fp32" means FP32: FP32 engines, and the FP32 parts of FP16 graphs (the code path, ω).
* One optimisation profile per engine (:mod:`tsf_trt.engines.profiles`).
* The timing cache file is loaded before and saved after every build, so the second
  graph and every later build skip most kernel timing; it is a verified cache entry
  (:mod:`tsf_trt.files.cache_entry`): a damaged one is removed with a warning and not used.
* Progress: an `IProgressMonitor` forwards TensorRT's build phases to a callback.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from tsf_trt.errors import TsfError
from tsf_trt.files import cache_entry

from tsf_trt.engines.gpu import import_tensorrt
from tsf_trt.engines.profiles import Shapes

GIB = 1 << 30


class BuildProgress(Protocol):
    """What a progress display receives while TensorRT builds (called from TensorRT's threads)."""

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None: ...

    def step(self, phase: str, step: int) -> None: ...

    def phase_finish(self, phase: str) -> None: ...


_LOGGER = None


def trt_logger(trt):
    """The process's one TensorRT logger (TensorRT expects a single one); it keeps the
    errors of the current build for the final message."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = _make_logger(trt)
    return _LOGGER


def _make_logger(trt):
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001 - TensorRT's signature
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return Logger()


def _monitor(trt, progress: BuildProgress):
    """An IProgressMonitor forwarding to `progress`; TensorRT calls it from several threads."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:  # noqa: ANN001
            with self.lock:
                progress.phase_start(str(phase_name), parent_phase and str(parent_phase), int(num_steps))

        def step_complete(self, phase_name, step) -> bool:  # noqa: ANN001
            with self.lock:
                progress.step(str(phase_name), int(step))
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:  # noqa: ANN001
            with self.lock:
                progress.phase_finish(str(phase_name))

    return Monitor()


def strongly_typed_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(onnx_path: Path, shapes: Shapes, *, precision: str, workspace_gib: float,
                 timing_cache: Path | None = None, progress: BuildProgress | None = None) -> bytes:
    """Build one engine from `onnx_path` for the input `shapes` (name -> (min, opt, max))."""
    trt = import_tensorrt()
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    if network is None:
        raise TsfError(f"TensorRT {trt.__version__} refused the network flags: {logger.errors[-1] if logger.errors else 'no detail'}")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise TsfError(f"{onnx_path}: TensorRT cannot parse this graph: {errors[0] if errors else 'no detail'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * GIB))
    if hasattr(trt.BuilderFlag, "TF32"):  # no precision of tsf-trt is TF32 (docs/gpu.md)
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        if name not in shapes:
            raise TsfError(f"{onnx_path}: input '{name}' has no optimisation profile (the manifest does not list it)")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, timing_cache)
    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        monitor = _monitor(trt, progress)  # kept referenced until the build returns
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = logger.errors[-1] if logger.errors else "no detail from TensorRT"
        raise TsfError(f"{onnx_path}: TensorRT could not build an engine ({detail})")
    if timing_cache is not None and cache is not None:
        _save_timing_cache(config, timing_cache)
    return bytes(memoryview(serialized))


def _load_timing_cache(config, path: Path | None):
    """The timing cache from `path` set on `config`, or a fresh one when the entry is absent,
    damaged (removed, one warning), or refused: `set_timing_cache` returns False for a cache
    made on another device or by another TensorRT (ignore_mismatch=False), and the build must
    not depend on it. None when TensorRT takes no cache at all: the build then runs without one."""
    if path is None:
        return None
    stored = cache_entry.load_or_none(path)
    data = stored.payload if stored is not None else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = None
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            return None
    return cache


def _save_timing_cache(config, path: Path) -> None:
    """Write the build's timing cache; a cache TensorRT does not hand back costs only the
    next build's timing, never the engine just built."""
    cache = config.get_timing_cache()
    data = cache.serialize() if cache is not None else None
    if data is not None:
        cache_entry.save(path, bytes(memoryview(data)), {"kind": "tensorrt-timing-cache"})
