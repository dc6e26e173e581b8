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

from ..model.config import ModelConfig


class Backend(ABC):
    """encode / fuse / decode on batches, with the tensor contracts of DESIGN.md §5."""

    name: ClassVar[str]
    #: Slices per batch when the caller does not say. On CPU large batches are slower
    #: per slice (activations of 240² slices fall out of cache), on GPUs faster.
    preferred_batch_size: int = 8

    def __init__(self, config: ModelConfig, has_fusion: bool, model_id: str):
        self.config = config
        self.has_fusion = has_fusion
        self.model_id = model_id

    @abstractmethod
    def encode(self, images: np.ndarray) -> Any:
        """(N, 3, H, W) float32 in [-1, 1] -> features (N, C, H/4, W/4)."""

    @abstractmethod
    def fuse(self, features: Mapping[int, Any], task_code: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """Per-source features (missing sequences absent) + task code (1, 8)
        -> (fused, fused_avg, ω (4,) as numpy)."""

    @abstractmethod
    def decode(self, features: Any, target_code: np.ndarray, features_avg: Any | None = None) -> tuple[Any, Any | None]:
        """Features + target code (1, 64) -> image (N, 3, H, W); with `features_avg`,
        both are decoded as one batch of 2N (for TSEM) and both images returned."""

    @abstractmethod
    def to_numpy(self, array: Any) -> np.ndarray:
        """A stage output as a float32 numpy array on the host."""

    def describe(self) -> str:
        """Runtime and device, for reports."""
        return self.name

    def close(self) -> None:
        """Release runtime resources (sessions, engines, device memory)."""
