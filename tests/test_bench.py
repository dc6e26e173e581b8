"""`tsf-trt bench`: the report's promises (bench/SCHEMA.md), checked on tiny volumes.

No assertion is about how fast anything is: the machine may be busy. What is checked is
that every documented field is there and consistent with the others (percentiles
ordered, ratios equal to the time ratios, throughput equal to slices over time, FLOPs
over time equal to the rate), that unavailable backends are skipped with a reason, and
that user errors end as one line with exit code 1.
"""

from __future__ import annotations

import json
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import problem_lines
from tsf_trt.cli import app

runner = CliRunner()
SUMMARY = {"mean", "p50", "p90", "p99", "min", "max"}
PEAK = {"gflops", "library", "native", "candidates", "unavailable", "reason"}
TOP = {"schema_version", "tool", "created", "environment", "model", "workload", "settings", "gemm", "flops", "rows",
       "skipped", "io_overlap", "warnings", "notes"}


def cli(*args):
    return runner.invoke(app, ["bench", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """A private cache (as conftest's autouse fixture, which is per test), a small GEMM probe,
    and torch's thread count restored afterwards (--threads 1 sets it process-wide)."""
    import torch

    from tsf_trt.bench import environment

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TSF_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.setattr(environment, "GEMM_SIZE_CPU", 256)
        mp.setattr(environment, "GEMM_MIN_SECONDS", 0.02)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(light, small_model_dir, tmp_path_factory):
    """One run over every kind of row: torch and ort at two batch sizes, reference (added by
    default), two backends that cannot run here, folder mode, and all three files."""
    out = tmp_path_factory.mktemp("bench")
    files = {"json": out / "r.json", "markdown": out / "r.md", "plot": out / "r.png"}
    result = cli("--model", small_model_dir, "--backend", "torch,ort,ort-cuda,trt", "--batch-size", "1,2",
                 "--shape", 32, 32, 4, "--warmup", 0, "--iterations", 2, "--threads", 1, "--io-subjects", 1,
                 *(a for k, p in files.items() for a in (f"--{k}", p)))
    assert result.exit_code == 0, result.output
    return json.loads(files["json"].read_text(), parse_constant=pytest.fail), files, result


def rows_by(report, backend):
    return {r["batch_size"]: r for r in report["rows"] if r["backend"] == backend}


def test_report_has_every_documented_field(run):
    report, _, _ = run
    assert set(report) == TOP and report["schema_version"] == 3
    env = report["environment"]
    assert {"cpu", "logical_cpus", "usable_cpus", "physical_cores", "threads", "gpu", "versions", "precision",
            "model_id", "device"} <= set(env)
    assert {"torch", "onnxruntime", "tensorrt"} <= set(env["versions"]) and env["precision"] == "fp32"
    assert env["threads"] == 1 and env["model_id"] == report["model"]["id"] != ""
    assert report["settings"]["backends"] == ["torch", "ort", "ort-cuda", "trt", "reference"]
    gemm = report["gemm"]
    assert set(gemm) == {"cpu_size", "threads", "cpu_threads", "gpu_size", "peaks", "seconds", "measurements"}
    assert gemm["measurements"] == 2  # before the rows and after them, the faster of each kind
    assert gemm["threads"] == gemm["cpu_threads"] == 1 and gemm["gpu_size"] is None
    assert set(gemm["peaks"]) == {"cpu fp32", "cpu bf16", "cpu int8"}
    for peak in gemm["peaks"].values():
        assert PEAK <= set(peak) and (peak["gflops"] is None) == (peak["reason"] is not None)
    fp32 = gemm["peaks"]["cpu fp32"]
    assert set(fp32["candidates"]) | set(fp32["unavailable"]) == {"torch", "onnxruntime", "openvino"}
    assert fp32["gflops"] == max(fp32["candidates"].values()) == fp32["candidates"][fp32["library"]] > 0
    assert "evidence" in gemm["peaks"]["cpu bf16"] and "openvino" in report["environment"]["versions"]
    expected = {("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2), ("reference", 1)}
    assert {(r["backend"], r["batch_size"]) for r in report["rows"]} == expected
    for row in report["rows"]:
        assert {"read", "preprocess", "encoder", "fusion", "decoder", "gather", "postprocess", "write"} == \
            set(row["stages"])
        assert row["memory"]["peak_rss_bytes"] > 0 and row["memory"]["gpu_peak_bytes"] is None
        assert row["effective_batch_size"] == row["batch_size"]
        assert row["precision"] == row["precision_ran"] == "fp32"


def test_percentiles_are_ordered(run):
    report, _, _ = run
    for row in report["rows"]:
        for stat in [row["end_to_end"], row["compute"], *row["stages"].values()]:
            assert set(stat) == SUMMARY
            assert stat["min"] <= stat["p50"] <= stat["p90"] <= stat["p99"] <= stat["max"]
            assert stat["min"] <= stat["mean"] <= stat["max"]
        assert row["compute"]["mean"] <= row["end_to_end"]["mean"]


def test_ratios_equal_time_ratios(run):
    report, _, _ = run
    torch_rows, reference = rows_by(report, "torch"), rows_by(report, "reference")[1]
    for row in report["rows"]:
        base = torch_rows.get(row["batch_size"])
        assert (row["vs_torch"] is None) == (base is None)
        for ratio, baseline in ((row["vs_torch"], base), (row["vs_reference"], reference)):
            if baseline is None:
                continue
            assert ratio["baseline"] == {"backend": baseline["backend"], "batch_size": baseline["batch_size"]}
            assert ratio["end_to_end"] == pytest.approx(baseline["end_to_end"]["mean"] / row["end_to_end"]["mean"])
            assert ratio["compute"] == pytest.approx(baseline["compute"]["mean"] / row["compute"]["mean"])
            for stage, value in ratio["stages"].items():
                if value is not None:
                    assert value == pytest.approx(baseline["stages"][stage]["mean"] / row["stages"][stage]["mean"])
    assert reference["vs_reference"]["end_to_end"] == 1.0
    assert all(r["vs_torch"]["end_to_end"] == 1.0 for r in torch_rows.values())


def test_throughput_and_efficiency_follow_from_the_times(run):
    report, _, _ = run
    flops, work = report["flops"], report["workload"]
    assert work["shape_zyx"] == [4, 32, 32] and work["origin"]["phantom_shape_xyz"] == [32, 32, 4]
    assert work["task"] == "T1,T1Gd,FLAIR->T2" and work["tsem"] is True
    assert flops["per_volume"] == 4 * sum(flops["per_slice"].values()) > 0
    assert flops["decoder_passes"] == 2 and flops["reference_per_volume"] > flops["per_volume"]
    for row in report["rows"]:
        seconds = row["end_to_end"]["mean"]
        assert row["throughput"]["slices_per_s"] == pytest.approx(4 / seconds)
        assert row["throughput"]["volumes_per_min"] == pytest.approx(60 / seconds)
        eff = row["efficiency"]
        network = sum(row["stages"][s]["mean"] for s in ("encoder", "fusion", "decoder"))
        assert eff["network_seconds"] == pytest.approx(network)
        assert eff["gflops_per_s"] == pytest.approx(eff["flops_per_volume"] / network / 1e9)
        peak = report["gemm"]["peaks"]["cpu fp32"]
        assert eff["gemm_kind"] == "cpu fp32" and eff["gemm_library"] == peak["library"]
        assert eff["fraction_of_gemm"] == pytest.approx(eff["gflops_per_s"] / peak["gflops"])
        assert eff["no_peak_reason"] is None
        whole = flops["reference_per_volume"] if row["backend"] == "reference" else flops["per_volume"]
        box = row["frame_box"]  # FLOPs of the frame and the slices the row computed, not of the whole grid
        share = np.prod(box["size"]) / np.prod(flops["padded_inplane"]) * box["slices_computed"] / box["slices"]
        assert eff["flops_per_volume"] == round(whole * share)


def test_unavailable_backends_are_skipped_with_the_reason(run):
    report, _, result = run
    skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "trt" in skipped and "not available" in skipped["trt"]
    ran = {r["backend"] for r in report["rows"]}
    assert set(report["settings"]["backends"]) == ran | set(skipped) and not ran & set(skipped)
    assert all(reason.strip() for reason in skipped.values())
    assert "skipped trt:" in result.stdout


def test_folder_mode_fraction(run):
    io = run[0]["io_overlap"]
    assert io["subjects"] == 1 and io["backend"] != "reference"
    assert io["surviving_fraction"] == pytest.approx(io["folder_throughput"]["slices_per_s"]
                                                     / io["compute_throughput"]["slices_per_s"])
    assert io["folder_throughput"]["slices_per_s"] == pytest.approx(4 / io["folder_seconds"])
    assert io["steady_fraction"] is None and io["steady_throughput"] is None  # one subject: no steady state
    assert io["one_subject_seconds"] is None
    assert io["row_compute_throughput"] == next(r for r in run[0]["rows"] if r["variant"] == io["variant"]
                                                and r["batch_size"] == io["batch_size"])["compute_throughput"]


def test_markdown_and_plot(run):
    report, files, _ = run
    text = files["markdown"].read_text()
    assert text.startswith("# tsf-trt bench") and "| reference | 1 |" in text and "GEMM" in text
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in files["json"].parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_export_directory_torch_skipped_no_reference(light, run, small_model_dir, tmp_path):
    from tsf_trt.synthesis.source import ModelSource

    export = ModelSource.resolve(small_model_dir).export_dir()  # cached by the run above
    result = cli("--model", export, "--backend", "torch,ort", "--no-reference", "--batch-size", 2,
                 "--shape", 20, 16, 3, "--sources", "t1", "--no-tsem", "--warmup", 0, "--iterations", 1,
                 "--threads", 1, "--io-subjects", 0, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert [r["backend"] for r in report["rows"]] == ["ort"] and report["rows"][0]["vs_torch"] is None
    assert report["rows"][0]["vs_reference"] is None
    assert "export directory" in report["skipped"][0]["reason"] and report["skipped"][0]["backend"] == "torch"
    assert report["workload"]["sources"] == ["t1"] and report["workload"]["tsem"] is False
    assert report["flops"]["decoder_passes"] == 1 and report["flops"]["padded_inplane"] == [16, 20]
    assert "skipped" in report["io_overlap"]


def test_existing_files_are_refused_without_overwrite(run, small_model_dir):
    _, files, _ = run
    before = files["json"].read_bytes()
    result = cli("--model", small_model_dir, "--shape", 32, 32, 4, "--json", files["json"])
    assert_one_line_error(result, str(files["json"]), "--overwrite")
    assert files["json"].read_bytes() == before


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


@pytest.mark.parametrize("args, needle", [
    (["--backend", "torch,bogus"], "unknown backend 'bogus'"),
    (["--backend", "auto"], "'auto'"),
    (["--batch-size", "0,4"], "--batch-size"),
    (["--batch-size", "four"], "--batch-size"),
        (["--shape", "4", "4", "4"], "--shape"),
    (["--sources", "t1,t2"], "--sources"),
    (["--sources", "pd"], "--sources"),
    (["--iterations", "0"], "--iterations"),
    (["--warmup", "-1"], "--warmup"),
    (["--device", "tpu"], "--device"),
    (["--plot", "r.jpg"], ".png"),
    (["--json", "same.out", "--markdown", "same.out"], "different files"),
])
def test_bad_options_are_one_line(args, needle, small_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("--model", small_model_dir, *args), needle)
    assert list(tmp_path.iterdir()) == []


def test_a_target_outside_the_choices_is_a_usage_error(small_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("--model", small_model_dir, "--target", "pd")
    assert result.exit_code == 2 and "'pd' is not one of" in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_model_and_subject_are_one_line(light, small_model_dir, tmp_path):
    assert_one_line_error(cli("--model", tmp_path / "nope"), "nope", "no such")
    assert_one_line_error(cli("--model", small_model_dir, "--subject-dir", tmp_path / "nope"), "no such subject")
    assert_one_line_error(cli("--model", small_model_dir, "--subject-dir", tmp_path, "--shape", 32, 32, 4),
                          "only one")
    from tsf_trt.phantoms import write_subjects

    write_subjects(tmp_path / "two", 2, shape=(16, 16, 3))
    assert_one_line_error(cli("--model", small_model_dir, "--subject-dir", tmp_path / "two"), "2 subjects")
    partial = tmp_path / "partial"
    partial.mkdir()
    for seq in ("t1", "flair"):
        name = f"Phantom_00000_{seq}.nii.gz"
        (partial / name).write_bytes((tmp_path / "two" / "Phantom_00000" / name).read_bytes())
    assert_one_line_error(cli("--model", small_model_dir, "--subject-dir", partial, "--sources", "t1,t1gd,flair"),
                          "--sources", "no T1Gd")


def test_seq2seq_only_model_takes_one_input(light, tmp_path):
    from tests.helpers import DATA
    from tsf_trt.model import PRESETS, import_reference, save_model

    model = save_model(import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"]), tmp_path / "s2s")
    assert_one_line_error(cli("--model", model, "--sources", "t1,flair", "--shape", 16, 16, 3), "--sources t1,flair",
                          "Seq2Seq-only")


def test_real_subject_folder(light, small_model_dir, tmp_path):
    from tsf_trt.bench.runner import BenchSettings, run_bench
    from tsf_trt.phantoms import write_subjects

    (folder,) = write_subjects(tmp_path / "data", 1, shape=(20, 16, 3))
    settings = BenchSettings(model=small_model_dir, backends=["torch"], batch_sizes=[3], subject=folder,
                             sources=(0, 3), warmup=0, iterations=1, threads=1, io_subjects=1)
    report = run_bench(settings)
    assert report["workload"]["shape_zyx"] == [3, 16, 20] and report["workload"]["origin"]["kind"] == "subject"
    assert report["workload"]["sources"] == ["t1", "flair"]
    assert report["io_overlap"]["backend"] == "torch" and report["rows"][0]["effective_batch_size"] == 3


def test_units_of_the_report():
    from tsf_trt.bench.runner import contention_warnings
    from tsf_trt.bench.stats import summarize
    from tsf_trt.bench.variants import parse_backends
    from tsf_trt.bench.workload import check_shape

    stat = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stat == {"mean": 3.0, "p50": 3.0, "p90": pytest.approx(4.6), "p99": pytest.approx(4.96),
                    "min": 1.0, "max": 5.0}
    assert check_shape((200, 240, 155)) == (155, 240, 200)
    assert parse_backends("all") == ["torch", "ort", "openvino", "ort-cuda", "ort-trt", "trt", "reference"]
    assert parse_backends("all", reference=False) == ["torch", "ort", "openvino", "ort-cuda", "ort-trt", "trt"]
    assert parse_backends("reference,torch", reference=False) == ["torch", "reference"]
    assert parse_backends("torch,torch") == ["torch", "reference"]
    assert contention_warnings({"load_average_1m": 0.1, "usable_cpus": 2, "threads": 2}) == []
    (warning,) = contention_warnings({"load_average_1m": 1.5, "usable_cpus": 2, "threads": 2})
    assert "load average 1.5" in warning


def test_suite_writes_the_readme_table(light, small_model_dir, tmp_path):
    def main(args):
        return cli("suite", *args).exit_code

    out = tmp_path / "perf.md"
    assert main(["--model", str(small_model_dir), "--shape", 16, 16, 3, "--variants", "reference,torch,ort-baked",
                 "--threads", "1", "-o", str(out)]) == 0
    text = out.read_text()
    assert "| variant | batch | s / volume | vs reference | image vs torch fp32 |" in text
    assert "| `reference` (authors' way" in text and "| 1.00× |" in text and "`ort`, baked" in text
    result = cli("suite", "--model", small_model_dir, "-o", out)
    assert result.exit_code == 1  # exists, no --overwrite
    assert "--overwrite" in result.stderr


def test_bench_rows_of_every_variant_agree_with_torch_fp32(light, small_model_dir, tmp_path):
    """The variants `tsf-trt bench suite` compares are bench rows too, each with its agreement."""
    result = cli("--model", small_model_dir, "--backend", "torch,ort", "--precision", "fp32,bf16", "--decoder",
                 "baked,code", "--batch-size", "auto", "--shape", 16, 16, 3, "--warmup", 0, "--iterations", 1,
                 "--threads", 1, "--io-subjects", 0, "--json", tmp_path / "v.json", "--markdown", tmp_path / "v.md")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text(), parse_constant=pytest.fail)
    bf16, eff = report["gemm"]["peaks"]["cpu bf16"], report["rows"][1]["efficiency"]
    assert report["rows"][1]["variant"] == "torch-bf16" and eff["gemm_kind"] == "cpu bf16"
    if bf16["native"]:  # a CPU with native bf16: against its bf16 peak
        assert eff["fraction_of_gemm"] == pytest.approx(eff["gflops_per_s"] / bf16["gflops"])
    else:  # no figure, and the markdown says why
        assert bf16["gflops"] is None and eff["fraction_of_gemm"] is None and eff["gemm_gflops"] is None
        assert eff["no_peak_reason"] == bf16["reason"] and "not native" in bf16["reason"]
        assert f"no %GEMM for torch-bf16: cpu bf16 {bf16['reason']}" in (tmp_path / "v.md").read_text()
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["torch", "torch-bf16", "ort", "ort-code", "reference"]
    assert report["settings"]["precisions"] == ["fp32", "bf16"] and report["settings"]["decoders"] == ["baked", "code"]
    assert rows["torch"]["agreement"] is None and rows["ort-code"]["decoder"] == "code"
    assert rows["torch-bf16"]["vs_torch"]["baseline"] == {"backend": "torch", "batch_size": None}
    for name in ("torch-bf16", "ort", "ort-code", "reference"):
        found = rows[name]["agreement"]
        # the reference (full frame) has no torch fp32 row at its frame: against the head one
        assert found["baseline"] == {"backend": "torch", "precision": "fp32", "batch_size": None, "frame": "head"}
        assert found["image_max_abs_diff"] < (0.5 if name == "torch-bf16" else 1e-3)
        assert found["image_psnr_db"] is None or found["image_psnr_db"] > 20
        assert found["tsem_max_abs_diff"] is not None and found["weights_max_abs_diff"] >= 0
    assert all(r["batch_size"] is None and r["effective_batch_size"] >= 1 for r in report["rows"]
               if r["backend"] != "reference")


def test_bench_rows_at_each_frame_and_the_reference_at_full(light, small_model_dir, tmp_path):
    """--frame full,head: one row per frame, the head row's ratio to the full row, PSNR against the
    phantom's real target, and the reference at its one definition (full frame)."""
    result = cli("--model", small_model_dir, "--backend", "ort", "--frame", "full,head", "--batch-size", "4",
                 "--shape", 128, 128, 5, "--warmup", 0, "--iterations", 1, "--threads", 1, "--io-subjects", 0,
                 "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads((tmp_path / "f.json").read_text())["rows"]}
    assert list(rows) == ["ort-full", "ort", "reference"]
    assert rows["reference"]["frame"] == "full" and rows["ort"]["frame"] == "head"
    assert np.prod(rows["ort"]["frame_box"]["size"]) < 128 * 128 == np.prod(rows["ort-full"]["frame_box"]["size"])
    head, full = (rows[name]["efficiency"]["flops_per_volume"] for name in ("ort", "ort-full"))
    assert head < full == json.loads((tmp_path / "f.json").read_text())["flops"]["per_volume"]  # the frame's FLOPs
    assert rows["ort"]["vs_full_frame"]["baseline"] == {"backend": "ort", "batch_size": 4}
    assert rows["ort-full"]["vs_full_frame"] is None
    assert all(isinstance(r["truth_psnr_db"], float) for r in rows.values())


def test_bench_options_before_suite_are_refused(small_model_dir):
    assert_one_line_error(cli("--threads", 1, "suite"), "--threads", "suite")
    assert_one_line_error(cli("suite", "--variants", "torch,bogus"), "--variants", "bogus")
    assert_one_line_error(cli("--model", small_model_dir, "--precision", "fp64"), "--precision")
    assert_one_line_error(cli("--model", small_model_dir, "--decoder", "fast"), "--decoder")


def fake_factories(seconds: dict[str, float], calls: list):
    """Candidates whose products return their names, timed by `seconds` (a missing name: not installed)."""
    def factory(name):
        def make(n, threads):
            calls.append((name, n, threads))
            if name not in seconds:
                raise ImportError(name)
            if seconds[name] < 0:
                raise RuntimeError(f"{name} refused\nsecond line")
            return lambda: name
        return name, make
    return [factory(name) for name in ("slow", "fast", "broken", "missing")]


def test_the_peak_is_the_fastest_candidate():
    from tsf_trt.bench.environment import measure_peak

    timings, calls = {"slow": 2.0, "fast": 0.5, "broken": -1}, []
    peak = measure_peak(fake_factories(timings, calls), 1000, 3, seconds=lambda run: timings[run()])
    assert peak["library"] == "fast" and peak["gflops"] == pytest.approx(2 * 1000**3 / 0.5 / 1e9)
    assert peak["candidates"] == {"slow": pytest.approx(1.0), "fast": pytest.approx(4.0)}
    assert peak["unavailable"] == {"broken": "broken refused", "missing": "not installed"}
    assert peak["reason"] is None and {c[1:] for c in calls} == {(1000, 3)}  # size and threads to every one
    none = measure_peak(fake_factories({}, []), 10, None, seconds=lambda run: timings[run()])
    assert none["gflops"] is None and none["library"] is None and "slow not installed" in none["reason"]


@pytest.mark.parametrize("flags, capabilities, native", [
    (set(), ["FP32", "INT8"], False), ({"avx512_bf16"}, None, True), (set(), ["FP32", "BF16"], True)])
def test_bf16_is_measured_only_where_native(flags, capabilities, native, monkeypatch, one_torch_thread):
    from tsf_trt.bench import environment

    calls: list = []
    candidates = fake_factories({"slow": 0, "fast": 0}, calls)[:2]
    monkeypatch.setattr(environment, "CPU_CANDIDATES", {"fp32": candidates, "bf16": candidates, "int8": candidates})
    monkeypatch.setattr(environment, "cpu_flags", lambda: flags)
    monkeypatch.setattr(environment, "openvino_capabilities", lambda: capabilities)
    monkeypatch.setattr(environment, "GEMM_MIN_SECONDS", 0.0)
    gemm = environment.gemm_rate(1)
    bf16 = gemm["peaks"]["cpu bf16"]
    assert len(calls) == (6 if native else 4) and {c[2] for c in calls} == {1}
    assert bf16["native"] is native and (bf16["gflops"] is not None) is native
    if native:
        assert bf16["gflops"] == max(bf16["candidates"].values())
    else:
        assert bf16["candidates"] == {} and "not native" in bf16["reason"]
    assert bf16["evidence"].startswith("CPU flags: avx512_bf16;") == bool(flags)
    assert ("BF16" in bf16["evidence"]) == (capabilities is not None and "BF16" in capabilities)


def test_every_candidate_computes_the_product(one_torch_thread):
    """What is timed is the product itself, by each library (at a size too small to time)."""
    import numpy as np
    import torch

    from tsf_trt.bench import environment

    n = 64
    a, b = environment._operands(n)
    qa, qb = environment._int8_operands(n)
    exact = {"fp32": a @ b, "bf16": a @ b, "int8": qa.astype(np.int32) @ qb.astype(np.int32)}
    tolerance = {"fp32": 1e-4, "bf16": 0.5, "int8": 0}
    native = environment.bf16_support()[0]
    for precision, candidates in environment.CPU_CANDIDATES.items():
        for library, make in candidates:
            if precision == "bf16" and library == "openvino" and not native:
                with pytest.raises(ValueError, match="not bf16"):  # OpenVINO's silent f32 fallback is caught
                    make(n, 1)
                continue
            out = make(n, 1)()
            out = out.float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out[0])
            assert np.abs(out - exact[precision]).max() <= tolerance[precision], (precision, library)


def test_each_row_is_measured_against_its_own_precision():
    from tsf_trt.bench.environment import measure_peak, not_measured
    from tsf_trt.bench.runner import efficiency

    def peak(gflops):
        return measure_peak([("lib", lambda n, t: None)], 1000, None, seconds=lambda run: 2 / gflops)

    gemm = {"peaks": {"cpu fp32": peak(100.0), "cpu bf16": not_measured("not native here", False),
                      "cpu int8": peak(400.0), "gpu fp16": peak(1000.0)}}
    flops = {"per_volume": 50e9, "reference_per_volume": 80e9}

    def row(backend, precision, on_gpu=False):
        stages = {s: {"mean": 0.1} for s in ("encoder", "fusion", "decoder")}
        return {"backend": backend, "precision": precision, "on_gpu": on_gpu, "stages": stages,
                "end_to_end": {"mean": 1.0}}

    expected = [(row("ort", "fp32"), "cpu fp32"), (row("reference", "fp32"), "cpu fp32"),
                (row("ort", "int8"), "cpu int8"), (row("trt", "fp16", True), "gpu fp16"),
                (row("trt", "best", True), "gpu fp16")]
    for r, kind in expected:
        eff = efficiency(r, flops, gemm)
        assert eff["gemm_kind"] == kind and eff["gemm_gflops"] == pytest.approx(gemm["peaks"][kind]["gflops"])
        assert eff["fraction_of_gemm"] == pytest.approx(eff["gflops_per_s"] / eff["gemm_gflops"])
        assert eff["gemm_library"] == "lib" and eff["no_peak_reason"] is None
    assert efficiency(row("ort", "fp32"), flops, gemm)["fraction_of_gemm"] == pytest.approx(50 / 0.3 / 100)
    assert efficiency(row("reference", "fp32"), flops, gemm)["fraction_of_gemm"] == pytest.approx(80 / 0.3 / 100)
    asked = {**row("openvino", "bf16"), "precision_ran": "fp32"}  # OpenVINO's f32 fallback: the fp32 peak
    assert efficiency(asked, flops, gemm)["gemm_kind"] == "cpu fp32"
    bf16 = efficiency(row("torch", "bf16"), flops, gemm)
    assert bf16["gemm_kind"] == "cpu bf16" and bf16["gflops_per_s"] == pytest.approx(50 / 0.3)
    assert bf16["fraction_of_gemm"] is None and bf16["gemm_gflops"] is None
    assert bf16["no_peak_reason"] == "not native here"
    gpu32 = efficiency(row("ort-cuda", "fp32", True), flops, gemm)
    assert gpu32["gemm_kind"] == "gpu fp32" and gpu32["fraction_of_gemm"] is None and "not measured" in \
        gpu32["no_peak_reason"]


@pytest.mark.parametrize("words, zyx", [(["40x240x240"], (40, 240, 240)), (["240", "240", "40"], (40, 240, 240)),
                                        (["3X16x20"], (3, 16, 20)), (["20", "16", "3"], (3, 16, 20))])
def test_shape_takes_both_spellings(words, zyx):
    """--shape X Y Z (the file's order) and the old one word SxHxW (slices x height x width, kept for one
    release: tests/test_cli_vocabulary.py) name one phantom."""
    import typer

    from tsf_trt.bench.workload import parse_shape
    from tsf_trt.cli.bench import join_shape

    group = typer.main.get_command(app).commands["bench"]
    ctx = group.make_context("bench", ["--shape", *words, "--threads", "1"])
    assert parse_shape(ctx.params["shape"]) == zyx and ctx.params["threads"] == 1
    assert join_shape(["--threads", "1", "suite", "--shape", "1", "2", "3"], ["suite"])[-3:] == ["1", "2", "3"]


@pytest.mark.parametrize("words", [["40x240"], ["240", "240"], ["240", "abc", "40"], ["40x240x240x1"], ["a"],
                                   ["4x4x4"], ["0x240x240"], ["240", "240", "-40"]])
def test_a_malformed_shape_is_one_line(words, small_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("--model", small_model_dir, "--shape", *words), "--shape", " ".join(words[:2]))
    assert list(tmp_path.iterdir()) == []


def test_plan_says_which_precision_a_backend_skips():
    """ONNX Runtime takes no bf16: that row is skipped with the reason; the reference stays fp32 at
    the full frame whatever --precision asks."""
    from tsf_trt.bench.runner import BenchSettings

    settings = BenchSettings(model=None, backends=["ort", "openvino", "reference"], batch_sizes=[1],
                             precisions=["bf16"], frames=["full", "head"])
    variants, skipped = settings.plan()
    assert [v.name for v in variants] == ["openvino-bf16-full", "openvino-bf16", "reference"]
    assert variants[-1].precision == "fp32" and variants[-1].frame == "full"
    assert skipped == [{"backend": "ort", "reason": "takes fp32 only (--precision bf16)"}]
    variants, skipped = BenchSettings(model=None, backends=["ort", "reference"], batch_sizes=[1],
                                      precisions=["fp32", "bf16"]).plan()
    assert [v.name for v in variants] == ["ort", "reference"]
    assert skipped == [{"backend": "ort", "variant": "ort-bf16", "reason": "ort takes fp32 only: no bf16 row"}]


def test_compile_adds_a_torch_compile_twin_of_each_torch_row():
    from tsf_trt.bench.runner import BenchSettings

    variants, _ = BenchSettings(model=None, backends=["torch", "ort"], batch_sizes=[1], precisions=["fp32", "bf16"],
                                frames=["head"], compile=True).plan()
    assert [(v.name, v.compile) for v in variants] == [
        ("torch", False), ("torch-compile", True), ("torch-bf16", False), ("torch-bf16-compile", True), ("ort", False)]


@pytest.mark.parametrize("interleave", [True, False])
def test_rows_take_turns_unless_asked_not_to(interleave, light, small_model_dir, monkeypatch):
    """Interleaved, iteration k of every row runs before iteration k+1 of any (other load on a shared
    machine falls on every row alike), and rows that differ by frame share one backend;
    --no-interleave: one row's iterations after the other's, one backend per row."""
    from tsf_trt.bench import runner
    from tsf_trt.bench.runner import BenchSettings, run_bench
    from tsf_trt.runs import jobs

    order, opened = [], []
    real_infer, real_create = jobs.infer_subject, runner.create_variant

    def infer_subject(synth, subject, request, **kwargs):
        order.append(request.output.name)
        return real_infer(synth, subject, request, **kwargs)

    def create_variant(variant, *args, **kwargs):
        opened.append(variant.name)
        return real_create(variant, *args, **kwargs)

    monkeypatch.setattr(jobs, "infer_subject", infer_subject)
    monkeypatch.setattr(runner, "create_variant", create_variant)
    settings = BenchSettings(model=small_model_dir, backends=["torch", "ort"], batch_sizes=[2], shape_zyx=(3, 16, 16),
                             warmup=1, iterations=2, threads=1, io_subjects=0, interleave=interleave,
                             frames=["full", "head"])
    report = run_bench(settings)
    rows = ["torch-full-2", "torch-2", "ort-full-2", "ort-2"]
    assert order == (rows * 3 if interleave else [r for r in rows for _ in range(3)])
    assert opened == (["torch-full", "ort-full"] if interleave else ["torch-full", "torch", "ort-full", "ort"])
    assert [r["variant"] for r in report["rows"]] == ["torch-full", "torch", "ort-full", "ort"]
    assert report["settings"]["interleave"] is interleave
    assert all(r["memory"]["peak_rss_bytes"] > 0 for r in report["rows"])
    assert report["rows"][3]["agreement"]["baseline"] == {"backend": "torch", "precision": "fp32", "batch_size": 2,
                                                           "frame": "head"}


def test_folder_mode_steady_state_is_the_cost_of_a_further_subject(light, small_model_dir):
    from tsf_trt.bench.runner import BenchSettings, run_bench

    report = run_bench(BenchSettings(model=small_model_dir, backends=["ort"], batch_sizes=[2], shape_zyx=(3, 16, 16),
                                     warmup=0, iterations=1, threads=1, io_subjects=3))
    io = report["io_overlap"]
    per_subject = (io["folder_seconds"] - io["one_subject_seconds"]) / 2
    assert io["steady_throughput"]["slices_per_s"] == pytest.approx(3 / per_subject)
    assert io["steady_fraction"] == pytest.approx(io["steady_throughput"]["slices_per_s"]
                                                  / io["compute_throughput"]["slices_per_s"])


def test_the_peak_is_the_faster_of_two_measurements():
    from tsf_trt.bench.environment import not_measured
    from tsf_trt.bench.runner import faster_peaks

    def gemm(fp32, bf16):
        return {"peaks": {"cpu fp32": {"gflops": fp32}, "cpu bf16": bf16}, "seconds": 1.0}

    none = not_measured("not native", False)
    merged = faster_peaks(gemm(100.0, none), gemm(300.0, none))
    assert merged["peaks"]["cpu fp32"]["gflops"] == 300.0 and merged["peaks"]["cpu bf16"] is none
    assert merged["seconds"] == 2.0 and merged["measurements"] == 2
