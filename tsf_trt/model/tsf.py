"""TSF-Seq2Seq: encoder E, task-specific fusion, decoder G (paper Fig. 1).

The three submodules are exactly the three deployable graphs (docs/architecture.md, "Tensor contracts"); this
class only adds what ties them together for PyTorch users and tests.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tsf_trt import sequences
from tsf_trt.model.config import ModelConfig
from tsf_trt.model.decoder import Decoder
from tsf_trt.model.encoder import Encoder
from tsf_trt.model.fusion import TaskSpecificFusion


class Synthesis(NamedTuple):
    image: Tensor             # decoder(fused): the synthesis, (N, 3, H, W)
    image_avg: Tensor | None  # decoder(fused_avg): without attention; None for one-to-one
    weights: Tensor           # ω (4,)

    @property
    def tsem(self) -> Tensor | None:
        """Eq. 6 on the middle channel, (N, H, W): where the attention changed the result."""
        if self.image_avg is None:
            return None
        return (self.image - self.image_avg).abs()[:, 1]


class TSFSeq2Seq(nn.Module):
    """The whole network. ``fusion`` is None for a Seq2Seq-only (one-to-one) model."""

    def __init__(self, config: ModelConfig, with_fusion: bool = True):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.fusion = TaskSpecificFusion(config) if with_fusion else None

    @property
    def has_fusion(self) -> bool:
        return self.fusion is not None

    def codes(self, sources: Sequence[int], target: int) -> tuple[Tensor, Tensor]:
        """(task code (1, 8), target code (1, style_dim)) on the model's device."""
        dev = next(self.parameters()).device
        task = torch.from_numpy(sequences.task_code(sources, target)).to(dev)
        style = torch.from_numpy(sequences.target_code(target, self.config.style_dim)).to(dev)
        return task, style

    def unfolded(self) -> "TSFSeq2Seq":
        """A copy whose ConvLSTMs run the full cell from the zero state, as the authors' code
        does (the `reference` backend measures that cost); this model is unchanged."""
        full = copy.deepcopy(self)
        full.encoder.lstm = self.encoder.lstm.unfolded()
        full.decoder.lstm = self.decoder.lstm.unfolded()
        return full

    def stack_features(self, features: Mapping[int, Tensor]) -> Tensor:
        """Per-sequence features -> (N, 4, C, h, w), zeros where a sequence is missing."""
        return sequences.stack_by_index(features, self.config.n_sequences)

    def synthesize(self, images: Mapping[int, Tensor], target: int, tsem: bool = True) -> Synthesis:
        """images: sequence index -> (N, 3, H, W) in [-1, 1]; any non-empty subset.

        One source on a Seq2Seq-only model is plain one-to-one synthesis (ω = 1, no TSEM).
        """
        sources = sorted(images)
        task_code, target_code = self.codes(sources, target)
        features = {i: self.encoder(images[i]) for i in sources}
        if self.fusion is None:
            if len(sources) != 1:
                raise ValueError("a Seq2Seq-only model synthesises from exactly one input")
            weights = task_code[0, : self.config.n_sequences].clone()
            return Synthesis(self.decoder(features[sources[0]], target_code), None, weights)
        fused, fused_avg, weights = self.fusion(self.stack_features(features), task_code)
        if not tsem:
            return Synthesis(self.decoder(fused, target_code), None, weights)
        both = self.decoder(torch.cat([fused, fused_avg]), target_code)  # one batch of 2N
        return Synthesis(*both.chunk(2), weights)
