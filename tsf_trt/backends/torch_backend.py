"""PyTorch eager: the reference backend, and the one that runs anywhere torch does."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import TsfError
from ..model import TSFSeq2Seq
from .base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: TSFSeq2Seq, device: str = "cpu", threads: int | None = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TsfError("--device cuda: this PyTorch has no CUDA GPU available (use --device cpu)")
        if threads:
            torch.set_num_threads(threads)
        super().__init__(model.config, model.has_fusion, getattr(model, "id", ""))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        return self.model.encoder(self._tensor(images))

    @torch.inference_mode()
    def fuse(self, features: Mapping[int, torch.Tensor], task_code: np.ndarray):
        if self.model.fusion is None:
            raise TsfError("this model has no TSF stage (Seq2Seq only): it cannot fuse inputs")
        fused, fused_avg, weights = self.model.fusion(self.model.stack_features(features), self._tensor(task_code))
        return fused, fused_avg, weights.cpu().numpy()

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, target_code: np.ndarray, features_avg: torch.Tensor | None = None):
        code = self._tensor(target_code)
        if features_avg is None:
            return self.model.decoder(features, code), None
        both = self.model.decoder(torch.cat([features, features_avg]), code)
        image, image_avg = both.chunk(2)
        return image, image_avg

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.float().cpu().numpy()

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        return f"torch {torch.__version__} ({where})"
