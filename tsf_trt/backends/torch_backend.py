"""PyTorch eager: runs anywhere torch does, and keeps the authors' way of running for measurement.

`mode="fast"` (default): batched slices, ConvLSTMs folded for t = 1, TSEM's two
decoder passes as one batch of 2N. `mode="reference"`: what the authors' scripts do
with the same weights — the full ConvLSTM cell, one slice per call, the two decoder
passes run separately — so that benchmarks can report every figure as a ratio to it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .. import sequences
from ..errors import TsfError
from ..model import TSFSeq2Seq
from ..model.checkpoint import weights_id
from .base import Backend


class TorchBackend(Backend):
    # Half ONNX Runtime's budget: torch's CPU convolutions lose more to cache misses on large
    # batches. Demo model at 240² (2 cores): 111 ms/slice at batch 2, 121 at 4, 154 at 9,
    # while ONNX Runtime is best at 9 (97 ms). 16 MiB gives 4 slices there, 1 for the paper config.
    cpu_batch_bytes = 16 << 20

    def __init__(self, model: TSFSeq2Seq, device: str = "cpu", threads: int | None = None, mode: str = "fast",
                 precision: str = "fp32", model_id: str | None = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TsfError("--device cuda: this PyTorch has no CUDA GPU available (use --device cpu)")
        if mode not in ("fast", "reference"):
            raise TsfError(f"torch backend mode must be 'fast' or 'reference', got '{mode}'")
        super().__init__(model.config, model.has_fusion, weights_id(model) if model_id is None else model_id,
                         name="reference" if mode == "reference" else "torch", precision=precision)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mode = mode
        self.on_gpu = self.device.type == "cuda"
        if mode == "reference":
            self.model = self.model.unfolded()  # a copy: the caller's model is untouched

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _autocast(self):
        """bf16 autocast (norms and softmax stay fp32 by torch's autocast rules), or nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.inference_mode()
    def _encode(self, images: np.ndarray) -> torch.Tensor:
        x = self._tensor(images)
        with self._autocast():
            if self.mode == "reference":
                return torch.cat([self.model.encoder(x[i : i + 1]) for i in range(len(x))])
            return self.model.encoder(x)

    @torch.inference_mode()
    def _fuse(self, features: Mapping[int, torch.Tensor], task_code: np.ndarray):
        stacked, code = self.model.stack_features(features), self._tensor(task_code)
        with self._autocast():
            if self.mode == "reference":
                parts = [self.model.fusion(stacked[i : i + 1], code) for i in range(len(stacked))]
                fused, fused_avg = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                weights = parts[0][2]
            else:
                fused, fused_avg, weights = self.model.fusion(stacked, code)
        return fused, fused_avg, weights.float().cpu().numpy()

    @torch.inference_mode()
    def _decode(self, features: torch.Tensor, target: int, features_avg: torch.Tensor | None):
        code = self._tensor(sequences.target_code(target, self.config.style_dim))
        with self._autocast():
            return self._decode_code(features, code, features_avg)

    def _decode_code(self, features: torch.Tensor, code: torch.Tensor, features_avg: torch.Tensor | None):
        if self.mode == "reference":
            def one_by_one(feats: torch.Tensor) -> torch.Tensor:
                return torch.cat([self.model.decoder(feats[i : i + 1], code) for i in range(len(feats))])

            return one_by_one(features), None if features_avg is None else one_by_one(features_avg)
        if features_avg is None:
            return self.model.decoder(features, code), None
        both = self.model.decoder(torch.cat([features, features_avg]), code)
        image, image_avg = both.chunk(2)
        return image, image_avg

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.float().cpu().numpy()

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        extra = (", reference mode" if self.mode == "reference" else "") + (", bf16" if self.precision == "bf16" else "")
        return f"torch {torch.__version__} ({where}{extra})"
