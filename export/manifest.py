"""manifest.json: what an export directory holds, and the check that it is intact.

Written by :mod:`tsf_trt.export.onnx_export`, read by every runtime that loads the
graphs. Hashes are checked on load, so a tampered or truncated graph is a clear
error instead of a crash deep inside a runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.files.fileformat import EXPORT_FORMAT as FORMAT
from tsf_trt.files.fileformat import EXPORT_MANIFEST as MANIFEST
from tsf_trt.files.fileformat import file_sha256, read_tagged_json
from tsf_trt.model.config import ModelConfig

DEFAULT_OPSET = 17  # the ONNX opset of `tsf-trt export` and of cached exports
FORMAT_VERSION = 1


sha256 = file_sha256


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: str | Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest of an export directory; every graph file present and unmodified."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelError(directory, f"missing {MANIFEST}: not a tsf-trt export directory")
    manifest = read_tagged_json(path, FORMAT, FORMAT_VERSION, "manifest")
    manifest_config(directory, manifest)
    for name, graph in manifest.get("graphs", {}).items():
        file = directory / graph["file"]
        if not file.is_file():
            raise ModelError(file, f"graph '{name}' listed in {MANIFEST} is missing")
        if check_hashes and sha256(file) != graph["sha256"]:
            raise ModelError(file, f"does not match its SHA-256 in {MANIFEST}: the graph was modified or truncated "
                                   "(export again)")
    return manifest


def manifest_config(directory: str | Path, manifest: Mapping[str, Any]) -> ModelConfig:
    """The manifest's model config; an invalid one names manifest.json (a runtime would
    otherwise fail later without saying which file is wrong)."""
    data = manifest.get("model_config")
    if not isinstance(data, dict):
        raise ModelError(Path(directory) / MANIFEST, "model_config is missing or not an object: export again")
    try:
        return ModelConfig.from_dict(data)
    except (TsfError, TypeError, ValueError) as exc:
        raise ModelError(Path(directory) / MANIFEST, f"{exc}: export again") from None


def graph_path(directory: str | Path, manifest: Mapping[str, Any], name: str) -> Path:
    if name not in manifest["graphs"]:
        raise ModelError(Path(directory) / MANIFEST, f"this export has no '{name}' graph "
                                                     f"(it has: {', '.join(manifest['graphs'])})")
    return Path(directory) / manifest["graphs"][name]["file"]


def decoder_graph(manifest: Mapping[str, Any], target: int, baked: bool = True) -> str:
    """The decoder graph for `target`: the per-target one with its kernels baked in when the
    export has it (plain convolutions: faster on ONNX Runtime, and TensorRT's path), else
    the code-input decoder; `baked=False` asks for the code-input one."""
    name = f"decoder_{sequences.NAMES[target]}"
    return name if baked and name in manifest["graphs"] else "decoder"
