"""Which optional part of tsf-trt a feature needs, and the one line that says how to get it.

The base install is the runtime (ONNX Runtime, OpenVINO, NIfTI I/O, the CLI): enough to run an
export and the bundled demo. PyTorch is the `torch` extra, for training, export, the torch
backends and importing checkpoints; a deployment image with TensorRT or ONNX Runtime then
carries no PyTorch (README, "Set up").
"""

from __future__ import annotations

import importlib.util

from tsf_trt.errors import TsfError

TORCH_INSTALL = "pip install 'tsf-trt[torch]'"
#: Top-level modules that come only with an extra -> the extra's install command.
_EXTRA_OF = {"torch": TORCH_INSTALL, "safetensors": TORCH_INSTALL, "onnxslim": TORCH_INSTALL,
             "torchvision": "pip install torchvision (only for --lpips)"}


def has_torch() -> bool:
    """PyTorch is installed (found without importing it, which takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses it (tests stand in for a torch-less install so)
        return False


class MissingExtra(TsfError):
    """A feature whose optional dependencies are not installed; the message names the install."""


def missing_extra(what: str, module: str = "torch") -> MissingExtra:
    """The error for `what` (e.g. "tsf-trt train") when `module` is not installed."""
    install = _EXTRA_OF.get(module.split(".")[0], f"pip install {module}")
    return MissingExtra(f"{what} needs {module.split('.')[0]}, which is not installed: {install}")


def require_torch(what: str) -> None:
    """Raise the one-line MissingExtra for `what` when PyTorch is not installed."""
    if not has_torch():
        raise missing_extra(what)


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The install command when `exc` is a missing optional dependency of tsf-trt, else None."""
    return _EXTRA_OF.get((exc.name or "").split(".")[0])
