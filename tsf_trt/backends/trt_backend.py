"""TensorRT: the export's graphs as engines, driven through cuda-python buffers on one stream.

Written from TensorRT's and CUDA's documentation; NOT yet run on a GPU (none was
available): its data flow is tested on CPU with stand-ins for TensorRT and the CUDA
runtime (tests/test_engines.py), whose enums, signatures and return values are the real
bindings' (tests/fake_trt.py, tests/fake_cuda.py); the libraries themselves have not run it.

* Engines are found or built by :class:`~tsf_trt.engines.manager.EngineManager`
  (cache beside the export, each graph checked for its role first) and deserialised
  once; one execution context per engine, input shapes set only when they change.
* Stage outputs stay on the GPU: encode returns device arrays, fuse stacks them into
  the fusion input with strided device copies, and writes `fused` and `fused_avg`
  into the two halves of one buffer when the second half is 256-byte aligned (as
  TensorRT requires of every tensor address), so TSEM's decoder pass is one batch of
  2N with no copy; otherwise into two buffers, joined by one device copy.
* Buffers come from a pool (no allocation after the first batch of a shape), copies go
  through pinned host memory, all on one stream (:mod:`tsf_trt.engines.cuda`).
* ω depends only on the task code (the fusion graph's `weights` output has no batch
  axis), so it is brought to the host once per task, not once per batch: no
  synchronisation between fusion and decoder after the first batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tsf_trt import sequences
from tsf_trt.backends.base import Backend
from tsf_trt.errors import TsfError
from tsf_trt.model.config import ModelConfig

TENSOR_ALIGNMENT = 256  # bytes: TensorRT's requirement for every address given to set_tensor_address


class TrtBackend(Backend):
    on_gpu = True

    def __init__(self, manager, engines, gpu, *, precision: str = "fp32"):
        """Takes its parts ready-made (see :meth:`create`), so tests can hand in stand-ins."""
        manifest = manager.manifest
        super().__init__(ModelConfig.from_dict(manifest["model_config"]), "fusion" in manifest["graphs"],
                         manifest.get("model_id", ""), name="trt", precision=precision)
        if self.has_fusion:
            manager.role("fusion")  # checked for its role first, so its declared outputs are the graph's
        if self.has_fusion and list(manifest["graphs"]["fusion"]["outputs"]["weights"]) != [self.config.n_sequences]:
            raise TsfError("this export's fusion graph gives ω per sample; this tsf-trt expects one ω per task")
        self.manager, self.engines, self.gpu = manager, engines, gpu
        self._omega: dict[bytes, np.ndarray] = {}
        self._codes: dict[bytes, object] = {}
        self._stacked: dict[tuple[int, ...], object] = {}

    @classmethod
    def create(cls, export_dir: str | Path, *, precision: str = "fp32", device: int = 0, profile=None,
               workspace_gib: float = 8.0, report=None, progress=None) -> TrtBackend:
        """The backend for GPU `device`; a clean TsfError naming what is missing otherwise."""
        from tsf_trt.engines.cuda import GpuContext
        from tsf_trt.engines.gpu import device_info, import_tensorrt, require_trt
        from tsf_trt.engines.keys import Platform
        from tsf_trt.engines.manager import BuildSettings, EngineManager, log_reporter
        from tsf_trt.engines.profiles import DEFAULT_PROFILE
        from tsf_trt.engines.runtime import EngineSet

        require_trt()
        trt = import_tensorrt()
        info = device_info(device)
        settings = BuildSettings(precision, profile or DEFAULT_PROFILE, workspace_gib)
        manager = EngineManager(export_dir, Platform(str(trt.__version__), info.name, info.compute_capability),
                                settings, report=report or log_reporter, progress=progress)
        gpu = GpuContext(device)
        return cls(manager, EngineSet(manager, trt), gpu, precision=precision)

    # -- helpers --------------------------------------------------------------------------
    def _size(self, feature_shape: tuple[int, ...]) -> tuple[int, int]:
        """Padded slice size (H, W) from a feature map's (h, w)."""
        return feature_shape[-2] * self.config.downsample, feature_shape[-1] * self.config.downsample

    def _device_code(self, code: np.ndarray):
        """A code on the device, uploaded once per distinct code."""
        code = np.ascontiguousarray(code, np.float32)
        key = code.tobytes()
        if key not in self._codes:
            self._codes[key] = self.gpu.upload(code)
        return self._codes[key]

    def _run(self, runner, inputs: Mapping[str, object], outputs: Mapping[str, object] | None = None) -> dict:
        """Run `runner` on device arrays; outputs not given are taken from the pool."""
        shapes = runner.output_shapes({name: array.shape for name, array in inputs.items()})
        outputs = dict(outputs or {})
        for name, shape in shapes.items():
            if name in outputs and tuple(outputs[name].shape) != shape:
                raise TsfError(f"{runner.label}: output '{name}' has shape {shape}, expected {outputs[name].shape}")
            if name not in outputs:
                outputs[name] = self.gpu.empty(shape, runner.dtypes[name])
        runner.run({name: array.ptr for name, array in {**inputs, **outputs}.items()}, self.gpu.handle)
        return outputs

    def _output_pair(self, shape: tuple[int, ...], dtype):
        """Two (N, ...) fusion outputs: the halves of one 2N buffer when the second half starts
        on a TensorRT tensor boundary (256 bytes), so the decoder takes both as one batch with
        no copy; two buffers otherwise (e.g. C = 32 at an odd h*w), joined by one copy in
        decode: TensorRT refuses tensor addresses that are not 256-byte aligned."""
        both = self.gpu.empty((2 * shape[0], *shape[1:]), dtype)
        first, second = both.rows(0, shape[0]), both.rows(shape[0], shape[0])
        if second.ptr % TENSOR_ALIGNMENT == 0:
            return first, second
        return self.gpu.empty(shape, dtype), self.gpu.empty(shape, dtype)

    # -- the interface --------------------------------------------------------------------
    def _encode(self, images: np.ndarray):
        n, _, height, width = images.shape
        runner = self.engines.runner("encoder", n, height, width)
        image = self.gpu.upload(np.ascontiguousarray(images, runner.dtypes["image"]))
        return self._run(runner, {"image": image})["features"]

    def _fuse(self, features: Mapping[int, object], task_code: np.ndarray):
        some = next(iter(features.values()))
        n, channels, h, w = some.shape
        runner = self.engines.runner("fusion", n, *self._size(some.shape))
        shape = (n, self.config.n_sequences, channels, h, w)
        if shape not in self._stacked:  # one fusion input per shape, refilled each batch
            self._stacked[shape] = self.gpu.empty(shape, runner.dtypes["features"])
        stacked = self._stacked[shape]
        for index in range(self.config.n_sequences):
            self.gpu.put_slot(stacked, index, features.get(index))
        fused, fused_avg = self._output_pair((n, channels, h, w), runner.dtypes["fused"])
        outputs = self._run(runner, {"features": stacked, "task_code": self._device_code(task_code)},
                            {"fused": fused, "fused_avg": fused_avg})
        key = np.ascontiguousarray(task_code, np.float32).tobytes()
        if key not in self._omega:
            self._omega[key] = self.gpu.download(outputs["weights"]).astype(np.float32)
        return fused, fused_avg, self._omega[key].copy()

    def _decode(self, features, target: int, features_avg):
        n = features.shape[0]
        graph = self.manager.decoder_graph(target)
        runner = self.engines.runner(graph, n, *self._size(features.shape))
        batch = features
        if features_avg is not None:
            if features_avg.follows(features):  # fuse() wrote them side by side: already one 2N batch
                batch = features.rows(0, 2 * n)
            else:
                batch = self.gpu.empty((2 * n, *features.shape[1:]), features.dtype)
                self.gpu.copy(batch.rows(0, n), features)
                self.gpu.copy(batch.rows(n, n), features_avg)
        inputs = {"features": batch}
        if "target_code" in runner.inputs:
            inputs["target_code"] = self._device_code(sequences.target_code(target, self.config.style_dim))
        image = self._run(runner, inputs)["image"]
        if features_avg is None:
            return image, None
        return image.rows(0, n), image.rows(n, n)

    def to_numpy(self, array, channel: int | None = None) -> np.ndarray:
        # One contiguous download, then the channel: a channel of (N, 3, H, W) is N strided pieces.
        host = array if isinstance(array, np.ndarray) else self.gpu.download(array).astype(np.float32, copy=False)
        return host if channel is None else host[:, channel]

    def describe(self) -> str:
        platform = self.manager.platform
        return (f"TensorRT {platform.tensorrt} ({platform.gpu}, compute {platform.compute_capability}, "
                f"{self.precision}; engines in {self.manager.cache.directory})")

    def _release(self) -> None:
        self.engines.close()
        self.gpu.close()
