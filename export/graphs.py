"""The deployable graphs as torch modules: what `torch.onnx.export` traces.

Each wraps the model's own submodules, so the graphs cannot drift from the model;
what changes is only how the work is laid out for deployment:

* the ConvLSTMs run one step from the zero state (t = 1), folded exactly: the
  h-half of the input channels and the forget gate are cut out of the weights
  (docs/architecture.md, "Tensor contracts"), 3/8 of the cell's convolution work;
* a decoder may be baked for one target: every HyperConv's kernel is computed once
  and stored as a constant, so the graph holds ordinary convolutions.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tsf_trt.model.decoder import Decoder
from tsf_trt.model.encoder import Encoder
from tsf_trt.model.fusion import TaskSpecificFusion
from tsf_trt.model.layers import ConvLSTM, FixedConv, HyperConv


class FoldedConvLSTM(nn.Module):
    """One step of a stacked ConvLSTM from the zero state: per layer
    c = σ(i)·tanh(g), h = σ(o)·tanh(c), the convolution over x only."""

    def __init__(self, lstm: ConvLSTM):
        super().__init__()
        self.convs = nn.ModuleList()
        for cell in lstm.cells:
            weight, bias = cell.first_step_kernels()
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=cell.conv.padding)
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            self.convs.append(conv.requires_grad_(False))

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            i, o, g = conv(x).chunk(3, dim=1)
            x = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
        return x


class UnfoldedConvLSTM(nn.Module):
    """The full cell as the authors run it for t = 1 (zero h concatenated, forget gate
    applied to a zero c): only for counting what folding saves and checking it is exact."""

    def __init__(self, lstm: ConvLSTM):
        super().__init__()
        self.lstm = lstm.unfolded()

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x.unsqueeze(1))[:, 0]


def _lstm(lstm: ConvLSTM, fold: bool) -> nn.Module:
    return FoldedConvLSTM(lstm) if fold else UnfoldedConvLSTM(lstm)


class EncoderGraph(nn.Module):
    """image (N, 3, H, W) -> features (N, C, H/4, W/4)."""

    def __init__(self, encoder: Encoder, fold: bool = True):
        super().__init__()
        self.encoder = encoder
        self.lstm = _lstm(encoder.lstm, fold)

    def forward(self, image: Tensor) -> Tensor:
        return self.lstm(self.encoder.cnn(image))


class FusionGraph(nn.Module):
    """features (N, 4, C, h, w) + task_code (1, 8) -> fused, fused_avg (N, C, h, w), weights (4,)."""

    def __init__(self, fusion: TaskSpecificFusion):
        super().__init__()
        self.fusion = fusion

    def forward(self, features: Tensor, task_code: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.fusion(features, task_code)


class DecoderGraph(nn.Module):
    """features (N, C, h, w) + target_code (1, 64) -> image (N, 3, 4h, 4w);
    the HyperConv kernels are computed from the code inside the graph."""

    def __init__(self, decoder: Decoder, fold: bool = True):
        super().__init__()
        self.decoder = decoder
        self.lstm = _lstm(decoder.lstm, fold)

    def forward(self, features: Tensor, target_code: Tensor) -> Tensor:
        return self.decoder.render(self.lstm(features), self.decoder.style(target_code))


class BakedDecoderGraph(nn.Module):
    """features (N, C, h, w) -> image, for one fixed target: every kernel a constant."""

    def __init__(self, decoder: Decoder, target_code: Tensor):
        super().__init__()
        baked = copy.deepcopy(decoder)
        style = decoder.style(target_code)
        for name, module in list(baked.named_modules()):
            if isinstance(module, HyperConv):
                parent_name, _, attr = name.rpartition(".")
                setattr(baked.get_submodule(parent_name), attr, FixedConv.from_hyper(module, style))
        del baked.style_fc  # the code is gone from this graph
        self.decoder = baked
        self.lstm = FoldedConvLSTM(decoder.lstm)

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder.render(self.lstm(features), None)
