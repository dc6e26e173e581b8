"""Encoder E: the Seq2Seq image encoder shared by every sequence (paper §2)."""

from __future__ import annotations

from torch import Tensor, nn

from tsf_trt.model.config import ModelConfig
from tsf_trt.model.layers import ConvLSTM, ConvNormAct, ResBlock


class Encoder(nn.Module):
    """image (N, 3, H, W) — or a time series (N, T, 3, H, W) — -> features (N, C, H/4, W/4).

    A CNN per frame, then a ConvLSTM over time and the mean of its outputs; for
    BraTS T = 1 and the ConvLSTM is one step from the zero state.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        chans = (cfg.in_channels, *cfg.enc_channels)
        self.convs = nn.ModuleList(
            ConvNormAct(c_in, c_out, k, s, cfg.norm)
            for c_in, c_out, k, s in zip(chans[:-1], chans[1:], cfg.enc_kernels, cfg.enc_strides)
        )
        self.res = nn.ModuleList(ResBlock(cfg.features, cfg.norm) for _ in range(cfg.enc_res_blocks))
        self.lstm = ConvLSTM(cfg.features, cfg.lstm_layers)

    def cnn(self, frames: Tensor) -> Tensor:
        """Per-frame features before the ConvLSTM, (N, 3, H, W) -> (N, C, h, w)."""
        x = frames
        for conv in self.convs:
            x = conv(x)
        for block in self.res:
            x = block(x)
        return x

    def forward(self, image: Tensor) -> Tensor:
        series = image if image.dim() == 5 else image.unsqueeze(1)
        n, t = series.shape[:2]
        x = self.cnn(series.flatten(0, 1)).unflatten(0, (n, t))
        return self.lstm(x).mean(dim=1)
