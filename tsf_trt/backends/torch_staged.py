"""The torch backend's CUDA path: encode / fuse / decode as static stages on one device.

Each stage is captured once per (batch, height, width) as a CUDA graph with static buffers and
replayed; channels-last; inputs staged through pinned host slots and copied on a side stream
while the GPU still works on earlier calls; the decoder's middle channel copied to the host
on its own as soon as the decoder is queued (``to_numpy(images, channel=1)`` returns it).
Across batches: nothing here waits for the GPU but ``to_numpy`` (and ω, once per task), and the
upload ring is deep enough (UPLOAD_SLOTS) that a caller who queues batch k+1 before it reads
batch k's images never waits in an upload for batch k's work; tsf_trt/synthesis/pipeline.py reads each
batch before it stacks the next, so it gets that overlap only once it looks one batch ahead. Apart
from :class:`~tsf_trt.backends.torch_backend.TorchBackend` because it is a runner of its own,
with its own buffer rules. Written from PyTorch's CUDA-graph and stream documentation and tested
here on CPU through the same runner with an eager stand-in for the capture
(tests/test_torch_cuda.py); ``scripts/gpu_check.py`` runs it on a GPU. Its stages run inside
:func:`cuda_math` with cuDNN's autotuner on: fp32 is IEEE fp32, and each static shape's convolution
algorithms are timed once, at the warm-up before capture.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tsf_trt.model import TSFSeq2Seq
from tsf_trt.model.layers import ConvLSTMCell

# Here, not in torch_backend.py, as StagedRunner and TorchBackend (on any device) both use it.
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, precision: str, *, cache: bool = True):
    """The one precision rule on CPU and GPU: autocast to bf16/fp16 (or nothing); InstanceNorm and
    ω stay fp32 by the model's own code (layers.InstanceNorm, fusion.masked_weights). A CUDA graph
    capture needs autocast's weight cache off (its casts must be part of the graph)."""
    dtype = AUTOCAST[precision]
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=cache)


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, its IEEE-fp32 value) of each PyTorch switch that lets cuBLAS or cuDNN round
    fp32 inputs to TF32: PyTorch >= 2.9's per-operator `fp32_precision` (its legacy `allow_tf32`
    getters raise once both APIs were used, PyTorch's "mix of the legacy and new APIs" error), else
    the legacy flags."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv"):
        ops = [backends.cuda.matmul, backends.cudnn.conv] + ([backends.cudnn.rnn] if hasattr(backends.cudnn, "rnn")
                                                              else [])
        return [(op, "fp32_precision", "ieee") for op in ops]
    return [(backends.cuda.matmul, "allow_tf32", False), (backends.cudnn, "allow_tf32", False)]


@contextmanager
def cuda_math(*, benchmark: bool | None = None) -> Iterator[None]:
    """fp32 computed as IEEE fp32 for the calls inside (no TF32 in cuBLAS matmuls or cuDNN
    convolutions: torch's default lets cuDNN use TF32, ~1e-3 from the CPU's fp32, issue 26), and
    `benchmark` (when given) as cuDNN's autotuner setting; the caller's settings are restored after,
    as Synthesizer runs inside other programs. These are process-wide switches: another thread's
    CUDA work while a call is inside sees them too. On a CPU they change nothing."""
    switches = _tf32_switches()
    saved = [getattr(obj, name) for obj, name, _ in switches]
    saved_benchmark = torch.backends.cudnn.benchmark
    try:
        for obj, name, value in switches:
            setattr(obj, name, value)
        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark
        yield
    finally:
        for (obj, name, _), value in zip(switches, saved):
            setattr(obj, name, value)
        torch.backends.cudnn.benchmark = saved_benchmark


# -- static stages: a CUDA graph, or an eager stand-in with the same buffer rules ---------------
@dataclass
class StaticStage:
    """One stage for one shape: it reads `inputs` and overwrites `outputs` in place at each
    run(), so a caller copies into the inputs and out of the outputs before the next run."""

    inputs: list[Tensor]
    outputs: tuple[Tensor, ...]
    replay: Callable[[], None]
    runs: int = 0

    def run(self) -> tuple[Tensor, ...]:
        self.replay()
        self.runs += 1
        return self.outputs


StageFn = Callable[..., tuple[Tensor, ...]]
Capture = Callable[[StageFn, list[Tensor]], StaticStage]


def eager_capture(fn: StageFn, inputs: list[Tensor]) -> StaticStage:
    """The stage run eagerly, its results copied into fixed outputs: a CUDA graph's buffer
    semantics on any device, so the runner's data flow is tested without a GPU."""
    outputs = tuple(t.clone() for t in fn(*inputs))

    def replay() -> None:
        for held, new in zip(outputs, fn(*inputs)):
            held.copy_(new)

    return StaticStage(inputs, outputs, replay)


class CudaGraphCapture:
    """torch.cuda.graph capture, after warm-up runs on a side stream (PyTorch's recipe), every
    graph in one memory pool: they are replayed one at a time on one stream, never concurrently."""

    def __init__(self, device: torch.device, warmup: int = 2):
        self.device, self.warmup = device, warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: list[Any] = []

    def __call__(self, fn: StageFn, inputs: list[Tensor]) -> StaticStage:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # also where torch.compile compiles, cuDNN picks algorithms
                fn(*inputs)
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = tuple(fn(*inputs))
        self.graphs.append(graph)
        return StaticStage(inputs, outputs, graph.replay)


class GraphCache:
    """Stages captured once per key (stage, batch, height, width) and replayed afterwards."""

    def __init__(self, capture: Capture):
        self.capture = capture
        self.stages: dict[tuple, StaticStage] = {}

    def get(self, key: tuple, fn: StageFn, make_inputs: Callable[[], list[Tensor]]) -> StaticStage:
        stage = self.stages.get(key)
        if stage is None:
            stage = self.stages[key] = self.capture(fn, make_inputs())
        return stage


# -- host <-> device ----------------------------------------------------------------------------
class HostResult:
    """A device->host copy that may still be queued; get() waits for it once and keeps the array."""

    def __init__(self, host: Tensor, ready: Any | None):
        self._host, self._ready, self._value = host, ready, None

    def get(self) -> np.ndarray:
        if self._value is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._value = self._host.numpy().copy()  # the slot is reused two downloads later
        return self._value


class PlainIO:
    """Copies on the calling thread: the CPU (tests) — every copy is done when it returns."""

    def upload(self, array: np.ndarray, into: Tensor) -> None:
        into.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))

    def download(self, tensor: Tensor) -> HostResult:
        return HostResult(tensor.detach().to("cpu", copy=True), None)


@dataclass
class _Slot:
    host: Tensor
    device: Tensor | None = None
    copied: Any = None                     # event: the copy that used this slot is done
    consumed: Any = None                   # event: the device slot was read on the compute stream
    result: HostResult | None = None


@dataclass
class _Ring:
    slots: list[_Slot] = field(default_factory=list)
    turn: int = 0


#: Upload slots per shape: upload j reuses the slot of upload j - UPLOAD_SLOTS, so the host waits
#: only for that copy, whose side-stream copy waited for the GPU to read upload j - 2 * UPLOAD_SLOTS.
#: With 3 sources per batch (a TSF task has at most 3), 4 slots let a caller queue batch k+1
#: whole while the GPU still works on batch k.
UPLOAD_SLOTS = 4


class PinnedIO:
    """Pinned host slots per shape (UPLOAD_SLOTS for uploads, two for downloads) and a side stream
    for uploads: the host fills one slot while the copies from the others, and the GPU's work on
    earlier calls, are still queued. `streams` (tests): a stand-in for torch.cuda's Stream, Event,
    current_stream and stream(), with plain host memory, to check what waits for what on the CPU."""

    def __init__(self, device: torch.device, streams: Any = None, upload_slots: int = UPLOAD_SLOTS):
        self.device, self.cuda, self.pinned = device, streams or torch.cuda, streams is None
        self.compute = self.cuda.current_stream(device)
        self.side = self.cuda.Stream(device)
        self.depth = {"up": upload_slots, "down": 2}
        self._rings: dict[tuple, _Ring] = {}

    def _slot(self, kind: str, shape: tuple[int, ...], with_device: bool) -> _Slot:
        ring = self._rings.setdefault((kind, shape), _Ring())
        if len(ring.slots) < self.depth[kind]:
            ring.slots.append(_Slot(torch.empty(shape, pin_memory=self.pinned),
                                    torch.empty(shape, device=self.device) if with_device else None,
                                    self.cuda.Event(), self.cuda.Event()))
        slot = ring.slots[ring.turn]
        ring.turn = (ring.turn + 1) % self.depth[kind]
        return slot

    def upload(self, array: np.ndarray, into: Tensor) -> None:
        slot = self._slot("up", tuple(array.shape), with_device=True)
        slot.copied.synchronize()  # the host may refill the pinned slot once its last copy is done
        slot.host.numpy()[...] = array
        self.side.wait_event(slot.consumed)  # (an event never recorded is no wait)
        with self.cuda.stream(self.side):
            slot.device.copy_(slot.host, non_blocking=True)
            slot.copied.record(self.side)
        self.compute.wait_event(slot.copied)
        into.copy_(slot.device)  # device to device, into the stage's static (channels-last) input
        slot.consumed.record(self.compute)

    def download(self, tensor: Tensor) -> HostResult:
        """Queued on the compute stream right after the stage, so the next replay cannot overwrite
        `tensor` before it is copied; the host waits only when it asks for the array."""
        slot = self._slot("down", tuple(tensor.shape), with_device=False)
        if slot.result is not None:
            slot.result.get()  # an earlier result from this slot nobody read yet: keep it first
        slot.host.copy_(tensor, non_blocking=True)
        slot.copied.record(self.compute)
        slot.result = HostResult(slot.host, slot.copied)
        return slot.result


@dataclass
class DecodedImages:
    """Decoder output of a StagedRunner: the images on the device and their middle channel,
    already queued for the host."""

    tensor: Tensor                # (N, 3, H, W) float32
    middle: HostResult            # (rows of) the (N or 2N, H, W) middle channel
    rows: slice

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


def _tuned(stage: Callable) -> Callable:
    """A runner stage inside :func:`cuda_math`, cuDNN's autotuner on: the runner's shapes are
    static per captured stage, so each convolution's algorithm is timed once (at the warm-up before
    capture, PyTorch's recipe) and kept; the caller's autotuner setting is restored after."""
    @functools.wraps(stage)
    def run(self, *args, **kwargs):
        with cuda_math(benchmark=True):
            return stage(self, *args, **kwargs)
    return run


class StagedRunner:
    """encode / fuse / decode as static stages on one device (see the module docstring)."""

    def __init__(self, model: TSFSeq2Seq, device: torch.device, *, precision: str, capture: Capture,
                 io: PlainIO | PinnedIO, channels_last: bool, compile: bool = False):
        self.model, self.device, self.precision = model, device, precision
        self.channels_last, self.io = channels_last, io
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.cache = GraphCache(capture)
        self.middle = model.config.in_channels // 2
        self._codes: dict[bytes, Tensor] = {}
        self._omega: dict[bytes, np.ndarray] = {}
        self._cache_casts = not isinstance(capture, CudaGraphCapture)
        wrap = torch.compile if compile else (lambda fn: fn)
        self._enc, self._fus, self._dec = wrap(self._encode_fn), wrap(self._fuse_fn), wrap(self._decode_fn)

    def _autocast(self):
        return autocast(self.device.type, self.precision, cache=self._cache_casts)

    def _encode_fn(self, x: Tensor) -> tuple[Tensor, ...]:
        with self._autocast():
            return (self.model.encoder(x),)

    def _fuse_fn(self, stacked: Tensor, code: Tensor) -> tuple[Tensor, ...]:
        with self._autocast():
            return tuple(self.model.fusion(stacked, code))

    def _decode_fn(self, x: Tensor, code: Tensor) -> tuple[Tensor, ...]:
        with self._autocast():
            image = self.model.decoder(x, code).float()
        return image, image[:, self.middle].contiguous()

    def _empty(self, shape: tuple[int, ...], dtype=torch.float32) -> Tensor:
        held = torch.zeros(shape, dtype=dtype, device=self.device)
        return held.contiguous(memory_format=self.format) if held.dim() == 4 else held

    def code(self, array: np.ndarray) -> Tensor:
        """A code on the device, made once per value (a pageable copy would wait for the GPU)."""
        key = array.tobytes()
        if key not in self._codes:
            self._codes[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)
        return self._codes[key]

    @torch.inference_mode()
    @_tuned
    def encode(self, images: np.ndarray) -> Tensor:
        n, c, h, w = images.shape
        stage = self.cache.get(("encode", n, h, w), self._enc, lambda: [self._empty((n, c, h, w))])
        self.io.upload(images, stage.inputs[0])
        return stage.run()[0].clone()  # the static output is overwritten by the next source's run

    @torch.inference_mode()
    @_tuned
    def fuse(self, features: Mapping[int, Tensor], task_code: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
        some = next(iter(features.values()))
        n, c, h, w = some.shape
        slots = self.model.config.n_sequences

        def stacked() -> Tensor:  # (n, S, C, h, w) whose flatten(1, 2) is channels-last
            if not self.channels_last:
                return torch.zeros((n, slots, c, h, w), dtype=some.dtype, device=self.device)
            return torch.zeros((n, h, w, slots, c), dtype=some.dtype, device=self.device).permute(0, 3, 4, 1, 2)

        stage = self.cache.get(("fuse", n, h, w), self._fus, lambda: [stacked(), self._empty((1, task_code.shape[1]))])
        held, code = stage.inputs
        for index in range(slots):
            held[:, index].copy_(features[index]) if index in features else held[:, index].zero_()
        code.copy_(self.code(task_code))
        fused, fused_avg, omega = stage.run()
        key = task_code.tobytes()
        if key not in self._omega:  # ω depends on the task code only: one wait per task, not per batch
            self._omega[key] = omega.float().cpu().numpy()
        return fused.clone(), fused_avg.clone(), self._omega[key].copy()

    @torch.inference_mode()
    @_tuned
    def decode(self, features: Tensor, target_code: np.ndarray, features_avg: Tensor | None):
        n, c, h, w = features.shape
        total = n if features_avg is None else 2 * n
        stage = self.cache.get(("decode", total, h, w), self._dec,
                               lambda: [self._empty((total, c, h, w), features.dtype),
                                        self._empty((1, target_code.shape[1]))])
        x, code = stage.inputs
        x[:n].copy_(features)
        if features_avg is not None:
            x[n:].copy_(features_avg)
        code.copy_(self.code(target_code))
        image, middle = stage.run()
        image, host = image.clone(), self.io.download(middle)
        first = DecodedImages(image[:n], host, slice(0, n))
        return first, None if features_avg is None else DecodedImages(image[n:], host, slice(n, total))


def prepared(model: TSFSeq2Seq, device: torch.device, channels_last: bool) -> TSFSeq2Seq:
    """A copy of `model` for StagedRunner: on `device`, its 4-D weights channels-last (HyperConv's
    5-D tables have no such layout), and every ConvLSTM cell's first-step kernels precomputed
    (exact: the same slices of the same weights), as computing them in a stage would copy an
    index tensor from the host during a CUDA graph capture."""
    model = copy.deepcopy(model).to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=memory_format)
    for module in model.modules():
        if isinstance(module, ConvLSTMCell):
            weight, bias = (t.detach().clone() for t in module.first_step_kernels())
            weight = weight.contiguous(memory_format=memory_format)
            module.first_step_kernels = lambda w=weight, b=bias: (w, b)
    return model
