"""manifest.json: what an export directory holds, and the check that it is intact.

Written by :mod:`tsf_trt.export.onnx_export`, read by every runtime that loads the
graphs. Hashes are checked on load, so a tampered or truncated graph is a clear
error instead of a crash deep inside a runtime. An export may also hold int8 graphs for
OpenVINO (:mod:`tsf_trt.export.quantize`): listed apart, under "int8", so that the runtimes
that take every graph of "graphs" (TensorRT's engine builds) never meet them.
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
#: The manifest's block of int8 graphs (an older tsf-trt ignores it: the fp32 graphs are unchanged).
INT8 = "int8"
#: Written into each int8 model's rt_info "framework" block (beside the role metadata the ONNX graph
#: carried): a runtime refuses an int8 entry whose file does not say int8.
PRECISION_KEY = "tsf_trt.precision"


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
    _check_int8(directory, manifest, check_hashes)
    return manifest


def _check_int8(directory: Path, manifest: Mapping[str, Any], check_hashes: bool) -> None:
    """The int8 block's files present and unmodified, each of a role the export has."""
    block = manifest.get(INT8)
    if block is None:
        return
    graphs = block.get("graphs") if isinstance(block, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise ModelError(directory / MANIFEST, f"its '{INT8}' block lists no graphs: export again")
    for role, entry in graphs.items():
        if role not in manifest.get("graphs", {}) or not isinstance(entry, dict):
            raise ModelError(directory / MANIFEST, f"lists an int8 '{role}' graph of no fp32 graph: export again")
        for key, hashed in (("file", "sha256"), ("weights", "weights_sha256")):
            file = directory / str(entry.get(key))
            if not file.is_file():
                raise ModelError(file, f"int8 graph '{role}' listed in {MANIFEST} is missing")
            if check_hashes and sha256(file) != entry.get(hashed):
                raise ModelError(file, f"does not match its SHA-256 in {MANIFEST}: the int8 graph was modified or "
                                       "truncated (export again)")


def int8_roles(manifest: Mapping[str, Any]) -> list[str]:
    """The graphs `--precision int8` quantises: the encoder and every per-target decoder (their
    kernels are constants); the fusion and the code-input decoder stay fp32."""
    return [name for name in manifest["graphs"] if name == "encoder" or name.startswith("decoder_")]


def int8_graph(manifest: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The int8 entry of graph `name` (file, weights, hashes), None when the export has none."""
    block = manifest.get(INT8)
    return block["graphs"].get(name) if isinstance(block, dict) else None


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
