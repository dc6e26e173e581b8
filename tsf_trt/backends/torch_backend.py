"""PyTorch: runs anywhere torch does, keeps the authors' way of running for measurement, and is
the GPU path for machines where TensorRT cannot be installed.

`mode="fast"` (default): batched slices, ConvLSTMs folded for t = 1, TSEM's two
decoder passes as one batch of 2N. `mode="reference"`: what the authors' scripts do
with the same weights — the full ConvLSTM cell, one slice per call, the two decoder
passes run separately — so that benchmarks can report every figure as a ratio to it.

On CUDA in fast mode the stages run through :class:`StagedRunner`: each stage captured once
per (batch, height, width) as a CUDA graph with static buffers and replayed; channels-last;
inputs staged through pinned host slots and copied on a side stream while the GPU still works
on the previous call; the decoder's middle channel copied to the host on its own as soon as
the decoder is queued (``to_numpy(images, channel=1)`` returns it). Written from PyTorch's
CUDA-graph and stream documentation and tested here on CPU through the same runner with an
eager stand-in for the capture; ``bench/gpu_check.py`` runs it on a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import sequences
from ..errors import TsfError
from ..model import TSFSeq2Seq
from ..model.checkpoint import weights_id
from ..model.config import ModelConfig
from ..model.layers import ConvLSTMCell
from .base import Backend, activation_bytes

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Batch from free GPU memory: a share of what is free, over the live maps of one slice (a conv's
# input, its padded copy and output, InstanceNorm's fp32 copy and output, the residual: about 6
# of the largest activation), twice for TSEM's 2N decoder batch. A first estimate, to be checked
# on a GPU (bench/gpu_check.py measures batch sizes side by side).
GPU_FREE_SHARE = 0.5
GPU_LIVE_MAPS = 6
GPU_MAX_BATCH = 64


def batch_from_free_memory(free_bytes: int, cfg: ModelConfig, height: int, width: int) -> int:
    """Slices per batch that fit GPU_FREE_SHARE of `free_bytes` (see the constants above)."""
    per_slice = 2 * GPU_LIVE_MAPS * activation_bytes(cfg, height, width)
    return max(1, min(GPU_MAX_BATCH, int(free_bytes * GPU_FREE_SHARE) // per_slice))


def autocast(device_type: str, precision: str, *, cache: bool = True):
    """The one precision rule on CPU and GPU: autocast to bf16/fp16 (or nothing); InstanceNorm and
    ω stay fp32 by the model's own code (layers.InstanceNorm, fusion.masked_weights). A CUDA graph
    capture needs autocast's weight cache off (its casts must be part of the graph)."""
    dtype = AUTOCAST[precision]
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=cache)


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


class PinnedIO:
    """Two pinned host slots per shape and a side stream for uploads: the host fills one slot
    while the copy from the other, and the GPU's work on the previous call, are still queued."""

    def __init__(self, device: torch.device):
        self.device = device
        self.compute = torch.cuda.current_stream(device)
        self.side = torch.cuda.Stream(device)
        self._rings: dict[tuple, _Ring] = {}

    def _slot(self, kind: str, shape: tuple[int, ...], with_device: bool) -> _Slot:
        ring = self._rings.setdefault((kind, shape), _Ring())
        if len(ring.slots) < 2:
            ring.slots.append(_Slot(torch.empty(shape, pin_memory=True),
                                    torch.empty(shape, device=self.device) if with_device else None,
                                    torch.cuda.Event(), torch.cuda.Event()))
        slot = ring.slots[ring.turn]
        ring.turn = (ring.turn + 1) % 2
        return slot

    def upload(self, array: np.ndarray, into: Tensor) -> None:
        slot = self._slot("up", tuple(array.shape), with_device=True)
        slot.copied.synchronize()  # the host may refill the pinned slot once its last copy is done
        slot.host.numpy()[...] = array
        self.side.wait_event(slot.consumed)  # (an event never recorded is no wait)
        with torch.cuda.stream(self.side):
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
    def encode(self, images: np.ndarray) -> Tensor:
        n, c, h, w = images.shape
        stage = self.cache.get(("encode", n, h, w), self._enc, lambda: [self._empty((n, c, h, w))])
        self.io.upload(images, stage.inputs[0])
        return stage.run()[0].clone()  # the static output is overwritten by the next source's run

    @torch.inference_mode()
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


class TorchBackend(Backend):
    # Half ONNX Runtime's budget: torch's CPU convolutions lose more to cache misses on large
    # batches. Demo model at 240² (2 cores): 111 ms/slice at batch 2, 121 at 4, 154 at 9,
    # while ONNX Runtime is best at 9 (97 ms). 16 MiB gives 4 slices there, 1 for the paper config.
    cpu_batch_bytes = 16 << 20

    def __init__(self, model: TSFSeq2Seq, device: str = "cpu", threads: int | None = None, mode: str = "fast",
                 precision: str = "fp32", model_id: str | None = None, *, compile: bool = False,
                 graphs: bool | None = None, channels_last: bool | None = None):
        """`graphs` and `channels_last` (CUDA, fast mode; default on there): False for both runs
        CUDA the plain eager way, the baseline bench compares against. `compile`: torch.compile
        each stage (compiled at the first batch of each shape)."""
        on_gpu = device.startswith("cuda")
        if on_gpu and not torch.cuda.is_available():
            raise TsfError("--device cuda: this PyTorch has no CUDA GPU available (use --device cpu)")
        if mode not in ("fast", "reference"):
            raise TsfError(f"torch backend mode must be 'fast' or 'reference', got '{mode}'")
        if not on_gpu and (precision == "fp16" or graphs or channels_last):
            what = "--precision fp16" if precision == "fp16" else "CUDA graphs and channels-last"
            raise TsfError(f"{what}: CUDA only in the torch backend (use --device cuda, or bf16/fp32 on the CPU)")
        if on_gpu and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise TsfError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 (use fp16)")
        super().__init__(model.config, model.has_fusion, weights_id(model) if model_id is None else model_id,
                         name="reference" if mode == "reference" else "torch", precision=precision)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.mode = mode
        self.on_gpu = on_gpu
        self.compiled = compile
        # The caller's model is never moved or changed on CUDA (a copy); on CPU it is used as is.
        self.model = (copy.deepcopy(model) if on_gpu else model).to(self.device).eval()
        if mode == "reference":
            self.model = self.model.unfolded()  # a copy: the caller's model is untouched
        self.runner: StagedRunner | None = None
        graphs = on_gpu and mode == "fast" if graphs is None else graphs
        channels_last = graphs if channels_last is None else channels_last
        if on_gpu and mode == "fast" and (graphs or channels_last):
            self.runner = StagedRunner(prepared(self.model, self.device, channels_last), self.device,
                                       precision=precision, channels_last=channels_last, compile=compile,
                                       capture=CudaGraphCapture(self.device) if graphs else eager_capture,
                                       io=PinnedIO(self.device) if graphs else PlainIO())
            self.model = self.runner.model  # one copy on the GPU
        wrap = torch.compile if compile and self.runner is None else (lambda module: module)
        self._encoder, self._decoder = wrap(self.model.encoder), wrap(self.model.decoder)
        self._fusion = wrap(self.model.fusion) if self.model.fusion is not None else None

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _autocast(self):
        return autocast(self.device.type, self.precision)

    def preferred_batch_size(self, height: int, width: int) -> int:
        """On CUDA, from the memory free now (with what torch's allocator holds unused)."""
        if not self.on_gpu:
            return super().preferred_batch_size(height, width)
        free, _ = torch.cuda.mem_get_info(self.device)
        unused = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return batch_from_free_memory(free + unused, self.config, height, width)

    @torch.inference_mode()
    def _encode(self, images: np.ndarray) -> Any:
        if self.runner is not None:
            return self.runner.encode(images)
        x = self._tensor(images)
        with self._autocast():
            if self.mode == "reference":
                return torch.cat([self._encoder(x[i : i + 1]) for i in range(len(x))])
            return self._encoder(x)

    @torch.inference_mode()
    def _fuse(self, features: Mapping[int, torch.Tensor], task_code: np.ndarray):
        if self.runner is not None:
            return self.runner.fuse(features, task_code)
        stacked, code = self.model.stack_features(features), self._tensor(task_code)
        with self._autocast():
            if self.mode == "reference":
                parts = [self._fusion(stacked[i : i + 1], code) for i in range(len(stacked))]
                fused, fused_avg = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                weights = parts[0][2]
            else:
                fused, fused_avg, weights = self._fusion(stacked, code)
        return fused, fused_avg, weights.float().cpu().numpy()

    @torch.inference_mode()
    def _decode(self, features: torch.Tensor, target: int, features_avg: torch.Tensor | None):
        code = sequences.target_code(target, self.config.style_dim)
        if self.runner is not None:
            return self.runner.decode(features, code, features_avg)
        with self._autocast():
            return self._decode_code(features, self._tensor(code), features_avg)

    def _decode_code(self, features: torch.Tensor, code: torch.Tensor, features_avg: torch.Tensor | None):
        if self.mode == "reference":
            def one_by_one(feats: torch.Tensor) -> torch.Tensor:
                return torch.cat([self._decoder(feats[i : i + 1], code) for i in range(len(feats))])

            return one_by_one(features), None if features_avg is None else one_by_one(features_avg)
        if features_avg is None:
            return self._decoder(features, code), None
        both = self._decoder(torch.cat([features, features_avg]), code)
        image, image_avg = both.chunk(2)
        return image, image_avg

    def to_numpy(self, array: Any, channel: int | None = None) -> np.ndarray:
        """A stage output on the host; `channel` (of a decoder output): that channel alone, (N, H, W)
        — on CUDA the middle one was already queued for the host when the decoder was."""
        if isinstance(array, DecodedImages):
            if channel == self.runner.middle:
                return array.middle.get()[array.rows]
            array = array.tensor
        if channel is not None:
            array = array[:, channel]
        return array.float().cpu().numpy()

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        extra = (", reference mode" if self.mode == "reference" else "") + \
            (f", {self.precision}" if self.precision != "fp32" else "")
        if self.runner is not None:
            extra += (", CUDA graphs" if isinstance(self.runner.cache.capture, CudaGraphCapture) else "") + \
                (", channels-last" if self.runner.channels_last else "")
        extra += ", torch.compile" if self.compiled else ""
        return f"torch {torch.__version__} ({where}{extra})"
