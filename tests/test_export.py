"""Export to ONNX: graph contracts (docs/architecture.md), manifest, verification, ORT parity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from tests.helpers import DATA
from tsf_trt import sequences
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.export.manifest import read_manifest, sha256
from tsf_trt.synthesis.options import RunOptions


def dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_contracts(small_export_dir):
    manifest = read_manifest(small_export_dir)
    expected = {
        "encoder": ({"image": ["N", 3, "H", "W"]}, {"features": ["N", 32, "h", "w"]}),
        "fusion": ({"features": ["N", 4, 32, "h", "w"], "task_code": [1, 8]},
                   {"fused": ["N", 32, "h", "w"], "fused_avg": ["N", 32, "h", "w"], "weights": [4]}),
        "decoder": ({"features": ["N", 32, "h", "w"], "target_code": [1, 64]}, {"image": ["N", 3, "H", "W"]}),
        **{f"decoder_{n}": ({"features": ["N", 32, "h", "w"]}, {"image": ["N", 3, "H", "W"]})
           for n in sequences.NAMES},
    }
    assert set(manifest["graphs"]) == set(expected)
    for name, (inputs, outputs) in expected.items():
        path = small_export_dir / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
        assert {v.name: dims(v) for v in graph.input} == inputs, name
        assert {v.name: dims(v) for v in graph.output} == outputs, name
        assert manifest["graphs"][name]["sha256"] == sha256(path)
        ops = {node.op_type for node in graph.node}
        assert not ops & {"Dropout", "BatchNormalization"}, name  # nothing training-only
        if name.startswith("decoder_"):
            assert "MatMul" not in ops, "baked decoder still computes kernels at run time"


def test_manifest_records_what_a_runtime_needs(small_export_dir):
    manifest = json.loads((small_export_dir / "manifest.json").read_text())
    assert manifest["model_id"] == "small-reference" and manifest["opset"] == 17
    assert manifest["sequences"]["names"] == ["t1", "t1gd", "t2", "flair"]
    for name in ("encoder", "decoder"):
        flops = manifest["flops_per_slice"][name]
        assert 0 < flops["folded"] < flops["unfolded"] and flops["saved"] > 0.4
    assert max(manifest["verification"]["max_abs_diff"].values()) <= 1e-4
    assert {"torch", "onnx"} <= set(manifest["versions"])


@pytest.fixture(scope="module")
def ort_backend(small_export_dir):
    from tsf_trt.backends.ort_backend import OrtBackend

    return OrtBackend(small_export_dir, decoder="code")


@pytest.mark.parametrize("batch,height,width", [(2, 40, 56), (5, 24, 28)])
def test_ort_graphs_match_torch_on_fresh_inputs(small_model, small_export_dir, ort_backend, batch, height, width):
    from tsf_trt.backends.ort_backend import OrtBackend

    baked = OrtBackend(small_export_dir, decoder="baked")
    rng = np.random.default_rng(batch * 1000 + height)
    images = {i: rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32) for i in (1, 2, 3)}
    task = sequences.task_code([1, 2, 3], 0)
    with torch.no_grad():
        expected = small_model.synthesize({i: torch.from_numpy(v) for i, v in images.items()}, 0)
    for backend in (ort_backend, baked):
        feats = {i: backend.encode(v) for i, v in images.items()}
        fused, avg, weights = backend.fuse(feats, task)
        image, image_avg = backend.decode(fused, 0, avg)
        assert np.abs(image - expected.image.numpy()).max() <= 1e-4
        assert np.abs(np.abs(image - image_avg)[:, 1] - expected.tsem.numpy()).max() <= 1e-4
        assert np.abs(weights - expected.weights.numpy()).max() <= 1e-6


def test_infer_ort_equals_torch(small_model_dir, small_export_dir):
    from tests.helpers import make_head
    from tsf_trt.synthesis.pipeline import Synthesizer

    vols = {0: make_head((7, 44, 40), seed=11), 1: make_head((7, 44, 40), seed=12), 3: make_head((7, 44, 40), 13)}
    ref = Synthesizer(small_model_dir, RunOptions(backend="torch")).run_canonical(vols, "t2")
    ort = Synthesizer(small_export_dir, RunOptions(backend="ort")).run_canonical(vols, "t2")
    diff = np.abs(ref.image - ort.image).max()
    psnr = 10 * np.log10(4 / np.mean((ref.image - ort.image) ** 2))  # range [-1, 1]
    assert diff <= 1e-4 and psnr > 80
    assert np.abs(ref.tsem - ort.tsem).max() <= 1e-4
    assert ref.weights == pytest.approx(ort.weights, abs=1e-6)


def test_model_dir_with_ort_backend_exports_once_into_the_cache(small_model_dir):
    from tsf_trt.machine.cache_dir import cache_root
    from tsf_trt.synthesis.backend import create_backend

    first = create_backend(small_model_dir, RunOptions(backend="ort", precision="fp32"))
    manifest = first.directory / "manifest.json"
    assert cache_root() in first.directory.parents
    stamp = manifest.stat().st_mtime_ns
    second = create_backend(small_model_dir, RunOptions(backend="ort", precision="fp32"))
    assert second.directory == first.directory and manifest.stat().st_mtime_ns == stamp


def test_optimised_graphs_are_cached_and_reused(small_export_dir, tmp_path):
    from tsf_trt.backends.ort_backend import OrtBackend

    # without the caches earlier tests left in the shared export (other thread counts: other keys)
    copy = shutil.copytree(small_export_dir, tmp_path / "exp", ignore=shutil.ignore_patterns(".ort-cache"))
    backend = OrtBackend(copy)
    backend.session("encoder")
    cached = list((copy / ".ort-cache").glob("encoder.*.onnx"))
    assert len(cached) == 1
    again = OrtBackend(copy)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(again.encode(x), backend.encode(x))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_graph_is_a_clean_error(small_export_dir, tmp_path, damage):
    from tsf_trt.backends.ort_backend import OrtBackend

    copy = shutil.copytree(small_export_dir, tmp_path / "exp")
    path = copy / "encoder.onnx"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="encoder.onnx: does not match its SHA-256"):
        OrtBackend(copy)


def test_failed_export_leaves_nothing(small_model, tmp_path, monkeypatch):
    import tsf_trt.export.verify as verify
    from tsf_trt.export.onnx_export import export_model

    def fail(*args, **kwargs):
        raise TsfError("exported graphs differ from PyTorch")

    monkeypatch.setattr(verify, "verify_export", fail)
    with pytest.raises(TsfError):
        export_model(small_model, tmp_path / "out", targets=[])
    assert list(tmp_path.iterdir()) == []


def test_seq2seq_only_export(tmp_path):
    from tsf_trt.backends.ort_backend import OrtBackend
    from tsf_trt.export.onnx_export import export_model
    from tsf_trt.model import PRESETS, import_reference
    from tsf_trt.synthesis.pipeline import Synthesizer

    model = import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"])
    manifest = export_model(model, tmp_path / "s2s", targets=[2])
    assert set(manifest["graphs"]) == {"encoder", "decoder", "decoder_t2"}
    vol = {0: np.random.default_rng(1).gamma(2, 50, (3, 32, 32)).astype(np.float32)}
    ort = Synthesizer(OrtBackend(tmp_path / "s2s")).run_canonical(vol, "t2")
    ref = Synthesizer(model).run_canonical(vol, "t2")
    assert ort.tsem is None and np.abs(ort.image - ref.image).max() <= 1e-4


def test_reference_mode_equals_fast_mode(small_model):
    from tests.helpers import make_head
    from tsf_trt.synthesis.pipeline import Synthesizer

    vols = {0: make_head((5, 32, 32), seed=3), 3: make_head((5, 32, 32), seed=4)}
    fast = Synthesizer(small_model, RunOptions(backend="torch")).run_canonical(vols, 2)
    reference = Synthesizer(small_model, RunOptions(backend="reference")).run_canonical(vols, 2)
    assert np.abs(fast.image - reference.image).max() <= 1e-5
    assert np.abs(fast.tsem - reference.tsem).max() <= 1e-5
    assert all(cell.fold_zero_state for cell in small_model.encoder.lstm.cells)  # caller's model untouched


def test_auto_measures_once_and_caches_its_choice(small_model_dir):
    from tsf_trt.machine.cache_dir import cache_root
    from tsf_trt.synthesis.backend import create_backend

    backend = create_backend(small_model_dir, RunOptions(backend="auto", precision="fp32"))  # precision fp32: other tests' `auto` records are others
    records = list((cache_root() / "auto").glob(f"{backend.model_id}-*-t0-fp32-*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert set(record["seconds_per_slice"]) == {"ort", "openvino"}, record  # the ONNX backends timed
    assert set(record["skipped"]) == {"torch"}, record  # by rule (tsf_trt.synthesis.auto.torch_skipped)
    assert backend.name == record["choice"] == min(record["seconds_per_slice"], key=record["seconds_per_slice"].get)
    assert create_backend(small_model_dir, RunOptions(backend="auto", precision="fp32")).name == backend.name


def test_export_dir_needs_an_onnx_backend(small_export_dir):
    from tsf_trt.synthesis.backend import create_backend

    with pytest.raises(ModelError, match="export directory"):
        create_backend(small_export_dir, RunOptions(backend="torch", precision="fp32"))
    assert create_backend(small_export_dir, RunOptions(backend="auto", precision="fp32")).name in ("ort", "openvino")  # measured: either may win


def test_cli_export_then_infer_on_the_export(small_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tests.helpers import write_subject
    from tsf_trt.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "-m", str(small_model_dir), "-o", str(tmp_path / "exp"), "--targets", "t2"])
    assert result.exit_code == 0, result.output
    assert "verified against PyTorch" in result.stdout
    assert sorted(p.name for p in (tmp_path / "exp").glob("*.onnx")) == [
        "decoder.onnx", "decoder_t2.onnx", "encoder.onnx", "fusion.onnx"]
    paths = write_subject(tmp_path / "sub", "sub", shape=(32, 28, 6), seqs=("t1", "flair"))
    args = ["infer", "-i", str(paths["t1"]), str(paths["flair"]), "-t", "t2", "-o", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "-m", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "sub_t2.json").read_text())
    assert report["backend"].startswith(("onnxruntime", "openvino"))  # auto: the measured faster of the two
    result = runner.invoke(app, [*args, "-m", str(tmp_path / "exp"), "--backend", "torch", "--overwrite"])
    assert result.exit_code == 1 and "export directory" in result.stderr
    result = runner.invoke(app, ["export", "-m", str(small_model_dir), "-o", str(tmp_path / "exp")])
    assert result.exit_code == 1 and "exists" in result.stderr
