"""ONNX Runtime: the embedded default on machines without an NVIDIA GPU.

Runs an export directory (three graphs + manifest). Sessions are created once per
graph and reused; the graph optimiser runs at its full level and its result is
cached beside the graphs (keyed by graph hash, ORT version, provider and CPU), so
later runs skip it. Per-target decoders with baked kernels are used when the export
has them (measured faster on CPU: README, "Performance"); `decoder="code"` forces the
code-input decoder. The CUDA and TensorRT execution providers are selectable
(`ort-cuda`, `ort-trt`) but their tuning (FP16, engine caches, profiles) belongs to the
GPU work and is untested here: this machine has no GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import sequences
from ..cache import machine_key, writable_dir
from ..errors import TsfError
from ..model.config import ModelConfig
from .base import Backend

PROVIDERS = {
    "ort": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise TsfError("onnxruntime is not installed: pip install onnxruntime (CPU) or the [gpu] extra") from None
    return ort


class OrtBackend(Backend):
    def __init__(self, export_dir: str | Path, *, name: str = "ort", threads: int | None = None,
                 decoder: str = "baked", cache: bool = True):
        from tsf_trt.export.manifest import read_manifest

        if name not in PROVIDERS:
            raise TsfError(f"unknown ONNX Runtime backend '{name}' (use one of {', '.join(PROVIDERS)})")
        if decoder not in ("baked", "code"):
            raise TsfError(f"decoder must be 'baked' or 'code', got '{decoder}'")
        self.ort = import_ort()
        self.name = name  # type: ignore[misc]
        missing = [p for p in PROVIDERS[name][:1] if p not in self.ort.get_available_providers()]
        if missing:
            raise TsfError(f"backend '{name}' needs {missing[0]}, which this onnxruntime lacks "
                           f"(available: {', '.join(self.ort.get_available_providers())})")
        self.directory = Path(export_dir)
        self.manifest = read_manifest(self.directory)
        config = ModelConfig.from_dict(self.manifest["model_config"])
        super().__init__(config, "fusion" in self.manifest["graphs"], self.manifest.get("model_id", ""))
        self.threads = threads
        self.decoder_kind = decoder
        self.on_gpu = name != "ort"
        self.cache_dir = writable_dir(self.directory / ".ort-cache") if cache else None
        self._sessions: dict[str, Any] = {}

    # -- sessions -------------------------------------------------------------------------
    def session(self, graph: str):
        if graph not in self._sessions:
            self._sessions[graph] = self._create(graph)
        return self._sessions[graph]

    def _create(self, graph: str):
        from tsf_trt.export.manifest import graph_path

        ort = self.ort
        path = graph_path(self.directory, self.manifest, graph)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        cached = self._cached_path(graph)
        if cached is not None and cached.is_file():
            # already optimised for this graph, runtime and CPU: skip the optimiser
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(str(cached), options, providers=PROVIDERS[self.name])
            except Exception:  # noqa: BLE001 - a stale or broken cache entry: rebuild it
                cached.unlink(missing_ok=True)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        tmp = None
        if cached is not None:
            tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
            options.optimized_model_filepath = str(tmp)
        try:
            session = ort.InferenceSession(str(path), options, providers=PROVIDERS[self.name])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for broken graphs
            raise TsfError(f"{path}: ONNX Runtime cannot load this graph ({str(exc).splitlines()[0]})") from None
        if tmp is not None and tmp.is_file():
            os.replace(tmp, cached)
        return session

    def _cached_path(self, graph: str) -> Path | None:
        if self.cache_dir is None or self.name != "ort":
            return None
        sha = self.manifest["graphs"][graph]["sha256"][:16]
        return self.cache_dir / f"{graph}.{sha}.ort{self.ort.__version__}.{machine_key()}.onnx"

    # -- the interface --------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.session("encoder").run(None, {"image": np.ascontiguousarray(images, np.float32)})[0]

    def fuse(self, features: Mapping[int, np.ndarray], task_code: np.ndarray):
        if not self.has_fusion:
            raise TsfError("this export has no fusion graph (Seq2Seq-only model): it cannot fuse inputs")
        some = next(iter(features.values()))
        stacked = np.zeros((some.shape[0], self.config.n_sequences, *some.shape[1:]), np.float32)
        for index, feats in features.items():
            stacked[:, index] = feats
        fused, fused_avg, weights = self.session("fusion").run(
            None, {"features": stacked, "task_code": np.ascontiguousarray(task_code, np.float32)})
        return fused, fused_avg, weights

    def decode(self, features: np.ndarray, target_code: np.ndarray, features_avg: np.ndarray | None = None):
        batch = features if features_avg is None else np.concatenate([features, features_avg])
        baked = f"decoder_{sequences.NAMES[int(np.argmax(target_code[0, :sequences.N_SEQUENCES]))]}"
        if self.decoder_kind == "baked" and baked in self.manifest["graphs"]:
            image = self.session(baked).run(None, {"features": batch})[0]
        else:
            image = self.session("decoder").run(
                None, {"features": batch, "target_code": np.ascontiguousarray(target_code, np.float32)})[0]
        if features_avg is None:
            return image, None
        return image[: len(features)], image[len(features):]

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return array

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"onnxruntime {self.ort.__version__} ({', '.join(PROVIDERS[self.name][:1])}{threads}, " \
               f"{self.decoder_kind} decoder)"
