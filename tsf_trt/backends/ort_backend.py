"""ONNX Runtime: the embedded default on machines without an NVIDIA GPU, and its GPU providers.

Runs an export directory (three graphs + manifest). Sessions are created once per
graph and reused; the graph optimiser runs at its full level and, on CPU, its result is
cached beside the graphs (keyed by graph hash, ORT version and CPU; a file named by its own
hash, checked before use, :mod:`tsf_trt.files.cache_entry`: a damaged one is rebuilt with one
warning), so later runs skip it. Per-target decoders with baked kernels are used when the export has them (measured
faster on CPU: docs/performance.md); `decoder="code"` forces the code-input decoder.

`ort-cuda` and `ort-trt` (onnxruntime-gpu) are for users without the TensorRT Python
package; written from ONNX Runtime's documentation and NOT yet run on a GPU:

* `ort-trt`: TensorRT EP with its engine and timing caches in the export's engine
  folder (`<export>/engines/ort-trt`), explicit profile shapes from the manifest
  (:mod:`tsf_trt.engines.profiles`; widened and rebuilt when a volume falls outside),
  CUDA EP then CPU behind it for anything TensorRT does not take;
* `precision="fp16"` runs the FP16 variants of the graphs (InstanceNorm, reductions
  and ω in FP32: :mod:`tsf_trt.engines.fp16`) rather than `trt_fp16_enable`, which
  TensorRT 11 no longer has. No provider option makes the TensorRT EP build a strongly
  typed network: in ONNX Runtime's sources (pull request #24298) the EP sets
  `kSTRONGLY_TYPED` itself, on TensorRT >= 9, when `trt_fp16_enable` and
  `trt_int8_enable` are both off (as here), so the FP16 graph's types decide; ONNX
  Runtime releases without that change build weakly typed networks, where TensorRT may
  run FP16-typed layers in FP32 when FP16 is not enabled. From 1.27 on, releases take
  TensorRT 11's code path on TensorRT 10 and build weakly typed again (microsoft/onnxruntime
  pull request #29779, open): :func:`tsf_trt.backends.ort_gpu.weak_fp16_problem` says when,
  and a warning names it. Which the installed onnxruntime-gpu does is NOT checked (no GPU here);
* a provider that is listed but cannot start (missing CUDA/cuDNN/TensorRT libraries:
  ONNX Runtime then silently falls back to the CPU) is a clean error at creation. Before the
  first GPU session, `onnxruntime.preload_dlls()` loads the CUDA and cuDNN libraries that the
  `cuda` and `cudnn` extras of onnxruntime-gpu install ([gpu-cu12] / [gpu-cu13] ask for them);
* fp32 is FP32, not TF32: the CUDA EP gets `use_tf32` 0 (TF32 is its default), and TensorRT
  EP sessions are created with NVIDIA_TF32_OVERRIDE=0, as that EP has no TF32 option of its
  own (:func:`tsf_trt.backends.ort_gpu.tensorrt_without_tf32`); whether TensorRT's builder
  honours the variable is NOT checked.

Each graph is checked for the role the manifest gives it when its session is created
(:mod:`tsf_trt.export.roles`), so a swapped or edited manifest is one clear error.

On the CPU, stages take and give numpy arrays. On a GPU provider, stage outputs stay on the
device between graphs (IOBinding and OrtValues: :mod:`tsf_trt.backends.ort_device`); only the
slices going in, ω and the decoded images cross to the host.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.backends.base import Backend
from tsf_trt.backends.onnx_graphs import decoder_feeds, fusion_feeds, split_decoded
from tsf_trt.backends.ort_device import DeviceStages, dims
from tsf_trt.backends.ort_gpu import ort_trt_fp16_problem, preload_gpu_libraries, tensorrt_without_tf32
from tsf_trt.errors import TsfError
from tsf_trt.files import cache_entry
from tsf_trt.machine.cache_dir import machine_key, runtime_cache
from tsf_trt.model.config import ModelConfig

PROVIDERS = {
    "ort": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


TRT_WORKSPACE_BYTES = 8 << 30
_log = logging.getLogger(__name__)


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise TsfError("onnxruntime is not installed: pip install onnxruntime (CPU) or the [gpu] extra") from None
    return ort


@functools.lru_cache(maxsize=None)
def provider_problem(provider: str, device: int = 0) -> str | None:
    """Why `provider` cannot run here (None when it can), found by running a one-node graph:
    ONNX Runtime lists providers its build has, and falls back to the CPU with a warning
    when their libraries are missing."""
    ort = import_ort()
    if provider not in ort.get_available_providers():
        return (f"this onnxruntime has no {provider} (it has {', '.join(ort.get_available_providers())}): "
                "pip install 'onnxruntime-gpu[cuda,cudnn]', or the [gpu] extra")
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    preload_gpu_libraries(ort)
    try:
        with tensorrt_without_tf32() if provider == "TensorrtExecutionProvider" else contextlib.nullcontext():
            session = ort.InferenceSession(model.SerializeToString(), options,
                                           providers=[(provider, {"device_id": str(device)}), "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        return f"{provider} failed to start ({str(exc).splitlines()[0]})"
    if provider not in session.get_providers():
        return (f"{provider} is listed but could not start on GPU {device} (its CUDA, cuDNN or TensorRT libraries "
                "were not found; ONNX Runtime fell back to the CPU)")
    return None


def require_provider(name: str, device: int = 0) -> None:
    """A clean TsfError when backend `name`'s execution provider cannot run here."""
    problem = None if name == "ort" else provider_problem(PROVIDERS[name][0], device)
    if problem:
        raise TsfError(f"backend '{name}' is not available here: {problem}")


class OrtBackend(Backend):
    def __init__(self, export_dir: str | Path, *, name: str = "ort", threads: int | None = None,
                 decoder: str = "baked", cache: bool = True, precision: str = "fp32", device: int = 0,
                 profile=None):
        from tsf_trt.export.manifest import read_manifest

        if name not in PROVIDERS:
            raise TsfError(f"unknown ONNX Runtime backend '{name}' (use one of {', '.join(PROVIDERS)})")
        if decoder not in ("baked", "code"):
            raise TsfError(f"decoder must be 'baked' or 'code', got '{decoder}'")
        self.ort = import_ort()
        require_provider(name, device)
        self.directory = Path(export_dir)
        self.manifest = read_manifest(self.directory)
        config = ModelConfig.from_dict(self.manifest["model_config"])
        super().__init__(config, "fusion" in self.manifest["graphs"], self.manifest.get("model_id", ""),
                         name=name, precision=precision)
        self.threads = threads
        self.decoder_kind = decoder
        self.device = device
        self.on_gpu = name != "ort"
        self.cache_dir = runtime_cache(self.directory, "ort") if cache else None
        if self.on_gpu:
            from tsf_trt.engines.profiles import DEFAULT_PROFILE

            self.profile = profile or DEFAULT_PROFILE
        self._sessions: dict[str, Any] = {}
        self._profiles: dict[str, Any] = {}  # ort-trt: a graph's profile once widened for it
        #: Stage outputs kept on the GPU between graphs (IOBinding); None: numpy in and out (the CPU).
        self.binding = DeviceStages(self.ort, "cuda", device, [self._cuda_provider(), "CPUExecutionProvider"]
                                    ) if self.on_gpu else None
        weak = ort_trt_fp16_problem(self.ort) if name == "ort-trt" and precision == "fp16" else None
        if weak:
            _log.warning("ort-trt fp16: %s; --backend trt builds strongly typed FP16 engines itself", weak)

    def _profile(self, graph: str):
        return self._profiles.get(graph, self.profile)

    # -- sessions -------------------------------------------------------------------------
    def session(self, graph: str, batch: int = 1, height: int = 0, width: int = 0):
        """The session of `graph`; for ort-trt, one whose profile takes this batch and size."""
        if self.name == "ort-trt" and height and not self._profile(graph).covers(batch, height, width):
            # only this graph's engine is rebuilt (minutes each), with a profile widened for it
            self._profiles[graph] = self._profile(graph).widened(batch, height, width)
            self._sessions.pop(graph, None)
        if graph not in self._sessions:
            self._sessions[graph] = self._create(graph)
        return self._sessions[graph]

    def _graph_file(self, graph: str) -> Path:
        """The graph's ONNX file, or its FP16 variant (made once, beside the engines)."""
        from tsf_trt.export.manifest import graph_path

        path = graph_path(self.directory, self.manifest, graph)
        if self.precision != "fp16":
            return path
        from tsf_trt.engines.engine_cache import engine_dir
        from tsf_trt.engines.fp16 import fp16_variant

        folder = engine_dir(self.directory, self.model_id) / "fp16"
        return fp16_variant(path, self.manifest["graphs"][graph]["sha256"], folder)[0]

    def _cuda_provider(self) -> tuple[str, dict[str, str]]:
        """The CUDA EP with its options: fp32 as FP32 (`use_tf32` 0; 1, TF32, is its default)."""
        return ("CUDAExecutionProvider", {"device_id": str(self.device), "cudnn_conv_algo_search": "EXHAUSTIVE",
                                          "cudnn_conv_use_max_workspace": "1", "do_copy_in_default_stream": "1",
                                          "use_tf32": "0"})

    def _providers(self, graph: str) -> list:
        """Execution providers with their options, for one graph (profiles name its inputs)."""
        if self.name == "ort":
            return list(PROVIDERS["ort"])
        cuda = self._cuda_provider()
        if self.name == "ort-cuda":
            return [cuda, "CPUExecutionProvider"]
        from tsf_trt.engines.engine_cache import engine_dir
        from tsf_trt.engines.profiles import input_shapes, ort_profile_options

        folder = engine_dir(self.directory, self.model_id) / "ort-trt"
        folder.mkdir(parents=True, exist_ok=True)
        inputs = self.manifest["graphs"][graph]["inputs"]
        options = {"device_id": str(self.device), "trt_fp16_enable": "False", "trt_max_workspace_size":
                   str(TRT_WORKSPACE_BYTES), "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(folder),
                   **ort_profile_options(input_shapes(graph, inputs, self._profile(graph), self.config.downsample), inputs)}
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]

    def _create(self, graph: str):
        """The session of `graph`, checked to be the graph of the role the manifest gives
        it (:func:`tsf_trt.export.roles.check_graph`): on the CPU from the session itself,
        nothing read twice; on a GPU provider from the exported file first, before the
        TensorRT EP spends minutes on engines or an FP16 variant (no metadata) is made."""
        from tsf_trt.export.roles import check_graph, check_graph_file, session_signature

        if self.on_gpu:
            check_graph_file(self.directory, self.manifest, graph)
            return self._open(graph)
        session = self._open(graph)
        check_graph(self.directory, self.manifest, graph, *session_signature(session))
        return session

    def _open(self, graph: str):
        ort = self.ort
        path = self._graph_file(graph)
        providers = self._providers(graph)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        stem = self._cached_stem(graph)
        if stem is not None:
            found = cache_entry.find_named(self.cache_dir, stem, ".onnx")
            if found is not None:  # checked: already optimised for this graph, runtime and CPU
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    return ort.InferenceSession(str(found[0]), options, providers=providers)
                except Exception as exc:  # noqa: BLE001 - intact but refused (e.g. another build of ORT)
                    cache_entry.discard(found[0], f"ONNX Runtime refused it ({str(exc).splitlines()[0]})")
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        tmp = None
        if stem is not None:  # ORT writes the optimised graph here; it is published under its hash
            tmp = cache_entry.scratch(self.cache_dir / f"{stem}.onnx")
            options.optimized_model_filepath = str(tmp)
        if self.on_gpu:
            preload_gpu_libraries(ort)
        try:
            with tensorrt_without_tf32() if self.name == "ort-trt" else contextlib.nullcontext():
                session = ort.InferenceSession(str(path), options, providers=providers)
        except BaseException as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # nothing is published from a failed session
            if isinstance(exc, Exception):  # ORT raises its own types for broken graphs
                raise TsfError(f"{path}: ONNX Runtime cannot load this graph ({str(exc).splitlines()[0]})") from None
            raise
        if tmp is not None:
            self._keep(graph, stem, tmp)
        return session

    def _keep(self, graph: str, stem: str, written: Path) -> None:
        """Publish the optimised graph ORT wrote to `written` (caching is optional: a folder that
        cannot take it costs the optimiser's time next run)."""
        try:
            if written.is_file():
                cache_entry.publish_named(written, self.cache_dir, stem, ".onnx")
        except (OSError, TsfError) as exc:
            _log.info("onnxruntime: the optimised %s graph was not cached (%s)", graph, exc)
        finally:
            written.unlink(missing_ok=True)

    def _cached_stem(self, graph: str) -> str | None:
        """The name of `graph`'s optimised graph in the cache, before its own hash: its key (graph
        and its hash, ORT version, CPU). None when not cached (no cache folder, a GPU provider)."""
        if self.cache_dir is None or self.name != "ort":
            return None
        sha = self.manifest["graphs"][graph]["sha256"][:16]
        return f"{graph}.{sha}.ort{self.ort.__version__}.{machine_key()}"

    # -- the interface --------------------------------------------------------------------
    def _fit(self, features: Any) -> tuple[int, int, int]:
        """(slices, H, W) of a batch of feature maps: what an ort-trt profile must take."""
        down, shape = self.config.downsample, dims(features)
        return shape[0], shape[-2] * down, shape[-1] * down

    def _run(self, session, feeds: Mapping[str, Any], keep: tuple[bool, ...]) -> list:
        """`session` on `feeds`: numpy in and out, or (on a GPU) through IOBinding, output k left
        on the device when keep[k]."""
        if self.binding is None:
            return session.run(None, dict(feeds))
        return self.binding.run(session, feeds, keep)

    def _encode(self, images: np.ndarray) -> Any:
        session = self.session("encoder", len(images), *images.shape[-2:])
        return self._run(session, {"image": np.ascontiguousarray(images, np.float32)}, (True,))[0]

    def _fuse(self, features: Mapping[int, Any], task_code: np.ndarray):
        some = next(iter(features.values()))
        stack = None if self.binding is None else self.binding.stack
        fused, fused_avg, weights = self._run(self.session("fusion", *self._fit(some)),
                                              fusion_feeds(features, task_code, self.config, stack), (True, True, False))
        return fused, fused_avg, weights

    def _decode(self, features: Any, target: int, features_avg: Any | None):
        join = None if self.binding is None else self.binding.join
        graph, feeds = decoder_feeds(self.manifest, self.config, features, target, features_avg,
                                     baked=self.decoder_kind == "baked", join=join)
        image = self._run(self.session(graph, *self._fit(features)), feeds, (False,))[0]  # the images: to the host
        return split_decoded(image, dims(features)[0], features_avg is not None)

    def to_numpy(self, array: Any, channel: int | None = None) -> np.ndarray:
        """A stage output on the host (an OrtValue kept on the device is copied back)."""
        array = array if isinstance(array, np.ndarray) else array.numpy()
        return array if channel is None else array[:, channel]

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        where = f", GPU {self.device}, {self.precision}" if self.on_gpu else ""
        return f"onnxruntime {self.ort.__version__} ({', '.join(PROVIDERS[self.name][:1])}{where}{threads}, " \
               f"{self.decoder_kind} decoder)"
