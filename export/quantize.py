"""int8 graphs: an export's encoder and per-target decoders quantised by NNCF for OpenVINO.

`tsf-trt export --precision int8` (and :func:`add_int8` on an existing export) writes, beside the
fp32 ONNX graphs, `encoder.int8.xml/.bin` and `decoder_<target>.int8.xml/.bin`: OpenVINO models
with FakeQuantize nodes, which OpenVINO's CPU plugin runs as u8/i8 convolutions. The fusion
(7 % of the time, ω) and the code-input decoder (kernels computed from the code at run time)
stay fp32. manifest.json's "int8" block lists the files with their hashes and records the
calibration (:func:`int8_block`).

How, and why each choice (issue 27; `scripts/int8_study.py` measures them):

* `nncf.quantize` on the OpenVINO model read from the fp32 ONNX graph (NNCF's OpenVINO
  backend), not on the ONNX graph (its ONNX backend, QDQ nodes): on the bundled demo model the
  QDQ graph lost 0.73 dB PSNR against the truth (T2 tasks; the same run by ONNX Runtime or
  OpenVINO, so the graph and not the kernels), the OpenVINO model 0.003 dB;
* the mixed preset (symmetric weights, asymmetric activations): the issue's table, best of the
  presets measured;
* instance norms (OpenVINO's MVN) in the ignored scope, quantised as read, before any centring
  (:func:`tsf_trt.backends.openvino_graph.centre_norms`, which the OpenVINO backend runs on fp32
  graphs only: in an int8 graph it changed nothing measurable over the 28 tasks and cost 5-9 %),
  so NNCF never quantises a norm's input or its mean;
* each decoder's output convolution (the 7×7 head before tanh) in the ignored scope too: quantised,
  it cost every T1 task 0.055-0.09 dB on the demo model (all 7 share decoder_t1; the other targets
  up to 0.04); kept fp32, the T1 tasks' mean loss fell from 0.075 to 0.002 dB;
* the encoder's input quantiser set to [-1, 1] after calibration: inputs are normalised to
  [-1, 1] (docs/architecture.md, "Tensor contracts"), while NNCF's estimate from the
  calibration slices was [-1, 0.19] on the demo model, clipping bright voxels (T1Gd targets lost
  up to 0.45 dB).

NNCF is an optional extra (`pip install 'tsf-trt[int8]'`), imported only here, on use: the
runtime reads the int8 graphs with OpenVINO alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import atomic_dir, atomic_path, check_folder_target
from tsf_trt.files.ownership import EXPORT_DIR

from tsf_trt.export.manifest import INT8, MANIFEST, PRECISION_KEY, int8_roles, read_manifest, sha256

PRESET = "mixed"
#: The encoder's input is normalised to [-1, 1]: its quantiser covers exactly that.
INPUT_RANGE = (-1.0, 1.0)
IGNORED_TYPES = ("MVN",)
#: NNCF's own default subset_size: calibration samples per graph.
DEFAULT_SAMPLES = 300

Step = Callable[[str], None]
_log = logging.getLogger(__name__)


def import_nncf() -> Any:
    """NNCF, or one line naming the extra. Its usage telemetry is switched off first: NNCF sends
    events through openvino-telemetry, which counts a missing consent file as consent when NNCF
    asks without a dialog (openvino_telemetry/main.py), and NNCF skips it only when NNCF_CI or
    NNCF_DEV is set at import (nncf/telemetry/wrapper.py): exporting a medical model sends nothing."""
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except ImportError:
        from tsf_trt.machine.extras import install_command

        raise TsfError(f"--precision int8 needs NNCF, which is not installed: {install_command('int8')} "
                       "(or: pip install nncf)") from None
    return nncf


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise TsfError("--precision int8 makes OpenVINO models and OpenVINO is not installed: "
                       "pip install openvino (x86-64 and ARM CPUs)") from None
    return openvino


def fix_input_range(model: Any, ops: Any, low: float, high: float) -> int:
    """Set every FakeQuantize fed directly by a model input to [low, high]; returns how many."""
    fixed = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() == "FakeQuantize" and node.input_value(0).get_node().get_type_name() == "Parameter":
            for port, value in ((1, low), (2, high), (3, low), (4, high)):
                shape = node.input_value(port).get_node().get_data().shape
                node.input(port).replace_source_output(ops.constant(np.full(shape, value, np.float32)).output(0))
            fixed += 1
    model.validate_nodes_and_infer_types()
    return fixed


def output_convolution(model: Any) -> str:
    """The name of the convolution that makes the model's output (through elementwise ops only)."""
    node = model.get_results()[0].input_value(0).get_node()
    while node.get_type_name() != "Convolution":
        if node.get_input_size() == 0:
            raise TsfError(f"{model.get_friendly_name()}: no convolution makes its output")
        node = node.input_value(0).get_node()
    return node.get_friendly_name()


def quantize_graph(onnx_path: Path, samples: Sequence[np.ndarray], input_name: str, *, preset: str = PRESET,
                   input_range: tuple[float, float] | None = None, output_fp32: bool = False) -> Any:
    """The ONNX graph at `onnx_path` read by OpenVINO and quantised by NNCF on `samples` (each one
    batch of the graph's one input); with `input_range`, the input's quantiser set to it; with
    `output_fp32`, the convolution that makes the output left unquantised."""
    nncf, ov = import_nncf(), _openvino()
    model = ov.Core().read_model(str(onnx_path))
    names = [output_convolution(model)] if output_fp32 else []
    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per node otherwise
    try:  # NNCF draws its own progress bar on stdout, where tsf-trt's results go: the caller shows the step
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(list(samples), lambda x: {input_name: x}),
                                      preset=nncf.QuantizationPreset(preset), subset_size=len(samples),
                                      ignored_scope=nncf.IgnoredScope(names=names, types=list(IGNORED_TYPES),
                                                                      validate=False))
    finally:
        logging.getLogger("nncf").setLevel(level)
    if input_range is not None and fix_input_range(quantized, ov.opset13, *input_range) != 1:
        raise TsfError(f"{onnx_path.name}: NNCF placed no single quantiser on the input '{input_name}' "
                       f"(NNCF {nncf.__version__}): its range cannot be set")
    return quantized


def int8_files(role: str) -> tuple[str, str]:
    return f"{role}.{INT8}.xml", f"{role}.{INT8}.bin"


def int8_block(graphs: Mapping[str, Any], data: Mapping[str, Any], samples: Mapping[str, int], *,
               preset: str = PRESET, input_range: tuple[float, float] | None = INPUT_RANGE,
               output_fp32: bool = True) -> dict[str, Any]:
    """manifest.json's "int8": the files and how they were calibrated."""
    nncf, ov = import_nncf(), _openvino()
    fixed = {"encoder": list(input_range), "why": "inputs are normalised to [-1, 1]; NNCF's estimate clipped "
                                                  "bright voxels"} if input_range else "NNCF's estimate"
    return {
        "runtime": "openvino",
        "graphs": dict(graphs),
        "calibration": {
            "data": dict(data),
            "samples": dict(samples),
            "method": "nncf.quantize on the OpenVINO model read from the fp32 ONNX graph",
            "preset": preset,
            "ignored_scope": {"types": list(IGNORED_TYPES),
                              "decoders' output convolution": "fp32" if output_fp32 else "quantised"},
            "input_range": fixed,
            "nncf": nncf.__version__,
            "openvino": ov.__version__.split("-")[0],
        },
    }


def write_int8(directory: Path, samples: Mapping[str, Sequence[np.ndarray]] | Callable[[str], Sequence[np.ndarray]],
               data: Mapping[str, Any], step: Step | None = None, *, preset: str = PRESET,
               input_range: tuple[float, float] | None = INPUT_RANGE, output_fp32: bool = True,
               quantize: Callable[..., Any] = quantize_graph) -> dict[str, Any]:
    """Quantise every quantisable graph of the export in `directory` (in place: the caller makes it
    all-or-nothing) on its samples (a role -> samples mapping, or a function of the role, so that one
    graph's samples are in memory at a time) and record them in the manifest; returns it. `preset`,
    `input_range` (None: NNCF's estimate), `output_fp32` (the decoders' output convolution left
    unquantised) and `quantize` are what scripts/int8_study.py varies."""
    ov = _openvino()
    manifest = read_manifest(directory)
    roles = int8_roles(manifest)
    step = step or (lambda message: None)
    graphs, counts = {}, {}
    for role in roles:
        batch = samples(role) if callable(samples) else samples.get(role, [])
        if not batch:
            raise TsfError(f"no calibration samples for the {role} graph: the data holds no slice it could see")
        step(f"quantising {role} ({len(batch)} samples)")
        name = next(iter(manifest["graphs"][role]["inputs"]))
        model = quantize(directory / manifest["graphs"][role]["file"], batch, name, preset=preset,
                         input_range=input_range if role == "encoder" else None,
                         output_fp32=output_fp32 and role != "encoder")
        model.set_rt_info(INT8, ["framework", PRECISION_KEY])
        xml, weights = int8_files(role)
        ov.save_model(model, str(directory / xml), compress_to_fp16=False)
        graphs[role] = {"file": xml, "weights": weights, "sha256": sha256(directory / xml),
                        "weights_sha256": sha256(directory / weights)}
        counts[role] = len(batch)
    manifest[INT8] = int8_block(graphs, data, counts, preset=preset, input_range=input_range,
                                output_fp32=output_fp32)
    with atomic_path(directory / MANIFEST, overwrite=True, own_location=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    read_manifest(directory)  # every listed file present and as hashed
    return manifest


def export_with_int8(out_dir: Path, overwrite: bool, export: Callable[[Path], Any],
                     samples: Callable[[Path], tuple[Callable[[str], Sequence[np.ndarray]], dict[str, Any]]],
                     step: Step | None = None) -> dict[str, Any]:
    """An export directory with int8 graphs, all or nothing: `export(folder)` writes the fp32 export,
    `samples(folder)` gives (samples of a role, what the data was) from it, then :func:`write_int8`."""
    import_nncf()  # before minutes of exporting: one line when it is missing
    check_folder_target(out_dir, overwrite, EXPORT_DIR)
    with atomic_dir(out_dir, EXPORT_DIR) as tmp:
        inner = tmp / "fp32"
        export(inner)
        of_role, data = samples(inner)
        manifest = write_int8(inner, of_role, data, step)
        for path in inner.iterdir():
            path.rename(tmp / path.name)
        inner.rmdir()
    return manifest
