"""A stand-in for the CUDA runtime (cuda-python) that refuses what the real one refuses.

FakeCudart implements the cuda-python runtime calls tsf_trt makes, with the signatures, return
tuples and argument checks of cuda-bindings 12.9.10 and 13.5.0 (read from the installed modules,
which import and answer without a driver): every call returns a tuple whose first item is a
cudaError_t (an int enum there too), the values after it (`(err, None)` when a call that returns a
value fails); a stream or event argument must be a handle (the object a create call returned, its
int, or None/0) and anything else is a TypeError ("an integer is required"), as a pointer argument
must be an int; cudaStreamWaitEvent takes exactly (stream, event, flags).

Device memory lives in its own address space (256-byte aligned, like cudaMalloc's), reachable only
through the fake's calls, never as host memory; pinned host memory is real host memory, and using
it after cudaFreeHost fails. Each stream has its own queue, and nothing runs when it is enqueued
(every *Async call, event record and engine execution of tests/fake_trt.py). A stream's work runs
only when the host waits for it (cudaStreamSynchronize, cudaEventSynchronize on an event recorded
on it, cudaDeviceSynchronize) or when a stream that waits for one of its events
(cudaStreamWaitEvent) runs; then only that stream runs, up to the point waited for, while other
streams keep their work queued. So work on stream B that should have waited for stream A and did
not runs before A's, as if B were faster: a download on B that never waited for A's upload reads
stale memory. cudaDeviceSynchronize runs the streams one after another, the one whose work was
queued last first. Stream 0 (the legacy default stream) is a stream of its own here: its implicit
synchronisation with blocking streams is not modelled, so nothing may rely on it.

What it cannot show: that CUDA itself behaves as its documentation says, or timing (a real GPU
may happen to hide a missing wait that this fake exposes, never the reverse).
"""

from __future__ import annotations

import ctypes
import enum
import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np


ALIGNMENT = 256            # cudaMalloc's and TensorRT's tensor address alignment
DEVICE_BASE = 0x7E00_0000_0000  # fake device addresses: never valid host memory here
HANDLE_BASE = 0x5A00_0000       # fake stream and event handles


class Status(enum.IntEnum):
    """cudaError_t values of the CUDA runtime (those the fakes produce); an int enum, as in cuda-bindings."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


DESCRIPTIONS = {
    Status.cudaSuccess: b"no error", Status.cudaErrorInvalidValue: b"invalid argument",
    Status.cudaErrorMemoryAllocation: b"out of memory",
    Status.cudaErrorInitializationError: b"initialization error",
    Status.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    Status.cudaErrorNoDevice: b"no CUDA-capable device is detected",
    Status.cudaErrorInvalidDevice: b"invalid device ordinal",
    Status.cudaErrorInvalidResourceHandle: b"invalid resource handle",
}


# The calls that return (err, value); the others return (err,).
RETURNS_VALUE = frozenset({"cudaGetErrorName", "cudaGetErrorString", "cudaRuntimeGetVersion", "cudaDriverGetVersion",
                           "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaStreamCreateWithFlags",
                           "cudaEventCreateWithFlags", "cudaMallocAsync", "cudaHostAlloc"})


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801 - the runtime's name
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class _Handle:
    """A cudaStream_t / cudaEvent_t: `int()` is the handle, as in cuda-bindings."""

    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle

    __index__ = __int__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.handle:#x}>"


class FakeStream(_Handle):
    pass


class FakeEvent(_Handle):
    pass


@dataclass(eq=False)
class _Record:
    """One cudaEventRecord: done once the work queued on `stream` before it has run."""

    stream: int
    done: bool = False


@dataclass(eq=False)
class _Item:
    seq: int                                   # when it was queued, over all streams
    run: Callable[[], Any] | None = None       # work (a copy, a kernel, a free)
    record: _Record | None = None              # an event record: marks `record` done
    wait: _Record | None = None                # cudaStreamWaitEvent: `wait` must be done first


def _int(value: Any) -> int:
    """An int argument as cuda-bindings takes it (None is 0); anything else is a TypeError."""
    if value is None:
        return 0
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError("an integer is required") from None


class FakeCudart:
    """The subset of `cuda.bindings.runtime` that tsf_trt uses, with a deferred queue per stream."""

    cudaError_t = Status
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamDefault, cudaStreamNonBlocking = 0, 1
    cudaHostAllocDefault = 0
    cudaEventDefault, cudaEventDisableTiming = 0, 2
    cudaEventWaitDefault, cudaEventWaitExternal = 0, 1

    def __init__(self, devices: int = 1, count_error: Status | None = None,
                 name: bytes = b"NVIDIA H100 80GB HBM3") -> None:
        self.devices, self.count_error, self.name = devices, count_error, name
        self.device: dict[int, bytearray] = {}   # base address -> device memory
        self.freed: set[int] = set()
        self.pinned: dict[int, ctypes.Array] = {}
        self.freed_pinned: dict[int, ctypes.Array] = {}  # kept alive: a late use fails, never corrupts
        self.streams: dict[int, FakeStream] = {}
        self.events: dict[int, FakeEvent] = {}
        self.queues: dict[int, deque[_Item]] = {0: deque()}
        self.recorded: dict[int, _Record] = {}   # event handle -> its latest record
        self.current: int | None = None           # cudaSetDevice's GPU for this (one) thread
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self._next, self._handles, self._seq = DEVICE_BASE, HANDLE_BASE, 0

    def __getattribute__(self, name: str):
        attr = object.__getattribute__(self, name)
        if name.startswith("cuda") and callable(attr) and not isinstance(attr, type):
            object.__getattribute__(self, "calls").append(name)
            if name in object.__getattribute__(self, "fail"):  # fails as the real call would: (err,) or (err, None)
                failed = (Status.cudaErrorMemoryAllocation,) + ((None,) if name in RETURNS_VALUE else ())
                return lambda *args: failed
        return attr

    # -- memory -------------------------------------------------------------------------------
    def _region(self, ptr: int, nbytes: int) -> memoryview:
        """The memory [ptr, ptr + nbytes): device memory of a live allocation, or host memory."""
        if DEVICE_BASE <= ptr < self._next:
            for base, buffer in self.device.items():
                if base <= ptr and ptr + nbytes <= base + len(buffer):
                    return memoryview(buffer)[ptr - base: ptr - base + nbytes]
            raise AssertionError(f"device access [{ptr:#x}, +{nbytes}) outside any live allocation")
        for base, buffer in self.freed_pinned.items():
            if base <= ptr < base + ctypes.sizeof(buffer):
                raise AssertionError(f"host access at {ptr:#x}: pinned memory used after cudaFreeHost")
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

    # -- streams, events and the order work runs in ------------------------------------------------
    def _new_handle(self) -> int:
        self._handles += 0x10
        return self._handles

    def _stream(self, stream: Any) -> int | None:
        """The handle of a live stream (0: the legacy default stream); None when it names none."""
        handle = _int(stream)
        return handle if handle == 0 or handle in self.streams else None

    def _event(self, event: Any) -> int | None:
        handle = _int(event)
        return handle if handle in self.events else None

    def _put(self, stream: int, item: _Item) -> None:
        self._seq += 1
        item.seq = self._seq
        self.queues.setdefault(stream, deque()).append(item)

    def _enqueue(self, stream: Any, work: Callable[[], Any]) -> tuple:
        """Queue `work` on `stream` (tests/fake_trt.py's engines enqueue through this too)."""
        handle = self._stream(stream)
        if handle is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        self._put(handle, _Item(0, run=work))
        return (Status.cudaSuccess,)

    def _advance(self, stream: int, until: _Record | None = None) -> None:
        """Run `stream`'s queue in order, up to `until` (everything when None); only the streams
        it waits for run besides it. (A wait holds a record made before it, so waits form no cycle.)"""
        queue = self.queues.get(stream, deque())
        while queue and not (until is not None and until.done):
            item = queue.popleft()
            if item.wait is not None and not item.wait.done:
                self._advance(item.wait.stream, item.wait)
            if item.run is not None:
                item.run()
            if item.record is not None:
                item.record.done = True

    def _drain(self) -> None:
        """Run every stream, one after another: the one whose work was queued last first."""
        while any(self.queues.values()):
            stream = max((s for s, q in self.queues.items() if q), key=lambda s: self.queues[s][-1].seq)
            self._advance(stream)

    @property
    def queue(self) -> list[_Item]:
        """Everything queued and not run yet, on every stream."""
        return [item for queue in self.queues.values() for item in queue]

    # -- the runtime calls ----------------------------------------------------------------------
    def cudaGetErrorName(self, error):
        return Status.cudaSuccess, Status(error).name.encode()

    def cudaGetErrorString(self, error):
        return Status.cudaSuccess, DESCRIPTIONS[Status(error)]

    def cudaRuntimeGetVersion(self):
        return Status.cudaSuccess, 12090

    def cudaDriverGetVersion(self):  # 0 without a driver, as cuda-bindings answers there
        return Status.cudaSuccess, 0 if self.count_error == Status.cudaErrorInsufficientDriver else 13000

    def cudaGetDeviceCount(self):
        if self.count_error is not None:
            return self.count_error, None
        return Status.cudaSuccess, self.devices

    def cudaGetDeviceProperties(self, device):
        device = _int(device)
        if self.count_error is not None:
            return self.count_error, None
        if not 0 <= device < self.devices:
            return Status.cudaErrorInvalidDevice, None
        # cudaDeviceProp's attribute names; `name` is bytes there (char[256] up to its NUL)
        return Status.cudaSuccess, SimpleNamespace(name=self.name, major=9, minor=0, totalGlobalMem=80 << 30,
                                                   multiProcessorCount=132)

    def cudaSetDevice(self, device):
        device = _int(device)
        if self.count_error is not None:
            return (self.count_error,)
        if not 0 <= device < self.devices:
            return (Status.cudaErrorInvalidDevice,)
        self.current = device
        return (Status.cudaSuccess,)

    def cudaDeviceSynchronize(self):
        self._drain()
        return (Status.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags):
        if _int(flags) not in (self.cudaStreamDefault, self.cudaStreamNonBlocking):
            return Status.cudaErrorInvalidValue, None
        stream = FakeStream(self._new_handle())
        self.streams[int(stream)] = stream
        self.queues[int(stream)] = deque()
        return Status.cudaSuccess, stream

    def cudaStreamDestroy(self, stream):
        handle = self._stream(stream)
        if not handle:
            return (Status.cudaErrorInvalidResourceHandle,)
        del self.streams[handle]  # its queued work still runs (on a drain), as CUDA finishes it
        return (Status.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        handle = self._stream(stream)
        if handle is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        self._advance(handle)
        return (Status.cudaSuccess,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        handle, waited = self._stream(stream), self._event(event)
        if handle is None or waited is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        if _int(flags) not in (self.cudaEventWaitDefault, self.cudaEventWaitExternal):
            return (Status.cudaErrorInvalidValue,)
        record = self.recorded.get(waited)  # the event's work as of now; none recorded: nothing to wait for
        if record is not None and not record.done:
            self._put(handle, _Item(0, wait=record))
        return (Status.cudaSuccess,)

    def cudaEventCreateWithFlags(self, flags):
        if _int(flags) & ~0xF:
            return Status.cudaErrorInvalidValue, None
        event = FakeEvent(self._new_handle())
        self.events[int(event)] = event
        return Status.cudaSuccess, event

    def cudaEventRecord(self, event, stream):
        handle, recorded = self._stream(stream), self._event(event)
        if handle is None or recorded is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        record = self.recorded[recorded] = _Record(handle)
        self._put(handle, _Item(0, record=record))
        return (Status.cudaSuccess,)

    def cudaEventSynchronize(self, event):
        handle = self._event(event)
        if handle is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        record = self.recorded.get(handle)
        if record is not None and not record.done:
            self._advance(record.stream, record)
        return (Status.cudaSuccess,)

    def cudaEventDestroy(self, event):
        handle = self._event(event)
        if handle is None:
            return (Status.cudaErrorInvalidResourceHandle,)
        del self.events[handle]  # a wait already queued on it still holds its record
        self.recorded.pop(handle, None)
        return (Status.cudaSuccess,)

    def cudaMallocAsync(self, nbytes, stream):
        nbytes = _int(nbytes)
        if self._stream(stream) is None:
            return Status.cudaErrorInvalidResourceHandle, None
        ptr = self._next
        self._next += -(-max(nbytes, 1) // ALIGNMENT) * ALIGNMENT
        self.device[ptr] = bytearray(nbytes)
        return Status.cudaSuccess, ptr

    def cudaFreeAsync(self, ptr, stream):
        ptr = _int(ptr)
        if ptr not in self.device or ptr in self.freed:
            return (Status.cudaErrorInvalidValue,)
        result = self._enqueue(stream, lambda: self.device.pop(ptr))
        if result[0] == Status.cudaSuccess:
            self.freed.add(ptr)
        return result

    def cudaHostAlloc(self, nbytes, flags):
        buffer = (ctypes.c_uint8 * _int(nbytes))()
        self.pinned[ctypes.addressof(buffer)] = buffer
        return Status.cudaSuccess, ctypes.addressof(buffer)

    def cudaFreeHost(self, ptr):
        ptr = _int(ptr)
        if ptr not in self.pinned:
            return (Status.cudaErrorInvalidValue,)
        self.freed_pinned[ptr] = self.pinned.pop(ptr)
        return (Status.cudaSuccess,)

    def _kind_ok(self, kind, dst: int, src: int) -> bool:
        want = {1: (True, False), 2: (False, True), 3: (True, True)}.get(_int(kind))
        return want == (self.is_device(dst), self.is_device(src))

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        dst, src, nbytes = _int(dst), _int(src), _int(nbytes)
        if not self._kind_ok(kind, dst, src):
            return (Status.cudaErrorInvalidValue,)

        def work():
            self._region(dst, nbytes)[:] = self._region(src, nbytes).tobytes()
        return self._enqueue(stream, work)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        dst, dpitch, src, spitch, width, height = map(_int, (dst, dpitch, src, spitch, width, height))
        if not self._kind_ok(kind, dst, src) or width > dpitch or width > spitch:
            return (Status.cudaErrorInvalidValue,)

        def work():
            for row in range(height):
                self._region(dst + row * dpitch, width)[:] = self._region(src + row * spitch, width).tobytes()
        return self._enqueue(stream, work)

    def cudaMemset2DAsync(self, ptr, pitch, value, width, height, stream):
        ptr, pitch, value, width, height = map(_int, (ptr, pitch, value, width, height))
        if not self.is_device(ptr) or width > pitch:
            return (Status.cudaErrorInvalidValue,)

        def work():
            for row in range(height):
                self._region(ptr + row * pitch, width)[:] = bytes([value & 0xFF]) * width
        return self._enqueue(stream, work)
