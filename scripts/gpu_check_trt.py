"""The `trt` path on a GPU without TensorRT: engines/cuda.py on the CUDA runtime
(:func:`cuda_checks`), and the `trt` backend's whole data flow with each TensorRT engine replaced by
the torch module it was exported from, on the backend's own CUDA stream, checked against ONNX
Runtime CPU (:func:`dataflow_check`); both are steps of scripts/gpu_check.py.

Why: TensorRT's library wheels are often not installable where a GPU is, but everything around the
engines can still be proven there — engines/cuda.py's pooled buffers, pinned rings, row
offsets, strided slot copies and event waits; engines/runtime.py's EngineRunner (input
shapes, 256-byte aligned tensor addresses, execute_async_v3 on the stream); trt_backend.py's stacking,
fused / fused_avg halves and downloads. Only the engine is swapped, for the tests' TensorRT stand-in
(tests/fake_trt.py, the one stand-in: the same refusals the tests hold the code to): its context
reads the device buffers at the addresses bound to it, runs the graph's torch module
(:class:`TorchGraph`; export/graphs.py, what `tsf-trt export` traces) and writes the outputs at the
bound addresses, enqueued on the stream execute_async_v3 is given, so it is ordered with every copy
around it exactly as an engine would be.

On a GPU the buffers are read as torch tensors over the CUDA pointers (:class:`CudaMemory`,
``__cuda_array_interface__``, zero-copy) and the modules run on ``torch.cuda.ExternalStream`` of
the backend's stream, TF32 off so that 1e-4 against the CPU is a fair bound. On a dry run the CUDA
runtime is tests/fake_cuda.py (device memory apart from host memory, work deferred until a
synchronisation), so a missing wait shows up as stale data there too. NOT yet run on a GPU.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tsf_trt.synthesis.options import RunOptions

TARGET = 2                # T2, with TSEM, from the sources the caller's volumes hold
TOLERANCE = 1e-4          # max |trt data flow - ONNX Runtime CPU| of image, TSEM and ω
STANDIN_VERSION = "stand-in (torch modules)"  # the engines' "TensorRT version" in their keys and descriptions
# (model, phantom shape x y z, batch): the small preset's C = 32 at 20x20 gives 5x5 feature maps,
# whose 1-slice last batch puts fused_avg 3200 bytes in (unaligned: two buffers and a copy), its
# 2-slice batches at 6400 (aligned: one 2N buffer); the demo model at the BraTS slice size.
DRY_CASES = (("small", (20, 20, 5), 2), ("small", (24, 20, 5), 2))
GPU_CASES = DRY_CASES + (("demo", (240, 240, 8), 3),)


# -- the graphs and device memory of the stand-in engines ----------------------------------------
class TorchGraph:
    """A graph's torch module (export/graphs.py, what `tsf-trt export` traces) on `device`, as
    tests/fake_trt.py's engines run it: output shapes from the graph's axis names."""

    def __init__(self, spec: Any, downsample: int, device: torch.device):
        self.spec, self.downsample, self.device = spec, downsample, device
        self.inputs, self.outputs = dict(spec.inputs), list(spec.outputs)

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        sizes = {d: n for key, dims in self.inputs.items() for d, n in zip(dims, shapes[key]) if isinstance(d, str)}
        for full, low in (("H", "h"), ("W", "w")):
            sizes.setdefault(full, sizes.get(low, 0) * self.downsample)
            sizes.setdefault(low, sizes[full] // self.downsample)
        return {name: tuple(d if isinstance(d, int) else sizes[d] for d in dims)
                for name, dims in self.spec.outputs.items()}

    def run(self, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = self.spec.module(*(torch.as_tensor(feeds[n], device=self.device) for n in self.inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: value.float().contiguous() for name, value in zip(self.outputs, outputs)}


def torch_graphs(model: Any, downsample: int, device: torch.device) -> dict[str, TorchGraph]:
    """Every graph of an export of `model` (all targets), as its torch module on `device`."""
    from tsf_trt import sequences
    from tsf_trt.export.onnx_export import graph_specs

    model = copy.deepcopy(model).float().eval().to(device)
    specs = graph_specs(model, range(sequences.N_SEQUENCES))
    for spec in specs.values():
        spec.module.to(device).eval()  # FoldedConvLSTM makes its convolutions on the CPU
    return {name: TorchGraph(spec, downsample, device) for name, spec in specs.items()}


class _CudaArray:
    """A device pointer as torch.as_tensor takes it (zero-copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str,
                                         "data": (int(ptr), False), "version": 2, "strides": None}


class CudaMemory:
    """tests/fake_trt.py's Memory on GPU `index` through torch; work runs on the stream it is enqueued on."""

    def __init__(self, index: int = 0):
        self.device = torch.device("cuda", index)

    def read(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
        return torch.as_tensor(_CudaArray(ptr, shape, dtype), device=self.device)

    def write(self, ptr: int, value: torch.Tensor) -> None:
        self.read(ptr, tuple(value.shape), np.dtype(str(value.dtype).removeprefix("torch."))).copy_(value)

    def enqueue(self, stream: int, work: Callable[[], None]) -> bool:
        with torch.cuda.device(self.device), torch.cuda.stream(torch.cuda.ExternalStream(int(stream),
                                                                                          device=self.device)):
            work()
        return True

    def is_device(self, ptr: int) -> bool:
        return True  # cudaMalloc'd by engines/cuda.py; not checked on a real GPU


def standin_backend(export_dir: Path, model: Any, memory: Any, device: torch.device, gpu: Any,
                    gpu_name: str = "stand-in"):
    """The real TrtBackend over `gpu` (an engines/cuda.py GpuContext), its engines tests/fake_trt.py's
    running each graph's torch module on `memory` (the GPU's, or tests/fake_cuda.py's)."""
    from tests.fake_trt import FakeEngines
    from tsf_trt.backends.trt_backend import TrtBackend
    from tsf_trt.engines.keys import Platform
    from tsf_trt.engines.manager import EngineManager

    manager = EngineManager(export_dir, Platform(STANDIN_VERSION, gpu_name, "-"), report=lambda m: None)
    engines = FakeEngines(manager, memory, torch_graphs(model, manager.downsample, device))
    return TrtBackend(manager, engines, gpu, precision="fp32")


# -- the gpu_check steps --------------------------------------------------------------------------
@contextmanager
def cuda_runtime(dry_run: bool) -> Iterator[Any]:
    """engines/cuda.py on tests/fake_cuda.py's runtime on a dry run (yielded; restored afterwards),
    on cuda-python's otherwise (None)."""
    from tsf_trt.engines import cuda, gpu

    saved, fake = (cuda.import_cudart, gpu.import_cudart), None
    if dry_run:
        from tests.fake_cuda import FakeCudart

        fake = FakeCudart()
        cuda.import_cudart = gpu.import_cudart = lambda: fake
    try:
        yield fake
    finally:
        cuda.import_cudart, gpu.import_cudart = saved


def cuda_checks(dry_run: bool) -> dict[str, Any]:
    """GpuContext's round trips, pooled buffers, pinned rings, row offsets, strided slots and
    out-of-memory error, each a named check."""
    from tsf_trt.engines.cuda import CudaError, GpuContext

    checks: dict[str, bool] = {}
    oom_text = None
    with cuda_runtime(dry_run) as fake:
        ctx = GpuContext(0)
        try:
            rng = np.random.default_rng(0)
            for nbytes in (4, 1000, (1 << 20) + 12, 3 << 20):  # under, over and across the pinned granule
                data = rng.standard_normal(nbytes // 4).astype(np.float32)
                checks[f"round trip {nbytes} B"] = bool(np.array_equal(ctx.download(ctx.upload(data)), data))
            first = ctx.empty((256, 256))
            ptr = first.ptr
            del first
            checks["pooled buffer reused"] = ctx.empty((256, 256)).ptr == ptr
            arrays = [rng.standard_normal((64, 1024)).astype(np.float32) for _ in range(5)]
            uploaded = [ctx.upload(a) for a in arrays]  # five uploads through a ring of two pinned slots
            checks["pinned ring keeps every upload"] = all(np.array_equal(ctx.download(d), a)
                                                           for d, a in zip(uploaded, arrays))
            whole = rng.standard_normal((6, 3, 5)).astype(np.float32)
            checks["row offsets"] = bool(np.array_equal(ctx.download(ctx.upload(whole).rows(2, 3)), whole[2:5]))
            stacked = ctx.empty((2, 4, 3, 5))
            parts = {i: rng.standard_normal((2, 3, 5)).astype(np.float32) for i in (0, 2)}
            for i in range(4):
                ctx.put_slot(stacked, i, ctx.upload(parts[i]) if i in parts else None)
            expected = np.zeros((2, 4, 3, 5), np.float32)
            for i, part in parts.items():
                expected[:, i] = part
            checks["strided slots (put_slot)"] = bool(np.array_equal(ctx.download(stacked), expected))
            if fake is not None:
                fake.fail.add("cudaMallocAsync")
            try:
                ctx.empty((1 << 50,), np.uint8)
                checks["out-of-memory is a CudaError"] = False
            except CudaError as exc:
                checks["out-of-memory is a CudaError"] = "cudaMallocAsync" in str(exc)
                oom_text = str(exc)
            if fake is not None:
                fake.fail.clear()
            checks["usable after out-of-memory"] = bool(np.array_equal(ctx.download(ctx.upload(whole)), whole))
        finally:
            ctx.close()
    failed = [name for name, ok in checks.items() if not ok]
    return {"runtime": "tests/fake_cuda.py (dry run)" if fake else "cuda-python", "checks": checks,
            "out_of_memory_message": oom_text, "failed": bool(failed),
            "error": f"failed: {', '.join(failed)}" if failed else None}


def unavailable(dry_run: bool) -> str | None:
    """Why the check cannot run here (None: it can)."""
    if dry_run:
        return None
    if not torch.cuda.is_available():
        return "needs a CUDA build of torch that sees a GPU (the stand-in engines are torch modules)"
    from tsf_trt.engines.gpu import cuda_devices, has_cuda_python

    count, why = cuda_devices() if has_cuda_python() else (0, "cuda-python is not installed")
    return None if count else f"needs cuda-python and a GPU it sees (engines/cuda.py): {why}"


def dataflow_check(dry_run: bool, volumes_of: Callable[[tuple[int, int, int]], dict[int, np.ndarray]]
                   ) -> dict[str, Any]:
    """Each case through the stand-in trt backend and through ONNX Runtime CPU; failed when any
    difference exceeds TOLERANCE or when the cases did not use both fusion-output layouts."""
    from tests.fake_trt import FakeMemory

    from tsf_trt.backends.torch_staged import cuda_math

    # TF32 off (and the settings given back) as the torch CUDA backend does: its one switch
    with cuda_math(), cuda_runtime(dry_run) as fake, tempfile.TemporaryDirectory(prefix="tsf-trt-standin-") as tmp:
        memory = FakeMemory(fake) if dry_run else CudaMemory(0)
        exports: dict[str, tuple[Any, Path]] = {}
        cases = [_case(name, _exported(name, Path(tmp), exports), shape, batch, memory, volumes_of(shape))
                 for name, shape, batch in (DRY_CASES if dry_run else GPU_CASES)]
    worst = max(max(c["image_max_abs"], c["tsem_max_abs"], c["omega_max_abs"]) for c in cases)
    layouts = {key for c in cases for key, count in c["fusion_outputs"].items() if count}
    problems = ([f"max difference {worst:.2e} > {TOLERANCE:g}"] if worst > TOLERANCE else []) + \
        ([f"only {sorted(layouts)} fusion outputs were used"] if len(layouts) < 2 else [])
    return {"runtime": "tests/fake_cuda.py, modules on the CPU (dry run)" if dry_run else
            "cuda-python + torch on the backend's stream", "tolerance": TOLERANCE, "max_abs": worst,
            "cases": cases, "failed": bool(problems), "error": "; ".join(problems) or None}


def _exported(name: str, tmp: Path, done: dict[str, tuple[Any, Path]]) -> tuple[Any, Path]:
    """(ModelSource, export directory) of 'demo' or a preset's seeded random weights, made once."""
    from tsf_trt.export.cached_exports import export_model
    from tsf_trt.synthesis.source import ModelSource

    if name not in done:
        if name == "demo":
            source = ModelSource.resolve("demo")
        else:
            from tsf_trt.bench.suite import make_model

            source = ModelSource.resolve(make_model(name, tmp / "models"))
        export = tmp / f"export-{name}"
        export_model(source.module(), export, targets=[TARGET], verify=False, model_id=source.model_id)
        done[name] = source, export
    return done[name]


def _case(name: str, model: tuple[Any, Path], shape_xyz: tuple[int, int, int], batch: int, memory: Any,
          volumes: dict[int, np.ndarray]) -> dict[str, Any]:
    from tsf_trt.backends.ort_backend import OrtBackend
    from tsf_trt.engines.cuda import GpuContext
    from tsf_trt.synthesis.pipeline import Synthesizer

    (source, export), on_gpu = model, isinstance(memory, CudaMemory)
    device = memory.device if on_gpu else torch.device("cpu")
    backend = standin_backend(export, source.module(), memory, device, GpuContext(0),
                              torch.cuda.get_device_name(device) if on_gpu else "fake")
    halves = {"one 2N buffer": 0, "two buffers + one copy": 0}
    pair = backend._output_pair

    def counted(shape: tuple[int, ...], dtype: Any) -> tuple[Any, Any]:
        first, second = pair(shape, dtype)
        halves["one 2N buffer" if second.follows(first) else "two buffers + one copy"] += 1
        return first, second

    backend._output_pair = counted  # type: ignore[method-assign]
    try:
        got = Synthesizer(backend, RunOptions(batch_size=batch)).run_canonical(volumes, TARGET)
        runs = {graph: runner.context.runs for graph, runner in backend.engines.runners.items()}
        if on_gpu:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()  # blocks of the backend's stream, before close() destroys it
    finally:
        backend.close()
    with OrtBackend(export, threads=None) as ort:
        want = Synthesizer(ort, RunOptions(batch_size=batch)).run_canonical(volumes, TARGET)
    return {"model": name, "shape_xyz": list(shape_xyz), "batch": batch,
            "image_max_abs": float(np.abs(got.image - want.image).max()),
            "tsem_max_abs": float(np.abs(got.tsem - want.tsem).max()),
            "omega_max_abs": max(abs(got.weights[i] - want.weights[i]) for i in want.weights),
            "fusion_outputs": halves, "engine_runs": runs}
