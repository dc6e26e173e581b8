"""Decoder G: features + target code -> image, every kernel a HyperConv of the code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tsf_trt.model.config import ModelConfig
from tsf_trt.model.layers import ConvLSTM, HyperConv, HyperResBlock, act, make_norm


class UpBlock(nn.Module):
    """Bilinear ×2 upsampling, reflection-padded hyperconv, norm, LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, cfg: ModelConfig):
        super().__init__()
        self.conv = HyperConv(cfg.style_dim, c_in, c_out, kernel, cfg.decoder_weight_dim)
        self.norm = make_norm(cfg.norm, c_out)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return act(self.norm(self.conv(x, style)))


class Decoder(nn.Module):
    """features (N, C, h, w) + target code (1, 64) -> image (N, 3, 4h, 4w) in [-1, 1].

    The code goes through style_fc + LeakyReLU once; the result s' drives every
    hyperconv. The features pass a ConvLSTM first (one step for a single output frame).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.style_fc = nn.Linear(cfg.style_dim, cfg.style_dim)
        self.lstm = ConvLSTM(cfg.features, cfg.lstm_layers)
        self.res = nn.ModuleList(
            HyperResBlock(cfg.features, cfg.style_dim, cfg.decoder_weight_dim, cfg.norm)
            for _ in range(cfg.dec_res_blocks)
        )
        chans = (cfg.features, *cfg.dec_channels)
        self.ups = nn.ModuleList(
            UpBlock(c_in, c_out, k, cfg)
            for c_in, c_out, k in zip(chans[:-2], chans[1:-1], cfg.dec_kernels[:-1])
        )
        self.head = HyperConv(cfg.style_dim, chans[-2], chans[-1], cfg.dec_kernels[-1], cfg.decoder_weight_dim)

    def style(self, target_code: Tensor) -> Tensor:
        return act(self.style_fc(target_code))

    def forward(self, features: Tensor, target_code: Tensor) -> Tensor:
        return self.decode_series(features, target_code, frames=1)[:, 0]

    def decode_series(self, features: Tensor, target_code: Tensor, frames: int) -> Tensor:
        """(N, C, h, w) -> (N, frames, 3, H, W): the reference tiles the features over time."""
        n = features.shape[0]
        x = self.lstm(features.unsqueeze(1).expand(-1, frames, -1, -1, -1)).flatten(0, 1)
        return self.render(x, self.style(target_code)).unflatten(0, (n, frames))

    def render(self, x: Tensor, style: Tensor | None) -> Tensor:
        """ConvLSTM output (N, C, h, w) -> image: residual blocks, upsampling, 7×7 head, tanh.
        `style` is None when every hyperconv has been baked for one target (export)."""
        for block in self.res:
            x = block(x, style)
        for up in self.ups:
            x = up(x, style)
        return self.head(x, style).tanh()
