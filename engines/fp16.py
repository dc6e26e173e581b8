"""FP16 variants of the exported graphs, for strongly typed TensorRT builds (10 and 11 alike).

Why our own pass rather than onnxconverter-common's converter with an op block list:
blocking op types alone would still turn the code path to FP16 — the HyperConv kernels
computed from the task/target code and the fusion weights ω derived from it — and would
need a hand-kept list of float32-only input slots. This pass keeps a rule that follows
the network instead:

* a node runs in FP16 when it reads an activation (a tensor computed from the image or
  feature inputs) and is not in :data:`~tsf_trt.engines.precision.KEEP_FP32_OPS`
  (InstanceNormalization, Softmax, averaging reductions);
* every other node stays FP32: the few tiny ops on the codes (kernel generation, ω),
  which cost nothing and keep ω exact;
* Casts are inserted where the two meet, float initializers read by FP16 nodes are
  stored in FP16 (clipped to its range), and graph inputs and outputs stay FP32, so
  the runtime code is the same for both precisions.

The result passes `onnx.checker` with full type inference; tests check that every kept
operator really computes in FP32 between Casts. Pure Python (onnx + numpy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsf_trt.errors import TsfError

from tsf_trt.engines.precision import KEEP_FP32_OPS

#: Bump when the pass changes: the variant's file name and the engine keys follow it.
PASS_VERSION = 1
FP16_MAX = 65504.0
#: Input slots that ONNX types as float32 whatever the data type is.
FLOAT32_SLOTS = {"Resize": {1, 2}, "Upsample": {1}}
#: Operators that read only the shape of a tensor: any element type will do.
TYPE_AGNOSTIC = frozenset({"Shape", "Size"})
#: Operators whose output type is fixed by an attribute: left exactly as they are.
FIXED_OUTPUT_TYPE = frozenset({"Cast", "CastLike", "EyeLike", "RandomNormalLike", "RandomUniformLike"})


@dataclass
class Fp16Report:
    fp16_nodes: int = 0
    fp32_nodes: dict[str, int] = field(default_factory=dict)   # op type -> count, among activation ops kept FP32
    casts: int = 0
    initializers: int = 0

    def describe(self) -> str:
        kept = ", ".join(f"{n} {op}" for op, n in sorted(self.fp32_nodes.items())) or "none"
        return (f"{self.fp16_nodes} nodes in FP16; kept in FP32 on activations: {kept}; {self.casts} Casts inserted; "
                f"{self.initializers} initializers stored in FP16")


def convert_to_fp16(model, *, keep_fp32: Iterable[str] = KEEP_FP32_OPS, activations: Iterable[str] | None = None):
    """An FP16 copy of `model` (an onnx.ModelProto) and a report; `model` is not modified.

    `activations`: the graph inputs whose data flows through the network in FP16
    (default: every float input of rank >= 3, i.e. images and features, not the codes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    float32, float16 = TensorProto.FLOAT, TensorProto.FLOAT16
    keep_fp32 = frozenset(keep_fp32)
    source = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in source.node for a in n.attribute):
        raise TsfError("the FP16 pass does not handle graphs with control flow (If/Loop/Scan)")
    types = _element_types(model)
    active = set(activations) if activations is not None else {
        i.name for i in source.input
        if i.type.tensor_type.elem_type == float32 and len(i.type.tensor_type.shape.dim) >= 3}
    initializers = {t.name: t for t in source.initializer}
    report = Fp16Report()
    halves: set[str] = set()          # tensors that now hold FP16 data
    converted: dict[tuple[str, int], str] = {}
    new_inits = []
    nodes = []

    def is_float(name: str) -> bool:
        if name not in types:
            raise TsfError(f"FP16 pass: cannot infer the element type of tensor '{name}'")
        return types[name] == float32

    def as_type(name: str, to: int) -> str:
        """A tensor holding `name` in element type `to`: itself, an FP16 initializer or a Cast."""
        if not name or not is_float(name) or (name in halves) == (to == float16):
            return name
        if (name, to) not in converted:
            suffix = "16" if to == float16 else "32"
            if name in initializers and to == float16:
                data = np.clip(numpy_helper.to_array(initializers[name]), -FP16_MAX, FP16_MAX).astype(np.float16)
                new_inits.append(numpy_helper.from_array(data, f"{name}__fp16"))
                report.initializers += 1
            else:
                nodes.append(helper.make_node("Cast", [name], [f"{name}__to{suffix}"], name=f"{name}__cast{suffix}",
                                              to=to))
                report.casts += 1
            converted[(name, to)] = new_inits[-1].name if name in initializers and to == float16 else f"{name}__to{suffix}"
        return converted[(name, to)]

    for original in source.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        reads_activation = any(i in active for i in node.input)
        if reads_activation:
            active.update(node.output)
        half = (reads_activation and node.op_type not in keep_fp32 and node.op_type not in TYPE_AGNOSTIC
                and node.op_type not in FIXED_OUTPUT_TYPE and any(is_float(o) for o in node.output if o))
        if reads_activation and node.op_type in keep_fp32:
            report.fp32_nodes[node.op_type] = report.fp32_nodes.get(node.op_type, 0) + 1
        if node.op_type not in TYPE_AGNOSTIC:
            fixed = FLOAT32_SLOTS.get(node.op_type, set())
            node.input[:] = [as_type(name, float16 if half and slot not in fixed else float32)
                             for slot, name in enumerate(node.input)]
        if half:
            halves.update(o for o in node.output if o and is_float(o))
            report.fp16_nodes += 1
        nodes.append(node)

    for output in source.output:  # outputs stay FP32: cast the FP16 result under a new name
        if output.name in halves:
            inner = f"{output.name}__fp16out"
            for node in nodes:
                node.input[:] = [inner if i == output.name else i for i in node.input]
                node.output[:] = [inner if o == output.name else o for o in node.output]
            nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}__cast32", to=float32))
            report.casts += 1
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, source.name, list(source.input), list(source.output),
                              [t for t in (*source.initializer, *new_inits) if t.name in used])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name=model.producer_name, producer_version=model.producer_version)
    out.doc_string = f"FP16 variant by tsf-trt (pass v{PASS_VERSION}): {report.describe()}"
    return out, report


def _element_types(model) -> dict[str, int]:
    """Element type of every named tensor, from ONNX shape inference on the original graph."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:  # Constant outputs may lack value_info in some exporters
        if node.op_type == "Constant" and node.output[0] not in types:
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def fp16_variant(source: Path, source_sha256: str, directory: Path) -> tuple[Path, str | None]:
    """The FP16 variant of `source` in `directory` (written once, checked with onnx.checker before
    it is published); returns its path and, when it was made now, the pass report.

    TensorRT's parser and ONNX Runtime read it by path, so it is a plain ONNX file whose name
    holds its own SHA-256 (:func:`tsf_trt.files.cache_entry.find_named`): checked each time it is
    found, a damaged one is removed with one warning and made again."""
    import onnx

    from tsf_trt.files import cache_entry

    stem = f"{source.stem}.{source_sha256[:16]}.fp16v{PASS_VERSION}"
    found = cache_entry.find_named(directory, stem, ".onnx")
    if found is not None:
        return found[0], None
    converted, report = convert_to_fp16(onnx.load(str(source)))
    onnx.checker.check_model(converted, full_check=True)
    return cache_entry.save_named(directory, stem, ".onnx", converted.SerializeToString()), report.describe()
