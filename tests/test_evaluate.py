"""`tsf-trt evaluate`: scores equal to an independent recomputation, shared encodings equal to the
pipeline, complete reports, resume, honest LPIPS, task parsing, the rank AUC, and the old TSEM QC
flag gone (calibrated intervals replace it: tests/test_evaluate_interval.py)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tsf_trt import metrics
from tsf_trt.cli import app
from tsf_trt.errors import InputError, TsfError
from tsf_trt.evaluation import Settings, Task, all_tasks, evaluate, parse_tasks
from tsf_trt.evaluation.loop import Region
from tsf_trt.evaluation.ranks import average_ranks, rank_auc, worst
from tsf_trt.evaluation.store import ReportDir
from tsf_trt.files.volume import load_volume
from tsf_trt.inputs.subjects import find_subjects
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer
from tsf_trt.synthesis.preprocess import normalize, stack_25d

SHAPE = (32, 32, 16)  # phantom (x, y, z): canonical (16, 32, 32)
TASKS = "t1,flair->t2; t1->t2; flair->t2; t1gd,t2->flair"
runner = CliRunner()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from tsf_trt.phantoms import write_subjects

    folder = tmp_path_factory.mktemp("phantoms")
    write_subjects(folder, 3, seed=0, shape=SHAPE)
    return folder


@pytest.fixture(scope="module")
def synth(small_model_dir):
    return Synthesizer(small_model_dir, RunOptions(backend="torch"))


@pytest.fixture(scope="module")
def run(synth, phantoms, tmp_path_factory):
    report = tmp_path_factory.mktemp("report") / "ev"
    return evaluate(synth, phantoms, report, Settings(tasks=parse_tasks(TASKS), figures=1))


def rows_of(report):
    with open(report / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- tasks --------------------------------------------------------------------------------------
def test_tasks_all_targets_and_explicit():
    everything = all_tasks()
    assert len(everything) == 28 and len(set(everything)) == 28
    assert [sum(t.n_inputs == n for t in everything) for n in (1, 2, 3)] == [12, 12, 4]
    assert parse_tasks(None) == everything and parse_tasks("ALL") == everything
    assert len(parse_tasks("->t2")) == 7 and all(t.target == 2 for t in parse_tasks("->t2w"))
    two = parse_tasks(["t2f,T1->t2", "t1ce->t1"])
    assert [t.label for t in two] == ["T1Gd->T1", "T1,FLAIR->T2"] and two[1].key == "t1,flair->t2"
    assert parse_tasks("t1->t2 all") == everything  # a union, in table order
    assert parse_tasks("single") == [t for t in everything if t.n_inputs == 1]


@pytest.mark.parametrize("spec, message", [
    ("t1,flair", "SOURCES->TARGET"), ("t1,x->t2", "unknown sequence 'x'"), ("t2->t2", "among the inputs"),
    ("t1,t1->t2", "more than once"), ("t1->", "no target"), ("->t9", "unknown sequence"),
    ("t1->t2;t1->t2", "given twice"), ("  ", "empty"),
])
def test_task_parsing_errors(spec, message):
    with pytest.raises(TsfError, match=message):
        parse_tasks(spec)


# -- rank statistics (the subject flag's AUC) -----------------------------------------------------
def test_rank_auc_by_hand():
    # positives score 1 and 3; negatives 2, 4, 2, 3. Pairs won: 3>2, 3>2, and the tie 3=3 counts
    # one half: 2.5 of 2 x 4 = 8 pairs.
    assert rank_auc([1, 2, 3, 4, 2, 3], [True, False, True, False, False, False]) == pytest.approx(2.5 / 8)
    assert rank_auc([0.1, 0.9, 0.8], [False, True, True]) == 1.0
    assert math.isnan(rank_auc([1, 2], [True, True]))
    assert list(average_ranks([10, 20, 10, 30])) == [1.5, 3.0, 1.5, 4.0]
    assert list(worst([30.0, 20.0, 25.0, 28.0, 31.0], 0.1)) == [False, True, False, False, False]


# -- the evaluation ---------------------------------------------------------------------------------
def test_scores_agree_with_an_independent_recomputation(run, synth, phantoms, small_model):
    """One subject: the pipeline run on its own, scored with tsf_trt.metrics, gives the CSV's numbers."""
    subject = find_subjects(phantoms)[0]
    volumes = {i: load_volume(p) for i, p in subject.inputs.items()}
    head = np.logical_or.reduce([v.data > 0 for v in volumes.values()])
    truth = normalize(volumes[2].data)
    rows = {r["task"]: r for r in rows_of(run.report_dir) if r["subject"] == subject.name}
    result = synth.run({0: volumes[0], 3: volumes[3]}, "t2")
    row = rows["T1,FLAIR->T2"]
    assert float(row["psnr"]) == pytest.approx(metrics.psnr(result.image, truth, head), abs=1e-4)
    assert float(row["ssim"]) == pytest.approx(metrics.ssim(result.image, truth, head), abs=1e-5)
    regions = metrics.tsem_regions(result.image, truth, result.tsem, head)
    assert float(row["psnr_tsem_top"]) == pytest.approx(regions["psnr_top"], abs=1e-3)
    assert float(row["psnr_tsem_rest"]) == pytest.approx(regions["psnr_rest"], abs=1e-4)
    assert float(row["w_t1"]) == pytest.approx(result.weights["t1"], abs=1e-6) and row["w_t2"] == ""
    assert row["lpips"] == ""  # unavailable, never faked
    # The ablation: each input decoded on its own by the model's own encoder and decoder.
    with torch.no_grad():
        one_to_one = {}
        for i in (0, 3):
            stacks = torch.from_numpy(stack_25d(normalize(volumes[i].data), range(truth.shape[0])))
            _, code = small_model.codes([i], 2)
            one_to_one[i] = small_model.decoder(small_model.encoder(stacks), code)[:, 1].numpy()
    average = (one_to_one[0] + one_to_one[3]) / 2
    assert float(row["seq2seq_avg_psnr"]) == pytest.approx(metrics.psnr(average, truth, head), abs=1e-4)
    best = max((0, 3), key=lambda i: metrics.psnr(one_to_one[i], truth, head))
    assert row["seq2seq_best_input"] == {0: "T1", 3: "FLAIR"}[best]
    assert float(row["seq2seq_best_psnr"]) == pytest.approx(metrics.psnr(one_to_one[best], truth, head), abs=1e-4)
    single = rows["T1->T2"]
    assert float(single["no_attention_psnr"]) == pytest.approx(metrics.psnr(one_to_one[0], truth, head), abs=1e-4)
    assert float(single["seq2seq_avg_psnr"]) == float(single["no_attention_psnr"])  # one input: one network


def test_slice_step_scores_exactly_those_slices(synth, phantoms, tmp_path):
    subject = find_subjects(phantoms)[1]
    ev = evaluate(synth, phantoms, tmp_path / "r", Settings(tasks=parse_tasks("t1gd,t2->flair"), slice_step=2,
                                                            figures=0, compare=False))
    row = next(r for r in rows_of(ev.report_dir) if r["subject"] == subject.name)
    volumes = {i: load_volume(p).data for i, p in subject.inputs.items()}
    head = np.logical_or.reduce([v > 0 for v in volumes.values()])
    picked = [z for z in range(head.shape[0]) if z % 2 == 0 and head[z].any()]
    assert list(Region.of(head, 2).slices) == picked and int(row["slices"]) == len(picked)
    full = synth.run_canonical({1: volumes[1], 2: volumes[2]}, "flair").image
    truth = normalize(volumes[3])
    assert float(row["psnr"]) == pytest.approx(metrics.psnr(full[picked], truth[picked], head[picked]), abs=1e-4)
    assert row["no_attention_psnr"] == ""  # --no-compare


def test_report_has_every_table_and_figure(run):
    report = run.report_dir
    for name in ("report.md", "summary.json", "results.csv", "run.json", "figures/weights.png"):
        assert (report / name).is_file(), name
    rows = rows_of(report)
    assert not (report / "qc.json").exists() and "qc_score" not in rows[0]  # the old QC flag is gone
    assert len(rows) == 3 * 4 and {r["subject"] for r in rows} == {o.subject for o in run.outcomes}
    summary = json.loads((report / "summary.json").read_text())
    assert summary["lpips"].startswith("unavailable")
    assert {r["lpips"] for r in summary["table1_by_inputs"]} == {"unavailable"}
    assert {r["n_inputs"] for r in summary["table1_by_inputs"]} == {1, 2}
    methods = {r["method"] for r in summary["table1_by_inputs"]}
    assert methods >= {"TSF-Seq2Seq", "TSF-Seq2Seq w/o attention (fused_avg)"}
    assert [r["n_inputs"] for r in summary["table2"]] == [1, 2]
    assert {w["task"] for w in summary["weights"]} == {"T1->T2", "FLAIR->T2", "T1,FLAIR->T2", "T1Gd,T2->FLAIR"}
    figures = summary["figures"]["subjects"]
    assert [f["task"] for f in figures] == ["T1,FLAIR->T2", "T1Gd,T2->FLAIR"]  # most inputs, per target
    text = (report / "report.md").read_text()
    for part in ("Table 1", "Table 2", "Fig. 3", "unavailable", "figures/weights.png", *(f["path"] for f in figures)):
        assert part in text, part
    assert "QC" not in text and "qc" not in summary
    for fig in figures:
        assert (report / fig["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(report.rglob(".*tmp*"))  # atomic writes leave nothing behind


def test_three_subjects_conclude_nothing_and_say_so(run):
    """The issue's report ranked methods 0.03-0.14 dB apart on 2 subjects: on 3, no interval is given
    and no method is said to beat another (tests/test_report_stats.py holds the rules with enough)."""
    summary, text = run.summary, (run.report_dir / "report.md").read_text()
    assert {r["psnr"]["n_subjects"] for r in summary["table1_by_inputs"]} == {3}
    assert {r["psnr"]["ci95"] is None for r in summary["table1_by_inputs"] + summary["per_task"]} == {True}
    assert "n/a (n too small)" in text and "## Per task" in text
    lines = [line for line in text.splitlines() if line.startswith("* ") and "input(s):" in line]
    assert [line[2:13] for line in lines] == ["1 input(s):", "2 input(s):"]
    for line in lines:
        assert " > " not in line and "not distinguishable at n = 3" in line, line
    steps = [s for o in summary["psnr_ordering"] for s in o["steps"]]
    assert steps and not any(s["distinguishable"] for s in steps)


def test_the_figure_names_its_slices_and_scores(synth, phantoms, tmp_path, monkeypatch):
    """evaluate's figure (drawn, not rendered): scores in the title, rows named by the volume's own
    axial index (every other slice with --slice-step 2), the sides marked."""
    from pathlib import Path

    from tsf_trt.runs import figures

    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path, **kw: drawn.append(fig) or Path(path))
    ev = evaluate(synth, phantoms, tmp_path / "r", Settings(tasks=parse_tasks("t1,flair->t2"), slice_step=2,
                                                            figures=1, compare=False))
    row = next(r for r in ev.outcomes[0].rows)
    assert len(drawn) == 2  # the subject's figure, then the chart of ω
    fig = drawn[0]
    assert f"PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}" in fig.get_suptitle()
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels and all(label.startswith("axial z ") and int(label.split()[-1]) % 2 == 0 for label in labels)
    assert {t.get_text() for t in fig.axes[0].texts} == {"R", "L"}
    assert any("top 1 %" in ax.get_title() for ax in fig.axes)  # the TSEM column says what it shows


def test_resume_reuses_finished_subjects(run, synth, phantoms, monkeypatch):
    before = (run.report_dir / "results.csv").read_text()
    cache = run.report_dir / "subjects" / f"{run.outcomes[0].subject}.json"
    cache.unlink()  # as if the run had been interrupted before the first subject finished
    calls = []
    import tsf_trt.evaluation.run as runmod

    real = runmod.evaluate_images
    monkeypatch.setattr(runmod, "evaluate_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = evaluate(synth, phantoms, run.report_dir, Settings(tasks=parse_tasks(TASKS), figures=1))
    assert again.resumed and [o.status for o in again.outcomes] == ["done", "cached", "cached"] and calls == [1]
    assert (run.report_dir / "results.csv").read_text() == before


def test_seq2seq_only_model_scores_one_input_tasks(phantoms, tmp_path):
    from tests.helpers import DATA
    from tsf_trt.model import PRESETS, import_reference

    synth = Synthesizer(import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"]), RunOptions(backend="torch"))
    with pytest.raises(TsfError, match="Seq2Seq-only.*--tasks single"):
        evaluate(synth, phantoms, tmp_path / "r", Settings(tasks=parse_tasks("all")))
    ev = evaluate(synth, phantoms, tmp_path / "r", Settings(tasks=parse_tasks("t1->t2"), figures=0))
    assert ev.summary["table1_by_inputs"][0]["method"].startswith("Seq2Seq") and ev.summary["table2"] == []
    assert {r["psnr_tsem_top"] for r in rows_of(ev.report_dir)} == {""}


def test_a_folder_of_another_run_is_refused(run, synth, phantoms, tmp_path):
    with pytest.raises(InputError, match="another run .*slice_step"):
        evaluate(synth, phantoms, run.report_dir, Settings(tasks=parse_tasks(TASKS), slice_step=3))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a tsf-trt evaluation report"):
        evaluate(synth, phantoms, tmp_path, Settings(tasks=parse_tasks("t1->t2")))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_runs_and_reports_errors_in_one_line(phantoms, small_model_dir, tmp_path):
    base = ["evaluate", "--data", str(phantoms), "--model", str(small_model_dir), "--backend", "torch"]
    ok = runner.invoke(app, [*base, "--tasks", "t2->t1", "-o", str(tmp_path / "r"), "--figures", "Phantom_00001",
                             "--no-compare", "--slice-step", "4"])
    assert ok.exit_code == 0, ok.output
    assert "report:" in ok.output and (tmp_path / "r" / "figures" / "Phantom_00001_t2_to_t1.png").is_file()
    for extra, message in ((["--tasks", "t1->t1"], "among the inputs"),
                           (["--figures", "Nobody"], "no subject named Nobody"),
                           (["--lpips-weights", str(tmp_path / "alex.pth")], "alex.pth: no such file"),
                           (["--calibration", str(tmp_path / "cal.json"), "--tasks", "t1->t2"],
                            "cal.json: no such file")):
        result = runner.invoke(app, [*base, "-o", str(tmp_path / "e"), *extra])
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    bad_data = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "none"), "--model", str(small_model_dir)])
    assert bad_data.exit_code == 1 and "no such folder" in bad_data.output


def test_the_old_qc_options_are_gone(phantoms, tmp_path):
    """Calibrated intervals replaced the TSEM QC flag: its options are unknown, Click's usage error
    (exit 2) names the option, and nothing is written."""
    out = tmp_path / "out"
    for args in (["infer", "--data", str(tmp_path / "in"), "--target", "t2", "-o", str(out), "--qc", "qc.json"],
                 ["evaluate", "--data", str(phantoms), "-o", str(out), "--calibrate-qc"],
                 ["evaluate", "--data", str(phantoms), "-o", str(out), "--qc", "qc.json"]):
        option = next(a for a in args if a in ("--qc", "--calibrate-qc"))
        result = runner.invoke(app, args)
        said = [line for line in result.stderr.splitlines() if "No such option" in line]
        assert result.exit_code == 2 and len(said) == 1 and f"No such option: {option} " in said[0] + " ", args
        assert "Traceback" not in result.output and not out.exists()


def test_an_earlier_versions_qc_file_goes_but_not_a_users(tmp_path):
    """A report folder of an earlier tsf-trt may hold its qc.json (the QC calibration): writing the report
    again removes it, so no superseded flag stays beside the new report; a qc.json without tsf-trt's tag
    is not ours: it is kept, and --overwrite refuses the folder."""
    folder, theirs = tmp_path / "report", {"format": "tsf-trt-qc", "version": 1, "tsem_threshold": 0.05}
    assert ReportDir(folder, {"model_id": "m"}).open(False) is False
    old = folder / "qc.json"
    old.write_text(json.dumps(theirs))
    assert ReportDir(folder, {"model_id": "m"}).open(False) is True and not old.exists()  # resumed
    old.write_text(json.dumps(theirs))
    assert ReportDir(folder, {"model_id": "other"}).open(True) is False and not old.exists()  # --overwrite
    old.write_text('{"mine": true}')
    assert ReportDir(folder, {"model_id": "other"}).open(False) is True  # resumed: nothing of ours to remove
    with pytest.raises(InputError, match="qc.json"):
        ReportDir(folder, {"model_id": "m"}).open(True)
    assert old.read_text() == '{"mine": true}'


def test_lpips_weights_need_the_lpips_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("lpips") is not None:
        pytest.skip("lpips is installed here")
    weights = tmp_path / "alex.pth"
    weights.write_bytes(b"not used")
    from tsf_trt.evaluation.lpips import load_lpips

    with pytest.raises(TsfError, match="`lpips` package, which is not installed"):
        load_lpips(weights)


def test_hard_phantoms_keep_default_subjects_and_are_named(tmp_path):
    from tsf_trt.phantoms import is_hard, make_subject, write_subjects

    plain, hard = make_subject(2, (24, 24, 16)), make_subject(2, (24, 24, 16), hard=True)
    assert "hard" not in plain.params and hard.params["hard"] is True
    assert (hard.label > 0).sum() > (plain.label > 0).sum()
    assert [s for s in range(10) if is_hard(s, 0.3)] == [0, 2, 5] and not is_hard(0, 0.0)
    folders = write_subjects(tmp_path, 3, seed=1, shape=(24, 24, 16), hard_fraction=0.3)
    assert [f.name for f in folders] == ["Phantom_00001", "PhantomHard_00002", "Phantom_00003"]


def test_figures_check_their_inputs(tmp_path):
    from tsf_trt.runs.figures import subject_figure, weights_chart

    image = -np.ones((5, 16, 16), np.float32)
    image[:, 4:12, 4:12] = 0.5
    path = subject_figure(tmp_path / "f.png", inputs={"t1": image}, synthesis=image, truth=None, tsem=None,
                          weights=None, title="only a synthesis")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="shape"):
        subject_figure(tmp_path / "g.png", inputs={"t1": image[:2]}, synthesis=image, truth=None, tsem=None,
                       weights=None, title="x")
    with pytest.raises(ValueError, match="no task"):
        weights_chart(tmp_path / "w.png", [])
    assert Task((0, 3), 2).slug == "t1-flair_to_t2"


def test_one_file_as_two_sequences_fails_its_subject_in_evaluate(phantoms, small_model_dir, tmp_path):
    """infer's rule (tsf_trt.inputs.prefetch.check_distinct_files) holds where evaluate reads subjects too:
    a FLAIR that is a link to the T1 fails that subject in one line, the others are scored."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    flair = data / "Phantom_00001" / "Phantom_00001_flair.nii.gz"
    flair.unlink()
    flair.symlink_to(data / "Phantom_00001" / "Phantom_00001_t1.nii.gz")
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--model", str(small_model_dir), "--backend",
                                 "torch", "--tasks", "t1,flair->t2", "-o", str(tmp_path / "r"), "--figures", "0",
                                 "--no-compare", "--slice-step", "4"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failed = [line for line in result.stderr.splitlines() if "failed" in line]
    assert len(failed) == 1 and "Phantom_00001" in failed[0] and "same file" in failed[0], result.stderr
    assert "scored 2 subject(s)" in result.stdout, result.stdout
