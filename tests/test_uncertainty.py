"""tsf_trt.uncertainty: conformal risk control against the formula by hand, and the heuristic's fit."""

from __future__ import annotations

import numpy as np
import pytest

from tsf_trt.errors import TsfError
from tsf_trt.uncertainty.conformal import allowed_risk, calibrate_lambda, risk
from tsf_trt.uncertainty.heuristic import MIN_OFFSET, Heuristic, edge_map, feature_maps, fit_heuristic
from tsf_trt.uncertainty.profile import InputProfile, ProfileRanges

#: Three subjects' ratios |y - ŷ|/u. At α = 0.5, n = 3, B = 1 the allowed empirical risk is
#: ((n+1)α - B)/n = (4·0.5 - 1)/3 = 1/3. R̂(2) = (2/4 + 1/2 + 0/3)/3 = 1/3 (allowed); just below 2,
#: R̂ = (3/4 + 1/2 + 3/3)/3 = 0.75: so λ̂ = 2.
HAND = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 5.0]), np.array([2.0, 2.0, 2.0])]


def test_lambda_matches_the_formula_worked_by_hand():
    assert allowed_risk(3, 0.5) == pytest.approx(1 / 3)
    assert risk(HAND, 2.0) == pytest.approx(1 / 3)
    assert risk(HAND, 1.999) == pytest.approx(0.75)
    assert calibrate_lambda(HAND, 0.5) == 2.0


def test_lambda_is_the_smallest_that_passes_on_random_data():
    """Brute force over every candidate λ (each ratio): the chosen one passes, the one below fails."""
    rng = np.random.default_rng(3)
    ratios = [rng.gamma(2.0, 1.0, size=rng.integers(50, 300)) for _ in range(30)]
    lam = calibrate_lambda(ratios, 0.1)
    allowed = allowed_risk(30, 0.1)
    assert risk(ratios, lam) <= allowed + 1e-12
    below = np.concatenate(ratios)
    below = below[below < lam].max()
    assert risk(ratios, below) > allowed


def test_too_few_subjects_or_a_bad_alpha_are_one_line_errors():
    with pytest.raises(TsfError, match="at least 9 are needed"):
        calibrate_lambda([np.ones(5)] * 8, 0.1)
    with pytest.raises(TsfError, match="--alpha must be between 0 and 1"):
        allowed_risk(50, 1.5)
    with pytest.raises(TsfError, match="no head voxels"):
        calibrate_lambda([np.ones(3)] * 9 + [np.array([])], 0.1)


def test_coverage_holds_on_exchangeable_subjects():
    """The guarantee itself, by simulation: calibrated on n subjects, the next subject's expected
    miscoverage is at most α (averaged over 400 draws; its standard error here is about 0.003)."""
    rng = np.random.default_rng(7)
    misses = []
    for _ in range(400):
        subjects = [np.abs(rng.standard_normal(200)) * rng.uniform(0.5, 2.0) for _ in range(21)]
        lam = calibrate_lambda(subjects[:20], 0.2)
        misses.append(risk(subjects[20:], lam))
    assert np.mean(misses) <= 0.2 + 0.01


def test_the_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    features = [{"tsem": rng.uniform(0, 1, 5000), "edge": rng.uniform(0, 1, 5000)} for _ in range(3)]
    errors = [0.02 + 0.5 * f["tsem"] + 0.1 * f["edge"] for f in features]
    h = fit_heuristic(("tsem", "edge"), features, errors)
    assert h.coefficients == pytest.approx((0.02, 0.5, 0.1), abs=1e-6)  # exact data: the solver's precision
    assert np.allclose(h.u(features[0]), errors[0], atol=1e-5)


def test_a_heuristic_keeps_intervals_open_and_names_what_it_needs():
    with pytest.raises(TsfError, match="offset must be at least"):
        Heuristic(("tsem",), (0.0, 1.0))
    with pytest.raises(TsfError, match="not a heuristic"):
        Heuristic(("colour",), (0.1, 1.0))
    with pytest.raises(TsfError, match="needs spread"):
        Heuristic(("spread",), (MIN_OFFSET, 1.0)).u({"edge": np.zeros(3)})


def test_feature_maps_give_what_the_synthesis_allows():
    image = np.zeros((2, 8, 8), np.float32)
    image[:, :, 4:] = 1.0
    maps = feature_maps(image, None)
    assert set(maps) == {"edge", "intensity"} and maps["edge"][0, 3, 3] == 0.5 and maps["edge"][0, 3, 0] == 0
    assert maps["intensity"][0, 0, 0] == 0.5 and maps["intensity"][0, 0, 7] == 1.0  # (ŷ + 1) / 2, exact here
    assert edge_map(image).shape == image.shape
    full = feature_maps(image, np.ones_like(image), [image + 0.5, image - 0.1])
    assert set(full) == {"edge", "intensity", "tsem", "tsem_smooth", "spread"}
    assert np.allclose(full["spread"], 0.3) and np.allclose(full["tsem_smooth"], 1.0)


# -- the calibration file ------------------------------------------------------------------------
def _calibration():
    from tsf_trt.uncertainty.calibration import Calibration, TaskCalibration

    entry = TaskCalibration(Heuristic(("edge",), (0.01, 0.5)), 2.0, 40, 0.08, 30.0, 0.2)
    return Calibration("model-a", 0.1, {"t1,flair->t2": entry}, (0.9, 1.1), {"fit": ["a"], "calibration": ["b"]},
                       inputs=ProfileRanges({"t1": {"noise": (0.02, 0.04), "bias": (0.05, 0.1)},
                                             "flair": {"noise": (0.02, 0.05), "bias": (0.06, 0.2)}}, 0.0))


def test_a_calibration_file_reads_back_as_written(tmp_path):
    from tsf_trt.uncertainty.calibration import read_calibration, write_calibration

    path = tmp_path / "calibration.json"
    write_calibration(_calibration(), path)
    back = read_calibration(path)
    assert back.tasks == _calibration().tasks and back.model_id == "model-a" and back.voxel_mm == (0.9, 1.1)
    assert back.subjects == {"fit": ("a",), "calibration": ("b",)} and back.source == str(path)
    assert back.inputs == _calibration().inputs


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="tsf-trt-qc"), "not a calibration"),
    (lambda d: d.update(version=1), "calibration version 1; this tsf-trt reads 2: make it again"),
    (lambda d: d.pop("inputs"), "inputs must hold the calibration subjects' input ranges"),
    (lambda d: d["inputs"]["inputs"]["t1"].update(noise=[0.05, 0.01]), r"inputs.t1.noise: expected"),
    (lambda d: d["inputs"].update(misaligned_voxels=-1), "misaligned_voxels must be a non-negative"),
    (lambda d: d.update(model_id=""), "model_id must name"),
    (lambda d: d.update(alpha=1), "alpha must be between 0 and 1"),
    (lambda d: d.update(voxel_mm=[1.2, 0.9]), "voxel_mm must be"),
    (lambda d: d["tasks"].update({"flair,t1->t2": d["tasks"]["t1,flair->t2"]}), "not written as tsf-trt writes"),
    (lambda d: d["tasks"].update({"t2->t2": d["tasks"]["t1,flair->t2"]}), "among the inputs"),
    (lambda d: d["tasks"]["t1,flair->t2"].update({"lambda": -1}), "non-negative numbers"),
    (lambda d: d["tasks"]["t1,flair->t2"].update({"coefficients": [0.0, 0.5]}), "offset must be at least"),
    (lambda d: d["tasks"]["t1,flair->t2"].update({"features": ["colour"]}), "not a heuristic"),
])
def test_a_damaged_calibration_is_one_line_naming_the_file(tmp_path, change, message):
    import json

    from tsf_trt.errors import InputError
    from tsf_trt.uncertainty.calibration import read_calibration

    data = _calibration().to_json()
    change(data)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as caught:
        read_calibration(path)
    assert str(path) in str(caught.value)


LIKE = InputProfile({"t1": {"noise": 0.03, "bias": 0.07}, "flair": {"noise": 0.03, "bias": 0.1}}, 0.0)


def test_the_guarantee_applies_only_where_it_was_made():
    cal = _calibration()
    assert cal.why_not("model-a", "t1,flair->t2", (1.0, 1.0, 1.0), [], LIKE) is None
    assert "not this model" in cal.why_not("model-b", "t1,flair->t2", (1.0, 1.0, 1.0), [], LIKE)
    assert "was not calibrated" in cal.why_not("model-a", "t1->t2", (1.0, 1.0, 1.0), [], LIKE)
    assert "outside the calibration subjects' 0.9-1.1 mm" in cal.why_not("model-a", "t1,flair->t2", (1, 1, 2.5), [],
                                                                          LIKE)
    assert "differ from the calibration" in cal.why_not("model-a", "t1,flair->t2", (1, 1, 1), ["a skull"], LIKE)
    # every side of every input's voxels comes in: the reason names their range once
    assert cal.why_not("model-a", "t1,flair->t2", (2.5, 2.5, 2.42) * 3, [], LIKE).startswith(
        "voxel sides of 2.42-2.5 mm, outside")
    assert "were not measured" in cal.why_not("model-a", "t1,flair->t2", (1, 1, 1), [], None)


@pytest.mark.parametrize("inputs, shift, needle", [
    ({"t1": {"noise": 0.045, "bias": 0.07}}, 0.0, None),         # within the 15 % tolerance of 0.04
    ({"t1": {"noise": 0.045, "bias": 0.07}}, 1.0, None),         # one voxel: within the tolerance of 0
    ({"t1": {"noise": 0.08, "bias": 0.07}}, 0.0, "t1 input's noise level 0.08 is outside"),
    ({"t1": {"noise": 0.01, "bias": 0.07}}, 0.0, "t1 input's noise level 0.01 is outside"),  # cleaner counts too
    ({"flair": {"noise": 0.03, "bias": 0.3}}, 0.0, "flair input's bias level 0.3 is outside"),
    ({"t1": {"noise": 0.03, "bias": 0.07}}, 2.0, "shifted against each other by 2.0 voxels"),
    ({"t2": {"noise": 0.03, "bias": 0.07}}, 0.0, "recorded no noise level for t2"),
    ({"t1": {"noise": float("nan"), "bias": 0.07}}, 0.0, "could not be measured"),
])
def test_inputs_unlike_the_calibration_subjects_are_outside_it(inputs, shift, needle):
    why = _calibration().why_not("model-a", "t1,flair->t2", (1, 1, 1), [], InputProfile(inputs, shift))
    assert why is None if needle is None else (needle in why and why.startswith("unlike the calibration subjects"))


def test_input_ranges_span_the_calibration_subjects():
    ranges = ProfileRanges.of([InputProfile({"t1": {"noise": 0.02, "bias": 0.1}}, 1.0),
                               InputProfile({"t1": {"noise": 0.05, "bias": float("nan")}}, 0.0)])
    assert ranges.inputs == {"t1": {"noise": (0.02, 0.05), "bias": (0.1, 0.1)}} and ranges.misaligned_voxels == 1.0
    assert ProfileRanges.from_json(ranges.to_json()) == ranges


def test_half_widths_are_in_the_synthesis_units():
    from tsf_trt.synthesis.preprocess import OUTPUT_SCALE
    from tsf_trt.uncertainty.calibration import PER_NETWORK_UNIT, subject_score

    assert PER_NETWORK_UNIT == OUTPUT_SCALE / 2  # [-1, 1] is written as 0-1000
    entry = _calibration().tasks["t1,flair->t2"]
    image = np.zeros((1, 4, 4), np.float32)
    width = entry.half_width(image, None)
    assert np.allclose(width, 2.0 * 0.01)  # λ·c0 where the image is flat (edge 0); float32 rounding only
    assert subject_score(width, np.ones_like(image, bool)) == pytest.approx(0.02 * 500, rel=1e-6)


def test_calibrate_help_names_every_heuristic_and_the_default():
    """The option's help is written out (the CLI starts without numpy): it must follow CANDIDATES."""
    import re

    import typer

    from tsf_trt.cli import app
    from tsf_trt.evaluation.calibrate import DEFAULT_HEURISTIC
    from tsf_trt.uncertainty.heuristic import CANDIDATES

    command = typer.main.get_command(app).commands["calibrate"]
    text = next(p.help for p in command.params if p.name == "heuristic")
    named = set(re.findall(r"[a-z_]+(?:\+[a-z_]+)*", text))
    assert set(CANDIDATES) <= named and f"{DEFAULT_HEURISTIC} (the default)" in text
