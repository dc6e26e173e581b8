"""A stand-in for the CUDA runtime (cuda-python) that refuses what the real one refuses.

FakeCudart implements the cuda-python runtime calls tsf_trt.engines.cuda makes. Device
memory lives in its own address space (256-byte aligned, like cudaMalloc's), reachable only
through the fake's calls, never as host memory; pinned host memory is real host memory.
Every *Async call (and every engine execution of tests/fake_trt.py) is queued and runs only
when the stream or an event recorded after it is synchronised, so a missing synchronisation
shows up as stale host data. Status values and (status, value) returns are those of
cuda-bindings 12.9 (cudaGetErrorName/String return (cudaSuccess, bytes); cudaGetDeviceCount
(error, None)). What it cannot show: that CUDA itself behaves as its documentation says.
"""

from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

import numpy as np


ALIGNMENT = 256            # cudaMalloc's and TensorRT's tensor address alignment
DEVICE_BASE = 0x7E00_0000_0000  # fake device addresses: never valid host memory here


class Status(enum.IntEnum):
    """cudaError_t values of the CUDA runtime (those the fakes produce)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


DESCRIPTIONS = {
    Status.cudaSuccess: b"no error", Status.cudaErrorInvalidValue: b"invalid argument",
    Status.cudaErrorMemoryAllocation: b"out of memory",
    Status.cudaErrorInitializationError: b"initialization error",
    Status.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    Status.cudaErrorNoDevice: b"no CUDA-capable device is detected",
    Status.cudaErrorInvalidDevice: b"invalid device ordinal",
}


class FakeStream:
    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeEvent:
    def __init__(self) -> None:
        self.done = True


class FakeCudart:
    """The subset of `cuda.bindings.runtime` that tsf_trt uses, with deferred streams."""

    cudaError_t = Status
    cudaStreamNonBlocking = 1
    cudaHostAllocDefault = 0
    cudaEventDisableTiming = 2
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2,
                                     cudaMemcpyDeviceToDevice=3)

    def __init__(self, devices: int = 1, count_error: Status | None = None) -> None:
        self.devices, self.count_error = devices, count_error
        self.device: dict[int, bytearray] = {}   # base address -> device memory
        self.freed: set[int] = set()
        self.pinned: dict[int, ctypes.Array] = {}
        self.streams: dict[int, FakeStream] = {}
        self.queue: list = []                    # deferred work, in stream order
        self.current: int | None = None           # cudaSetDevice's GPU for this (one) thread
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self._next = DEVICE_BASE

    def __getattribute__(self, name: str):
        attr = object.__getattribute__(self, name)
        if name.startswith("cuda") and callable(attr) and not isinstance(attr, type):
            object.__getattribute__(self, "calls").append(name)
            if name in object.__getattribute__(self, "fail"):
                return lambda *args: (Status.cudaErrorMemoryAllocation, None)
        return attr

    # -- memory -------------------------------------------------------------------------------
    def _region(self, ptr: int, nbytes: int) -> memoryview:
        """The memory [ptr, ptr + nbytes): device memory of a live allocation, or host memory."""
        if DEVICE_BASE <= ptr < self._next:
            for base, buffer in self.device.items():
                if base <= ptr and ptr + nbytes <= base + len(buffer):
                    return memoryview(buffer)[ptr - base: ptr - base + nbytes]
            raise AssertionError(f"device access [{ptr:#x}, +{nbytes}) outside any live allocation")
        return memoryview((ctypes.c_uint8 * nbytes).from_address(ptr)).cast("B")

    def is_device(self, ptr: int) -> bool:
        return DEVICE_BASE <= ptr < self._next

    def device_array(self, ptr: int, shape, dtype) -> np.ndarray:
        """Device memory as a numpy array (a copy), as a GPU kernel would read it now."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return np.frombuffer(self._region(ptr, nbytes), dtype=dtype).reshape(shape).copy()

    def write_device(self, ptr: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        self._region(ptr, data.nbytes)[:] = data.tobytes()

    def _check_stream(self, stream) -> bool:
        return int(stream) in self.streams

    def _enqueue(self, stream, work) -> tuple:
        if not self._check_stream(stream):
            return (Status.cudaErrorInvalidValue,)
        self.queue.append(work)
        return (Status.cudaSuccess,)

    def run_queue(self, until=None) -> None:
        while self.queue:
            work = self.queue.pop(0)
            if work() is until and until is not None:
                return

    # -- the runtime calls ----------------------------------------------------------------------
    def cudaGetErrorName(self, error):
        return Status.cudaSuccess, Status(error).name.encode()

    def cudaGetErrorString(self, error):
        return Status.cudaSuccess, DESCRIPTIONS[Status(error)]

    def cudaGetDeviceCount(self):
        if self.count_error is not None:
            return self.count_error, None
        return Status.cudaSuccess, self.devices

    def cudaSetDevice(self, device):
        if not 0 <= int(device) < self.devices:
            return (Status.cudaErrorInvalidDevice,)
        self.current = int(device)
        return (Status.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags):
        stream = FakeStream(1000 + len(self.streams))
        self.streams[int(stream)] = stream
        return Status.cudaSuccess, stream

    def cudaStreamDestroy(self, stream):
        if self.streams.pop(int(stream), None) is None:
            return (Status.cudaErrorInvalidValue,)
        return (Status.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        if not self._check_stream(stream):
            return (Status.cudaErrorInvalidValue,)
        self.run_queue()
        return (Status.cudaSuccess,)

    def cudaMallocAsync(self, nbytes, stream):
        if not self._check_stream(stream):
            return Status.cudaErrorInvalidValue, None
        ptr = self._next
        self._next += -(-max(int(nbytes), 1) // ALIGNMENT) * ALIGNMENT
        self.device[ptr] = bytearray(int(nbytes))
        return Status.cudaSuccess, ptr

    def cudaFreeAsync(self, ptr, stream):
        if ptr not in self.device or ptr in self.freed:
            return (Status.cudaErrorInvalidValue,)
        self.freed.add(ptr)

        def work():
            del self.device[ptr]
        return self._enqueue(stream, work)

    def cudaHostAlloc(self, nbytes, flags):
        buffer = (ctypes.c_uint8 * int(nbytes))()
        self.pinned[ctypes.addressof(buffer)] = buffer
        return Status.cudaSuccess, ctypes.addressof(buffer)

    def cudaFreeHost(self, ptr):
        if self.pinned.pop(ptr, None) is None:
            return (Status.cudaErrorInvalidValue,)
        return (Status.cudaSuccess,)

    def _kind_ok(self, kind, dst: int, src: int) -> bool:
        want = {1: (True, False), 2: (False, True), 3: (True, True)}.get(int(kind))
        return want == (self.is_device(dst), self.is_device(src))

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if not self._kind_ok(kind, dst, src):
            return (Status.cudaErrorInvalidValue,)

        def work():
            self._region(dst, nbytes)[:] = self._region(src, nbytes).tobytes()
        return self._enqueue(stream, work)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        if not self._kind_ok(kind, dst, src) or width > dpitch or width > spitch:
            return (Status.cudaErrorInvalidValue,)

        def work():
            for row in range(height):
                self._region(dst + row * dpitch, width)[:] = self._region(src + row * spitch, width).tobytes()
        return self._enqueue(stream, work)

    def cudaMemset2DAsync(self, ptr, pitch, value, width, height, stream):
        if not self.is_device(ptr) or width > pitch:
            return (Status.cudaErrorInvalidValue,)

        def work():
            for row in range(height):
                self._region(ptr + row * pitch, width)[:] = bytes([value]) * width
        return self._enqueue(stream, work)

    def cudaEventCreateWithFlags(self, flags):
        return Status.cudaSuccess, FakeEvent()

    def cudaEventRecord(self, event, stream):
        event.done = False

        def work():
            event.done = True
            return event
        return self._enqueue(stream, work)

    def cudaEventSynchronize(self, event):
        if not event.done:
            self.run_queue(until=event)
        return (Status.cudaSuccess,)

    def cudaEventDestroy(self, event):
        return (Status.cudaSuccess,)
