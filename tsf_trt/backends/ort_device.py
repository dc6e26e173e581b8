"""ONNX Runtime's GPU stages with their outputs kept on the device: IOBinding and OrtValues.

`ort-cuda` and `ort-trt` bind each stage's inputs and outputs (`InferenceSession.io_binding`):
the encoder's features and the fusion graph's `fused` / `fused_avg` stay on the GPU as OrtValues
and are bound as the next graph's inputs; only the slices going in, ω and the decoded images
cross to the host. Two steps rearrange features between graphs, which on the host are numpy
(:mod:`tsf_trt.backends.onnx_graphs`): the fusion graph takes every source's features at its
sequence's index (zeros where a sequence is missing), and TSEM's decoder pass takes `fused` and
`fused_avg` as one batch of 2N. On the device they are two small ONNX graphs (Unsqueeze, Concat,
ConstantOfShape for the zeros: copies, no arithmetic) run by the same ONNX Runtime on the stages'
device, so the values are those numpy would give.

Written from ONNX Runtime's IOBinding API and tested on the CPU device, which `io_binding`
also takes (tests/test_gpu_precision.py: the same stages, bound or plain, give the same volume);
NOT yet run on a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The opset of the rearranging graphs (Unsqueeze with its axes as an input: opset >= 13).
OPSET = 17


def dims(value: Any) -> tuple[int, ...]:
    """The shape of a stage value: a numpy array's, or an OrtValue's (a method there)."""
    shape = value.shape
    return tuple(shape() if callable(shape) else shape)


def stack_graph(present: Sequence[int], slots: int) -> bytes:
    """An ONNX graph taking `f<i>` (N, C, h, w) for each index in `present` and giving `features`
    (N, slots, C, h, w): each at its index, zeros elsewhere (sequences.stack_by_index's rule)."""
    from onnx import TensorProto, helper

    first = f"f{present[0]}"
    nodes = [helper.make_node("Constant", [], ["axis1"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1]))]
    if len(present) < slots:
        nodes += [helper.make_node("Shape", [first], ["shape"]),
                  helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                                   value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))]
    parts = []
    for index in range(slots):
        source = f"f{index}" if index in present else "zeros"
        nodes.append(helper.make_node("Unsqueeze", [source, "axis1"], [f"u{index}"]))
        parts.append(f"u{index}")
    nodes.append(helper.make_node("Concat", parts, ["features"], axis=1))
    inputs = [helper.make_tensor_value_info(f"f{i}", TensorProto.FLOAT, ["n", "c", "h", "w"]) for i in present]
    output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", slots, "c", "h", "w"])
    graph = helper.make_graph(nodes, "stack_by_index", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


def join_graph() -> bytes:
    """An ONNX graph giving `joined` = `a` then `b` along the batch axis (TSEM's batch of 2N)."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", "c", "h", "w"]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("joined", TensorProto.FLOAT, ["m", "c", "h", "w"])
    graph = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["joined"], axis=0)], "join", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


class DeviceStages:
    """Runs sessions through IOBinding, outputs kept on `device_type` (`cuda`, or `cpu` in tests)
    or brought to the host, and rearranges kept values with the graphs above (their sessions use
    `providers`: the stages' device, no TensorRT for a copy)."""

    def __init__(self, ort: Any, device_type: str, device_id: int, providers: list) -> None:
        self.ort, self.device_type, self.device_id, self.providers = ort, device_type, device_id, providers
        self._helpers: dict[Any, Any] = {}

    def run(self, session: Any, feeds: Mapping[str, Any], keep: Sequence[bool]) -> list[Any]:
        """`session` run on `feeds` (numpy arrays, copied in by ONNX Runtime, or OrtValues already
        on the device); output k is an OrtValue left on the device when keep[k], else numpy."""
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for output, on_device in zip(session.get_outputs(), keep, strict=True):
            if on_device:
                binding.bind_output(output.name, self.device_type, self.device_id)
            else:
                binding.bind_output(output.name, "cpu")
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [value if on_device else value.numpy() for value, on_device in zip(values, keep, strict=True)]

    def stack(self, features: Mapping[int, Any], slots: int) -> Any:
        """The fusion graph's `features` (N, slots, C, h, w) on the device, from each source's."""
        present = tuple(sorted(features))
        session = self._helper(("stack", present, slots), lambda: stack_graph(present, slots))
        return self.run(session, {f"f{i}": features[i] for i in present}, (True,))[0]

    def join(self, first: Any, second: Any) -> Any:
        """`first` then `second` along the batch axis, on the device."""
        return self.run(self._helper("join", join_graph), {"a": first, "b": second}, (True,))[0]

    def _helper(self, key: Any, graph) -> Any:
        if key not in self._helpers:
            options = self.ort.SessionOptions()
            options.log_severity_level = 3
            self._helpers[key] = self.ort.InferenceSession(graph(), options, providers=self.providers)
        return self._helpers[key]
