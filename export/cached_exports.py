"""Exports of model directories kept in the cache, so `--backend ort` on a PyTorch model
directory exports once and reuses the graphs on every later run.

A cached export is reused only when its manifest and every graph pass the checks the
runtimes make (:mod:`tsf_trt.export.roles`); anything else, an export written by an
older tsf-trt without graph metadata included, is exported again instead of failing."""

from __future__ import annotations

import logging
from pathlib import Path

from tsf_trt.cache_dir import cache_root
from tsf_trt.console import step
from tsf_trt.errors import ModelError
from tsf_trt.model import TSFSeq2Seq
from tsf_trt.model.checkpoint import weights_id

from .manifest import read_manifest
from .onnx_export import DEFAULT_OPSET, export_model
from .roles import check_export


def ensure_export(model: TSFSeq2Seq, *, model_id: str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The cached export directory of `model` (whose id is `model_id`, default a hash of its
    weights), exported (and verified) first if needed."""
    if not isinstance(model, TSFSeq2Seq):  # a model directory (until every caller passes a ModelSource's module)
        from tsf_trt.model import load_model

        model = load_model(model)
    model_id = model_id or weights_id(model)
    directory = cache_root() / "exports" / f"{model_id}-opset{opset}"
    if directory.exists():
        try:
            manifest = read_manifest(directory)
            if manifest.get("model_id") == model_id:
                check_export(directory, manifest)
                return directory
        except ModelError:
            pass  # stale, damaged or from an older tsf-trt: export again below
    with step(f"exporting model {model_id[:16]} to ONNX (once; cached in {directory})", _log):
        export_model(model, directory, opset=opset, overwrite=True, origin={"exported_by": "cache"},
                     model_id=model_id)
    return directory


_log = logging.getLogger(__name__)
