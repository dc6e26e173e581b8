"""A model directory's config.json, read without PyTorch.

Why a module of its own: a runtime-only install (no torch, docs/getting-started.md, "Set up") still names
models by their directory, needs their id and config to find their export, and must say
what is wrong with a directory without loading its weights (:mod:`.checkpoint` loads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsf_trt.errors import ModelError, TsfError
from tsf_trt.files.fileformat import MODEL_CONFIG as CONFIG_FILE
from tsf_trt.files.fileformat import MODEL_EXPORT_SUBDIR
from tsf_trt.files.fileformat import MODEL_FORMAT as FORMAT
from tsf_trt.files.fileformat import MODEL_WEIGHTS as WEIGHTS_FILE
from tsf_trt.files.fileformat import file_sha256, read_tagged_json
from tsf_trt.model.config import ModelConfig

FORMAT_VERSION = 1
#: A model directory may carry its own ONNX export here (the bundled demo does), so that a
#: runtime without PyTorch runs it; it is used only when its manifest names this model's id.
EXPORT_SUBDIR = MODEL_EXPORT_SUBDIR
__all__ = ["CONFIG_FILE", "EXPORT_SUBDIR", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE"]


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """config.json of a model directory, checked for format; ModelError names the problem."""
    directory = Path(directory)
    if not directory.exists():
        raise ModelError(directory, "model directory does not exist")
    if not directory.is_dir():
        raise ModelError(directory, "not a model directory (expected a folder with config.json and model.safetensors)")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelError(directory, f"missing {CONFIG_FILE}: not a tsf-trt model directory")
    return read_tagged_json(cfg_path, FORMAT, FORMAT_VERSION, "config")


def meta_config(directory: Path, meta: dict[str, Any]) -> ModelConfig:
    """The ModelConfig in a model directory's config.json; an invalid one names the file."""
    try:
        return ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError) as exc:
        raise ModelError(directory / CONFIG_FILE, f"invalid model config ({exc})") from None
    except TsfError as exc:
        raise ModelError(directory / CONFIG_FILE, str(exc)) from None


def model_id(meta: dict[str, Any]) -> str:
    """Short stable identity of a model: the start of its weights' SHA-256."""
    return str(meta.get("weights_sha256", ""))[:16]


def check_weights(directory: Path, meta: dict[str, Any], verify: bool = True) -> Path:
    """The weights file of a model directory, which exists and (with `verify`) matches the hash
    in config.json; else a ModelError naming it. Checked before an export is run in the
    directory's name too, so a damaged directory never runs from an older export of it."""
    weights = Path(directory) / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelError(directory, f"missing weights file {weights.name}")
    if verify and meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
        raise ModelError(weights, "weights do not match the hash in config.json (corrupt or replaced file)")
    return weights
