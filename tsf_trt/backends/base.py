"""The one interface every runtime implements (like Polygraphy's runners).

The pipeline hands numpy arrays in and takes numpy arrays out; between the three
stages a backend keeps data in whatever form is cheapest for it (a torch tensor on
the GPU, a device buffer), so stage outputs never round-trip through the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from tsf_trt.backends.names import check_precision
from tsf_trt.errors import TsfError
from tsf_trt.model.config import ModelConfig

CPU_BATCH_BYTES = 32 << 20
GPU_BATCH = 16


def activation_bytes(cfg: ModelConfig, height: int, width: int) -> int:
    """fp32 bytes of the largest activation of one slice: the full-resolution stem or
    last decoder stage, or the ConvLSTM gates at a quarter of the resolution."""
    full = height * width
    quarter = full // (cfg.downsample ** 2)
    return 4 * max(cfg.enc_channels[0] * full, 3 * cfg.features * quarter, cfg.dec_channels[-2] * full)


class Backend(ABC):
    """encode / fuse / decode on batches, with the tensor contracts of docs/architecture.md.

    The public methods check what every runtime shares (the backend is open, it has a
    fusion stage, the target is a sequence) once, here; a runtime implements the
    underscored ones. Use as a context manager, or call close(): both release it once.
    """

    #: Runs on a GPU: large batches pay there, while on a CPU they fall out of cache.
    on_gpu: bool = False
    #: CPU batch budget (bytes of a batch's largest activation): see preferred_batch_size.
    cpu_batch_bytes: ClassVar[int] = CPU_BATCH_BYTES

    def __init__(self, config: ModelConfig, has_fusion: bool, model_id: str, *, name: str,
                 precision: str = "fp32"):
        """`name` is the runtime as --backend spells it (one class may serve several: ort,
        ort-cuda, ort-trt); `precision` is checked against the table of what it takes."""
        check_precision(name, precision)
        self.name = name
        self.precision = precision
        #: What really runs (a runtime may fall back: OpenVINO runs bf16 as fp32 without native bf16).
        self.runtime_precision = precision
        #: Why this precision (create_backend sets it: asked for, or what --precision auto found).
        self.precision_reason = "asked for (--precision)"
        self.config = config
        self.has_fusion = has_fusion
        self.model_id = model_id
        self._closed = False

    def encode(self, images: np.ndarray) -> Any:
        """(N, 3, H, W) float32 in [-1, 1] -> features (N, C, H/4, W/4)."""
        self._check_open()
        return self._encode(images)

    def fuse(self, features: Mapping[int, Any], task_code: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """Per-source features (missing sequences absent) + task code (1, 8)
        -> (fused, fused_avg, ω (4,) as numpy)."""
        self._check_open()
        if not self.has_fusion:
            raise TsfError("this model has no fusion stage (Seq2Seq only): it cannot fuse inputs")
        return self._fuse(features, task_code)

    def decode(self, features: Any, target: int, features_avg: Any | None = None) -> tuple[Any, Any | None]:
        """Features -> image (N, 3, H, W) of sequence `target` (an index); with `features_avg`,
        both are decoded as one batch of 2N (for TSEM) and both images returned."""
        self._check_open()
        if not 0 <= int(target) < self.config.n_sequences:
            raise TsfError(f"target {target} is not a sequence index (0..{self.config.n_sequences - 1})")
        return self._decode(features, int(target), features_avg)

    @abstractmethod
    def _encode(self, images: np.ndarray) -> Any:
        """encode() on an open backend."""

    @abstractmethod
    def _fuse(self, features: Mapping[int, Any], task_code: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """fuse() on an open backend that has a fusion stage."""

    @abstractmethod
    def _decode(self, features: Any, target: int, features_avg: Any | None) -> tuple[Any, Any | None]:
        """decode() with `target` a valid sequence index; the runtime builds the target
        code itself where its graph takes one (:func:`tsf_trt.sequences.target_code`)."""

    @abstractmethod
    def to_numpy(self, array: Any, channel: int | None = None) -> np.ndarray:
        """A stage output as a float32 numpy array on the host; with `channel` (of a decoder
        output) that channel alone, (N, H, W): the pipeline keeps only the middle one, so a
        GPU backend need not copy the other two back."""

    def _check_open(self) -> None:
        if self._closed:
            raise TsfError(f"the {self.name} backend was closed")

    def preferred_batch_size(self, height: int, width: int) -> int:
        """Slices per batch when the caller does not say.

        On CPU, as many as keep a batch's largest activation within ``cpu_batch_bytes``:
        measured (2 cores, paper config, 240²) torch's encoder takes 253 ms/slice at
        batch 1-2 and 318 ms at 8, while the small config only runs well at 8-16.
        """
        if self.on_gpu:
            return GPU_BATCH
        return max(1, min(GPU_BATCH, self.cpu_batch_bytes // activation_bytes(self.config, height, width)))

    def describe(self) -> str:
        """Runtime and device, for reports."""
        return self.name

    def close(self) -> None:
        """Release runtime resources (sessions, engines, device memory), once."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """What a runtime frees on close."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
