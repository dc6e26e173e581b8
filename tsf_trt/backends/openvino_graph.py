"""What the OpenVINO backend changes in a read graph before compiling it: each change gives the
same result in exact arithmetic, and is there because OpenVINO's CPU kernels lose precision
or time on the graph as exported (measured: docs/performance.md, "Where the time goes").

* :func:`centre_norms`: each instance norm's input centred first (precision; fp32 and bf16 graphs);
* :func:`rows_then_sum`: a wide convolution with few output channels (the decoder's 7x7 head,
  16 -> 3, and the fusion's spatial attention, 2 -> 1) computed as one row convolution with
  kernel-height times more outputs, then a one-hot depthwise column sum (time; only where it runs
  in f32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Bump when a change here changes a compiled graph: cached compiled models are keyed by it.
VERSION = 2
#: Output channels below which a convolution is split into rows (oneDNN's f32 kernels work in
#: blocks of 8 (AVX2) or 16 (AVX-512) output channels, so 3 channels leave most of a block idle).
FEW_OUTPUTS = 8


def prepare(model: Any, ops: Any, *, split_rows: bool, centre: bool) -> Any:
    """`model` with the changes asked for: norms centred with `centre` (not in an int8 graph, where
    quantisation's error dwarfs what it saves: the same PSNR over the 28 tasks, faster), rows split
    with `split_rows` (where the head runs f32; under bf16 the rows would be rounded once more)."""
    if centre:
        centre_norms(model, ops)
    if split_rows:
        rows_then_sum(model, ops)
    model.validate_nodes_and_infer_types()
    return model


def centre_norms(model: Any, ops: Any) -> Any:
    """Subtract each instance norm's mean before OpenVINO's MVN (the same result in exact
    arithmetic). Measured on the small test model: OpenVINO's CPU MVN, in the blocked
    layout it runs between convolutions, lost precision where a channel's mean is large
    against its spread (first encoder norm, mean/std up to 12: 1.2e-4 from a float64
    reference, ONNX Runtime 7.8e-6), and the synthesised image ended 1.6e-4 from ONNX
    Runtime's; centred first, the encoder agrees to 2.4e-6."""
    for node in model.get_ordered_ops():
        if node.get_type_name() == "MVN":
            data = node.input_value(0)
            mean = ops.reduce_mean(data, node.input_value(1), keep_dims=True)
            node.input(0).replace_source_output(ops.subtract(data, mean).output(0))
    model.validate_nodes_and_infer_types()
    return model


def quantised_input(node: Any) -> bool:
    """Whether a convolution's input comes from a quantiser (FakeQuantize: OpenVINO runs it int8),
    looking through the reflection padding NNCF leaves between the two."""
    source = node.input_value(0).get_node()
    while source.get_type_name() == "Pad":
        source = source.input_value(0).get_node()
    return source.get_type_name() == "FakeQuantize"


def _splittable(node: Any) -> tuple[int, int, int, int] | None:
    """(out channels, in channels, kernel height, kernel width) of a plain 2D convolution worth
    splitting into rows: few outputs, a kernel taller than one row, stride and dilation 1, a
    static weight shape, and an input that is not quantised (an int8 graph's fp32 head qualifies;
    a quantised convolution is not touched)."""
    if node.get_type_name() != "Convolution":
        return None
    shape = node.input_value(1).get_partial_shape()
    if not shape.is_static or len(shape) != 4:
        return None
    cout, cin, kh, kw = (d.get_length() for d in shape)
    attributes = node.get_attributes()
    if cout >= FEW_OUTPUTS or kh < 3 or attributes["strides"] != [1, 1] or attributes["dilations"] != [1, 1] \
            or attributes["auto_pad"] not in ("explicit", "notset"):
        return None
    if quantised_input(node):
        return None
    return cout, cin, kh, kw


def rows_then_sum(model: Any, ops: Any) -> Any:
    """Each convolution with few outputs and a tall kernel as two: `rows`, a 1 x kw convolution
    with cout * kh outputs, z[c * kh + ky] = sum over ci, kx of W[c, ci, ky, kx] x[ci, ., . + kx];
    then a depthwise kh x 1 convolution with one-hot weights that shifts each z[c * kh + ky] by ky
    rows, and a sum over ky. Rows padded above and below are zero in z as in x (the convolution
    has no bias; ONNX's bias is a separate Add), so the padding moves to `rows` unchanged.
    Measured on the demo decoder (26 x 64 x 54 x 45 features, int8 graph, 2 threads, Zen 4):
    the 16 -> 3 7x7 head took 84 of 455 ms per call under AVX2 kernels; split, the decoder took
    427 ms (AVX2) and 279 instead of 323 ms (AVX-512); outputs within 1.1e-6."""
    def const(values):
        return ops.constant(np.asarray(values, np.int64))

    for node in model.get_ordered_ops():
        dims = _splittable(node)
        if dims is None:
            continue
        cout, cin, kh, kw = dims
        weights = ops.reshape(ops.transpose(node.input_value(1), const([0, 2, 1, 3])), const([cout * kh, cin, 1, kw]),
                              False)
        attributes = node.get_attributes()
        rows = ops.convolution(node.input_value(0), weights, [1, 1], attributes["pads_begin"], attributes["pads_end"],
                               [1, 1])
        onehot = np.zeros((cout * kh, 1, 1, kh, 1), np.float32)
        onehot[np.arange(cout * kh), 0, 0, np.arange(cout * kh) % kh, 0] = 1
        shifted = ops.group_convolution(rows, ops.constant(onehot), [1, 1], [0, 0], [0, 0], [1, 1])
        shape = ops.shape_of(shifted)
        split = ops.concat([ops.gather(shape, const([0]), const(0)), const([cout, kh]),
                            ops.gather(shape, const([2, 3]), const(0))], 0)
        summed = ops.reduce_sum(ops.reshape(shifted, split, False), const([2]), False)
        summed.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(summed.output(0))
    return model
