"""The one stand-in for TensorRT: it refuses what the real one refuses.

FakeTensorRT follows the TensorRT 10 and 11 Python bindings where tsf-trt touches them:
real enum values, as pybind11 enums that never equal an int (tests/fake_trt_enums.py:
`Severity.ERROR == 1` is False; NetworkDefinitionCreationFlag.STRONGLY_TYPED 1 on TensorRT 10
and 0 on 11, where EXPLICIT_BATCH is gone; clear_flag and set_memory_pool_limit refuse an int),
create_network refusing unknown flag bits, set_shape with exactly (name, min, opt, max) and
ValueError when they disagree, a timing cache refused (False) when made on another device or
version and get_timing_cache None until one is set, build_serialized_network None (an error
logged) when it fails, among others when a profile's min, opt or max differs from a dimension
the network fixes (set_shape's condition 3: min = opt = max = that dimension), get_tensor_shape
per tensor (-1 until the inputs are set), set_input_shape False outside the engine's profile,
set_tensor_address False for an address that is not 256-byte aligned or not device memory,
and execute_async_v3 queued on the stream (the bindings' enums and docstrings, read without a
GPU: tests/fake_trt_enums.py).

Its engines (FakeEngine, FakeContext) run any graph on any device memory: the tests run each
ONNX graph with ONNX Runtime (OnnxGraph) on tests/fake_cuda.py's memory (FakeMemory), and
scripts/gpu_check_trt.py runs the torch module each graph was exported from, on that memory or
on a real GPU's. FakeEngines stands for tsf_trt's EngineSet: the real EngineRunner over one such
engine per graph, with no build. What they cannot show: that TensorRT itself behaves as its
documentation says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from tests.fake_cuda import ALIGNMENT, FakeCudart, Status
from tests.fake_trt_enums import (BUILDER_FLAGS, CREATION_FLAGS, DataType, MemoryPoolType, Severity, TensorIOMode,
                                  check, pybind_enum)


OPEN = 2**31 - 1  # the largest dimension a profile of a dynamic axis allows here


def run_graph(session, feeds: dict) -> dict:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Graph(Protocol):
    """What an engine runs: its inputs (name -> dims, an int a fixed dimension) and outputs."""

    inputs: dict[str, list]
    outputs: list[str]

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]: ...

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


class Memory(Protocol):
    """Device memory as an engine reaches it: at bound addresses, with work enqueued on a stream."""

    def read(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def write(self, ptr: int, value: Any) -> None: ...

    def enqueue(self, stream: int, work: Callable[[], None]) -> bool: ...

    def is_device(self, ptr: int) -> bool: ...


class OnnxGraph:
    """An ONNX graph run by ONNX Runtime on the CPU (numpy in and out)."""

    def __init__(self, path) -> None:
        self.session = ort_session(path)
        self.inputs = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.run({k: np.zeros(v, np.float32) for k, v in shapes.items()}).items()}

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return run_graph(self.session, feeds)


class FakeMemory:
    """tests/fake_cuda.py's device memory: read and written as numpy, work queued on its deferred streams."""

    def __init__(self, cudart: FakeCudart) -> None:
        self.cudart = cudart

    def read(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cudart.device_array(ptr, shape, dtype)

    def write(self, ptr: int, value: Any) -> None:
        self.cudart.write_device(ptr, np.asarray(value, dtype=np.float32))

    def enqueue(self, stream: int, work: Callable[[], None]) -> bool:
        return self.cudart._enqueue(stream, work)[0] == Status.cudaSuccess  # False for an unknown stream

    def is_device(self, ptr: int) -> bool:
        return self.cudart.is_device(ptr)


def open_profile(inputs: dict[str, list]) -> dict[str, list[list[int]]]:
    """The profile an engine of `inputs` accepts without a build: each fixed dimension exactly (as
    TensorRT's set_shape requires min = opt = max there), each dynamic one from 1 up."""
    return {name: [[d if isinstance(d, int) else low for d in dims] for low in (1, 1, OPEN)]
            for name, dims in inputs.items()}


class FakeEngines:
    """EngineSet's interface (engines/runtime.py): a real EngineRunner per graph, created on
    first use, over a FakeEngine of its ONNX graph (or of `graphs[name]`) on `memory`."""

    def __init__(self, manager, memory: Memory, graphs: dict[str, Graph] | None = None, trt=None):
        self.manager, self.memory, self.graphs = manager, memory, graphs
        self.trt = trt or FakeTensorRT()
        self.runners: dict[str, Any] = {}
        self.requests: list[tuple] = []

    def runner(self, graph, batch, height, width):
        from tsf_trt.engines.runtime import EngineRunner

        self.requests.append((graph, batch, height, width))
        if graph not in self.runners:
            self.manager.role(graph)  # checked for its role first, as EngineSet's engines are
            made = self.graphs[graph] if self.graphs is not None else OnnxGraph(self.manager.source(graph)[0])
            engine = FakeEngine(made, open_profile(made.inputs), self.memory)
            runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
            self.runners[graph] = EngineRunner(self.trt, runtime, graph.encode(), f"{graph} (stand-in)")
        return self.runners[graph]

    def close(self):
        self.runners.clear()


class FakeTimingCache:
    def __init__(self, origin: str, entries: int = 0):
        self.origin, self.entries = origin, entries

    def serialize(self):
        return memoryview(f"trtcache|{self.origin}|{self.entries}".encode())


class FakeTensorRT:
    """The subset of the `tensorrt` module that tsf_trt.engines.build and .runtime use.

    `version` picks TensorRT 10's or 11's flag values; `device` names the GPU a timing cache
    belongs to; `fail_build` makes build_serialized_network return None, as on a failed build."""

    MemoryPoolType = MemoryPoolType
    TensorIOMode = TensorIOMode
    DataType = DataType

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    def __init__(self, version: str = "10.13.0", device: str = "NVIDIA H100 80GB HBM3",
                 cudart: FakeCudart | None = None) -> None:
        self.__version__, self.cudart, self.fail_build = version, cudart, False
        major = int(version.split(".")[0])
        # 11: EXPLICIT_BATCH removed; STRONGLY_TYPED kept (ignored: always strongly typed)
        self.NetworkDefinitionCreationFlag = pybind_enum("NetworkDefinitionCreationFlag",
                                                         CREATION_FLAGS[min(major, 11)], arithmetic=True)
        self.BuilderFlag = pybind_enum("BuilderFlag", BUILDER_FLAGS[min(major, 11)], arithmetic=True)
        self.tag = f"{version}/{device}"
        self.built: list[dict] = []
        self.Builder, self.OnnxParser = _builder_classes(self, major)

    @staticmethod
    def nptype(dtype):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dtype]

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        trt = self

        def deserialize(data):
            try:
                spec = json.loads(bytes(data))
            except ValueError:
                return None
            memory = FakeMemory(trt.cudart) if trt.cudart is not None else None
            return FakeEngine(OnnxGraph(spec["onnx"]), spec["profile"], memory)

        return SimpleNamespace(deserialize_cuda_engine=deserialize)


def _builder_classes(trt: FakeTensorRT, major: int):
    flags = trt.NetworkDefinitionCreationFlag
    known, strong = sum(1 << int(f) for f in flags.__members__.values()), 1 << int(flags.STRONGLY_TYPED)

    class Network:
        def __init__(self, strongly_typed: bool):
            self.strongly_typed, self.inputs, self.outputs, self.path = strongly_typed, [], [], None

        num_inputs = property(lambda self: len(self.inputs))

        def get_input(self, index):
            return SimpleNamespace(name=self.inputs[index][0], shape=self.inputs[index][1])

    class Parser:
        def __init__(self, network, logger):
            if not isinstance(network, Network):
                raise TypeError("OnnxParser(): incompatible network argument")
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            import onnx

            if "broken" in str(path):
                self.num_errors = 1
                return False
            graph = onnx.load(path, load_external_data=False).graph
            dims = lambda v: tuple(d.dim_value if d.HasField("dim_value") else -1  # noqa: E731
                                   for d in v.type.tensor_type.shape.dim)
            self.network.inputs = [(i.name, dims(i)) for i in graph.input]
            self.network.outputs = [o.name for o in graph.output]
            self.network.path = str(path)
            return True

        def get_error(self, index):
            return "In node 3 (importConv): unsupported"

    class Profile:
        def __init__(self):
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's parameter names
            shapes = [tuple(int(d) for d in s) for s in (min, opt, max)]
            if len({len(s) for s in shapes}) != 1 or any(
                    not 0 <= a <= b <= c for a, b, c in zip(*shapes)):
                raise ValueError(f"set_shape({input}): need min <= opt <= max of one rank, got {shapes}")
            self.shapes[input] = tuple(shapes)

    class Config:
        def __init__(self):
            self.flags_cleared, self.pool, self.profiles, self.cache, self.progress_monitor = [], None, [], None, None

        def set_memory_pool_limit(self, pool, size):
            check(pool, trt.MemoryPoolType, "set_memory_pool_limit")
            self.pool = size

        def clear_flag(self, flag):
            check(flag, trt.BuilderFlag, "clear_flag")
            self.flags_cleared.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            data = bytes(data)
            if not data:
                return FakeTimingCache(trt.tag)
            parts = data.decode(errors="replace").split("|")
            if len(parts) != 3 or parts[0] != "trtcache" or not parts[2].isdigit():
                return None  # not a timing cache
            return FakeTimingCache(parts[1], int(parts[2]))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.origin != trt.tag and not ignore_mismatch:
                return False  # made on another device or by another TensorRT
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            if flags & ~known:
                self.logger.log(trt.ILogger.Severity.ERROR, f"createNetworkV2: unknown flags {flags:#x}")
                return None
            return Network(major >= 11 or bool(flags & strong))  # 11: always strongly typed

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building", None, 1)
                monitor.step_complete("Building", 0)
                monitor.phase_finish("Building")
            profile = config.profiles[0].shapes if len(config.profiles) == 1 else None
            if trt.fail_build or profile is None:
                problem = "the build failed" if trt.fail_build else "not one optimization profile"
            else:
                problem = next(filter(None, (_profile_problem(name, dims, profile.get(name))
                                             for name, dims in network.inputs)), None)
            if problem is not None:
                self.logger.log(trt.ILogger.Severity.ERROR, f"IBuilder::buildSerializedNetwork: Error Code 4: {problem}")
                return None
            if config.cache is not None:
                config.cache.entries += 1  # the kernels timed in this build
            trt.built.append({"network": network, "config": config})
            spec = {"onnx": network.path, "inputs": [n for n, _ in network.inputs], "outputs": network.outputs,
                    "profile": {k: [list(s) for s in v] for k, v in profile.items()}}
            return memoryview(json.dumps(spec).encode())

    return Builder, Parser


def _profile_problem(name: str, dims: tuple[int, ...], shapes: tuple | None) -> str | None:
    """Why a profile does not fit a network input of `dims` (-1 dynamic), as TensorRT checks it
    at build time (set_shape's docstring, conditions 1 and 3; condition 2 set_shape checks)."""
    if shapes is None:
        return f"{name}: no shape in the optimization profile"
    if len(shapes[0]) != len(dims):
        return f"{name}: the profile's rank {len(shapes[0])} is not the network's {len(dims)}"
    for axis, fixed in enumerate(dims):
        got = [s[axis] for s in shapes]
        if fixed != -1 and got != [fixed] * 3:
            return (f"{name}: for dimension number {axis} in profile 0 does not match network definition "
                    f"(got min={got[0]}, opt={got[1]}, max={got[2]}), expected min=opt=max={fixed})")
    return None


class FakeEngine:
    """A deserialised engine: its I/O from its graph, its profile from the build (or open_profile)."""

    def __init__(self, graph: Graph, profile: dict[str, list], memory: Memory | None):
        self.graph, self.profile, self.memory = graph, profile, memory
        self.names = [*graph.inputs, *graph.outputs]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        if name in self.graph.inputs:
            return TensorIOMode.INPUT
        return TensorIOMode.OUTPUT if name in self.graph.outputs else TensorIOMode.NONE

    def get_tensor_dtype(self, name):
        return DataType.FLOAT  # an fp32 export's I/O

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0
        self._outputs: dict[str, tuple] | None = None

    def set_input_shape(self, name, shape):
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine.profile.get(name, [[], [], []])
        if name not in self.engine.graph.inputs or len(shape) != len(low) or any(
                not a <= d <= b for a, d, b in zip(low, shape, high)):
            return False
        self.shapes[name] = shape
        self._outputs = None
        return True

    def get_tensor_shape(self, name):
        graph = self.engine.graph
        if name in graph.inputs:
            return self.shapes.get(name, tuple(-1 for _ in self.engine.profile[name][0]))
        if set(self.shapes) != set(graph.inputs):
            return (-1,)  # not all input shapes set: unknown
        if self._outputs is None:
            self._outputs = {k: tuple(v) for k, v in graph.output_shapes(dict(self.shapes)).items()}
        return self._outputs[name]

    def set_tensor_address(self, name, ptr):
        memory = self.engine.memory
        if name not in self.engine.names or int(ptr) % ALIGNMENT or (memory is not None and not memory.is_device(ptr)):
            return False
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        engine, memory, graph = self.engine, self.engine.memory, self.engine.graph
        if set(self.shapes) != set(graph.inputs) or set(self.addresses) != set(engine.names):
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        outputs = {n: self.get_tensor_shape(n) for n in graph.outputs}

        def work():
            feeds = {n: memory.read(addresses[n], shapes[n], np.float32) for n in graph.inputs}
            for name, value in graph.run(feeds).items():
                if tuple(value.shape) != outputs[name]:
                    raise AssertionError(f"{name}: the graph gave {tuple(value.shape)}, the context {outputs[name]}")
                memory.write(addresses[name], value)
            self.runs += 1
        return memory is not None and memory.enqueue(stream_handle, work)
