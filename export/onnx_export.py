"""Checkpoint -> encoder / fusion / decoder ONNX graphs + manifest, verified, all or nothing.

Graphs are traced with the TorchScript-based exporter (`dynamo=False`): it takes
`dynamic_axes` directly, handles runtime-computed convolution weights (the
HyperConvs) and produces plain opset-17 graphs that ONNX Runtime and TensorRT parse.
They are then simplified with onnxslim (pure Python, maintained, no native build
step — onnxsim needs a compiled extension that is not always available as a wheel),
and verified against PyTorch. Each graph records its role, target, model id and config
hash in its ONNX metadata (:mod:`tsf_trt.export.roles`), so that runtimes can tell a
graph listed under the wrong role in the manifest.
"""

from __future__ import annotations

import json
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsf_trt import sequences
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.files.atomic import atomic_dir, check_folder_target
from tsf_trt.files.ownership import EXPORT_DIR
from tsf_trt.model import TSFSeq2Seq
from tsf_trt.version import __version__

from tsf_trt.export.graphs import BakedDecoderGraph, DecoderGraph, EncoderGraph, FusionGraph
from tsf_trt.export.manifest import DEFAULT_OPSET, FORMAT, FORMAT_VERSION, MANIFEST, sha256
from tsf_trt.export.roles import graph_metadata

FLOPS_SIZE = (240, 240)  # FLOPs are reported per slice at the BraTS in-plane size
Step = Callable[[str], None]


@dataclass
class GraphSpec:
    module: nn.Module
    inputs: dict[str, list[int | str]]   # name -> dims; strings are dynamic axes
    outputs: dict[str, list[int | str]]
    target: str | None = None

    def example(self, n: int = 2, height: int = 32, width: int = 32, c_feat: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs of the declared shapes (dynamic axes filled in) for tracing."""
        fill = {"N": n, "H": height, "W": width, "h": height // 4, "w": width // 4}
        tensors = []
        for dims in self.inputs.values():
            shape = [fill[d] if isinstance(d, str) else d for d in dims]
            tensors.append(torch.rand(*shape) * 2 - 1 if len(shape) > 2 else torch.zeros(*shape))
        return tuple(tensors)


def graph_specs(model: TSFSeq2Seq, targets: Sequence[int], *, fold: bool = True) -> dict[str, GraphSpec]:
    """Every graph an export holds, keyed by its manifest name."""
    cfg = model.config
    image = ["N", cfg.in_channels, "H", "W"]
    feats = ["N", cfg.features, "h", "w"]
    specs = {
        "encoder": GraphSpec(EncoderGraph(model.encoder, fold), {"image": image}, {"features": feats}),
        "decoder": GraphSpec(DecoderGraph(model.decoder, fold), {"features": feats, "target_code": [1, cfg.style_dim]},
                             {"image": image}),
    }
    if model.fusion is not None:
        specs["fusion"] = GraphSpec(
            FusionGraph(model.fusion),
            {"features": ["N", cfg.n_sequences, cfg.features, "h", "w"], "task_code": [1, cfg.task_dim]},
            {"fused": feats, "fused_avg": feats, "weights": [cfg.n_sequences]},
        )
    if fold:
        for target in targets:
            code = torch.from_numpy(sequences.target_code(target, cfg.style_dim))
            with torch.no_grad():
                baked = BakedDecoderGraph(model.decoder, code)
            specs[f"decoder_{sequences.NAMES[target]}"] = GraphSpec(
                baked, {"features": feats}, {"image": image}, target=sequences.NAMES[target])
    return specs


def _with_codes(spec: GraphSpec, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Valid codes for tracing: a real task (T1, FLAIR -> T2), not zeros (Eq. 2 divides by Σ m·ω)."""
    fixed = []
    for name, tensor in zip(spec.inputs, args):
        if name == "task_code":
            tensor = torch.from_numpy(sequences.task_code([0, 3], 2))
        elif name == "target_code":
            tensor = torch.from_numpy(sequences.target_code(2, tensor.shape[1]))
        fixed.append(tensor)
    return tuple(fixed)


def export_graph(spec: GraphSpec, path: Path, opset: int, simplify: bool = True,
                 metadata: dict[str, str] | None = None) -> None:
    """Trace one graph to `path`, simplify it with onnxslim, record `metadata` in its
    `metadata_props`, and check it."""
    import onnx

    dynamic = {name: {i: d for i, d in enumerate(dims) if isinstance(d, str)}
               for name, dims in {**spec.inputs, **spec.outputs}.items()}
    module = spec.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices, not ours to act on
        torch.onnx.export(module, _with_codes(spec, spec.example()), str(path), dynamo=False,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes={k: v for k, v in dynamic.items() if v}, opset_version=opset,
                          do_constant_folding=True)
    graph = onnx.load(str(path))
    if simplify:
        import onnxslim

        graph = onnxslim.slim(graph)
    if metadata:  # added to (not replacing) whatever the exporter or onnxslim wrote
        onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, **metadata})
    if simplify or metadata:
        onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def graph_io(path: Path) -> dict[str, dict[str, list[int | str]]]:
    """Tensor names and shapes as stored in the graph (what a runtime sees)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in graph.input},
            "outputs": {v.name: dims(v) for v in graph.output}}


def count_graph_flops(path: Path, spec: GraphSpec) -> dict[str, int]:
    import onnx

    from tsf_trt.export.flops import count_flops

    height, width = FLOPS_SIZE
    fill = {"N": 1, "H": height, "W": width, "h": height // 4, "w": width // 4}
    shapes = {name: [fill[d] if isinstance(d, str) else d for d in dims] for name, dims in spec.inputs.items()}
    return count_flops(onnx.load(str(path)), shapes)


def export_model(model: TSFSeq2Seq, out_dir: str | Path, *, targets: Sequence[int] | None = None,
                 opset: int = DEFAULT_OPSET, verify: bool = True, overwrite: bool = False,
                 simplify: bool = True, step: Step | None = None, origin: dict[str, Any] | None = None,
                 model_id: str | None = None, own_location: bool = False) -> dict[str, Any]:
    """Write an export directory; nothing is left under `out_dir` unless every step passed.

    `model_id` is the identity the graphs and manifest record (a ModelSource's); None: a
    hash of the weights, for a model built in Python. With `overwrite`, only an export
    directory that holds nothing else is replaced (:data:`tsf_trt.files.ownership.EXPORT_DIR`),
    anything at all with `own_location` (the cache's exports)."""
    from tsf_trt.model.checkpoint import weights_id

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ModelError(out_dir, "exists; use --overwrite to replace it")
    check_folder_target(out_dir, overwrite, EXPORT_DIR, own_location=own_location)  # before any work
    model_id = model_id or weights_id(model)
    step = step or (lambda message: None)
    targets = list(range(sequences.N_SEQUENCES)) if targets is None else list(targets)
    model = model.float().eval()
    with atomic_dir(out_dir, EXPORT_DIR, own_location=own_location) as tmp:
        specs = graph_specs(model, targets)
        graphs: dict[str, Any] = {}
        for name, spec in specs.items():
            step(f"exporting {name}")
            path = tmp / f"{name}.onnx"
            export_graph(spec, path, opset, simplify, graph_metadata(name, model_id, model.config))
            graphs[name] = {"file": path.name, **graph_io(path), "target": spec.target,
                            "flops_per_slice": count_graph_flops(path, spec)["total"]}
        step("counting FLOPs of the unfolded ConvLSTMs")
        flops = _flops_report(model, graphs, tmp, opset)
        verification = None
        if verify:
            from tsf_trt.export.verify import verify_export

            step("verifying against PyTorch")
            verification = verify_export(model, tmp, graphs)
        for name, graph in graphs.items():
            graph["sha256"] = sha256(tmp / graph["file"])
        manifest = _manifest(model, model_id, graphs, flops, verification, opset, origin)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _flops_report(model: TSFSeq2Seq, graphs: dict[str, Any], tmp: Path, opset: int) -> dict[str, Any]:
    """Per-slice FLOPs of encoder and code decoder with and without the t=1 folding."""
    unfolded = graph_specs(model, [], fold=False)
    report: dict[str, Any] = {"size": list(FLOPS_SIZE), "batch": 1}
    for name in ("encoder", "decoder"):
        path = tmp / f"{name}.unfolded.onnx"
        export_graph(unfolded[name], path, opset)
        before = count_graph_flops(path, unfolded[name])["total"]
        path.unlink()
        after = graphs[name]["flops_per_slice"]
        report[name] = {"unfolded": before, "folded": after, "saved": round(1 - after / before, 4)}
    return report


def _manifest(model: TSFSeq2Seq, model_id: str, graphs: dict[str, Any], flops: dict[str, Any], verification: Any,
              opset: int, origin: dict[str, Any] | None) -> dict[str, Any]:
    import onnx

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tsf_trt_version": __version__,
        "model_id": model_id,
        "model_config": model.config.to_dict(),
        "stages": ["seq2seq", "tsf"] if model.has_fusion else ["seq2seq"],
        "sequences": {"names": list(sequences.NAMES), "display": list(sequences.DISPLAY),
                      "aliases": sequences.ALIASES},
        "codes": {
            "task_code": "(1, 8) float32: [source mask by sequence index | target one-hot]",
            "target_code": f"(1, {model.config.style_dim}) float32: one-hot at the target index",
        },
        "normalisation": {"input": "clip to [0, 2*p99] of the whole volume, then scale to [-1, 1]",
                          "output": "network output in [-1, 1]"},
        "convlstm": "t = 1 from the zero state, folded: h-half of the inputs and the forget gate removed",
        "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "graphs": graphs,
        "flops_per_slice": flops,
        "verification": verification,
        "origin": origin or {},
    }


__all__ = ["DEFAULT_OPSET", "GraphSpec", "TsfError", "export_model", "graph_specs"]
