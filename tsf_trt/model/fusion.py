"""Task-specific fusion (paper §2.1): a weighted average whose weights ω explain each
input's contribution (Eq. 1–3), refined by a task-conditioned CBAM (Eq. 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsf_trt.model.config import ModelConfig
from tsf_trt.model.layers import HyperConv, act, make_norm

EPS = 1e-5  # Eq. 1: keeps the normaliser of Eq. 2 away from zero


class ChannelAttention(nn.Module):
    """σ(MLP(avgpool x) + MLP(maxpool x)), the MLP two 1×1 hyperconvs of the task code."""

    def __init__(self, channels: int, reduction: int, code_dim: int, weight_dim: int):
        super().__init__()
        hidden = channels // reduction
        self.fc1 = HyperConv(code_dim, channels, hidden, 1, weight_dim)
        self.fc2 = HyperConv(code_dim, hidden, channels, 1, weight_dim)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        def mlp(v: Tensor) -> Tensor:
            return self.fc2(act(self.fc1(v, code)), code)

        return torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """σ(conv7×7([mean_c x, max_c x])), a bias-free hyperconv with zero padding."""

    def __init__(self, code_dim: int, weight_dim: int, kernel: int = 7):
        super().__init__()
        self.conv = HyperConv(code_dim, 2, 1, kernel, weight_dim, bias=False, padding_mode="zeros")

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled, code))


class TaskAttention(nn.Module):
    """One layer of the attention branch: hyperconv + act, then channel and spatial attention."""

    def __init__(self, c_in: int, c_out: int, kernel: int, cfg: ModelConfig):
        super().__init__()
        code_dim, wd = cfg.task_dim, cfg.fusion_weight_dim
        self.conv = HyperConv(code_dim, c_in, c_out, kernel, wd)
        self.norm = make_norm(cfg.fusion_norm, c_out)
        self.channel = ChannelAttention(c_out, cfg.attention_reduction, code_dim, wd)
        self.spatial = SpatialAttention(code_dim, wd)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        x = act(self.norm(self.conv(x, code)))
        x = self.channel(x, code) * x
        return self.spatial(x, code) * x


class TaskSpecificFusion(nn.Module):
    """features (N, 4, C, h, w) + task code (1, 8) -> fused, fused_avg (N, C, h, w), ω (4,).

    Missing sequences are zero features and have ω = 0; with one source ω = 1 for it.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_sequences = cfg.n_sequences
        self.weight_fc = nn.Linear(cfg.task_dim, cfg.n_sequences)
        chans = (cfg.n_sequences * cfg.features, *cfg.fusion_channels)
        self.attention = nn.ModuleList(
            TaskAttention(c_in, c_out, k, cfg)
            for c_in, c_out, k in zip(chans[:-1], chans[1:], cfg.fusion_kernels)
        )

    def masked_weights(self, task_code: Tensor) -> Tensor:
        """m ⊙ ω₀ (Eq. 1 and the numerator of Eq. 2), shape (1, 4)."""
        with torch.autocast(task_code.device.type, enabled=False):  # ω is reported: always fp32
            code = task_code.float()
            omega0 = torch.softmax(self.weight_fc(code), dim=1) + EPS     # Eq. 1
            return code[:, : self.n_sequences] * omega0

    def forward(self, features: Tensor, task_code: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        masked = self.masked_weights(task_code)
        total = masked.sum()
        omega = (masked / total).view(self.n_sequences)                  # Eq. 2
        # Eq. 3, normalised after the sum as the reference does: bit-identical to it.
        fused_avg = (masked.view(1, -1, 1, 1, 1) * features).sum(dim=1) / total
        refined = features.flatten(1, 2)                                  # [F_0 … F_3] by index
        for layer in self.attention:
            refined = layer(refined, task_code)
        return fused_avg + refined, fused_avg, omega                      # Eq. 4
