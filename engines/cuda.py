"""Every CUDA buffer, stream, event and copy of tsf-trt, in this one module.

Written from the CUDA runtime and cuda-python documentation; NOT yet run on a GPU. Checked on
tests/fake_cuda.py (the signatures, return tuples and argument checks of cuda-bindings 12.9 and 13,
a deferred queue per stream) and against those bindings' signatures, not on a GPU.

Why cuda-python (`cuda.bindings.runtime`) and not pycuda: it is NVIDIA's maintained
binding, shipped as wheels for each CUDA major version, and the one TensorRT's own
Python samples moved to; pycuda compiles against a local CUDA toolkit at install
time, which a `pip install 'tsf-trt[gpu-cu12]'` cannot count on.

What it provides to the `trt` backend:

* one CUDA stream for everything, so ordering is the stream's: a buffer can be reused
  as soon as Python drops it, because any later use is enqueued after earlier ones;
* device buffers from `cudaMallocAsync`, pooled by size: after the first batch of a
  given shape no allocation happens (the pool grows to the number of arrays alive at
  once, e.g. one feature map per source);
* pinned host memory (`cudaHostAlloc`) for every copy, in rings of two slots per size
  (double buffering): the host fills the next batch's slot while the stream still
  reads the previous one; an event per slot says when a slot may be refilled;
* strided device-to-device copies to stack per-source features for the fusion graph.
"""

from __future__ import annotations

import ctypes
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tsf_trt.errors import TsfError

from tsf_trt.engines.gpu import cuda_error_text, import_cudart

STAGING_GRANULE = 1 << 20  # pinned slots are sized in MiB steps so that close sizes share a ring


class CudaError(TsfError):
    """A CUDA runtime call failed (out of memory, a lost device, ...)."""


class Cuda:
    """The runtime bindings, bound to one device, with error checking."""

    def __init__(self, device: int = 0):
        self.rt = import_cudart()
        self.device = device
        self.call("cudaSetDevice", device)

    def call(self, name: str, *args):
        """Run cudart.`name`(*args); raise CudaError on failure; return the results after the status."""
        result = getattr(self.rt, name)(*args)
        status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if status != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA {name} failed on GPU {self.device}: {cuda_error_text(self.rt, status)}")
        return values[0] if len(values) == 1 else values


@dataclass
class Allocation:
    """A device buffer lent by the pool; returned to it when the last array using it is dropped."""

    ptr: int
    nbytes: int


@dataclass
class DeviceArray:
    """A typed, shaped view of (part of) an Allocation."""

    allocation: Allocation
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0

    @property
    def ptr(self) -> int:
        return self.allocation.ptr + self.offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def rows(self, start: int, count: int) -> DeviceArray:
        """Rows [start, start + count) along the first axis, sharing the memory."""
        row = self.nbytes // self.shape[0]
        return DeviceArray(self.allocation, (count, *self.shape[1:]), self.dtype, self.offset + start * row)

    def follows(self, other: DeviceArray) -> bool:
        """Whether this array starts right where `other` ends, in the same allocation."""
        return self.allocation is other.allocation and self.offset == other.offset + other.nbytes


@dataclass
class _Slot:
    ptr: int
    host: np.ndarray           # uint8 view of the pinned memory
    event: object
    pending: bool = False      # an async copy that reads/writes it may still be queued


@dataclass
class _Ring:
    slots: list[_Slot] = field(default_factory=list)
    turn: int = 0


class GpuContext:
    """One device, one stream, pooled device buffers and pinned staging rings."""

    def __init__(self, device: int = 0):
        self.cuda = Cuda(device)
        rt = self.cuda.rt
        self.stream = self.cuda.call("cudaStreamCreateWithFlags", rt.cudaStreamNonBlocking)
        self.handle = int(self.stream)  # what TensorRT's execute_async_v3 takes
        self._free: dict[int, list[int]] = defaultdict(list)
        self._all: list[int] = []
        self._rings: dict[tuple[str, int], _Ring] = {}
        self.closed = False

    # -- device memory ---------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype=np.float32) -> DeviceArray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        free = self._free[nbytes]
        ptr = free.pop() if free else self._malloc(nbytes)
        allocation = Allocation(ptr, nbytes)
        weakref.finalize(allocation, self._release, ptr, nbytes)
        return DeviceArray(allocation, tuple(int(d) for d in shape), dtype)

    def _malloc(self, nbytes: int) -> int:
        ptr = int(self.cuda.call("cudaMallocAsync", nbytes, self.stream))
        self._all.append(ptr)
        return ptr

    def _release(self, ptr: int, nbytes: int) -> None:
        if not self.closed:  # stream order makes immediate reuse safe (module docstring)
            self._free[nbytes].append(ptr)

    # -- copies ---------------------------------------------------------------------------
    def upload(self, array: np.ndarray, into: DeviceArray | None = None) -> DeviceArray:
        """Host array -> device, through a pinned slot (async; returns at once)."""
        array = np.ascontiguousarray(array)
        target = into if into is not None else self.empty(array.shape, array.dtype)
        if target.nbytes != array.nbytes:
            raise ValueError(f"upload of {array.nbytes} bytes into a {target.nbytes}-byte device array")
        slot = self._slot("up", array.nbytes)
        slot.host[: array.nbytes] = array.reshape(-1).view(np.uint8)
        self._copy(target.ptr, slot.ptr, array.nbytes, "cudaMemcpyHostToDevice")
        self._mark(slot)
        return target

    def download(self, array: DeviceArray) -> np.ndarray:
        """Device -> a new host array: copy into a pinned slot, wait for it, copy out."""
        slot = self._slot("down", array.nbytes)
        self._copy(slot.ptr, array.ptr, array.nbytes, "cudaMemcpyDeviceToHost")
        self._mark(slot)
        self.cuda.call("cudaEventSynchronize", slot.event)
        slot.pending = False
        return slot.host[: array.nbytes].view(array.dtype).reshape(array.shape).copy()

    def copy(self, dst: DeviceArray, src: DeviceArray) -> None:
        if dst.nbytes != src.nbytes:
            raise ValueError(f"device copy of {src.nbytes} bytes into {dst.nbytes}")
        self._copy(dst.ptr, src.ptr, src.nbytes, "cudaMemcpyDeviceToDevice")

    def put_slot(self, stacked: DeviceArray, index: int, src: DeviceArray | None) -> None:
        """stacked[:, index] = src (N, ...) — or zeros when src is None — for stacked (N, S, ...)."""
        n, slots = stacked.shape[0], stacked.shape[1]
        width = stacked.nbytes // (n * slots)
        pitch = width * slots
        dst = stacked.ptr + index * width
        if src is None:
            self.cuda.call("cudaMemset2DAsync", dst, pitch, 0, width, n, self.stream)
            return
        if src.nbytes != width * n:
            raise ValueError(f"features of {src.nbytes} bytes do not fit slot {index} of {stacked.shape}")
        kind = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.cuda.call("cudaMemcpy2DAsync", dst, pitch, src.ptr, width, width, n, kind, self.stream)

    def synchronize(self) -> None:
        self.cuda.call("cudaStreamSynchronize", self.stream)

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        self.cuda.call("cudaMemcpyAsync", dst, src, nbytes, getattr(self.cuda.rt.cudaMemcpyKind, kind), self.stream)

    # -- pinned staging (double buffering) ----------------------------------------------------
    def _slot(self, direction: str, nbytes: int) -> _Slot:
        size = -(-nbytes // STAGING_GRANULE) * STAGING_GRANULE
        ring = self._rings.setdefault((direction, size), _Ring())
        if len(ring.slots) < 2:
            ptr = int(self.cuda.call("cudaHostAlloc", size, self.cuda.rt.cudaHostAllocDefault))
            host = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))
            event = self.cuda.call("cudaEventCreateWithFlags", self.cuda.rt.cudaEventDisableTiming)
            ring.slots.append(_Slot(ptr, host, event))
            return ring.slots[-1]
        slot = ring.slots[ring.turn]
        ring.turn = 1 - ring.turn
        if slot.pending:  # the copy that used this slot two calls ago may still be queued
            self.cuda.call("cudaEventSynchronize", slot.event)
            slot.pending = False
        return slot

    def _mark(self, slot: _Slot) -> None:
        self.cuda.call("cudaEventRecord", slot.event, self.stream)
        slot.pending = True

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.synchronize()
        self.closed = True
        for ptr in self._all:
            self.cuda.call("cudaFreeAsync", ptr, self.stream)
        self.synchronize()
        for ring in self._rings.values():
            for slot in ring.slots:
                self.cuda.call("cudaFreeHost", slot.ptr)
                self.cuda.call("cudaEventDestroy", slot.event)
        self.cuda.call("cudaStreamDestroy", self.stream)
        self._all.clear()
        self._free.clear()
        self._rings.clear()
