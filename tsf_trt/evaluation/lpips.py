"""LPIPS (Zhang et al., CVPR 2018), the paper's third score, from local weights only.

Why optional: LPIPS needs an ImageNet backbone (AlexNet or VGG16) whose weights are a download
this tool never makes on its own. With `--lpips-weights FILE` (a torchvision state dict,
e.g. ``alexnet-owt-7be5be79.pth``) and the `lpips` package installed, the package's model
is built without downloading (its own linear heads ship inside it) and the backbone is
loaded from FILE, every tensor checked. Without the option LPIPS is reported as
unavailable: never estimated, never faked. Not exercised by the test suite, which does not
install `lpips`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tsf_trt.errors import InputError, TsfError
from tsf_trt.evaluation.scoring import Lpips

NETS = ("alex", "vgg")


def load_lpips(weights: str | Path, net: str = "alex") -> Lpips:
    """A scorer (prediction, truth, head mask) -> mean LPIPS over the axial slices with head voxels."""
    path = Path(weights)
    if net not in NETS:
        raise TsfError(f"--lpips-net must be one of {', '.join(NETS)}, got '{net}'")
    if not path.is_file():
        raise InputError(path, "no such file (--lpips-weights: a torchvision AlexNet/VGG16 state dict)")
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        raise TsfError("--lpips-weights: LPIPS needs the `lpips` package, which is not installed here "
                       "(pip install lpips); without --lpips-weights LPIPS is reported as unavailable") from None
    import torch

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(path, f"cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    wanted = {}
    for name, _ in model.net.named_parameters():  # 'slice2.3.weight' is torchvision's 'features.3.weight'
        _, index, kind = name.split(".")
        source = f"features.{index}.{kind}"
        if source not in state:
            raise InputError(path, f"has no '{source}': not a torchvision {net} state dict")
        wanted[name] = state[source]
    try:
        model.net.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"does not fit the {net} backbone: {exc}") from None

    @torch.inference_mode()
    def score(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
        values = []
        for z in np.flatnonzero(mask.any(axis=(1, 2))):
            a = torch.from_numpy(np.ascontiguousarray(pred[z], dtype=np.float32))[None, None].repeat(1, 3, 1, 1)
            b = torch.from_numpy(np.ascontiguousarray(truth[z], dtype=np.float32))[None, None].repeat(1, 3, 1, 1)
            values.append(float(model(a, b).mean()))  # inputs already in [-1, 1], lpips' convention
        return float(np.mean(values)) if values else float("nan")

    return score
