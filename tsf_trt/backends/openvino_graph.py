"""What the OpenVINO backend changes in a read graph before compiling it: each change gives the
same result in exact arithmetic, and is there because OpenVINO's CPU kernels lose precision
or time on the graph as exported (measured: docs/performance.md, "Where the time goes").

* :func:`centre_norms`: each instance norm's input centred first (precision; fp32 and bf16 graphs);
* :func:`rows_then_sum`: a wide convolution with few output channels (the decoder's 7x7 head,
  16 -> 3, and the fusion's spatial attention, 2 -> 1) computed as one row convolution with
  kernel-height times more outputs, then a one-hot depthwise column sum (time; only where it runs
  in f32);
* :func:`convolution_per_slice`: a convolution whose output is only cut into channel slices (the ConvLSTM's
  one convolution for its gates i, o, g) as one convolution per slice (time; every precision).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Bump when a change here changes a compiled graph: cached compiled models are keyed by it.
VERSION = 3
#: Output channels below which a convolution is split into rows (oneDNN's f32 kernels work in
#: blocks of 8 (AVX2) or 16 (AVX-512) output channels, so 3 channels leave most of a block idle).
FEW_OUTPUTS = 8


def prepare(model: Any, ops: Any, *, split_rows: bool, centre: bool, split_gates: bool) -> Any:
    """`model` with the changes asked for: norms centred with `centre` (not in an int8 graph, where
    quantisation's error dwarfs what it saves: the same PSNR over the 28 tasks, faster), rows split
    with `split_rows` (where the head runs f32; under bf16 the rows would be rounded once more),
    gate convolutions split with `split_gates`. Validated once, after all of them."""
    if centre:
        centre_norms(model, ops)
    if split_rows:
        rows_then_sum(model, ops)
    if split_gates:
        convolution_per_slice(model, ops)
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


#: Operations a convolution's weights may pass through on their way from constants (NNCF's int8
#: weights: Multiply(Convert(Constant i8), Constant scale), with a Subtract for a zero point).
_WEIGHT_OPS = ("Convert", "Subtract", "Multiply")


def convolution_per_slice(model: Any, ops: Any) -> Any:
    """Each convolution whose biased output is only cut into channel slices, as one convolution per
    slice (its weights' and bias's rows): the ConvLSTM's 3x3 convolution, 64 -> 192 channels, cut
    into its gates i, o, g (tsf_trt/model/layers.py, ConvLSTMCell.first_step). Each output channel
    is the same sum of the same products, so fp32 results are unchanged. OpenVINO ran the cut as a
    Split node (its reference kernel, a strided copy in the channels-last layout) after a 192-channel
    convolution; cut apart, each gate's sigmoid or tanh joins its own convolution and no copy is made.
    Measured on the bundled demo graphs (4 slices of 220x180, 2 threads, Zen 4, fastest of 7
    interleaved): int8 encoder 26.1 -> 22.6 ms, decoder_t2 41.6 -> 37.3 ms; with AVX2 kernels
    47.4 -> 42.3 and 60.9 -> 54.6 ms; fp32 encoder 78.5 -> 74.1 ms with identical outputs."""
    for node in model.get_ordered_ops():
        cut = _sliced_convolution(node)
        if cut is None:
            continue
        convolution, bias, slices = cut
        attributes = convolution.get_attributes()
        for user, start, stop in slices:
            weights = _weight_rows(convolution.input_value(1), start, stop, ops)
            part = ops.convolution(convolution.input_value(0), weights, attributes["strides"],
                                   attributes["pads_begin"], attributes["pads_end"], attributes["dilations"],
                                   attributes["auto_pad"])
            biased = ops.add(part, ops.constant(bias[start:stop].reshape(1, -1, 1, 1)))
            biased.set_friendly_name(user.get_friendly_name())
            user.output(0).replace(biased.output(0))
    return model


def _sliced_convolution(node: Any) -> tuple[Any, np.ndarray, list[tuple[Any, int, int]]] | None:
    """(convolution, its bias, [(Slice, first channel, end)]) where `node` is a convolution's bias
    Add whose every user is a Slice of channels with constant bounds and step 1, and whose weights
    can be cut by rows; otherwise None."""
    if node.get_type_name() != "Add":
        return None
    convolution = node.input_value(0).get_node()
    if convolution.get_type_name() != "Convolution":
        return None
    shape = convolution.get_output_partial_shape(0)
    if not shape[1].is_static:
        return None
    channels = shape[1].get_length()
    bias = _bias(node.input_value(1), channels)
    users = [target.get_node() for target in node.output(0).get_target_inputs()]
    if bias is None or len(users) < 2 or not _cuttable(convolution.input_value(1), channels):
        return None
    slices = []
    for user in users:
        if user.get_type_name() != "Slice" or user.get_input_size() != 5:
            return None
        start, stop, step, axes = (_constant(user.input_value(i)) for i in (1, 2, 3, 4))
        if any(v is None or v.size != 1 for v in (start, stop, step, axes)) or int(step[0]) != 1 \
                or int(axes[0]) not in (1, 1 - len(shape)):
            return None
        first, end = (int(np.clip(v if v >= 0 else v + channels, 0, channels)) for v in (start[0], stop[0]))
        if end <= first:
            return None
        slices.append((user, first, end))
    return convolution, bias, slices


def _constant(output: Any) -> np.ndarray | None:
    """The value of a Constant, or of a Broadcast of a one-element Constant (ONNX's Slice steps
    arrive as Broadcast(Constant [1], ShapeOf(Constant))); None for anything else."""
    node = output.get_node()
    if node.get_type_name() == "Constant":
        return node.get_data()
    if node.get_type_name() == "Broadcast":
        value = _constant(node.input_value(0))
        if value is not None and value.size == 1 and output.get_partial_shape().is_static:
            return np.broadcast_to(value.ravel(), [d.get_length() for d in output.get_partial_shape()])
    return None


def _bias(output: Any, channels: int) -> np.ndarray | None:
    """A per-channel bias (a Constant, or a Constant reshaped to [1, C, 1, 1]) as C floats, or None
    (also for any other shape: C values along another axis are not a per-channel bias)."""
    shape = output.get_partial_shape()
    if not shape.is_static or [d.get_length() for d in shape] != [1, channels, 1, 1]:
        return None
    node = output.get_node()
    if node.get_type_name() == "Reshape":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    values = node.get_data()
    return values.astype(np.float32).ravel() if values.size == channels else None


def _cuttable(output: Any, channels: int) -> bool:
    """Whether a convolution's weights can be cut into output-channel rows by _weight_rows: only
    Constants (with `channels` rows, or 1 row shared by all) through _WEIGHT_OPS."""
    node = output.get_node()
    if node.get_type_name() == "Constant":
        shape = node.get_output_partial_shape(0)
        return len(shape) == 0 or shape[0].get_length() in (1, channels)
    return node.get_type_name() in _WEIGHT_OPS and all(_cuttable(v, channels) for v in node.input_values())


def _weight_rows(output: Any, start: int, stop: int, ops: Any) -> Any:
    """Output channels [start, stop) of a convolution's weights, rebuilt through the same
    operations so that OpenVINO still sees int8 weights where they were int8: a Constant's rows,
    or the Constant itself where it has one row (a shared scale)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        values = node.get_data()
        shared = values.ndim == 0 or values.shape[0] == 1
        return ops.constant(values if shared else np.ascontiguousarray(values[start:stop]))
    inputs = [_weight_rows(value, start, stop, ops) for value in node.input_values()]
    if kind == "Convert":
        return ops.convert(inputs[0], node.get_output_element_type(0))
    return ops.subtract(*inputs) if kind == "Subtract" else ops.multiply(*inputs)
