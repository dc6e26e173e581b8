"""PyTorch: runs anywhere torch does, keeps the authors' way of running for measurement, and is
the GPU path for machines where TensorRT cannot be installed.

`mode="fast"` (default): batched slices, ConvLSTMs folded for t = 1, TSEM's two
decoder passes as one batch of 2N. `mode="reference"`: what the authors' scripts do
with the same weights — the full ConvLSTM cell, one slice per call, the two decoder
passes run separately — so that benchmarks can report every figure as a ratio to it.

On CUDA in fast mode the stages run through :class:`~tsf_trt.backends.torch_staged.StagedRunner`
(CUDA graphs, channels-last, pinned copies on a side stream: see tsf_trt/backends/torch_staged.py).
Every stage runs inside :func:`~tsf_trt.backends.torch_staged.cuda_math`: fp32 is IEEE fp32 on a GPU,
never TF32, and the caller's torch settings are restored after each call.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tsf_trt import sequences
from tsf_trt.backends.base import Backend, activation_bytes
from tsf_trt.backends.torch_staged import (CudaGraphCapture, DecodedImages, PinnedIO, PlainIO, StagedRunner,
                                           autocast, cuda_math, eager_capture, prepared)
from tsf_trt.errors import TsfError
from tsf_trt.model import TSFSeq2Seq
from tsf_trt.model.checkpoint import weights_id
from tsf_trt.model.config import ModelConfig

# Batch from free GPU memory: a share of what is free, over the live maps of one slice (a conv's
# input, its padded copy and output, InstanceNorm's fp32 copy and output, the residual: about 6
# of the largest activation), twice for TSEM's 2N decoder batch. A first estimate, to be checked
# on a GPU (scripts/gpu_check.py measures batch sizes side by side).
GPU_FREE_SHARE = 0.5
GPU_LIVE_MAPS = 6
GPU_MAX_BATCH = 64


def batch_from_free_memory(free_bytes: int, cfg: ModelConfig, height: int, width: int) -> int:
    """Slices per batch that fit GPU_FREE_SHARE of `free_bytes` (see the constants above)."""
    per_slice = 2 * GPU_LIVE_MAPS * activation_bytes(cfg, height, width)
    return max(1, min(GPU_MAX_BATCH, int(free_bytes * GPU_FREE_SHARE) // per_slice))


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
        with cuda_math(), self._autocast():
            if self.mode == "reference":
                return torch.cat([self._encoder(x[i : i + 1]) for i in range(len(x))])
            return self._encoder(x)

    @torch.inference_mode()
    def _fuse(self, features: Mapping[int, torch.Tensor], task_code: np.ndarray):
        if self.runner is not None:
            return self.runner.fuse(features, task_code)
        stacked, code = self.model.stack_features(features), self._tensor(task_code)
        with cuda_math(), self._autocast():
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
        with cuda_math(), self._autocast():
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
