"""Training losses and validation metrics: SmoothL1 + VGG19 perceptual (paper §2.2), PSNR, SSIM.

Why here and not from a library: torchvision is not a dependency, so the VGG19 ``features``
stack is rebuilt with torchvision's exact layout (its ``vgg19-*.pth`` state dict loads into
it, ``weights_only=True``). Images are in [-1, 1] throughout.

Why a second SSIM beside tsf_trt/metrics.py's (scikit-image's, which `evaluate` and the demo
score with): validation scores whole batches of torch tensors on the training device, and
metrics.py is numpy on the CPU, one slice at a time, in the base install that has no torch.
Both are Wang et al. 2004 with the same window, constants and data range; this one keeps the
"valid" part of the map (no padding), which is scikit-image's map inside a 5-pixel border:
tests/test_trainer.py checks the two agree there.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsf_trt.errors import InputError

LAMBDA_REC = 10.0   # paper: λ_rec
LAMBDA_PER = 0.01   # paper: λ_per
# torchvision vgg19 ("E"): channel counts, "M" a 2x2 max-pool. Indices of the resulting
# nn.Sequential match torchvision's ``features.<i>`` keys.
VGG19_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: the feature maps compared (our choice, the
#: usual one for perceptual losses; the paper does not list its layers).
VGG_LAYERS: tuple[int, ...] = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features`` layout, without torchvision; frozen, in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always eval: nothing in it should ever change

    def forward(self, image: Tensor) -> list[Tensor]:
        """[-1, 1] images (N, 3, H, W) -> the VGG_LAYERS activations (ImageNet-normalised input)."""
        x = ((image + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG_LAYERS:
                out.append(x)
                if i == VGG_LAYERS[-1]:
                    break
        return out


def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19 features from a torchvision state dict (``features.*`` keys; others ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "VGG19 weights file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(path, "not a plain state_dict (holds objects other than tensors; not loaded)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise InputError(path, f"not a readable PyTorch file ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "not a state_dict")
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    model = VGG19Features()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(features))
    wrong = [k for k in expected if k in features and tuple(features[k].shape) != tuple(expected[k].shape)]
    if missing or wrong or set(features) - set(expected):
        what = f"missing {', '.join(missing[:3])}" if missing else f"wrong shapes {', '.join(wrong[:3])}"
        raise InputError(path, f"not torchvision VGG19 weights ({what or 'unexpected features.* keys'})")
    model.load_state_dict({k: v.float() for k, v in features.items()})
    return model


class SynthesisLoss(nn.Module):
    """λ_rec · SmoothL1 + λ_per · perceptual (mean L1 of VGG_LAYERS activations).

    Without a VGG the perceptual term is absent (not replaced by anything): the trainer
    says so in its log.
    """

    def __init__(self, vgg: VGG19Features | None = None, lambda_rec: float = LAMBDA_REC,
                 lambda_per: float = LAMBDA_PER):
        super().__init__()
        self.vgg = vgg
        self.lambda_rec, self.lambda_per = float(lambda_rec), float(lambda_per)

    def forward(self, output: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        rec = F.smooth_l1_loss(output.float(), target.float())
        total = self.lambda_rec * rec
        parts = {"rec": float(rec.detach())}
        if self.vgg is not None:
            per = perceptual(self.vgg, output, target)
            total = total + self.lambda_per * per
            parts["per"] = float(per.detach())
        return total, parts


def perceptual(vgg: VGG19Features, output: Tensor, target: Tensor) -> Tensor:
    """Mean over layers of the L1 distance of VGG activations; target features carry no gradient."""
    with torch.no_grad():
        want = vgg(target)
    got = vgg(output)
    return torch.stack([F.l1_loss(g.float(), w.float()) for g, w in zip(got, want)]).mean()


# -- metrics -----------------------------------------------------------------------------
DATA_RANGE = 2.0  # images in [-1, 1]


def psnr(output: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """PSNR in dB per image (N, ...) -> (N,); inf for identical images."""
    mse = (output.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(output: Tensor, target: Tensor, data_range: float = DATA_RANGE, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM per image, (N, H, W) or (N, 1, H, W) -> (N,), as Wang et al. 2004.

    Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, "valid" filtering (no padding), the mean of
    the SSIM map; data range 2 for [-1, 1] images. H and W must be at least `window`. The
    same map as tsf_trt.metrics.ssim's (scikit-image truncates its σ 1.5 Gaussian at 3.5 σ:
    11 taps) away from the border; why training has its own: the module docstring.
    """
    x, y = (t.float().reshape(t.shape[0], 1, *t.shape[-2:]) for t in (output, target))
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {tuple(x.shape[-2:])}")
    w = _gaussian(window, sigma).to(x.device).view(1, 1, window, window)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    var_x = F.conv2d(x * x, w) - mu_x ** 2
    var_y = F.conv2d(y * y, w) - mu_y ** 2
    cov = F.conv2d(x * y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1)
