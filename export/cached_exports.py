"""Exports of model directories: the one a model directory carries, or one kept in the cache,
so that `--backend ort` on a PyTorch model directory exports once and reuses the graphs on
every later run.

Finding an export needs no PyTorch (a runtime-only install runs the bundled demo from the
export it ships); making one does. An export is reused only when its manifest names the
model's id and every graph passes the checks the runtimes make (:mod:`tsf_trt.export.roles`);
anything else, an export written by an older tsf-trt without graph metadata included, is
exported again instead of failing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tsf_trt.console import step
from tsf_trt.errors import ModelError
from tsf_trt.machine.cache_dir import cache_root
from tsf_trt.model.config import ModelConfig
from tsf_trt.model.meta import EXPORT_SUBDIR

from tsf_trt.export.manifest import DEFAULT_OPSET, manifest_config, read_manifest
from tsf_trt.export.roles import check_export


def cached_dir(model_id: str, opset: int = DEFAULT_OPSET) -> Path:
    """Where the cache keeps the export of model `model_id`."""
    return cache_root() / "exports" / f"{model_id}-opset{opset}"


def is_export_of(directory: Path, model_id: str, config: ModelConfig | None = None) -> bool:
    """`directory` is an intact export of model `model_id` (with `config`, of that config too);
    False for a stale or damaged one."""
    if not directory.exists():
        return False
    try:
        manifest = read_manifest(directory)
        if manifest.get("model_id") != model_id or (config is not None
                                                    and manifest_config(directory, manifest) != config):
            return False
        check_export(directory, manifest)
    except ModelError:
        return False
    return True


def find_export(model_id: str, model_dir: Path | None = None, opset: int = DEFAULT_OPSET,
                config: ModelConfig | None = None) -> Path | None:
    """The export of model `model_id` (and `config`) that already exists: the model directory's
    own (`<model_dir>/export`, any opset), else the cache's; None when neither is intact."""
    for directory in ([model_dir / EXPORT_SUBDIR] if model_dir is not None else []) + [cached_dir(model_id, opset)]:
        if is_export_of(directory, model_id, config):
            return directory
    return None


def export_model(model, directory: Path, **kwargs: Any) -> Path:
    """:func:`tsf_trt.export.onnx_export.export_model`, imported on use (it needs PyTorch)."""
    from tsf_trt.export.onnx_export import export_model as export

    return export(model, directory, **kwargs)


def ensure_export(model, *, model_id: str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The cached export directory of `model` (a TSFSeq2Seq or a model directory, whose id is
    `model_id`, default a hash of its weights), exported (and verified) first if needed."""
    from tsf_trt.model import TSFSeq2Seq, load_model
    from tsf_trt.model.checkpoint import weights_id

    if not isinstance(model, TSFSeq2Seq):
        model = load_model(model)
    model_id = model_id or weights_id(model)
    directory = cached_dir(model_id, opset)
    if is_export_of(directory, model_id):
        return directory
    with step(f"exporting model {model_id[:16]} to ONNX (once; cached in {directory})", _log):
        export_model(model, directory, opset=opset, overwrite=True, origin={"exported_by": "cache"},
                     model_id=model_id, own_location=True)  # the cache's own folder: a stale one is replaced
    return directory


_log = logging.getLogger(__name__)
