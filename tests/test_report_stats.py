"""The statistics behind evaluate's conclusions: bootstrap intervals over subjects, the paired test
before one method is said to beat another, SciPy's Mann-Whitney as the flag's AUC, and "n/a (n too
small)" where the data cannot conclude. Hand-made rows: no model runs here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from tsf_trt.evaluation.ranks import (MIN_SUBJECTS, TOO_FEW, bootstrap_ci, holm, min_subjects_paired, paired_test,
                                      rank_auc)
from tsf_trt.evaluation.report import _interval_stats, auc_text, markdown, plain, summarize
from tsf_trt.evaluation.scoring import METHODS

NOISE_ONLY, CLEAR = "no_attention_", "seq2seq_best_"


def rows(n: int, seed: int = 0) -> list[dict]:
    """n subjects x 2 two-input tasks. The model's PSNR; w/o attention = it plus noise of either sign
    (indistinguishable); the best single input = 1.5 dB below it on every subject (clearly worse)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        level = 25 + 2 * rng.standard_normal()
        for task in ("T1,FLAIR->T2", "T1,T2->FLAIR"):
            psnr = level + 0.3 * rng.standard_normal()
            noise = 0.2 * rng.standard_normal()
            row = {"subject": f"S{k:02d}", "task": task, "target": task.split("->")[1], "n_inputs": 2, "psnr": psnr,
                   "ssim": 0.7, NOISE_ONLY + "psnr": psnr + noise, "seq2seq_avg_psnr": None,
                   CLEAR + "psnr": psnr - 1.5 + 0.1 * rng.standard_normal(), "w_t1": 0.5}
            out.append(row)
    return out


def report_text(summary: dict, n: int) -> str:
    summary.update(settings={"tasks": ["a"], "slice_step": 1, "compare": True}, model_id="m", model="m", backends=[],
                   data="d", subjects={"scored": n, "failed": []}, lpips="unavailable", figures={})
    return markdown(plain(summary))


# -- bootstrap intervals over subjects ------------------------------------------------------------
def test_bootstrap_interval_holds_the_mean_and_is_reproducible():
    r = rows(12)
    values, subjects = [x["psnr"] for x in r], [x["subject"] for x in r]
    low, high = bootstrap_ci(values, subjects)
    assert low < np.mean(values) < high
    assert bootstrap_ci(values, subjects) == (low, high)  # the fixed seed: the same rows, the same interval
    assert bootstrap_ci(values, subjects, seed=1) != (low, high)  # a test that the seed is what fixes it
    # Subjects are resampled with all their rows: each row given twice is the same data set.
    assert bootstrap_ci(values + values, subjects + subjects) == pytest.approx((low, high), rel=1e-12)
    assert bootstrap_ci(values[: 2 * (MIN_SUBJECTS - 1)], subjects[: 2 * (MIN_SUBJECTS - 1)]) is None
    assert bootstrap_ci([3.0] * 24, subjects) == (3.0, 3.0)


def test_summary_gives_intervals_only_from_enough_subjects():
    many, few = summarize(rows(12), lpips=False, compare=True), summarize(rows(3), lpips=False, compare=True)
    model = many["table1_by_inputs"][0]
    assert model["method"] == METHODS[""] and model["psnr"]["n_subjects"] == 12 and model["psnr"]["n"] == 24
    low, high = model["psnr"]["ci95"]
    assert low < model["psnr"]["mean"] < high
    assert [t["task"] for t in many["per_task"]] == ["T1,FLAIR->T2", "T1,T2->FLAIR"]
    assert all(t["psnr"]["ci95"] is not None for t in many["per_task"])
    assert few["table1_by_inputs"][0]["psnr"]["ci95"] is None
    text = report_text(few, 3)
    table = text[text.index("## Table 1 — by number of inputs"):text.index("## Table 1 — by target")]
    assert TOO_FEW in table and f"{low:.2f} – {high:.2f}" in report_text(many, 12)


# -- the paired test before an ordering -----------------------------------------------------------
def test_paired_test_by_hand():
    assert min_subjects_paired() == 6  # 2 / 2**5 = 0.0625, 2 / 2**6 = 0.031
    a = {f"S{k}": 30.0 + k for k in range(5)}
    b = {s: v - 1.0 for s, v in a.items()}
    five = paired_test(a, b)
    assert five["p"] is None and "n too small" in five["why"] and five["n"] == 5  # 1 dB better on all 5: no p
    a[f"S{5}"], b[f"S{5}"] = 40.0, 39.0
    six = paired_test(a, b)
    assert six["p"] == pytest.approx(2 / 2 ** 6) and six["mean_difference"] == pytest.approx(1.0)  # exact test
    assert paired_test(a, dict(a))["p"] == 1.0  # the same on every subject
    adjusted = holm([0.01, 0.04, 0.03, None])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[3] is None


def test_ordering_states_only_what_the_test_supports():
    ordering = summarize(rows(12), lpips=False, compare=True)["psnr_ordering"][0]
    steps = {(s["better"], s["worse"]): s for s in ordering["steps"]}
    model, noisy, clear = METHODS[""], METHODS[NOISE_ONLY], METHODS[CLEAR]
    assert ordering["by_psnr"][-1] == clear
    noise_step = next(s for s in ordering["steps"] if {s["better"], s["worse"]} == {model, noisy})
    assert not noise_step["distinguishable"] and noise_step["p_holm"] >= 0.05
    clear_step = steps[(ordering["by_psnr"][-2], clear)]
    assert clear_step["distinguishable"] and clear_step["p_holm"] < 0.05 and clear_step["n"] == 12
    line = next(x for x in report_text(summarize(rows(12), lpips=False, compare=True), 12).splitlines()
                if x.startswith("* 2 input(s)"))
    assert f"> {clear} " in line and "not distinguishable at n = 12" in line
    small = report_text(summarize(rows(3), lpips=False, compare=True), 3)
    line = next(x for x in small.splitlines() if x.startswith("* 2 input(s)"))
    assert ">" not in line and "not distinguishable at n = 3" in line and "n too small" in line


# -- the flag's AUC ------------------------------------------------------------------------------------
def test_auc_is_mann_whitney_by_hand():
    positives, negatives = [3.0, 5.0, 5.0], [1.0, 5.0, 2.0, 4.0]
    # 3 beats 1 and 2; each 5 beats 1, 2, 4 and ties 5 (one half): (2 + 3.5 + 3.5) / (3 x 4)
    scores, labels = positives + negatives, [True] * 3 + [False] * 4
    assert rank_auc(scores, labels) == pytest.approx(9 / 12)
    assert rank_auc(scores, labels) == pytest.approx(mannwhitneyu(positives, negatives).statistic / 12)
    assert np.isnan(rank_auc([1.0, 2.0], [True, True]))


def entries(n: int) -> list[dict]:
    """n subjects' interval entries; the score ranks the worst PSNR first, so the AUC is 1.0."""
    return [{"subject": f"{'PhantomHard' if k % 3 == 0 else 'Phantom'}_{k:05d}", "psnr": 20.0 + k,
             "score": 100.0 - k, "outside": 0.1, "constant_outside": 0.1, "half_width": 50.0,
             "constant_half_width": 60.0, "flagged": k < 2} for k in range(n)]


def test_auc_on_too_few_subjects_says_so():
    two = _interval_stats(entries(2), 0.1)
    assert two["flag"]["auc_worst_decile"] == 1.0  # what the old report printed as if it meant something
    assert auc_text(two["flag"], "worst_decile") == TOO_FEW and "n too small" in two["flag"]["auc_worst_decile_too_few"]
    assert auc_text(two["flag"], "hard") == TOO_FEW
    enough = _interval_stats(entries(MIN_SUBJECTS), 0.1)
    assert enough["flag"]["auc_worst_decile_too_few"] is None and auc_text(enough["flag"], "worst_decile") == "1.000"
    assert enough["flag"]["n_hard"] == 4 and auc_text(enough["flag"], "hard") == f"{enough['flag']['auc_hard']:.3f}"
    none_hard = [e | {"subject": f"Phantom_{k}"} for k, e in enumerate(entries(MIN_SUBJECTS))]
    assert auc_text(_interval_stats(none_hard, 0.1)["flag"], "hard") == "–"  # no class: no AUC, not "too few"
