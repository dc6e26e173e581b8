"""`tsf-trt evaluate --calibration`: coverage of a calibration's intervals measured against the truth,
checked by hand; refused for another model before it loads; the resume cache follows the calibration;
summary, report, CSV, the CLI's lines and the figure's half-width panel."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import assert_clean_error, cli, wide_inputs
from tsf_trt.evaluation import Settings, Task, evaluate, parse_tasks
from tsf_trt.evaluation.loop import evaluate_images
from tsf_trt.evaluation.ranks import rank_auc, worst
from tsf_trt.inputs.subjects import find_subjects
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer
from tsf_trt.uncertainty.calibration import (PER_NETWORK_UNIT, Calibration, TaskCalibration, read_calibration,
                                             write_calibration)
from tsf_trt.uncertainty.heuristic import Heuristic, edge_map

SHAPE = (32, 32, 16)  # phantom (x, y, z): canonical (16, 32, 32), as tests/test_evaluate.py
FUSED, SINGLE = Task((0, 3), 2), Task((0,), 2)  # t1,flair->t2 and t1->t2
#: The adaptive task's u(x) = 0.02 + edge(x) with λ = 1: a width that varies from voxel to voxel.
EDGE = Heuristic(("edge",), (0.02, 1.0))
CONSTANT = Heuristic((), (1.0,))
#: Network units: wider than any |error| can be (images lie in [-1, 1]); not a binary fraction, so a
#: float32 mean of it over voxels would round differently from subject to subject.
HUGE = 3.3


def task_cal(heuristic: Heuristic, lam: float, constant_lam: float, flag_above: float) -> TaskCalibration:
    return TaskCalibration(heuristic, lam, n_subjects=9, empirical_outside=0.09, flag_above=flag_above,
                           constant_lam=constant_lam)


def calibration(model_id: str, voxel_mm: tuple[float, float], **tasks: TaskCalibration) -> Calibration:
    keys = {"fused": FUSED.key, "single": SINGLE.key}
    return Calibration(model_id, 0.1, {keys[k]: v for k, v in tasks.items()}, voxel_mm,
                       {"fit": ["a"], "calibration": ["b"]}, inputs=wide_inputs())


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from tsf_trt.phantoms import write_subjects

    folder = tmp_path_factory.mktemp("phantoms")
    folders = write_subjects(folder, 3, seed=1, shape=SHAPE, hard_fraction=0.3)
    assert [f.name for f in folders] == ["Phantom_00001", "PhantomHard_00002", "Phantom_00003"]
    return folder


@pytest.fixture(scope="module")
def synth(small_model_dir):
    return Synthesizer(small_model_dir, RunOptions(backend="torch"))


@pytest.fixture(scope="module")
def voxels(phantoms):
    """The phantoms' smallest and largest voxel side (what `calibrate` records)."""
    from tsf_trt.files.volume import load_volume
    from tsf_trt.inputs.preflight import voxel_size_mm

    sizes = [v for s in find_subjects(phantoms) for p in s.inputs.values() for v in voxel_size_mm(load_volume(p))]
    return min(sizes), max(sizes)


@pytest.fixture(scope="module")
def cal_file(synth, voxels, tmp_path_factory):
    """Written and read back, as a user passes it: the fused task adaptive (λ = 1, constant λ huge,
    every subject flagged), the one-input task constant and huge (its constant baseline λ = 0)."""
    cal = calibration(synth.backend.model_id, voxels, fused=task_cal(EDGE, 1.0, HUGE, 0.0),
                      single=task_cal(CONSTANT, HUGE, 0.0, 1e6))
    path = tmp_path_factory.mktemp("cal") / "calibration.json"
    write_calibration(cal, path)
    return path


@pytest.fixture(scope="module")
def run(synth, phantoms, cal_file, tmp_path_factory):
    report = tmp_path_factory.mktemp("report") / "ev"
    return evaluate(synth, phantoms, report, Settings(tasks=parse_tasks("t1,flair->t2; t1->t2; t2->flair"), figures=1,
                                                      calibration=read_calibration(cal_file)))


def intervals(run, task: Task) -> dict[str, dict]:
    return {r["subject"]: r["interval"] for o in run.outcomes for r in o.rows if r["task"] == task.label}


# -- coverage, by hand --------------------------------------------------------------------------------
def test_coverage_numbers_are_right_by_hand(run, synth, phantoms):
    fused, single = intervals(run, FUSED), intervals(run, SINGLE)
    assert set(fused) == set(single) == {s.name for s in find_subjects(phantoms)}
    for subject in find_subjects(phantoms):
        images = evaluate_images(synth.backend, subject.inputs, [FUSED])
        out, head = images.tasks[FUSED], images.head
        error = np.abs(images.truth[2] - out.image)[head]
        width = (0.02 + edge_map(out.image))[head]  # λ = 1
        got = fused[subject.name]
        # The same network on the same machine; 1e-3 (a few of the ~2000 head voxels) leaves room for
        # a voxel whose |error| lies within float rounding of its half-width.
        assert got["outside"] == pytest.approx(np.mean(error > width), abs=1e-3)
        assert 0.0 < got["outside"] < 1.0  # a case that tells the two sides apart
        assert got["half_width"] == pytest.approx(width.mean() * PER_NETWORK_UNIT, rel=1e-4)  # float32 sums
        assert got["score"] == pytest.approx(got["half_width"], rel=1e-6) and got["flagged"] is True
        assert got["constant_outside"] == 0.0 and got["constant_half_width"] == HUGE * PER_NETWORK_UNIT
        # the one-input task: a huge λ leaves nothing outside, its constant baseline λ = 0 ~everything
        assert single[subject.name]["outside"] == 0.0 and single[subject.name]["constant_outside"] > 0.95
        assert single[subject.name]["half_width"] == pytest.approx(HUGE * PER_NETWORK_UNIT, rel=1e-6)
        assert single[subject.name]["flagged"] is False
    assert {r["interval"] is None for o in run.outcomes for r in o.rows if r["task"] == "T2->FLAIR"} == {True}


def test_summary_report_and_csv(run):
    iv = run.summary["interval"]
    assert iv["alpha"] == 0.1 and iv["not_applied"] == [] and iv["not_calibrated"] == ["t2->flair"]
    assert len(iv["sha256"]) == 64 and iv["calibration"].endswith("calibration.json")
    by_task = {t["key"]: t for t in iv["tasks"]}
    fused, single = by_task[FUSED.key], by_task[SINGLE.key]
    rows = sorted((r for o in run.outcomes for r in o.rows if r["task"] == FUSED.label), key=lambda r: r["subject"])
    outside = [r["interval"]["outside"] for r in rows]
    assert fused["subjects"] == 3 and fused["outside"]["mean"] == pytest.approx(np.mean(outside))
    assert fused["outside"]["min"] == min(outside) and fused["outside"]["max"] == max(outside)
    assert fused["outside"]["above_alpha"] == sum(o > 0.1 for o in outside)
    low, high = fused["outside"]["ci95"]
    assert low < fused["outside"]["mean"] < high or np.std(outside) == 0
    # t(0.975, 2 df) = 4.303: the half-width of the interval over 3 subjects
    assert (high - low) / 2 == pytest.approx(4.303 * np.std(outside, ddof=1) / np.sqrt(3), rel=1e-3)
    width = fused["half_width"]
    assert width["constant"] == HUGE * PER_NETWORK_UNIT and width["ratio"] == pytest.approx(width["adaptive"] / (HUGE * PER_NETWORK_UNIT))
    assert width["narrower"] == pytest.approx(1 - width["ratio"])
    scores, psnr = [r["interval"]["score"] for r in rows], [r["psnr"] for r in rows]
    assert fused["flag"]["flagged"] == 3 and fused["flag"]["n_worst"] == 1
    assert fused["flag"]["auc_worst_decile"] == rank_auc(scores, worst(psnr))
    assert fused["flag"]["n_hard"] == 1
    assert fused["flag"]["auc_hard"] == rank_auc(scores, [r["subject"].startswith("PhantomHard") for r in rows])
    assert single["outside"]["mean"] == 0.0 and single["half_width"]["ratio"] is None  # constant width 0
    assert single["flag"]["auc_worst_decile"] == 0.5  # one width for all: tied scores, no ranking by rounding
    overall = iv["overall"]
    assert overall["subjects"] == 3 and overall["outside"]["mean"] == pytest.approx(
        (fused["outside"]["mean"] + single["outside"]["mean"]) / 2)
    assert overall["flag"]["flagged"] == 3  # a subject is flagged when any of its tasks is
    saved = json.loads((run.report_dir / "summary.json").read_text())["interval"]
    assert saved["tasks"][0]["outside"]["mean"] == pytest.approx(iv["tasks"][0]["outside"]["mean"])
    text = (run.report_dir / "report.md").read_text()
    assert "## Calibrated intervals" in text and text.index("Calibrated intervals") < text.index("## Files")
    assert "QC" not in text  # one flag: the calibrated one (the old TSEM QC flag is gone)
    assert "AUC worst PSNR decile" in text and "t2->flair" in text and "overall (subject means)" in text
    with open(run.report_dir / "results.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    fused_csv = [r for r in csv_rows if r["task"] == FUSED.label]
    assert sorted(float(r["interval_outside"]) for r in fused_csv) == pytest.approx(sorted(outside))
    assert {r["interval_outside"] for r in csv_rows if r["task"] == "T2->FLAIR"} == {""}


def test_the_figure_shows_the_half_width_beside_the_error(run, tmp_path):
    from tsf_trt.runs.figures import panels, subject_figure

    figure = next(f for f in run.summary["figures"]["subjects"] if f["task"] == FUSED.label)
    assert (run.report_dir / figure["path"]).is_file()
    image = -np.ones((3, 16, 16), np.float32)
    image[:, 4:12, 4:12] = 0.5
    truth = image + 0.1
    width = np.full_like(image, 0.05)
    columns = panels({"t1": image}, image, truth, None, width)
    titles = [c[0] for c in columns]
    k = titles.index("|error| (0–1000)")
    assert titles[k + 1] == "half-width (0–1000)" and columns[k][2] == columns[k + 1][2] == "error"  # one scale
    assert columns[k][1].max() == pytest.approx(0.1 * PER_NETWORK_UNIT, rel=1e-5)  # float32 of 0.1
    assert columns[k + 1][1].max() == pytest.approx(0.05 * PER_NETWORK_UNIT, rel=1e-5)
    assert "|error| (0–1000)" in [c[0] for c in panels({"t1": image}, image, truth, None)]  # always output units

    def png_width(path):
        return int.from_bytes(path.read_bytes()[16:20], "big")

    common = dict(inputs={"t1": image}, synthesis=image, truth=truth, tsem=None, weights=None, title="x")
    plain = subject_figure(tmp_path / "a.png", **common)
    wider = subject_figure(tmp_path / "b.png", half_width=width, **common)
    assert png_width(wider) > png_width(plain)  # one more panel
    with pytest.raises(ValueError, match="half_width has shape"):
        subject_figure(tmp_path / "c.png", half_width=width[:2], **common)


# -- the resume cache ------------------------------------------------------------------------------------
def test_a_changed_calibration_scores_again(synth, phantoms, voxels, tmp_path):
    report = tmp_path / "r"
    model = synth.backend.model_id

    def once(cal):
        settings = Settings(tasks=[SINGLE], figures=0, slice_step=4, compare=False, calibration=cal)
        return evaluate(synth, phantoms, report, settings)

    first = once(calibration(model, voxels, single=task_cal(CONSTANT, HUGE, 0.0, 1e6)))
    assert [o.status for o in first.outcomes] == ["done"] * 3
    same = once(calibration(model, voxels, single=task_cal(CONSTANT, HUGE, 0.0, 1e6)))  # equal content
    assert [o.status for o in same.outcomes] == ["cached"] * 3
    narrow = once(calibration(model, voxels, single=task_cal(CONSTANT, 0.0, 0.0, 1e6)))
    assert [o.status for o in narrow.outcomes] == ["done"] * 3
    assert all(o.rows[0]["interval"]["outside"] > 0.95 for o in narrow.outcomes)
    elsewhere = once(calibration(model, (2.0, 3.0), single=task_cal(CONSTANT, 0.0, 0.0, 1e6)))
    assert [o.status for o in elsewhere.outcomes] == ["done"] * 3
    assert all(o.rows[0]["interval"] == {"applies": False, "reason": o.rows[0]["interval"]["reason"]}
               and "outside the calibration subjects' 2-3 mm" in o.rows[0]["interval"]["reason"]
               for o in elsewhere.outcomes)
    assert elsewhere.summary["interval"]["tasks"] == [] and len(elsewhere.summary["interval"]["not_applied"]) == 3
    assert "The guarantee does not apply" in (report / "report.md").read_text()
    without = once(None)
    assert [o.status for o in without.outcomes] == ["done"] * 3 and "interval" not in without.summary
    assert "interval" not in without.outcomes[0].rows[0]


# -- the command line --------------------------------------------------------------------------------------
def test_cli_refuses_before_loading(small_model_dir, phantoms, voxels, tmp_path, no_model_load):
    base = ["evaluate", "--data", phantoms, "--model", small_model_dir, "--backend", "torch", "-o", tmp_path / "r"]
    from tsf_trt.synthesis.source import ModelSource

    model = ModelSource.resolve(small_model_dir).model_id
    other = tmp_path / "other.json"
    write_calibration(calibration("another-model", voxels, single=task_cal(CONSTANT, 1.0, 1.0, 1.0)), other)
    assert_clean_error(cli(*base, "--tasks", "t1->t2", "--calibration", other), "other.json",
                       "calibrated for model another-model")
    spread = tmp_path / "spread.json"
    write_calibration(calibration(model, voxels, fused=task_cal(Heuristic(("spread",), (0.01, 1.0)), 1.0, 1.0, 1.0)),
                      spread)
    assert_clean_error(cli(*base, "--tasks", "t1,flair->t2", "--no-compare", "--calibration", spread),
                       "needs the one-to-one syntheses", "--no-compare")
    assert_clean_error(cli(*base, "--tasks", "t2->flair", "--calibration", spread), "spread.json",
                       "none of the tasks evaluated")
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{")
    assert_clean_error(cli(*base, "--calibration", damaged), "damaged.json", "not a readable JSON file")
    assert not (tmp_path / "r").exists()


def test_cli_prints_one_line_per_task(small_model_dir, phantoms, cal_file, tmp_path):
    result = cli("evaluate", "--data", phantoms, "--model", small_model_dir, "--backend", "torch", "-o", tmp_path / "r",
                 "--tasks", "t1->t2", "--slice-step", "4", "--figures", "0", "--no-compare", "--calibration", cal_file)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "interval" in line]
    assert len(lines) == 1 and "T1->T2: 0.0 % of head voxels outside (α 10 %; 0 of 3 subject(s) above)" in lines[0]
