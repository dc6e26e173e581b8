"""int8 (issue 27): `tsf-trt export --precision int8` writes NNCF-quantised OpenVINO graphs with their
calibration in manifest.json; `--backend openvino --precision int8` runs them and says int8."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_clean_error, cli, make_head
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

pytest.importorskip("openvino")
pytest.importorskip("nncf")  # in [dev]: CI runs these
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 8


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, small_model_dir) -> Path:
    """The small model exported with --precision int8 (per-target decoder t2 only), calibrated on
    two small phantoms given as a folder, as a user gives --int8-data."""
    from tsf_trt.phantoms import write_subjects

    root = tmp_path_factory.mktemp("int8")
    write_subjects(root / "calibration", 2, seed=6000, shape=(48, 48, 12))
    result = cli("export", "-m", small_model_dir, "-o", root / "export", "--targets", "t2", "--no-verify",
                 "--precision", "int8", "--int8-data", root / "calibration", "--int8-samples", SAMPLES,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    return root / "export"


def quantisers(path: Path) -> tuple[list[tuple[str, list[float]]], int, bool]:
    """Of an int8 model: (what feeds each FakeQuantize whose input is a model input, [low, high]),
    how many FakeQuantize nodes feed an MVN (an instance norm) directly, and whether the convolution
    that makes the output has plain fp32 weights (unquantised: NNCF's weights are i8 constants)."""
    import openvino as ov

    from tsf_trt.export.quantize import output_convolution

    model = ov.Core().read_model(str(path))
    on_input, on_norm, head = [], 0, output_convolution(model)
    for node in model.get_ordered_ops():
        if node.get_type_name() == "FakeQuantize" and node.input_value(0).get_node().get_type_name() == "Parameter":
            on_input.append((node.input_value(0).get_any_name(),
                             [float(node.input_value(k).get_node().get_data().ravel()[0]) for k in (1, 2)]))
        if node.get_type_name() == "MVN":
            on_norm += node.input_value(0).get_node().get_type_name() == "FakeQuantize"
        if node.get_friendly_name() == head:
            weights = node.input_value(1).get_node()
            fp32_head = weights.get_type_name() == "Constant" and weights.get_element_type() == ov.Type.f32
    return on_input, on_norm, fp32_head


def test_export_writes_quantised_graphs_and_their_calibration(int8_export):
    manifest = json.loads((int8_export / "manifest.json").read_text())
    block = manifest["int8"]
    assert set(block["graphs"]) == {"encoder", "decoder_t2"}  # the fusion and the code decoder stay fp32
    for role, entry in block["graphs"].items():
        assert (int8_export / entry["file"]).is_file() and (int8_export / entry["weights"]).is_file()
        assert entry["file"] == f"{role}.int8.xml"
    cal = block["calibration"]
    assert cal["data"]["kind"] == "folder" and cal["data"]["subjects"] == ["Phantom_06000", "Phantom_06001"]
    assert cal["preset"] == "mixed" and cal["ignored_scope"]["types"] == ["MVN"]
    assert cal["input_range"]["encoder"] == [-1.0, 1.0]
    assert set(cal["samples"]) == {"encoder", "decoder_t2"} and 0 < max(cal["samples"].values()) <= SAMPLES
    assert re.fullmatch(r"\d+\.\d+.*", cal["nncf"])
    assert cal["data"]["slices"]["frame"] == "head"
    # the encoder's input quantiser covers the normalised range, not NNCF's estimate; no norm is
    # quantised; the decoder's output convolution stays fp32 (the encoder's is quantised)
    assert quantisers(int8_export / "encoder.int8.xml") == ([("image", [-1.0, 1.0])], 0, False)
    assert quantisers(int8_export / "decoder_t2.int8.xml")[1:] == (0, True)  # its input: NNCF's estimate
    assert cal["ignored_scope"]["decoders' output convolution"] == "fp32"
    from tsf_trt.files.ownership import EXPORT_DIR

    EXPORT_DIR.check(int8_export)  # --overwrite may replace it: every int8 file is the export's own


@pytest.fixture(scope="module")
def volumes():
    return {0: make_head((6, 40, 36), seed=1), 1: make_head((6, 40, 36), seed=3), 3: make_head((6, 40, 36), seed=2)}


def test_openvino_runs_int8_says_so_and_stays_close_to_fp32(int8_export, volumes):
    from tsf_trt import metrics
    from tsf_trt.backends.openvino_backend import ran_precision

    options = {"backend": "openvino", "threads": 1, "batch_size": 4}
    fp32 = Synthesizer(int8_export, RunOptions(**options)).run_canonical(volumes, "t2")
    synth = Synthesizer(int8_export, RunOptions(precision="int8", **options))
    int8 = synth.run_canonical(volumes, "t2")
    be = synth.backend
    assert be.runtime_precision == "int8" and "int8" in be.describe()
    compiled = {key[0]: model for key, model in be._compiled.items()}
    assert {name: ran_precision(m) for name, m in compiled.items()} == \
        {"encoder": "int8", "fusion": "fp32", "decoder_t2": "int8"}
    assert int8.weights == fp32.weights  # exact: ω depends on the task code only (Eq. 2), and the fusion is fp32
    head = fp32.head_mask
    # Measured 32.8 dB from fp32 on this case (AVX-512 VNNI; 8 calibration samples of other heads).
    # The bound leaves 7 dB for other CPUs' int8 kernels (issue 27: OpenVINO's differ between CPU
    # classes) and stays far above what another output is: the fp32 FLAIR synthesis is 12.9 dB from
    # this T2, the T2 from T1 + FLAIR alone 19.1 dB. What quantised is checked exactly above.
    assert metrics.psnr(int8.image, fp32.image, head) >= 26.0
    # TSEM is the difference of two decodings, so int8's noise weighs more in it: measured 0.82
    # (0.94 over the demo model's 28 tasks, scripts/int8_study.py); 0.5 still fails a TSEM that is noise.
    assert np.corrcoef(int8.tsem[head], fp32.tsem[head])[0, 1] >= 0.5


def test_int8_precision_needs_int8_graphs(int8_export, tmp_path):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    fp32_only = shutil.copytree(int8_export, tmp_path / "export", ignore=shutil.ignore_patterns(".*", "*.int8.*"))
    manifest = json.loads((fp32_only / "manifest.json").read_text())
    del manifest["int8"]
    (fp32_only / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TsfError, match="no int8 graphs: make them with tsf-trt export --precision int8"):
        OpenVinoBackend(fp32_only, precision="int8", cache=False)


def test_a_modified_int8_graph_is_refused(int8_export, tmp_path):
    from tsf_trt.export.manifest import read_manifest

    copy = shutil.copytree(int8_export, tmp_path / "export", ignore=shutil.ignore_patterns(".*"))
    with open(copy / "encoder.int8.bin", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match="int8 graph was modified"):
        read_manifest(copy)


def test_nncf_missing_is_one_line_before_the_model_loads(monkeypatch, no_model_load, tmp_path):
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf raises ImportError
    result = cli("export", "-o", tmp_path / "export", "--precision", "int8")
    from tsf_trt.machine.extras import install_command

    assert_clean_error(result, "needs NNCF", install_command("int8"))
    assert not (tmp_path / "export").exists()


def test_int8_options_without_int8_are_refused(no_model_load, tmp_path):
    assert_clean_error(cli("export", "-o", tmp_path / "e", "--int8-data", tmp_path), "--precision int8")
    assert_clean_error(cli("export", "-o", tmp_path / "e", "--precision", "int4"), "fp32 or int8")
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("export", "-o", tmp_path / "e", "--precision", "int8", "--int8-data", tmp_path / "empty"),
                       "no subject found")


def test_default_calibration_seeds_are_no_evaluation_seeds():
    """The phantoms int8 calibrates on by default are none that the model card, README, docs or scripts
    evaluate, train or calibrate intervals on (`--seed S --subjects K` is seeds S..S+K-1)."""
    from tsf_trt.runs.demo import DEMO_SEED
    from tsf_trt.runs.int8_samples import DEFAULT_SEEDS

    used = {DEMO_SEED}
    texts = [ROOT / "README.md", ROOT / "tsf_trt" / "bundled" / "demo" / "MODEL_CARD.md",
             *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "scripts").glob("*.py")),
             *sorted((ROOT / "bench").glob("*.py"))]
    for path in texts:
        for line in path.read_text().splitlines():
            if "int8" in line:
                continue  # the int8 calibration's own commands
            seed = re.search(r"--seed[ =](\d+)|seed=(\d+)|make_subject\((\d+)", line)
            if seed:
                start = int(next(g for g in seed.groups() if g))
                count = re.search(r"--subjects[ =](\d+)", line)
                used |= set(range(start, start + (int(count.group(1)) if count else 1)))
    assert {5000, 1000, 40000} <= used  # the held-out sets were found
    assert not used & set(DEFAULT_SEEDS)


def test_nncf_sends_no_telemetry(tmp_path):
    """import_nncf switches NNCF's usage telemetry off (it would otherwise count a missing consent
    file as consent): checked in a fresh interpreter, as pytest itself disables it."""
    import subprocess

    code = ("from tsf_trt.export.quantize import import_nncf; import_nncf(); "
            "import nncf.telemetry.decorator as d, nncf.telemetry.wrapper as w; "
            "print(isinstance(d.telemetry, w.NNCFTelemetryStub) and not isinstance(d.telemetry, w.NNCFTelemetry))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=ROOT)
    assert out.stdout.strip() == "True"  # without the switch: NNCFTelemetry, which sends events


# -- --precision auto chooses int8 only where its check passes ------------------------------------

@pytest.fixture
def small_check(monkeypatch, tmp_path):
    """The check on two small slices (the real one: 4 at 240x240), with a cache of its own."""
    from tsf_trt.synthesis import precision_auto

    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_auto, "CHECK_SHAPE", (48, 48, 8))
    monkeypatch.setattr(precision_auto, "CHECK_SLICES", 2)
    return precision_auto


def test_auto_checks_int8_where_the_export_has_it_and_records_the_figures(int8_export, small_check, monkeypatch):
    """A CPU without bf16, an export with int8 graphs: openvino checks int8 (against fp32 and the
    check phantom's truth, TSEM included), once; ort and an export without int8 graphs check nothing."""
    from tsf_trt.synthesis.source import ModelSource

    pa = small_check
    monkeypatch.setattr(pa, "native_bf16", lambda: False)
    source = ModelSource.resolve(int8_export)
    assert pa.candidates("openvino", source, "cpu")[0] == ["int8"]
    assert pa.candidates("ort", source, "cpu")[0] == []
    verdict = pa.resolve("openvino", source, device="cpu", threads=1)
    assert verdict.checked == "int8" and None not in (verdict.psnr_db, verdict.truth_loss_db, verdict.tsem_corr)
    figures = (verdict.psnr_db, verdict.omega_diff, verdict.truth_loss_db, verdict.tsem_corr)
    assert verdict.precision == ("int8" if pa.passes(*figures, precision="int8") else "fp32"), verdict
    assert verdict.omega_diff == 0.0  # exact: the fusion is fp32 in both runs (ω from the task code, Eq. 2)
    monkeypatch.setattr(pa, "check_int8", lambda *a: pytest.fail("checked twice"))
    assert pa.resolve("openvino", source, device="cpu", threads=1) == verdict
    (record,) = (pa.cache_root() / "precision").glob("*-openvino-*-int8-v2-g*.json")  # keyed by the graph changes too
    assert json.loads(record.read_text())["tsem_corr"] == verdict.tsem_corr


def test_auto_prefers_int8_then_bf16_then_fp32(int8_export, small_check, monkeypatch):
    """Stand-in checks: which verdict wins, and a failed candidate's reason kept."""
    from tsf_trt.synthesis.source import ModelSource

    pa = small_check
    monkeypatch.setattr(pa, "native_bf16", lambda: True)
    source = ModelSource.resolve(int8_export)
    calls = []

    def stand_in(precision, good):
        def check(*args):
            calls.append(precision)
            if precision == "int8":
                return pa.Verdict("int8" if good else "fp32", f"{precision} stand-in", 50.0 if good else 30.0, 0.0,
                                  0.0, 0.99, "int8")
            return pa.Verdict("bf16" if good else "fp32", f"{precision} stand-in", 50.0 if good else 30.0, 0.0,
                              checked="bf16")
        return check

    assert pa.candidates("openvino", source, "cpu")[0] == ["int8", "bf16"]
    for int8_ok, bf16_ok, expected, checked in ((True, True, "int8", ["int8"]), (False, True, "bf16", ["int8", "bf16"]),
                                                (False, False, "fp32", ["int8", "bf16"])):
        calls.clear()
        monkeypatch.setattr(pa, "check_int8", stand_in("int8", int8_ok))
        monkeypatch.setattr(pa, "check_bf16", stand_in("bf16", bf16_ok))
        verdict = pa.check("openvino", source, 1, ["int8", "bf16"])
        assert (verdict.precision, calls) == (expected, checked)
        if expected == "fp32":
            assert "int8 stand-in" in verdict.why and "bf16 stand-in" in verdict.why


@pytest.mark.parametrize("record,problem", [
    ({"precision": "int8", "why": "x", "psnr_db": 50.0, "omega_diff": 0.0, "truth_loss_db": 0.5, "tsem_corr": 0.99,
      "checked": "int8"}, "without figures that pass"),  # lost 0.5 dB against the truth
    ({"precision": "int8", "why": "x", "psnr_db": 50.0, "omega_diff": 0.0, "truth_loss_db": 0.0, "tsem_corr": 0.5,
      "checked": "int8"}, "without figures that pass"),  # TSEM is noise
    ({"precision": "int8", "why": "x", "psnr_db": 50.0, "omega_diff": 0.0, "checked": "int8"},
     "without figures that pass"),  # no truth or TSEM figures
    ({"precision": "fp32", "why": "x", "psnr_db": 50.0, "omega_diff": 0.0, "truth_loss_db": 0.0, "tsem_corr": 0.99,
      "checked": "int8"}, "although its figures pass the check for int8"),
    ({"precision": "int8", "why": "x", "psnr_db": 50.0, "omega_diff": 0.0, "truth_loss_db": 0.0, "tsem_corr": 0.99,
      "checked": "bf16"}, "without figures that pass"),
])
def test_int8_verdict_records_are_checked_against_the_rule(record, problem):
    from tsf_trt.synthesis import precision_auto, records

    found = records.verdict_problem(record, precision_auto.passes, ("int8", "bf16"))
    assert found is not None and problem in found, found
    good = {**record, "precision": "int8", "truth_loss_db": 0.05, "tsem_corr": 0.99, "checked": "int8"}
    assert records.verdict_problem(good, precision_auto.passes, ("int8", "bf16")) is None
    assert "not checked here" in records.verdict_problem({**good, "precision": "fp32"}, precision_auto.passes,
                                                         ("bf16",))


def test_the_report_says_int8_when_int8_ran(int8_export, tmp_path):
    """infer --backend openvino --precision int8: the report's precision block and the cohort table say int8."""
    from tests.helpers import SHAPE, write_nifti

    inputs = [write_nifti(tmp_path / "in" / f"sub_{s}.nii.gz", make_head(SHAPE, seed=k))
              for k, s in enumerate(("t1", "flair"))]
    result = cli("infer", "--inputs", *inputs, "--target", "t2", "--model", int8_export, "--backend", "openvino",
                 "--precision", "int8", "--threads", 1, "-o", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    (report,) = (tmp_path / "out").glob("*.json")
    precision = json.loads(report.read_text())["precision"]
    assert precision["precision"] == "int8" and precision["ran"] == "int8", precision


def test_norms_are_centred_in_fp32_graphs_only(int8_export):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend

    def centred(precision: str, graph: str) -> list[bool]:
        with OpenVinoBackend(int8_export, threads=1, precision=precision, cache=False) as backend:
            return [n.input_value(0).get_node().get_type_name() == "Subtract"
                    for n in backend.model(graph).get_ordered_ops() if n.get_type_name() == "MVN"]

    for graph in ("encoder", "decoder_t2"):
        assert centred("fp32", graph) and all(centred("fp32", graph))
        int8 = centred("int8", graph)
        assert int8 and not any(int8)  # docs/backends.md, "int8": centring changed nothing measurable there
