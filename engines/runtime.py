"""Deserialised engines and their execution contexts (TensorRT >= 10 name-based tensor API).

Written from TensorRT's documentation; NOT yet run on a GPU.

Each engine is deserialised once and gets one execution context. Input shapes are set
on the context only when they change (`set_input_shape`), output shapes are read back
from it, and every call binds device addresses (`set_tensor_address`) and enqueues on
the caller's stream (`execute_async_v3`). An engine TensorRT refuses to deserialise
(damaged, or built by another TensorRT despite its metadata) is deleted and rebuilt once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tsf_trt.errors import TsfError

from tsf_trt.engines.build import trt_logger
from tsf_trt.engines.engine_cache import CorruptEngine
from tsf_trt.engines.gpu import import_tensorrt
from tsf_trt.engines.manager import EngineManager
from tsf_trt.engines.profiles import Profile


class EngineRunner:
    def __init__(self, trt, runtime, data: bytes, label: str):
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise CorruptEngine(f"TensorRT {trt.__version__} could not deserialise it")
        context = engine.create_execution_context()
        if context is None:
            raise TsfError(f"{label}: TensorRT could not create an execution context (out of GPU memory?)")
        self.label = label
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def output_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Set the input shapes (when they changed) and return every output's shape."""
        for name, shape in shapes.items():
            shape = tuple(int(d) for d in shape)
            if self._shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise TsfError(f"{self.label}: input '{name}' of shape {shape} is outside the engine's profile")
                self._shapes[name] = shape
        return {name: tuple(int(d) for d in self.context.get_tensor_shape(name)) for name in self.outputs}

    def run(self, addresses: Mapping[str, int], stream: int) -> None:
        """Enqueue one execution on `stream` with these device addresses (inputs and outputs)."""
        for name in (*self.inputs, *self.outputs):
            if not self.context.set_tensor_address(name, int(addresses[name])):
                raise TsfError(f"{self.label}: TensorRT refused the address of '{name}'")
        if not self.context.execute_async_v3(stream):
            raise TsfError(f"{self.label}: TensorRT could not enqueue the execution")


class EngineSet:
    """The runners of one export, loaded on demand: one per graph and covering profile."""

    def __init__(self, manager: EngineManager, trt=None):
        self.manager = manager
        self.trt = trt or import_tensorrt()
        self.runtime = self.trt.Runtime(trt_logger(self.trt))
        self._loaded: dict[str, list[tuple[Profile, EngineRunner]]] = {}

    def runner(self, graph: str, batch: int, height: int, width: int) -> EngineRunner:
        """A runner for `graph` whose profile accepts `batch` slices of `height` x `width`."""
        for profile, runner in self._loaded.get(graph, []):
            if profile.covers(batch, height, width):
                return runner
        for _ in range(2):  # a refused engine is deleted and rebuilt once
            entry = self.manager.engine(graph, batch, height, width)
            try:
                runner = EngineRunner(self.trt, self.runtime, entry.data, str(entry.path))  # checked bytes
            except CorruptEngine as exc:
                self.manager.discard(entry, str(exc))
                continue
            self._loaded.setdefault(graph, []).append((entry.key.profile, runner))
            return runner
        raise TsfError(f"TensorRT refused the {graph} engine twice, also freshly built: see the messages above")

    def close(self) -> None:
        self._loaded.clear()
