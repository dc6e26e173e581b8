"""OpenVINO on the CPU: the export's ONNX graphs, read directly (no conversion step).

Each graph is read and checked for its role once (:mod:`tsf_trt.export.roles`, from the
metadata OpenVINO keeps under `framework`), changed where OpenVINO's kernels lose precision or
time on it (:mod:`tsf_trt.backends.openvino_graph`: fp32 graphs' instance norms centred, the decoder's
few-channel head split into rows; the same result in exact arithmetic), then compiled once per
input shape, with the shape made static: OpenVINO's CPU plugin plans memory and picks kernels for a known
shape (docs/backends.md, "OpenVINO"). Compiled models are exported
(`export_model`) into verified cache entries in the export's `.openvino-cache` folder
(:mod:`tsf_trt.files.cache_entry`), keyed by graph hash, input shapes, settings, OpenVINO version and
CPU, so a later run imports them (`import_model`) instead of compiling. Not OpenVINO's own
CACHE_DIR: its blobs are loaded unchecked, and flipped bits in one changed the synthesis by up
to 22 on the 0-1000 scale (issue 22); a damaged entry is rebuilt with one warning. The graph is
still read and checked for its role first, so a swapped manifest never imports another
graph's model.

Precision: `fp32` asks INFERENCE_PRECISION_HINT f32 (exact: agrees with ONNX Runtime to
1e-4); `bf16` asks bf16, which OpenVINO only runs on CPUs with native bf16 and otherwise
silently runs in f32. So the backend never reports what it asked for: `runtime_precision`
is read back from the compiled model (the runtime precision of its convolutions), first
from a one-convolution probe when the backend is built (describe() is logged before
anything runs), then from every graph compiled. A bf16 request that runs f32 is a warning
and reads "fp32 (bf16 asked: ...)". The bf16 path itself has not run here (this CPU has
no bf16); only what OpenVINO reports for it is checked.

`int8` runs the export's int8 graphs (:mod:`tsf_trt.export.quantize`: the encoder and the
per-target decoders quantised by NNCF, OpenVINO models listed in the manifest's "int8" block)
with the hint f32: their FakeQuantize nodes make OpenVINO run the convolutions in u8 (read back:
"int8"), the rest in f32; the fusion and the code-input decoder, which have no int8 graph, run
f32. The probe compiles one quantised convolution, so a CPU where OpenVINO runs it in f32 is
known (and said) before anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.backends.base import Backend
from tsf_trt.backends.onnx_graphs import decoder_feeds, fusion_feeds, split_decoded
from tsf_trt.backends.openvino_graph import VERSION as GRAPH_CHANGES
from tsf_trt.backends.openvino_graph import prepare
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.export.manifest import PRECISION_KEY
from tsf_trt.files import cache_entry
from tsf_trt.machine.cache_dir import machine_key, runtime_cache
from tsf_trt.model.config import ModelConfig

_log = logging.getLogger(__name__)

#: --precision -> OpenVINO's INFERENCE_PRECISION_HINT (int8: the graphs' FakeQuantize nodes set it, the rest f32).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: OpenVINO element types -> how tsf-trt spells a precision (u8/i8: quantised convolutions).
PRECISION_OF = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8"}
#: Runtime layers whose precision is the precision a graph runs at (the rest are reorders,
#: inputs, norms that OpenVINO keeps in f32 in any mode).
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise TsfError("openvino is not installed: pip install openvino (x86-64 and ARM CPUs)") from None
    return openvino


def ran_precision(compiled: Any) -> str:
    """The precision a compiled model really runs at: that of its convolutions and matrix
    products in the runtime graph (int8 if any of them runs u8/i8, else bf16 if any of them
    is), else the compiled hint."""
    seen = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            seen.add(info["runtimePrecision"].astype(str))
    for kind in ("u8", "i8", "bf16", "f16", "f32"):
        if kind in seen:
            return PRECISION_OF[kind]
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return PRECISION_OF.get(hint, hint)


def _signature(model: Any) -> tuple[dict, dict, dict[str, str]]:
    """(inputs, outputs, metadata) of a read OpenVINO model, for :func:`~tsf_trt.export.roles.check_graph`."""
    def dims(port) -> list[int | None]:
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    meta = {}
    if model.has_rt_info("framework"):  # the ONNX graph's metadata_props
        meta = {k: v.astype(str) for k, v in model.get_rt_info("framework").astype(dict).items()}
    return ({p.get_any_name(): dims(p) for p in model.inputs}, {p.get_any_name(): dims(p) for p in model.outputs},
            meta)


class OpenVinoBackend(Backend):
    #: Smaller batches than ONNX Runtime's (4 slices at the demo's head frame instead of 13, 2 at 240²
    #: instead of 9): faster for OpenVINO with AVX2 and AVX-512 kernels, slower for ONNX Runtime, the
    #: same for the paper configuration (docs/performance.md, "Where the time goes on a CPU without bf16").
    cpu_batch_bytes = 10 << 20

    def __init__(self, export_dir: str | Path, *, threads: int | None = None, precision: str = "fp32",
                 decoder: str = "baked", cache: bool = True):
        from tsf_trt.export.manifest import read_manifest

        if decoder not in ("baked", "code"):
            raise TsfError(f"decoder must be 'baked' or 'code', got '{decoder}'")
        self.ov = import_openvino()
        self.directory = Path(export_dir)
        self.manifest = read_manifest(self.directory)
        config = ModelConfig.from_dict(self.manifest["model_config"])
        super().__init__(config, "fusion" in self.manifest["graphs"], self.manifest.get("model_id", ""),
                         name="openvino", precision=precision)
        self.threads = threads
        self.decoder_kind = decoder
        self.core = self.ov.Core()
        self.cache_dir = runtime_cache(self.directory, "openvino") if cache else None
        self.settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                                         "NUM_STREAMS": 1}
        if threads:
            self.settings["INFERENCE_NUM_THREADS"] = threads
        self.imported = 0  # compiled models taken from the cache (tests, bench)
        #: The decoder's head split into rows (openvino_graph.rows_then_sum) where it runs f32; not under
        #: bf16, where its rows would be rounded once more. scripts.frame_speed measures without it.
        self.split_rows = precision != "bf16"
        #: Centre the norms of the int8 graphs too (openvino_graph.centre_norms; fp32 graphs always are).
        #: Off: quantisation's error dwarfs what centring saves there, and it costs time (docs/performance.md,
        #: "Where the time goes on a CPU without bf16"); scripts.int8_study measures with it on.
        self.centre_int8 = False
        #: The ConvLSTM's gate convolution as one convolution per gate (openvino_graph.convolution_per_slice):
        #: exact in fp32, faster at every precision. scripts.frame_speed's default-joined runs without it.
        self.split_gates = True
        self._models: dict[str, Any] = {}       # graph -> read, role-checked model (dynamic shapes)
        self._compiled: dict[tuple, Any] = {}   # (graph, input shapes) -> compiled model
        self._fp32_only: set[str] = set()  # graphs run fp32 under --precision int8 (no int8 graph), said once
        if precision == "int8":
            self._check_int8_export()
        self.runtime_precision = self._probe_precision()
        if self.runtime_precision != precision:
            _log.warning("openvino: --precision %s asked, but OpenVINO runs %s on this CPU (%s)", precision,
                         self.runtime_precision, self._capabilities())

    # -- models ---------------------------------------------------------------------------
    def model(self, graph: str) -> Any:
        """The read model of `graph`, checked once to be the graph of its role."""
        if graph not in self._models:
            from tsf_trt.export.manifest import graph_path
            from tsf_trt.export.roles import check_graph

            int8 = self._int8(graph)
            path = self.directory / int8["file"] if int8 else graph_path(self.directory, self.manifest, graph)
            try:
                model = self.core.read_model(str(path))  # an int8 model's .bin beside it is read with it
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own types for broken graphs
                raise TsfError(f"{path}: OpenVINO cannot read this graph ({str(exc).splitlines()[0]})") from None
            signature = _signature(model)
            check_graph(self.directory, self.manifest, graph, *signature)
            if int8 and signature[2].get(PRECISION_KEY) != "int8":
                raise ModelError(path, f"is listed as the int8 '{graph}' graph but is not one (its metadata says "
                                       "so): export again")
            self._models[graph] = prepare(model, self.ov.opset13, **self._changes(graph))
        return self._models[graph]

    def compiled(self, graph: str, feeds: Mapping[str, np.ndarray]) -> Any:
        """`graph` compiled for the shapes of `feeds` (once; imported from the cache when there)."""
        key = (graph, *((name, array.shape) for name, array in sorted(feeds.items())))
        if key not in self._compiled:
            model = self.model(graph)  # read and checked for its role, cached or not
            shapes = {name: list(array.shape) for name, array in sorted(feeds.items())}
            compiled = self._import(graph, shapes)
            if compiled is None:
                compiled = self._compile(graph, model, shapes)
            ran = ran_precision(compiled)
            if self.precision == "int8" and not self._int8(graph):
                if graph != "fusion" and graph not in self._fp32_only:  # the fusion is fp32 by design
                    _log.warning("openvino: this export has no int8 %s graph: it runs %s", graph, ran)
                    self._fp32_only.add(graph)
            elif ran != self.runtime_precision:  # the probe and a real graph disagree: the graph is the truth
                _log.warning("openvino: the %s graph runs %s, not %s", graph, ran, self.runtime_precision)
                self.runtime_precision = ran
            self._compiled[key] = compiled
        return self._compiled[key]

    def _changes(self, graph: str) -> dict[str, bool]:
        """Which of openvino_graph's changes `graph` gets (prepare's arguments; cached models are keyed by them)."""
        return {"split_rows": self.split_rows, "centre": not self._int8(graph) or self.centre_int8,
                "split_gates": self.split_gates}

    def _entry_key(self, graph: str, shapes: dict[str, list[int]]) -> dict[str, Any]:
        """Everything a compiled model depends on: checked in its cache entry before it is imported."""
        int8 = self._int8(graph)
        return {"kind": "openvino-compiled-model", "graph": graph,
                "graph_sha256": self.manifest["graphs"][graph]["sha256"], "shapes": shapes,
                **({"int8_sha256": [int8["sha256"], int8["weights_sha256"]]} if int8 else {}),
                "settings": self.settings, "openvino": self.ov.__version__, "machine": machine_key(),
                "graph_changes": {"version": GRAPH_CHANGES, **self._changes(graph)}}

    def _entry_path(self, graph: str, shapes: dict[str, list[int]]) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{graph}.{cache_entry.digest(self._entry_key(graph, shapes))}.compiled"

    def _import(self, graph: str, shapes: dict[str, list[int]]) -> Any:
        """The compiled model from its checked cache entry, or None."""
        path = self._entry_path(graph, shapes)
        entry = cache_entry.load_or_none(path, self._entry_key(graph, shapes)) if path is not None else None
        if entry is None:
            return None
        try:
            compiled = self.core.import_model(entry.payload, "CPU", self.settings)
        except Exception as exc:  # noqa: BLE001 - intact but refused (e.g. another OpenVINO build)
            cache_entry.discard(path, f"OpenVINO refused it ({str(exc).splitlines()[0]})")
            return None
        self.imported += 1
        return compiled

    def _compile(self, graph: str, model: Any, shapes: dict[str, list[int]]) -> Any:
        """Compile `graph` for `shapes` and keep it in the cache (optional: a folder that cannot
        take it costs the compile time next run)."""
        model = model.clone()
        model.reshape(shapes)
        try:
            compiled = self.core.compile_model(model, "CPU", self.settings)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for what it cannot compile
            text = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise TsfError(f"OpenVINO cannot compile the {graph} graph for {text} "
                           f"({str(exc).splitlines()[0]})") from None
        path = self._entry_path(graph, shapes)
        if path is not None:
            try:
                blob = compiled.export_model()
                cache_entry.save(path, blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob),
                                 self._entry_key(graph, shapes))
            except (OSError, TsfError, RuntimeError) as exc:
                _log.info("openvino: the compiled %s graph was not cached (%s)", graph, exc)
        return compiled

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Any:
        return self.compiled(graph, feeds)(feeds)  # outputs are copies (share_outputs=False)

    def _int8(self, graph: str) -> dict[str, Any] | None:
        """The int8 entry `graph` runs from under --precision int8, else None (fp32 file)."""
        from tsf_trt.export.manifest import int8_graph

        return int8_graph(self.manifest, graph) if self.precision == "int8" else None

    def _check_int8_export(self) -> None:
        """--precision int8 on an export without int8 graphs: one line that says how to make them."""
        if self._int8("encoder") is None:
            raise TsfError(f"{self.directory}: this export has no int8 graphs: make them with "
                           "tsf-trt export --precision int8 -m MODEL -o MODEL/export (a model directory's runs "
                           "take its export/ first; docs/backends.md, 'int8')")

    def _probe_precision(self) -> str:
        """What OpenVINO runs a convolution at with these settings on this CPU (a one-node
        graph, not cached): known before the first real graph compiles. Under int8 the convolution
        is quantised as NNCF quantises one (FakeQuantize on its input and on its weights)."""
        ops = self.ov.opset13
        image = ops.parameter([1, 8, 8, 8], np.float32, name="x")
        data, weights = image, ops.constant(np.full((8, 8, 3, 3), 0.5, np.float32))
        if self.precision == "int8":
            one = [ops.constant(np.float32(v)) for v in (-1, 1, -1, 1)]
            data, weights = ops.fake_quantize(image, *one, 256), ops.fake_quantize(weights, *one, 255)
        conv = ops.convolution(data, weights, [1, 1], [1, 1], [1, 1], [1, 1])
        return ran_precision(self.core.compile_model(self.ov.Model([conv], [image], "probe"), "CPU", self.settings))

    def _capabilities(self) -> str:
        caps = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        kind = "INT8" if self.precision == "int8" else "BF16"
        native = kind in caps
        return f"its OPTIMIZATION_CAPABILITIES are {', '.join(caps)}" + ("" if native else f": no native {kind.lower()}")

    # -- the interface --------------------------------------------------------------------
    def _encode(self, images: np.ndarray) -> np.ndarray:
        return self._run("encoder", {"image": np.ascontiguousarray(images, np.float32)})["features"]

    def _fuse(self, features: Mapping[int, np.ndarray], task_code: np.ndarray):
        out = self._run("fusion", fusion_feeds(features, task_code, self.config))
        return out["fused"], out["fused_avg"], out["weights"]

    def _decode(self, features: np.ndarray, target: int, features_avg: np.ndarray | None):
        graph, feeds = decoder_feeds(self.manifest, self.config, features, target, features_avg,
                                     baked=self.decoder_kind == "baked")
        return split_decoded(self._run(graph, feeds)["image"], len(features), features_avg is not None)

    def to_numpy(self, array: np.ndarray, channel: int | None = None) -> np.ndarray:
        return array if channel is None else array[:, channel]

    def describe(self) -> str:
        ran = self.runtime_precision
        precision = ran if ran == self.precision else f"{ran} ({self.precision} asked: {self._capabilities()})"
        if ran == "int8":
            precision += " (encoder and per-target decoders; fusion fp32)"
        threads = f", {self.threads} threads" if self.threads else ""
        return f"openvino {self.ov.__version__.split('-')[0]} (CPU, {precision}{threads}, {self.decoder_kind} decoder)"

    def _release(self) -> None:
        self._compiled.clear()
        self._models.clear()
