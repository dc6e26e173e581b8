"""FLOP counts of an ONNX graph at concrete input shapes.

Why: the exported convnets have dynamic batch / spatial axes, so their cost is
only defined for concrete shapes; ONNX shape inference gives every tensor's
shape, and from those shapes each node's cost follows. One multiply-add = 2 FLOPs.

Rules (Y = the node's first output, |T| = number of elements of T):
* Conv: 2 * |Y| * (C_in/group) * prod(kernel), + |Y| with a bias. The weight may
  be an initializer or a tensor computed at run time (hyper-convolutions).
* ConvTranspose: 2 * |X| * (C_out/group) * prod(kernel), + |Y| with a bias.
* MatMul: 2 * |Y| * K (numpy rules: batch dims broadcast, 1-D operands ok).
* Gemm: 2 * M * K * N, + M * N with a C input.
* Elementwise ops: multiplier * |Y| (see ``ELEMENTWISE``: Softmax 3,
  InstanceNormalization / LayerNormalization 5, Resize 4 for linear mode,
  16 for cubic, 0 for nearest).
* Reductions and global pools: |X| (one op per element read).
* MaxPool / AveragePool: |Y| * prod(kernel_shape).
* Data movement (``FREE``: reshape, concat, slice, transpose, gather, cast,
  shape ops, pad, ...): 0 and left out of the result.
* Any other op type: listed in the result with 0, so callers can spot it
  (``uncounted_ops``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx
from onnx import AttributeProto, helper

ELEMENTWISE: dict[str, int] = {
    **{op: 1 for op in (
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log",
        "Sigmoid", "HardSigmoid", "Tanh", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Gelu",
        "Erf", "Softplus", "Clip", "Min", "Max", "Mean", "Sum", "Where", "Equal", "Less",
        "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Sin", "Cos", "Floor",
        "Ceil", "Round", "Sign", "Mod", "HardSwish", "Mish", "Celu", "ThresholdedRelu")},
    "Softmax": 3, "LogSoftmax": 3, "BatchNormalization": 2,
    "InstanceNormalization": 5, "LayerNormalization": 5, "GroupNormalization": 5,
}
REDUCTIONS = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin",
})
RESIZE = {"nearest": 0, "linear": 4, "cubic": 16}
FREE = frozenset({
    "Reshape", "Concat", "Slice", "Transpose", "Gather", "GatherElements", "GatherND", "Cast",
    "CastLike", "Shape", "Size", "Identity", "Constant", "ConstantOfShape", "Split", "Unsqueeze",
    "Squeeze", "Expand", "Pad", "Flatten", "Range", "Tile", "Dropout", "ScatterND",
    "ScatterElements", "DepthToSpace", "SpaceToDepth", "NonZero",
})
MATRIX_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
POOLS = ("MaxPool", "AveragePool", "LpPool")
Shape = tuple[int, ...]


def _concrete_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy with concrete graph inputs and all other shapes re-inferred from them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    inputs = {i.name: i for i in m.graph.input if i.name not in inits}
    if unknown := sorted(set(input_shapes) - set(inputs)):
        raise ValueError(f"not graph inputs: {unknown}")
    for name, shape in input_shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise ValueError(f"input {name!r} has rank {len(dims)}, got shape {list(shape)}")
        for d, n in zip(dims, shape):
            d.dim_value = int(n)  # dim_value / dim_param are a oneof: this drops the symbol
    if missing := [n for n, v in inputs.items() if n not in input_shapes and _shape(v) is None]:
        raise ValueError(f"inputs with dynamic shapes need a concrete shape: {missing}")
    # Stale symbolic value_info from the exporter would only get in the way.
    del m.graph.value_info[:]
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)


def _shape(value: onnx.ValueInfoProto) -> Shape | None:
    """The concrete shape of a value, or None where any dim is unknown."""
    t = value.type.tensor_type
    if not t.HasField("shape") or any(not d.HasField("dim_value") for d in t.shape.dim):
        return None
    return tuple(d.dim_value for d in t.shape.dim)


def _node_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape | None]) -> int | None:
    """FLOPs of one node; None for an op type with no rule."""
    op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
    has = lambda i: len(node.input) > i and node.input[i] != ""  # noqa: E731

    def shape(name: str) -> Shape:
        if (found := shapes.get(name)) is None:
            raise ValueError(f"shape of {name!r} unknown at node {node.name!r} ({op})")
        return found

    x, y = (lambda: math.prod(shape(node.input[0]))), (lambda: math.prod(shape(node.output[0])))
    if op == "Conv":
        return 2 * y() * math.prod(shape(node.input[1])[1:]) + (y() if has(2) else 0)
    if op == "ConvTranspose":
        return 2 * x() * math.prod(shape(node.input[1])[1:]) + (y() if has(2) else 0)
    if op == "MatMul":
        return 2 * y() * shape(node.input[0])[-1]
    if op == "Gemm":
        return 2 * y() * shape(node.input[0])[0 if attrs.get("transA", 0) else 1] + (y() if has(2) else 0)
    if op == "Resize":
        return RESIZE.get(attrs.get("mode", b"nearest").decode(), 4) * y()
    if op in REDUCTIONS:
        return x()
    if op in POOLS:
        return y() * math.prod(attrs["kernel_shape"])
    return ELEMENTWISE[op] * y() if op in ELEMENTWISE else None


def count_flops(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """FLOPs per op type plus "total" for one run on inputs of the given shapes.

    Inputs not named in ``input_shapes`` must be fully static. Raises ValueError
    for dynamic inputs left unnamed, subgraphs, and shapes inference leaves unknown.
    """
    g = _concrete_model(model, input_shapes).graph
    shapes: dict[str, Shape | None] = {v.name: _shape(v) for v in (*g.input, *g.value_info, *g.output)}
    shapes.update({t.name: tuple(t.dims) for t in g.initializer})
    result: dict[str, int] = {}
    for node in g.node:
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"node {node.name!r} ({node.op_type}) has a subgraph; not supported")
        if node.op_type not in FREE:
            result[node.op_type] = result.get(node.op_type, 0) + (_node_flops(node, shapes) or 0)
    result["total"] = sum(result.values())
    return result


def uncounted_ops(flops: Mapping[str, int]) -> list[str]:
    """Op types in a ``count_flops`` result that no rule covers (counted as 0)."""
    known = {*ELEMENTWISE, *REDUCTIONS, *POOLS, *MATRIX_OPS, "Resize", "total"}
    return sorted(k for k in flops if k not in known)


def conv_flops_share(flops: Mapping[str, int]) -> float:
    """Share of the total spent in Conv, ConvTranspose, MatMul and Gemm (0 if total is 0)."""
    total = flops.get("total", 0)
    return sum(flops.get(op, 0) for op in MATRIX_OPS) / total if total else 0.0
