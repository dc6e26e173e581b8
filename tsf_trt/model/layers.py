"""Building blocks shared by the encoder, decoder and fusion.

Padding is deliberately not uniform, to match the authors' weights: reflection for
the image convolutions and hyperconvs, zeros inside the ConvLSTM and the spatial
attention (docs/architecture.md, "The authors' implementation", 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEG_SLOPE = 0.2  # every activation of the network is LeakyReLU(0.2)


def act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEG_SLOPE)


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm (no affine, no running stats: it stores nothing) computed in float32
    whatever the input dtype: on near-constant maps (background slices) its statistics
    amplify rounding, so under bf16/fp16 autocast it would dominate the error."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False, track_running_stats=False, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float())


def make_norm(kind: str, channels: int) -> nn.Module:
    return InstanceNorm(channels) if kind == "instance" else nn.Identity()


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding_mode: str) -> Tensor:
    """Stride-1 convolution keeping the size, with reflection or zero padding."""
    pad = weight.shape[-1] // 2
    if pad and padding_mode == "reflect":
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), weight, bias)
    return F.conv2d(x, weight, bias, padding=pad)


class HyperConv(nn.Module):
    """A convolution whose kernel is a linear function of a code.

    kernel(s) = P · fc(s) with P of shape (C_out, C_in, k, k, W); bias(s) = B · fc_bias(s).
    One code serves the whole batch (the code batch is 1, as in the reference), so the
    kernel can be computed once per call — or folded into a constant for a fixed code.
    Parameter names (``param``, ``b``, ``fc``, ``fc_bias``) are the reference's.
    """

    def __init__(self, code_dim: int, c_in: int, c_out: int, kernel: int, weight_dim: int,
                 *, bias: bool = True, padding_mode: str = "reflect"):
        super().__init__()
        self.padding_mode = padding_mode
        self.param = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel, weight_dim))
        self.fc = nn.Linear(code_dim, weight_dim)
        if bias:
            self.b = nn.Parameter(torch.zeros(c_out, weight_dim))
            self.fc_bias = nn.Linear(code_dim, weight_dim)
        else:
            self.register_parameter("b", None)
            self.fc_bias = None
        nn.init.kaiming_normal_(self.param)

    def kernels(self, code: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) of the ordinary convolution this hyperconv is for `code` (1, code_dim)."""
        if code.shape[0] != 1:
            raise ValueError(f"one code per call (batch 1), got code of shape {tuple(code.shape)}")
        weight = torch.matmul(self.param, self.fc(code).view(-1, 1)).squeeze(-1)
        bias = None
        if self.b is not None:
            bias = torch.matmul(self.b, self.fc_bias(code).view(-1, 1)).squeeze(-1)
        return weight, bias

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        weight, bias = self.kernels(code)
        return same_conv(x, weight, bias, self.padding_mode)


class FixedConv(nn.Module):
    """A HyperConv frozen for one code: an ordinary convolution with the same padding.

    Export bakes a per-target decoder from these (kernels become constants); the
    `code` argument is accepted and ignored so that the blocks around it run unchanged.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, padding_mode: str):
        super().__init__()
        self.padding_mode = padding_mode
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_hyper(cls, hyper: HyperConv, code: Tensor) -> "FixedConv":
        with torch.no_grad():
            weight, bias = hyper.kernels(code)
        return cls(weight, bias, hyper.padding_mode)

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        return same_conv(x, self.weight, self.bias, self.padding_mode)


class ConvNormAct(nn.Module):
    """Reflection-padded convolution, norm, LeakyReLU: one encoder stage."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, padding_mode="reflect")
        self.norm = make_norm(norm, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return act(self.norm(self.conv(x)))


class ResBlock(nn.Module):
    """x + IN(conv(act(IN(conv(x))))): the encoder's residual block."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm1 = make_norm(norm, channels)
        self.norm2 = make_norm(norm, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm2(self.conv2(act(self.norm1(self.conv1(x)))))


class HyperResBlock(nn.Module):
    """The decoder's residual block, with code-dependent kernels."""

    def __init__(self, channels: int, code_dim: int, weight_dim: int, norm: str):
        super().__init__()
        self.conv1 = HyperConv(code_dim, channels, channels, 3, weight_dim)
        self.conv2 = HyperConv(code_dim, channels, channels, 3, weight_dim)
        self.norm1 = make_norm(norm, channels)
        self.norm2 = make_norm(norm, channels)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        return x + self.norm2(self.conv2(act(self.norm1(self.conv1(x, code))), code))


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer step: gates i, f, o, g from one conv over [x, h] (zero padding)."""

    def __init__(self, c_in: int, hidden: int, kernel: int = 3, fold_zero_state: bool = True):
        super().__init__()
        self.hidden = hidden
        self.c_in = c_in
        self.conv = nn.Conv2d(c_in + hidden, 4 * hidden, kernel, padding=kernel // 2)
        # From the zero state, skip the h-half and the forget gate (exact). False runs the
        # full cell, as the authors' code does: the `reference` mode measures that cost.
        self.fold_zero_state = fold_zero_state

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if state is None:
            if self.fold_zero_state:
                return self.first_step(x)
            zeros = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = torch.split(self.conv(torch.cat([x, h], dim=1)), self.hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def first_step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The step from the zero state, exactly: h=0 removes the h-half of the
        input channels and c=0 removes the forget gate, so c = σ(i)·tanh(g)."""
        weight, bias = self.first_step_kernels()
        i, o, g = torch.split(F.conv2d(x, weight, bias, padding=self.conv.padding), self.hidden, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def first_step_kernels(self) -> tuple[Tensor, Tensor]:
        """The conv restricted to x's channels and the i, o, g gates (what export folds)."""
        hd = self.hidden
        keep = torch.cat([torch.arange(0, hd), torch.arange(2 * hd, 4 * hd)]).to(self.conv.weight.device)
        return self.conv.weight[keep, : self.c_in], self.conv.bias[keep]


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM over time; returns the last layer's outputs (N, T, C, H, W)."""

    def __init__(self, channels: int, layers: int, fold_zero_state: bool = True):
        super().__init__()
        self.channels, self.layers = channels, layers
        self.cells = nn.ModuleList(ConvLSTMCell(channels, channels, fold_zero_state=fold_zero_state)
                                   for _ in range(layers))

    def unfolded(self) -> "ConvLSTM":
        """A copy with the same weights that runs the full cell from the zero state too (the
        authors' way), to measure or count what folding saves; this one is unchanged."""
        full = ConvLSTM(self.channels, self.layers, fold_zero_state=False)
        full.load_state_dict(self.state_dict())
        return full.to(next(self.parameters()).device)

    def forward(self, x: Tensor) -> Tensor:
        frames = list(x.unbind(dim=1))
        for cell in self.cells:
            state = None
            outputs = []
            for frame in frames:
                state = cell(frame, state)
                outputs.append(state[0])
            frames = outputs
        return torch.stack(frames, dim=1)

