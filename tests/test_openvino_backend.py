"""The OpenVINO backend: same results as ONNX Runtime fp32, compiled once per shape and cached,
threads and precision as compiled (read back from OpenVINO, not assumed)."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import AFFINE_LPS, DATA, cli, make_head, payload_start, problem_lines, write_nifti
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

pytest.importorskip("openvino")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The issue's bar: OpenVINO f32 agrees with ONNX Runtime f32 (image, TSEM, ω).
AGREE = 1e-4


@pytest.fixture(scope="module")
def volumes():
    return {0: make_head((6, 40, 36), seed=1), 1: make_head((6, 40, 36), seed=3), 3: make_head((6, 40, 36), seed=2)}


@pytest.fixture
def export_copy(small_export_dir, tmp_path):
    """A private copy of the small export: its .openvino-cache starts empty."""
    return shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns(".*-cache"))


@pytest.fixture(scope="module")
def seq2seq_export_dir(tmp_path_factory):
    from tsf_trt.export.onnx_export import export_model
    from tsf_trt.model import PRESETS, import_reference

    model = import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"])
    directory = tmp_path_factory.mktemp("exports") / "seq2seq"
    export_model(model, directory, model_id="small-seq2seq", targets=[3], verify=False)  # compared with ORT below
    return directory


def assert_agree(ours, theirs):
    assert np.abs(ours.image - theirs.image).max() <= AGREE
    if theirs.tsem is None:
        assert ours.tsem is None
    else:
        assert np.abs(ours.tsem - theirs.tsem).max() <= AGREE
    assert ours.weights.keys() == theirs.weights.keys()
    assert max(abs(ours.weights[k] - theirs.weights[k]) for k in ours.weights) <= AGREE


@pytest.mark.parametrize("sources", [(0, 3), (0, 1, 3)])
def test_fusion_model_agrees_with_ort_fp32(small_export_dir, volumes, sources):
    inputs = {i: volumes[i] for i in sources}
    ort = Synthesizer(small_export_dir, RunOptions(backend="ort", threads=1, batch_size=4)).run_canonical(inputs, "t2")
    ov = Synthesizer(small_export_dir, RunOptions(backend="openvino", threads=1, batch_size=4)
                     ).run_canonical(inputs, "t2")
    assert ov.tsem is not None and np.abs(ov.image).max() > 0.1  # a real image, not background
    assert_agree(ov, ort)


def test_seq2seq_only_model_agrees_with_ort_fp32(seq2seq_export_dir, volumes):
    ort = Synthesizer(seq2seq_export_dir, RunOptions(backend="ort", threads=1)).run_canonical({0: volumes[0]}, "flair")
    ov = Synthesizer(seq2seq_export_dir, RunOptions(backend="openvino", threads=1)
                     ).run_canonical({0: volumes[0]}, "flair")
    assert ov.tsem is None and ov.weights == {"t1": 1.0}
    assert_agree(ov, ort)


def test_baked_and_code_decoders_agree_with_ort(small_export_dir):
    from tsf_trt.synthesis.backend import create_backend

    features = np.random.default_rng(0).standard_normal((2, 32, 4, 4)).astype(np.float32)
    images = {}
    for name in ("ort", "openvino"):
        for decoder in ("baked", "code"):
            with create_backend(small_export_dir, RunOptions(backend=name, threads=1, precision="fp32"), decoder=decoder) as backend:
                images[name, decoder] = backend.decode(features, 1)[0]
                if name == "openvino":
                    assert {key[0] for key in backend._compiled} == {"decoder_t1gd" if decoder == "baked" else "decoder"}
    for decoder in ("baked", "code"):
        assert np.abs(images["openvino", decoder] - images["ort", decoder]).max() <= AGREE
    assert np.abs(images["openvino", "baked"] - images["openvino", "code"]).max() <= AGREE


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_are_what_the_compiled_model_uses(small_export_dir, threads):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend
    from tsf_trt.synthesis.options import usable_cpus

    if threads > usable_cpus():
        pytest.skip(f"needs {threads} usable cores")
    with OpenVinoBackend(small_export_dir, threads=threads) as backend:
        backend.encode(np.zeros((1, 3, 16, 16), np.float32))
        (compiled,) = backend._compiled.values()
        assert compiled.get_property("INFERENCE_NUM_THREADS") == threads
        assert f"{threads} threads" in backend.describe()


def test_compiled_once_per_shape_and_released_on_close(small_export_dir):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    backend = OpenVinoBackend(small_export_dir, threads=1)
    images = np.zeros((2, 3, 16, 16), np.float32)
    backend.encode(images)
    first = backend.compiled("encoder", {"image": images})
    backend.encode(images)
    assert len(backend._compiled) == 1 and backend.compiled("encoder", {"image": images}) is first
    assert first.inputs[0].get_partial_shape().is_static  # compiled for this shape
    backend.encode(images[:1])
    assert len(backend._compiled) == 2
    backend.close()
    assert backend._compiled == {} and backend._models == {}
    with pytest.raises(TsfError, match="was closed"):
        backend.encode(images)


def test_compiled_models_are_cached_and_reused(export_copy):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    images = np.zeros((1, 3, 16, 16), np.float32)
    cache = export_copy / ".openvino-cache"
    for run in range(2):
        with OpenVinoBackend(export_copy, threads=1) as backend:
            backend.encode(images)
            assert len(backend._compiled) == 1 and backend.imported == run  # imported the second time
            entries = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.compiled")}
            assert len(entries) == 1
            if run == 0:
                first = entries
    assert entries == first  # reused, not written again


def test_fp32_is_what_runs_and_what_is_recorded(small_export_dir):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend, ran_precision

    with OpenVinoBackend(small_export_dir, threads=1, precision="fp32") as backend:
        backend.encode(np.zeros((1, 3, 16, 16), np.float32))
        (compiled,) = backend._compiled.values()
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        assert ran_precision(compiled) == "fp32" == backend.runtime_precision
        assert "fp32" in backend.describe() and "asked" not in backend.describe()


def test_bf16_records_what_openvino_really_runs(small_export_dir, caplog):
    """On a CPU without native bf16 OpenVINO compiles bf16 requests to f32 without a word:
    the backend says so. Where it has bf16, the convolutions must run in bf16 (not checked
    on a CPU without it)."""
    import openvino

    from tsf_trt.backends.openvino_backend import OpenVinoBackend, ran_precision

    native = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with caplog.at_level(logging.WARNING, logger="tsf_trt.backends.openvino_backend"):
        backend = OpenVinoBackend(small_export_dir, threads=1, precision="bf16")
    with backend:
        backend.encode(np.zeros((1, 3, 16, 16), np.float32))
        (compiled,) = backend._compiled.values()
        ran = ran_precision(compiled)
        assert backend.precision == "bf16" and backend.runtime_precision == ran
        if native:
            assert ran == "bf16" and "asked" not in backend.describe()
        else:
            assert ran == "fp32"
            assert "fp32 (bf16 asked" in backend.describe() and "no native bf16" in backend.describe()
            assert "runs fp32 on this CPU" in caplog.text


def test_a_swapped_manifest_is_one_clear_error(export_copy):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    path = export_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    graphs = manifest["graphs"]
    graphs["encoder"]["file"], graphs["decoder_t2"]["file"] = graphs["decoder_t2"]["file"], graphs["encoder"]["file"]
    graphs["encoder"]["sha256"], graphs["decoder_t2"]["sha256"] = graphs["decoder_t2"]["sha256"], \
        graphs["encoder"]["sha256"]
    path.write_text(json.dumps(manifest))
    with OpenVinoBackend(export_copy) as backend, pytest.raises(ModelError, match="is the 'decoder_t2' graph"):
        backend.encode(np.zeros((1, 3, 16, 16), np.float32))


def test_without_openvino_the_error_names_the_package(small_export_dir, monkeypatch):
    from tsf_trt.synthesis.backend import create_backend

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(TsfError, match="pip install openvino") as caught:
        create_backend(small_export_dir, RunOptions(backend="openvino", precision="fp32"))
    assert "\n" not in str(caught.value)


def test_auto_times_openvino_and_keeps_its_verdict(small_export_dir, small_model_dir, monkeypatch):
    from tsf_trt.machine.cache_dir import cache_root
    from tsf_trt.synthesis import auto
    from tsf_trt.synthesis.source import ModelSource

    source = ModelSource.resolve(small_export_dir)
    assert auto.cpu_candidates(source) == ["ort", "openvino"]
    assert auto.cpu_candidates(ModelSource.resolve(small_model_dir)) == ["torch", "ort", "openvino"]
    assert auto.cpu_candidates(ModelSource.resolve(small_model_dir), "bf16") == ["torch", "openvino"]
    monkeypatch.setattr(auto, "CPU_PROBE", (16, 16))  # a tiny probe: this tests the plan, not the speed
    timed = []
    real = auto.probe_cpu
    monkeypatch.setattr(auto, "probe_cpu", lambda *a, **k: timed.append(a[2]) or real(*a, **k))
    choice = auto.choose_backend(source, threads=1)
    (record,) = (cache_root() / "auto").glob(f"{source.model_id}-*-t1-fp32-{auto.CPU_RULES}.json")
    verdict = json.loads(record.read_text())
    assert timed == [["ort", "openvino"]] and set(verdict["seconds_per_slice"]) == {"ort", "openvino"}
    assert choice == verdict["choice"] == min(verdict["seconds_per_slice"], key=verdict["seconds_per_slice"].get)
    assert list(auto.plan(source, device="cpu", threads=1)) == [(choice, "cpu")]
    assert timed == [["ort", "openvino"]]  # the second time from the record, not measured again
    # bf16 on an export: OpenVINO is the only CPU backend that takes it
    assert list(auto.plan(source, device="cpu", threads=1, precision="bf16")) == [("openvino", "cpu")]


def test_infer_cli_runs_openvino_and_reports_it(small_export_dir, tmp_path):
    from typer.testing import CliRunner

    from tsf_trt.cli import app

    inputs = []
    for seed, name in enumerate(("t1", "flair")):
        path = tmp_path / "in" / f"sub_{name}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(make_head((40, 36, 6), seed=seed), AFFINE_LPS), path)
        inputs.append(str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infer", "--inputs", *inputs, "--target", "t2", "--model", str(small_export_dir),
                                      "--backend", "openvino", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sub_t2.json").read_text())
    assert report["backend"].startswith("openvino ") and "fp32" in report["backend"]
    assert nib.load(out / "sub_t2_synth.nii.gz").shape == (40, 36, 6)
    assert np.isfinite(nib.load(out / "sub_t2_tsem.nii.gz").get_fdata()).all()


def test_a_damaged_compiled_model_is_rebuilt_with_one_warning(small_export_dir, tmp_path):
    """Issue 22: flipped bits in a cached compiled model changed the synthesis. Through the CLI:
    the largest file of the export's .openvino-cache gets bits flipped in its payload; the next
    run names it in one WARNING, rebuilds it, and synthesises what the first run did (the same
    OpenVINO compile of the same graphs on the same machine, one thread: 1e-5 of the 0-1000
    scale allows for nothing else)."""
    export = shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns(".*-cache"))
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head((40, 36, 12), seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head((40, 36, 12), seed=1))

    def run(out):
        result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", export, "-o", out,
                     "--backend", "openvino", "--threads", "1", "--precision", "fp32")
        assert result.exit_code == 0, result.output
        return problem_lines(result.stderr), np.asarray(nib.load(out / "sub_t2_synth.nii.gz").dataobj)

    assert run(tmp_path / "first")[0] == []
    damaged = max((export / ".openvino-cache").iterdir(), key=lambda p: p.stat().st_size)
    blob = bytearray(damaged.read_bytes())
    start = payload_start(bytes(blob))
    for at in range(start + (len(blob) - start) // 4, len(blob) - (len(blob) - start) // 4, 97):
        blob[at] ^= 0x08
    damaged.write_bytes(bytes(blob))
    lines, second = run(tmp_path / "second")
    assert len(lines) == 1 and "WARNING" in lines[0] and str(damaged) in lines[0], lines
    first = np.asarray(nib.load(tmp_path / "first" / "sub_t2_synth.nii.gz").dataobj)
    assert np.allclose(second, first, rtol=0, atol=1e-5)
    assert run(tmp_path / "third")[0] == []  # the rebuilt entry is intact


@pytest.mark.parametrize("pads", [([0, 0], [0, 0]), ([3, 2], [1, 3])])
def test_a_few_channel_head_split_into_rows_gives_the_same_convolution(pads):
    import openvino as ov

    from tsf_trt.backends.openvino_graph import rows_then_sum

    ops, rng = ov.opset13, np.random.default_rng(0)
    x = ops.parameter([2, 5, 20, 17], np.float32, name="x")
    conv = ops.convolution(x, ops.constant(rng.normal(size=(3, 5, 7, 5)).astype(np.float32)), [1, 1], *pads, [1, 1])
    model = ov.Model([conv], [x])
    split = rows_then_sum(model.clone(), ops)
    assert "GroupConvolution" in {n.get_type_name() for n in split.get_ordered_ops()}
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # this CPU's default may be bf16
    image = rng.normal(size=(2, 5, 20, 17)).astype(np.float32)
    want = ov.Core().compile_model(model, "CPU", f32)(image)[0]
    got = ov.Core().compile_model(split, "CPU", f32)(image)[0]
    # the same sums in another order: fp32 rounding, ~1e-7 of the output's size per term
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("precision, split", [("fp32", True), ("bf16", False)])
def test_the_decoder_head_is_split_only_where_it_runs_f32(small_export_dir, precision, split):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    with OpenVinoBackend(small_export_dir, threads=1, precision=precision, cache=False) as backend:
        kinds = {n.get_type_name() for n in backend.model("decoder_t2").get_ordered_ops()}
    assert ("GroupConvolution" in kinds) == split


def _gated_convolution(ops, rng, step: int = 1, bias_shape: tuple[int, ...] = (1, 12, 1, 1)):
    """x -> a 3x3 convolution with NNCF-style int8 weights (Multiply(Convert(i8), scale)) and a bias
    reshaped as ONNX's export writes it -> three channel Slices (steps as Broadcasts, as ONNX's
    Slice arrives) -> sigmoid, sigmoid, tanh: the ConvLSTM's gate pattern, 6 -> 12 channels."""
    import openvino as ov

    x = ops.parameter([2, 6, 12, 10], np.float32, name="x")
    weights = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 128, (12, 6, 3, 3)).astype(np.int8)), "f32"),
                           ops.constant(rng.uniform(0.001, 0.01, (12, 1, 1, 1)).astype(np.float32)))
    conv = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    biased = ops.add(conv, ops.reshape(ops.constant(rng.normal(size=12).astype(np.float32)),
                                       ops.constant(np.array(bias_shape, np.int64)), False))
    one = ops.broadcast(ops.constant(np.array([step], np.int64)), ops.constant(np.array([1], np.int64)))
    gates = [ops.slice(biased, ops.constant(np.array([a], np.int64)), ops.constant(np.array([a + 4], np.int64)), one,
                       ops.constant(np.array([1], np.int64))) for a in (0, 4, 8)]
    outputs = [ops.sigmoid(gates[0]), ops.sigmoid(gates[1]), ops.tanh(gates[2])]
    return ov.Model(outputs, [x])


def test_the_gate_convolution_is_cut_into_one_convolution_per_gate():
    import openvino as ov

    from tsf_trt.backends.openvino_graph import convolution_per_slice

    ops, rng = ov.opset13, np.random.default_rng(0)
    model = _gated_convolution(ops, rng)
    cut = convolution_per_slice(model.clone(), ops)
    cut.validate_nodes_and_infer_types()
    kinds = [n.get_type_name() for n in cut.get_ordered_ops()]
    assert kinds.count("Convolution") == 3 and "Slice" not in kinds
    # the weights stay int8 constants behind their scale (what OpenVINO's int8 kernels look for)
    assert sum(n.get_type_name() == "Constant" and n.get_element_type().get_type_name() == "i8"
               for n in cut.get_ordered_ops()) == 3
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    image = rng.normal(size=(2, 6, 12, 10)).astype(np.float32)
    want = ov.Core().compile_model(model, "CPU", f32)(image)
    got = ov.Core().compile_model(cut, "CPU", f32)(image)
    for a, b in zip(want.values(), got.values()):
        # each channel is the same 54 products summed, perhaps in another order: fp32 rounding, under 1e-6
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5


#: A slice that skips channels; 12 biases along the rows (the image is 12 rows high), not the channels.
@pytest.mark.parametrize("changed", [{"step": 2}, {"bias_shape": (1, 1, 12, 1)}])
def test_what_is_not_a_cut_of_channels_is_left_alone(changed):
    import openvino as ov

    from tsf_trt.backends.openvino_graph import convolution_per_slice

    ops = ov.opset13
    model = convolution_per_slice(_gated_convolution(ops, np.random.default_rng(0), **changed), ops)
    assert [n.get_type_name() for n in model.get_ordered_ops()].count("Slice") == 3


@pytest.mark.parametrize("split_gates", [True, False])
def test_the_convlstm_gates_are_cut_unless_asked_not_to(small_export_dir, split_gates):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    with OpenVinoBackend(small_export_dir, threads=1, precision="fp32", cache=False) as backend:
        backend.split_gates = split_gates
        for graph in ("encoder", "decoder_t2"):
            kinds = [n.get_type_name() for n in backend.model(graph).get_ordered_ops()]
            assert ("Slice" in kinds) != split_gates, graph


def test_openvino_takes_smaller_cpu_batches_than_onnx_runtime(small_export_dir):
    from tsf_trt.synthesis.backend import create_backend

    batches = {}
    for name in ("ort", "openvino"):
        with create_backend(small_export_dir, RunOptions(backend=name, threads=1, precision="fp32")) as backend:
            batches[name] = [backend.preferred_batch_size(h, w) for h, w in ((216, 180), (240, 240), (2000, 2000))]
    # measured (the class attribute's comment): OpenVINO ran 4 slices of 216x180 faster than 13, ORT slower
    assert all(ov < ort for ov, ort in zip(batches["openvino"][:2], batches["ort"][:2]))
    assert batches["openvino"][2] == 1  # never below one slice
