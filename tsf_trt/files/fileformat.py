"""What every tsf-trt metadata file shares: SHA-256 of artefacts, and tagged JSON that
says which format (and version) it is, so a foreign or newer file is a clear error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tsf_trt.errors import ModelError

#: A model directory (tsf_trt.model.meta): config.json with this tag beside its weights, and
#: optionally its own ONNX export in export/ (the bundled demo ships one).
MODEL_FORMAT, MODEL_CONFIG, MODEL_WEIGHTS = "tsf-trt-model", "config.json", "model.safetensors"
MODEL_EXPORT_SUBDIR = "export"
#: A model's own calibration (tsf_trt.uncertainty.calibration), beside its config: `infer` applies it by default.
MODEL_CALIBRATION = "calibration.json"
#: An export directory (tsf_trt.export.manifest): manifest.json with this tag beside its graphs.
EXPORT_FORMAT, EXPORT_MANIFEST = "tsf-trt-export", "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tagged_json(path: Path, fmt: str, version: int, kind: str) -> dict[str, Any]:
    """The JSON at `path`, checked to be a `fmt` file of at most `version`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ModelError(path, f"not a {fmt} {kind} (format tag missing)")
    if data.get("format_version", 0) > version:
        raise ModelError(path, f"written by a newer tsf-trt (format {data['format_version']})")
    return data
