"""What a model argument is, decided once at the edge: a :class:`ModelSource`.

A user names a model as a model directory (PyTorch weights, from `import-reference` or
`train`), an export directory (ONNX graphs, from `export`), "demo" or nothing (the
bundled model); Python code may hand over a live `TSFSeq2Seq`. Everything below the
edge receives the resolved source and asks it, never the path: its kind, its id and
config (read from config.json or manifest.json without loading weights), the loaded
module, or an export of it (made once, into the cache).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsf_trt.errors import ModelError, TsfError
from tsf_trt.files.fileformat import MODEL_CALIBRATION
from tsf_trt.machine.extras import TORCH_INSTALL, has_torch
from tsf_trt.model.config import ModelConfig

KINDS = ("model", "export", "module")
#: A model's own calibration (`tsf-trt calibrate -o`), in its model or export directory: `infer` applies it by default.
CALIBRATION_FILE = MODEL_CALIBRATION


@dataclass(frozen=True)
class ModelSource:
    kind: str                 # "model" (directory of PyTorch weights), "export" (ONNX graphs), "module" (live)
    path: Path | None         # None for a live module
    model_id: str             # the weights' identity: reports, caches and QC calibrations carry it
    config: ModelConfig
    has_fusion: bool          # False: Seq2Seq only (one-to-one, no TSEM)
    live: Any = field(default=None, compare=False, repr=False)  # the TSFSeq2Seq of kind "module"
    _loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # module(), once

    @classmethod
    def resolve(cls, spec: "str | Path | ModelSource | Any | None") -> "ModelSource":
        """The source a user or caller named; a ModelError naming the path if it is none."""
        if isinstance(spec, ModelSource):
            return spec
        network = sys.modules.get("tsf_trt.model.tsf")  # a live network means PyTorch is loaded already
        if network is not None and isinstance(spec, network.TSFSeq2Seq):
            from tsf_trt.model.checkpoint import weights_id

            return cls("module", None, weights_id(spec), spec.config, spec.has_fusion, spec)
        from tsf_trt.bundled import resolve_model

        path = resolve_model(spec)
        from tsf_trt.export.manifest import is_export_dir, manifest_config, read_manifest

        if is_export_dir(path):
            manifest = read_manifest(path)
            return cls("export", path, str(manifest.get("model_id", "")), manifest_config(path, manifest),
                       "fusion" in manifest["graphs"])
        from tsf_trt.model.meta import meta_config, model_id, read_model_meta

        meta = read_model_meta(path)
        return cls("model", path, model_id(meta), meta_config(path, meta),
                   "tsf" in meta.get("stages", ["seq2seq", "tsf"]))

    @property
    def label(self) -> str:
        """How messages name it: its path, or 'this model' for a live one."""
        return f"model {self.path}" if self.path is not None else "this model"

    @property
    def calibration_file(self) -> Path | None:
        """The model's own calibration file, which `infer` applies unless told otherwise: CALIBRATION_FILE
        in its directory, or for a model directory's own export (its `export/` folder) in the model
        directory above it; None if it has none (a live module never has). A damaged file is still
        returned, so that reading it says what is wrong instead of the interval silently vanishing."""
        if self.path is None:
            return None
        from tsf_trt.files.fileformat import MODEL_EXPORT_SUBDIR

        places = [self.path / CALIBRATION_FILE]
        if self.kind == "export" and self.path.name == MODEL_EXPORT_SUBDIR:
            places.append(self.path.parent / CALIBRATION_FILE)
        return next((p for p in places if p.exists() or p.is_symlink()), None)

    def module(self):
        """The TSFSeq2Seq (loaded once; an export has no PyTorch weights)."""
        if self.kind == "module":
            return self.live
        if self.kind == "export":
            raise ModelError(self.path, "is an export directory (ONNX graphs only): this needs the PyTorch model "
                                        "directory; use --backend ort or trt for this one")
        if "module" not in self._loaded:
            if not has_torch():
                raise ModelError(self.path, f"loading these PyTorch weights needs torch, which is not installed: "
                                            f"{TORCH_INSTALL} (or give an export directory from `tsf-trt export`)")
            from tsf_trt.model import load_model

            self._loaded["module"] = load_model(self.path)
        return self._loaded["module"]

    def export_dir(self) -> Path:
        """An export directory of this model: itself, or its export in the cache (made once)."""
        if self.kind == "export":
            return self.path
        from tsf_trt.export.cached_exports import ensure_export, find_export

        if self.kind == "model":
            from tsf_trt.model.meta import check_weights, read_model_meta

            check_weights(self.path, read_model_meta(self.path))  # a damaged directory never runs from its export
            found = find_export(self.model_id, self.path, config=self.config)
            if found is not None:
                return found
        return ensure_export(self.module(), model_id=self.model_id)

    def __getstate__(self) -> dict[str, Any]:
        """Crosses to worker processes as a path: a live module does not."""
        if self.kind == "module":
            raise TsfError("a model object from Python cannot be sent to worker processes: save it with "
                           "tsf_trt.model.save_model and pass the directory")
        return {**self.__dict__, "_loaded": {}}
