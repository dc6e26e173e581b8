"""FLOP counts of exported graphs, checked against hand-computed values."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from tsf_trt.export.flops import conv_flops_share, count_flops, uncounted_ops

NCHW = {0: "n", 2: "h", 3: "w"}


def export(
    tmp_path: Path, module: nn.Module, args: tuple, names: list[str], dynamic: dict | None = None
) -> onnx.ModelProto:
    """Export with the TorchScript exporter (deprecated but still there) and load it back."""
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names,
                          output_names=["y"], dynamic_axes=dynamic or {}, opset_version=17)
    return onnx.load(str(path))


@pytest.mark.parametrize("stride,bias", [(1, True), (1, False), (2, True), (2, False)])
def test_conv2d(tmp_path, stride, bias):
    model = export(tmp_path, nn.Conv2d(3, 8, 3, stride=stride, padding=1, bias=bias),
                   (torch.randn(1, 3, 16, 16),), ["x"], {"x": NCHW})
    ho, wo = (16 + 2 - 3) // stride + 1, (20 + 2 - 3) // stride + 1
    out = 2 * 8 * ho * wo
    expected = 2 * out * 3 * 3 * 3 + (out if bias else 0)
    assert count_flops(model, {"x": (2, 3, 16, 20)}) == {"Conv": expected, "total": expected}


def test_grouped_conv(tmp_path):
    model = export(tmp_path, nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False),
                   (torch.randn(1, 8, 10, 10),), ["x"])
    assert count_flops(model, {})["Conv"] == 2 * 16 * 10 * 10 * (8 // 4) * 9


def test_conv1d_and_conv3d(tmp_path):
    m1 = export(tmp_path, nn.Conv1d(2, 4, 5, bias=False), (torch.randn(1, 2, 20),), ["x"])
    assert count_flops(m1, {})["Conv"] == 2 * 4 * 16 * 2 * 5
    m3 = export(tmp_path, nn.Conv3d(2, 4, 3, padding=1, bias=False), (torch.randn(1, 2, 4, 5, 6),), ["x"])
    assert count_flops(m3, {})["Conv"] == 2 * 4 * 4 * 5 * 6 * 2 * 27


def test_conv_transpose(tmp_path):
    model = export(tmp_path, nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1),
                   (torch.randn(1, 4, 5, 5),), ["x"])
    assert count_flops(model, {})["ConvTranspose"] == 2 * 4 * 5 * 5 * 2 * 16 + 2 * 10 * 10


def test_linear_2d_is_gemm(tmp_path):
    model = export(tmp_path, nn.Linear(8, 4), (torch.randn(5, 8),), ["x"], {"x": {0: "n"}})
    expected = 2 * 3 * 8 * 4 + 3 * 4
    assert count_flops(model, {"x": (3, 8)}) == {"Gemm": expected, "total": expected}


def test_linear_3d_is_matmul_add(tmp_path):
    model = export(tmp_path, nn.Linear(8, 4), (torch.randn(2, 5, 8),), ["x"])
    assert count_flops(model, {}) == {"MatMul": 2 * 2 * 5 * 4 * 8, "Add": 2 * 5 * 4, "total": 680}


class HyperConv(nn.Module):
    """A conv whose kernel is computed at run time from a code vector."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(4, 3, 3, 3, 5))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, (self.p @ code.view(-1, 1)).squeeze(-1), padding=1)


def test_runtime_weight_conv(tmp_path):
    model = export(tmp_path, HyperConv(), (torch.randn(1, 3, 8, 8), torch.randn(1, 5)), ["x", "code"],
                   {"x": NCHW})
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[1] not in {init.name for init in model.graph.initializer}  # weight computed at run time
    flops = count_flops(model, {"x": (2, 3, 6, 7)})
    assert flops["Conv"] == 2 * 2 * 4 * 6 * 7 * 3 * 9
    assert flops["MatMul"] == 2 * (4 * 3 * 3 * 3) * 5
    assert flops["total"] == flops["Conv"] + flops["MatMul"]
    assert conv_flops_share(flops) == 1.0


class Block(nn.Module):
    """The ops the convnets use: conv, instance norm, leaky ReLU, bilinear upsampling, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(F.leaky_relu(self.norm(self.conv(x)), 0.2)))


def test_block_ops_and_scaling(tmp_path):
    model = export(tmp_path, Block(), (torch.randn(1, 2, 8, 8),), ["x"], {"x": NCHW})
    base = count_flops(model, {"x": (1, 2, 8, 8)})
    feat, up = 4 * 8 * 8, 4 * 16 * 16
    assert base == {
        "Conv": 2 * feat * 2 * 9 + feat, "InstanceNormalization": 5 * feat, "LeakyRelu": feat,
        "Resize": 4 * up, "Sigmoid": up, "total": base["total"],
    }
    assert base["total"] == sum(v for k, v in base.items() if k != "total")
    assert uncounted_ops(base) == []
    assert 0 < conv_flops_share(base) < 1
    for shape, factor in [((3, 2, 8, 8), 3), ((1, 2, 16, 24), 6), ((2, 2, 32, 8), 8)]:
        assert count_flops(model, {"x": shape}) == {k: v * factor for k, v in base.items()}


def test_missing_dynamic_input_raises(tmp_path):
    model = export(tmp_path, HyperConv(), (torch.randn(1, 3, 8, 8), torch.randn(1, 5)), ["x", "code"],
                   {"x": NCHW})
    with pytest.raises(ValueError, match="'x'"):
        count_flops(model, {})
    with pytest.raises(ValueError, match="not graph inputs"):
        count_flops(model, {"x": (1, 3, 8, 8), "nope": (1,)})
    with pytest.raises(ValueError, match="rank"):
        count_flops(model, {"x": (1, 3, 8)})


def test_unknown_op_listed_with_zero_and_subgraph_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [axis])
    flops = count_flops(helper.make_model(graph), {"x": (3, 4)})
    assert flops == {"CumSum": 0, "Relu": 12, "total": 12}
    assert uncounted_ops(flops) == ["CumSum"]
    assert conv_flops_share(flops) == 0.0 and conv_flops_share({"total": 0}) == 0.0

    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond, x], [y]))
    with pytest.raises(ValueError, match="subgraph"):
        count_flops(model, {"x": (3, 4)})


def test_unknown_shape_names_the_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Mystery", ["x"], ["m"], domain="custom"),
             helper.make_node("Relu", ["m"], ["y"], name="act")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    with pytest.raises(ValueError, match="'act'"):
        count_flops(model, {})
