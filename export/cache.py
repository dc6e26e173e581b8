"""Exports of model directories kept in the cache, so `--backend ort` on a PyTorch model
directory exports once and reuses the graphs on every later run.

A cached export is reused only when its manifest and every graph pass the checks the
runtimes make (:mod:`tsf_trt.export.roles`); anything else, an export written by an
older tsf-trt without graph metadata included, is exported again instead of failing."""

from __future__ import annotations

import hashlib
from tsf_trt.cache import cache_root
from tsf_trt.errors import ModelError
from tsf_trt.model import TSFSeq2Seq

from .manifest import read_manifest
from .onnx_export import DEFAULT_OPSET, export_model
from .roles import check_export


def model_key(model: TSFSeq2Seq) -> str:
    """The id of a model built in Python: a hash of its weights (a model directory's id is its
    weights file's, from config.json: tsf_trt.source.ModelSource)."""
    if getattr(model, "id", ""):
        return model.id
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def ensure_export(model: TSFSeq2Seq, *, model_id: str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The cached export directory of `model` (whose id is `model_id`, default a hash of its
    weights), exported (and verified) first if needed."""
    if not isinstance(model, TSFSeq2Seq):  # a model directory (until every caller passes a ModelSource's module)
        from tsf_trt.model import load_model

        model = load_model(model)
    model_id = model_id or getattr(model, "id", "") or model_key(model)
    directory = cache_root() / "exports" / f"{model_id}-opset{opset}"
    if directory.exists():
        try:
            manifest = read_manifest(directory)
            if manifest.get("model_id") == model_id:
                check_export(directory, manifest)
                return directory
        except ModelError:
            pass  # stale, damaged or from an older tsf-trt: export again below
    export_model(model, directory, opset=opset, overwrite=True, origin={"exported_by": "cache"}, model_id=model_id)
    return directory
