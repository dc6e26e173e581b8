"""Stand-ins for the CUDA runtime and TensorRT, so the GPU code paths' logic runs on CPU.

FakeCudart implements the cuda-python runtime calls tsf_trt.engines.cuda makes, on host
memory and synchronously (device pointers are host addresses). FakeEngines hands out
runners that execute the export's ONNX graphs with ONNX Runtime on those addresses.
What they test: buffer pooling, pinned staging, strided stacking, 2N batching, shapes,
ω caching — the data flow. What they cannot test: the real CUDA and TensorRT calls.
"""

from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

import numpy as np


class Status(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class FakeStream:
    def __int__(self) -> int:
        return 1234


class FakeCudart:
    """The subset of `cuda.bindings.runtime` that tsf_trt.engines.cuda uses."""

    cudaError_t = Status
    cudaStreamNonBlocking = 1
    cudaHostAllocDefault = 0
    cudaEventDisableTiming = 2
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2,
                                     cudaMemcpyDeviceToDevice=3)

    def __init__(self) -> None:
        self.buffers: dict[int, ctypes.Array] = {}
        self.calls: list[str] = []
        self.fail: set[str] = set()

    def __getattribute__(self, name: str):
        attr = object.__getattribute__(self, name)
        if name.startswith("cuda") and callable(attr) and not isinstance(attr, type):
            object.__getattribute__(self, "calls").append(name)
            if name in object.__getattribute__(self, "fail"):
                return lambda *args: (Status.cudaErrorMemoryAllocation,)
        return attr

    def _alloc(self, nbytes: int) -> int:
        buffer = (ctypes.c_uint8 * nbytes)()
        address = ctypes.addressof(buffer)
        self.buffers[address] = buffer
        return address

    def cudaGetErrorString(self, status):
        return Status.cudaSuccess, b"out of memory"

    def cudaSetDevice(self, device):
        return (Status.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags):
        return Status.cudaSuccess, FakeStream()

    def cudaMallocAsync(self, nbytes, stream):
        return Status.cudaSuccess, self._alloc(nbytes)

    def cudaHostAlloc(self, nbytes, flags):
        return Status.cudaSuccess, self._alloc(nbytes)

    def cudaFreeAsync(self, ptr, stream):
        del self.buffers[ptr]
        return (Status.cudaSuccess,)

    cudaFreeHost = lambda self, ptr: self.cudaFreeAsync(ptr, None)  # noqa: E731

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (Status.cudaSuccess,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (Status.cudaSuccess,)

    def cudaMemset2DAsync(self, ptr, pitch, value, width, height, stream):
        for row in range(height):
            ctypes.memset(ptr + row * pitch, value, width)
        return (Status.cudaSuccess,)

    def cudaEventCreateWithFlags(self, flags):
        return Status.cudaSuccess, object()

    def _ok(self, *args):
        return (Status.cudaSuccess,)

    cudaEventRecord = cudaEventSynchronize = cudaEventDestroy = _ok
    cudaStreamSynchronize = cudaStreamDestroy = _ok


def host_view(address: int, shape, dtype) -> np.ndarray:
    """A numpy view of fake device memory."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=dtype).reshape(shape)


class FakeRunner:
    """An 'engine' that runs one ONNX graph with ONNX Runtime on fake device memory."""

    def __init__(self, path, label: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.label = label
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.dtypes = {n: np.dtype(np.float32) for n in (*self.inputs, *self.outputs)}
        self.shapes: dict[str, tuple] = {}
        self.runs = 0

    def output_shapes(self, shapes):
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        outs = self.session.run(None, {k: np.zeros(v, np.float32) for k, v in self.shapes.items()})
        return {name: tuple(o.shape) for name, o in zip(self.outputs, outs)}

    def run(self, addresses, stream):
        feeds = {n: host_view(addresses[n], self.shapes[n], np.float32).copy() for n in self.inputs}
        for name, value in zip(self.outputs, self.session.run(None, feeds)):
            host_view(addresses[name], value.shape, np.float32)[...] = value
        self.runs += 1


class FakeEngines:
    """EngineSet's interface: one FakeRunner per graph, created on first use."""

    def __init__(self, manager):
        self.manager = manager
        self.runners: dict[str, FakeRunner] = {}
        self.requests: list[tuple] = []

    def runner(self, graph, batch, height, width):
        self.requests.append((graph, batch, height, width))
        if graph not in self.runners:  # through the manager, as EngineSet: the graph is checked for its role
            path, _ = self.manager.source(graph)
            self.runners[graph] = FakeRunner(path, graph)
        return self.runners[graph]

    def close(self):
        self.runners.clear()


class FakeTensorRT:
    """The subset of the `tensorrt` module that tsf_trt.engines.build and .runtime use, as
    tsf-trt reads TensorRT's documentation: it checks our call sequence runs, not TensorRT."""

    __version__ = "10.13.0"
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    BuilderFlag = SimpleNamespace(TF32=7)
    TensorIOMode = SimpleNamespace(INPUT=0, OUTPUT=1)

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2)

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    def __init__(self) -> None:
        self.built: list[dict] = []
        trt = self

        class Network:
            def __init__(self, flags):
                self.flags, self.inputs = flags, []

            num_inputs = property(lambda self: len(self.inputs))

            def get_input(self, index):
                return SimpleNamespace(name=self.inputs[index])

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                import onnx

                if "broken" in str(path):
                    self.num_errors = 1
                    return False
                self.network.inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
                return True

            def get_error(self, index):
                return "In node 3 (importConv): unsupported"

        class Config:
            def __init__(self):
                self.flags_cleared, self.pool, self.profiles, self.cache, self.progress_monitor = [], None, [], None, None

            def set_memory_pool_limit(self, pool, size):
                self.pool = size

            def clear_flag(self, flag):
                self.flags_cleared.append(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

            def create_timing_cache(self, data):
                return SimpleNamespace(serialize=lambda: b"timing:" + bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return SimpleNamespace(shapes={}, set_shape=lambda name, *s: None)

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                if monitor is not None:
                    monitor.phase_start("Building", None, 1)
                    monitor.step_complete("Building", 0)
                    monitor.phase_finish("Building")
                trt.built.append({"flags": network.flags, "inputs": network.inputs, "config": config})
                return memoryview(b"serialized:" + ",".join(network.inputs).encode())

        self.Builder, self.OnnxParser = Builder, Parser

    @staticmethod
    def nptype(dtype):
        return np.float32

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        return SimpleNamespace(deserialize_cuda_engine=lambda data: None if data == b"bad" else FakeEngine(data))


class FakeEngine:
    def __init__(self, data: bytes):
        names = data.split(b":", 1)[1].decode().split(",") if b":" in data else ["image"]
        self.names = [*names, "out"]
        self.num_io_tensors = len(self.names)
        self.context = SimpleNamespace(shapes={}, addresses={}, runs=0)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return 1 if name == "out" else 0

    def get_tensor_dtype(self, name):
        return "float"

    def create_execution_context(self):
        engine, context = self, self.context

        def set_input_shape(name, shape):
            context.shapes[name] = shape
            return True

        def set_tensor_address(name, ptr):
            context.addresses[name] = ptr
            return True

        def execute(stream):
            context.runs += 1
            return True

        context.set_input_shape, context.set_tensor_address, context.execute_async_v3 = \
            set_input_shape, set_tensor_address, execute
        context.get_tensor_shape = lambda name: next(iter(context.shapes.values()))
        context.engine = engine
        return context
