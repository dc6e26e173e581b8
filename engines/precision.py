"""Precision rules: which graphs run in FP16, and which operators stay in FP32 inside them.

TensorRT 11 builds every network strongly typed and has no FP16 builder flag, so
precision has to live in the graph itself: an FP16 engine is built from an FP16
variant of the ONNX graph (:mod:`tsf_trt.engines.fp16`). The rules here decide
which graphs get that variant, for TensorRT 10 and 11 alike.
"""

from __future__ import annotations

from tsf_trt.errors import TsfError

#: What `--precision` accepts for engines.
PRECISIONS = ("fp32", "fp16", "best")

#: Operators computed in FP32 inside FP16 graphs. InstanceNormalization in FP16 is a
#: known source of large errors (mean and variance over H*W values); reductions that
#: average or sum many values need an FP32 accumulator for the same reason; Softmax is
#: the contribution weight ω, which is reported and must stay exact.
KEEP_FP32_OPS = frozenset({
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization",
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
})

#: Graphs that `best` keeps in FP32: the fusion graph computes ω and the attention maps
#: (a few percent of the FLOPs of a task), so FP16 would buy little there.
BEST_FP32_GRAPHS = frozenset({"fusion"})


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise TsfError(f"unknown engine precision '{precision}': use one of {', '.join(PRECISIONS)}")
    return precision


def graph_precision(precision: str, graph: str) -> str:
    """The precision one graph is built in ('fp32' or 'fp16') under the model-wide `precision`.

    fp32: every graph in FP32 (TF32 off, so it is comparable with the CPU runtimes).
    fp16: every graph from its FP16 variant (norms, reductions and ω in FP32, TF32 off there too).
    best: FP16 for the encoder and decoders, where the convolutions are; FP32 for fusion.
    """
    check_precision(precision)
    if precision == "best":
        return "fp32" if graph in BEST_FP32_GRAPHS else "fp16"
    return precision

