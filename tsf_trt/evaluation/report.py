"""From rows (one per subject × task) to the paper's tables, and the files that hold them.

`summarize` computes Table 1 (mean ± std by number of inputs, by target and by task, with the
ablation), Table 2 (PSNR inside vs outside the top-1 % TSEM region) and Fig. 3's ω per task, each
mean with a bootstrap confidence interval over subjects, and the ordering of methods, each step of
it backed by a paired test over subjects (tsf_trt.evaluation.ranks says how, and below how many
subjects it concludes nothing);
`interval_summary` how a calibration's intervals and subject flag held; the writers put them in
`results.csv`, `summary.json` and `report.md`, each atomically, into a report folder already
recognised as tsf-trt's
(:class:`tsf_trt.evaluation.store.ReportDir`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.evaluation.ranks import (CONFIDENCE, MIN_SUBJECTS, PAIRED_TEST, RESAMPLES, SEED, SIGNIFICANCE, TOO_FEW,
                                      auc_too_small, by_subject, holm, mean_stat, min_subjects_paired, paired_test,
                                      rank_auc, spread, worst)
from tsf_trt.evaluation.scoring import METHODS, QUALITY
from tsf_trt.evaluation.tasks import Task
from tsf_trt.files.atomic import atomic_path
from tsf_trt.uncertainty.calibration import Calibration

CSV_COLUMNS = (
    "subject", "task", "target", "sources", "n_inputs", "slices", "voxels", *QUALITY,
    "psnr_tsem_top", "psnr_tsem_rest", "tsem_p99_head", "tsem_mean_head",
    *(f"w_{n}" for n in sequences.NAMES),
    *(p + q for p in METHODS if p for q in QUALITY), "seq2seq_best_input",
    "interval_outside", "interval_half_width", "interval_constant_outside", "interval_constant_half_width",
    "interval_score", "interval_flagged", "interval_not_applied",
)
UNAVAILABLE = "unavailable"
#: Phantoms made hard are named PhantomHard... (tsf_trt.phantoms.generator.subject_name): the flag
#: should rank them above the others.
HARD_PREFIX = "PhantomHard"


def _quality(rows: Sequence[Mapping[str, Any]], prefix: str, lpips: bool) -> dict[str, Any]:
    subjects = [r["subject"] for r in rows]
    out = {q: mean_stat([r.get(prefix + q) for r in rows], subjects) for q in ("psnr", "ssim")}
    out["lpips"] = mean_stat([r.get(prefix + "lpips") for r in rows], subjects) if lpips else UNAVAILABLE
    return out


def _table1(rows: Sequence[Mapping[str, Any]], group: str, lpips: bool, compare: bool,
            model_method: str) -> list[dict[str, Any]]:
    prefixes = [p for p in METHODS if compare or not p]
    values = sorted({r[group] for r in rows}, key=lambda v: sequences.DISPLAY.index(v) if group == "target" else v)
    table = []
    for value in values:
        mine = [r for r in rows if r[group] == value]
        for prefix in prefixes:
            if prefix and not any(r.get(prefix + "psnr") is not None for r in mine):
                continue
            if group == "n_inputs" and value == 1 and prefix == "seq2seq_best_":
                continue  # one input: the best single input is the average, the same rows
            method = METHODS[prefix] if prefix else model_method
            table.append({group: value, "method": method, **_quality(mine, prefix, lpips)})
    return table


def _table2(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for n in sorted({r["n_inputs"] for r in rows}):
        mine = [r for r in rows if r["n_inputs"] == n and r.get("psnr_tsem_top") is not None]
        if mine:
            subjects = [r["subject"] for r in mine]
            table.append({"n_inputs": n, "psnr_tsem_top": mean_stat([r["psnr_tsem_top"] for r in mine], subjects),
                          "psnr_tsem_rest": mean_stat([r["psnr_tsem_rest"] for r in mine], subjects),
                          "psnr_total": mean_stat([r["psnr"] for r in mine], subjects)})
    return table


def _by_task(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows per task, tasks in the rows' order (the table order)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["task"], []).append(r)
    return out


def _per_task(rows: Sequence[Mapping[str, Any]], model_method: str) -> list[dict[str, Any]]:
    """The model's own PSNR and SSIM per task, over subjects."""
    return [{"task": task, "method": model_method, "n_inputs": mine[0]["n_inputs"],
             **{q: mean_stat([r.get(q) for r in mine], [r["subject"] for r in mine]) for q in ("psnr", "ssim")}}
            for task, mine in _by_task(rows).items()]


def _weights(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ω per input for every task (ω depends on the task only, so the mean is that value)."""
    return [{"task": task, "n_inputs": mine[0]["n_inputs"],
             "weights": {n: float(np.mean([r[f"w_{n}"] for r in mine])) for n in sequences.NAMES
                         if mine[0].get(f"w_{n}") is not None}} for task, mine in _by_task(rows).items()]


def _subject_psnr(rows: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, float]:
    """Subject -> its mean PSNR over its rows (tasks) for one method: the unit the paired test pairs."""
    names, sums, counts = by_subject([r.get(prefix + "psnr") for r in rows], [r["subject"] for r in rows])
    return {n: float(s / c) for n, s, c in zip(names, sums, counts)}


def _ordering(rows: Sequence[Mapping[str, Any]], table1: Sequence[Mapping[str, Any]],
              model_method: str) -> list[dict[str, Any]]:
    """Per number of inputs: the methods by mean PSNR, best first, and for each step down the
    ordering a paired test over subjects (ranks.paired_test, Holm-adjusted over the group's steps):
    `distinguishable` only when the adjusted p < ranks.SIGNIFICANCE."""
    prefix_of = {name: prefix for prefix, name in METHODS.items() if prefix}
    out = []
    for n in sorted({r["n_inputs"] for r in table1}):
        ranked = sorted((r for r in table1 if r["n_inputs"] == n and r["psnr"]["mean"] is not None),
                        key=lambda r: -r["psnr"]["mean"])
        mine = [r for r in rows if r["n_inputs"] == n]
        per_subject = {r["method"]: _subject_psnr(mine, "" if r["method"] == model_method else prefix_of[r["method"]])
                       for r in ranked}
        steps = [{"better": a["method"], "worse": b["method"], **paired_test(per_subject[a["method"]],
                                                                              per_subject[b["method"]])}
                 for a, b in zip(ranked, ranked[1:])]
        for step, adjusted in zip(steps, holm([s["p"] for s in steps])):
            step["p_holm"] = adjusted
            step["distinguishable"] = adjusted is not None and adjusted < SIGNIFICANCE
        out.append({"n_inputs": n, "by_psnr": [r["method"] for r in ranked], "psnr": [r["psnr"]["mean"] for r in ranked],
                    "n_subjects": max((len(v) for v in per_subject.values()), default=0), "steps": steps})
    return out


def _ranking(order: Mapping[str, Any]) -> str:
    """'A > B ~ C': '>' only where the paired test tells the two apart, '~' (not distinguishable)
    otherwise, with the test's p; one sentence when n is too small for any step."""
    means = [f"{m} {v:.2f} dB" for m, v in zip(order["by_psnr"], order["psnr"])]
    if order["steps"] and all(s["p_holm"] is None for s in order["steps"]):
        return (f"{'; '.join(means)}: not distinguishable at n = {order['n_subjects']} "
                f"({order['steps'][0]['why']})")
    text = means[0] if means else ""
    for step, mean in zip(order["steps"], means[1:]):
        said = f"p = {step['p_holm']:.2g}" if step["p_holm"] is not None else step["why"]
        text += (f" > {mean} ({said})" if step["distinguishable"] else
                 f" ~ {mean} (not distinguishable at n = {step['n']}, {said})")
    return text


def summarize(rows: Sequence[Mapping[str, Any]], *, lpips: bool, compare: bool,
              model_method: str = METHODS[""]) -> dict[str, Any]:
    """The tables as data (see the module docstring); `model_method` names the model's own rows."""
    table1 = _table1(rows, "n_inputs", lpips, compare, model_method)
    return {
        "statistics": {"ci": {"method": "percentile bootstrap over subjects", "confidence": CONFIDENCE,
                              "resamples": RESAMPLES, "seed": SEED, "min_subjects": MIN_SUBJECTS},
                       "ordering": {"test": PAIRED_TEST, "on": "each subject's mean PSNR", "adjust": "Holm",
                                    "significance": SIGNIFICANCE, "min_subjects": min_subjects_paired()}},
        "table1_by_inputs": table1,
        "table1_by_target": _table1(rows, "target", lpips, compare, model_method),
        "per_task": _per_task(rows, model_method),
        "psnr_ordering": _ordering(rows, table1, model_method),
        "table2": _table2(rows),
        "weights": _weights(rows),
    }


# -- calibrated intervals ---------------------------------------------------------------------
def _interval_stats(entries: Sequence[Mapping[str, Any]], alpha: float) -> dict[str, Any]:
    """Over subjects: coverage of the adaptive and constant intervals, their widths, and how well the
    subject score flags the worst PSNR decile (ranks.worst) and the hard phantoms."""
    adaptive = spread([e["half_width"] for e in entries])["mean"]
    constant = spread([e["constant_half_width"] for e in entries])["mean"]
    ratio = adaptive / constant if adaptive is not None and constant else None
    scored = [e for e in entries if e["score"] is not None and e["psnr"] is not None
              and math.isfinite(e["score"]) and math.isfinite(e["psnr"])]
    bad = worst([e["psnr"] for e in scored]) if len(scored) > 1 else np.zeros(len(scored), bool)
    hard = [e["subject"].startswith(HARD_PREFIX) for e in scored]
    n_bad, n_hard = int(bad.sum()), sum(hard)
    return {
        "subjects": len(entries), "alpha": alpha,
        "outside": spread([e["outside"] for e in entries], alpha),
        "constant_outside": spread([e["constant_outside"] for e in entries], alpha),
        "half_width": {"adaptive": adaptive, "constant": constant, "ratio": ratio,
                       "narrower": None if ratio is None else 1.0 - ratio},
        "flag": {"flagged": sum(bool(e["flagged"]) for e in entries), "n_worst": int(bad.sum()),
                 "auc_worst_decile": rank_auc([e["score"] for e in scored], bad) if len(scored) > 1 else None,
                 "n_hard": sum(hard),
                 "auc_hard": rank_auc([e["score"] for e in scored], hard) if 0 < sum(hard) < len(hard) else None,
                 # why each AUC concludes nothing (then the report prints ranks.TOO_FEW), None when it may be read
                 "auc_worst_decile_too_few": auc_too_small(n_bad, len(scored) - n_bad),
                 "auc_hard_too_few": auc_too_small(n_hard, len(scored) - n_hard)},
    }


def interval_summary(rows: Sequence[Mapping[str, Any]], calibration: Calibration, tasks: Sequence[Task],
                     digest: str | None) -> dict[str, Any]:
    """summary.json's "interval": per task and overall (each subject's means over its tasks; flagged
    when any of its tasks is), where the calibration applied; and where it did not, with why."""
    keys = {t.label: t.key for t in tasks}
    entries: dict[str, list[dict[str, Any]]] = {}
    not_applied = []
    for r in rows:
        interval = r.get("interval")
        if not interval:
            continue
        if not interval.get("applies"):
            not_applied.append({"subject": r["subject"], "task": r["task"], "reason": interval.get("reason")})
            continue
        entries.setdefault(r["task"], []).append({"subject": r["subject"], "psnr": r.get("psnr"), **interval})
    per_task = [{"task": label, "key": keys.get(label, label), "lambda": calibration.tasks[keys[label]].lam,
                 "flag_above": calibration.tasks[keys[label]].flag_above, **_interval_stats(mine, calibration.alpha)}
                for label, mine in entries.items() if label in keys]
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for mine in entries.values():
        for e in mine:
            by_subject.setdefault(e["subject"], []).append(e)
    numeric = ("outside", "constant_outside", "half_width", "constant_half_width", "score", "psnr")
    overall = [{"subject": name, "flagged": any(e["flagged"] for e in mine),
                **{k: spread([e[k] for e in mine])["mean"] for k in numeric}} for name, mine in by_subject.items()]
    return {"calibration": calibration.source, "sha256": digest, "model_id": calibration.model_id,
            "alpha": calibration.alpha, "units": "half-widths in output units (0-1000); fractions of head voxels",
            "tasks": per_task, "overall": _interval_stats(overall, calibration.alpha) if overall else None,
            "not_applied": not_applied,
            "not_calibrated": [t.key for t in tasks if t.key not in calibration.tasks]}


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the CSV has it: the interval's figures, blanks for what is absent."""
    interval = row.get("interval") or {}
    full = {**row, "interval_not_applied": interval.get("reason"),
            **{f"interval_{k}": interval.get(k) for k in ("outside", "half_width", "constant_outside",
                                                          "constant_half_width", "score", "flagged")}}
    return {c: "" if full.get(c) is None else full[c] for c in CSV_COLUMNS}


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path, overwrite=True, own_location=True) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(r) for r in rows)


def plain(value: Any) -> Any:
    """JSON-safe: nan and inf (not JSON) become null."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path, overwrite=True, own_location=True) as tmp:
        tmp.write_text(json.dumps(plain(data), indent=2, allow_nan=False) + "\n")


# -- Markdown ---------------------------------------------------------------------------------
def _pm(stat: Any, digits: int) -> str:
    if stat == UNAVAILABLE:
        return UNAVAILABLE
    if not stat or stat.get("mean") is None:
        return "–"
    std = "" if stat.get("std") is None else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


def _ci(stat: Any, digits: int) -> str:
    """A stat's bootstrap interval, or why there is none."""
    if stat == UNAVAILABLE or not stat or stat.get("mean") is None:
        return "–"
    if stat.get("ci95") is None:
        return TOO_FEW if stat.get("n_subjects", 0) < MIN_SUBJECTS else "–"
    low, high = stat["ci95"]
    return f"{low:.{digits}f} – {high:.{digits}f}"


def auc_text(flag: Mapping[str, Any], which: str) -> str:
    """An AUC of the subject flag as the report and the CLI print it (`which`: 'worst_decile' or
    'hard'): ranks.TOO_FEW where it concludes nothing, '–' where there is none."""
    value = flag.get(f"auc_{which}")
    return "–" if value is None else TOO_FEW if flag.get(f"auc_{which}_too_few") else _num(value)


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in lines), ""]


def markdown(summary: Mapping[str, Any]) -> str:
    """report.md: the tables, the figures linked, and how to read them."""
    s, out = summary, []
    settings, ci, test = s["settings"], s["statistics"]["ci"], s["statistics"]["ordering"]
    out += ["# tsf-trt evaluation", "",
            f"Model `{s['model_id'] or '?'}` ({s['model']}), backend {', '.join(s['backends']) or '–'}; data "
            f"`{s['data']}`: {s['subjects']['scored']} subject(s) scored"
            + (f", {len(s['subjects']['failed'])} failed" if s['subjects']['failed'] else "")
            + f"; {len(settings['tasks'])} task(s); "
            + ("every axial slice with head voxels." if settings["slice_step"] == 1 else
               f"axial slices z = 0, {settings['slice_step']}, {2 * settings['slice_step']}, … with head voxels "
               f"(--slice-step {settings['slice_step']})."), "",
            "Scores are in network units (data range 2) inside the head mask (voxels where any of the "
            "subject's sequences is above 0); the truth is the real target normalised as in training "
            "(clip to [0, 2·p99], scale to [-1, 1]). SSIM is scikit-image's (σ 1.5 Gaussian window), per "
            "axial slice, averaged over the head. Values are mean ± sample std over subject × task syntheses; "
            f"CI: {100 * ci['confidence']:g} % {ci['method']} ({ci['resamples']} resamples, seed {ci['seed']}; a "
            f"subject's tasks resampled together), {TOO_FEW} below {ci['min_subjects']} subjects, where a bootstrap "
            "interval covers far less than it claims. "
            "LPIPS: " + (s["lpips"] if isinstance(s["lpips"], str) else "mean over axial slices") + ".", ""]
    if s["subjects"]["failed"]:
        failed = "; ".join(f"{f['subject']}: {f['error']}" for f in s["subjects"]["failed"])
        out += [f"**Failed subjects:** {failed}", ""]
    for title, group, label in (("Table 1 — by number of inputs", "table1_by_inputs", "n_inputs"),
                                ("Table 1 — by target", "table1_by_target", "target")):
        out += [f"## {title}", ""]
        out += _table([label.replace("n_inputs", "inputs"), "method", "PSNR (dB)", "CI", "SSIM", "CI", "LPIPS", "n",
                       "subjects"],
                      [[str(r[label]), r["method"], _pm(r["psnr"], 2), _ci(r["psnr"], 2), _pm(r["ssim"], 4),
                        _ci(r["ssim"], 4), _pm(r["lpips"], 4), str(r["psnr"]["n"]), str(r["psnr"]["n_subjects"])]
                       for r in s[group]])
    if settings["compare"]:
        out += ["With one input, TSF w/o attention and the Seq2Seq stage are the same network (ω = 1). "
                "The best single input is an oracle (chosen by PSNR against the truth).", ""]
    if s["psnr_ordering"] and settings["compare"]:
        out += [f"Ordering by mean PSNR, best first. '>' only where a paired test over subjects tells the two apart: "
                f"the {test['test']} on {test['on']}, {test['adjust']}-adjusted over each group's steps, "
                f"p < {test['significance']:g}; '~' where it does not. A rank test, as it needs no normal "
                "differences (one odd subject can skew PSNR) and is exact at small n; below "
                f"{test['min_subjects']} subjects it cannot reach p < {test['significance']:g} at all.", "",
                *(f"* {o['n_inputs']} input(s): " + _ranking(o) for o in s["psnr_ordering"]), ""]
    out += ["## Per task", "", "The model's own syntheses, per task.", ""]
    out += _table(["task", "PSNR (dB)", "CI", "SSIM", "CI", "subjects"],
                  [[t["task"], _pm(t["psnr"], 2), _ci(t["psnr"], 2), _pm(t["ssim"], 4), _ci(t["ssim"], 4),
                    str(t["psnr"]["n_subjects"])] for t in s["per_task"]])
    out += ["## Table 2 — PSNR inside vs outside the top-1 % TSEM region", ""]
    if s["table2"]:
        out += ["The region is the 1 % of head voxels with the highest TSEM (99th percentile of TSEM over the "
                "head, as the paper's threshold).", ""]
        out += _table(["inputs", "top 1 % TSEM", "CI", "rest of the head", "CI", "total", "n"],
                      [[str(r["n_inputs"]), _pm(r["psnr_tsem_top"], 2), _ci(r["psnr_tsem_top"], 2),
                        _pm(r["psnr_tsem_rest"], 2), _ci(r["psnr_tsem_rest"], 2), _pm(r["psnr_total"], 2),
                        str(r["psnr_total"]["n"])] for r in s["table2"]])
    else:
        out += ["No TSEM: the model has no TSF stage.", ""]
    out += ["## Contribution weights ω (Fig. 3)", ""]
    if s["figures"].get("weights"):
        out += [f"![ω per task]({s['figures']['weights']})", ""]
    out += _table(["task", *sequences.DISPLAY], [[w["task"], *(_num(w["weights"].get(n)) for n in sequences.NAMES)]
                                                 for w in s["weights"]])
    if s.get("interval"):
        out += _interval_markdown(s["interval"])
    if s["figures"].get("subjects"):
        out += ["## Figures", "",
                "Inputs, synthesis, truth, |error| (beside it the calibrated half-width, on the same scale, "
                "where a calibration applies) and TSEM over the synthesis, on three axial slices.", ""]
        for fig in s["figures"]["subjects"]:
            name = f"{fig['subject']} — {fig['task']}"
            out += [f"### {name}", "", f"![{name}]({fig['path']})", ""]
    out += ["## Files", "", "* `results.csv`: one row per subject × task (every score, ω, the interval's).",
            "* `summary.json`: these tables as data, the settings and (with --calibration) the "
            "interval statistics.",
            "* `subjects/`: one JSON per subject, reused when the run is resumed."]
    return "\n".join(out) + "\n"


def _interval_markdown(iv: Mapping[str, Any]) -> list[str]:
    lines = [*iv["tasks"], *([{"task": "overall (subject means)", **iv["overall"]}]
                             if iv["overall"] and len(iv["tasks"]) > 1 else [])]
    out = ["## Calibrated intervals", "",
           f"Calibration `{iv['calibration'] or '?'}` (model `{iv['model_id']}`, α = {iv['alpha']:g}). Each head "
           "voxel's interval is synthesis ± half-width, half-width = λ·u(x) (the task's heuristic). The guarantee: "
           "on subjects like the calibration subjects, the expected fraction of head voxels whose truth lies "
           "outside is at most α. *Constant*: the non-adaptive baseline, one half-width everywhere, calibrated on "
           "the same subjects. Per subject: the fraction of its head voxels outside; mean ± std, range and "
           f"{100 * CONFIDENCE:g} % t-interval of the mean over subjects. Half-widths in output units (0–1000). "
           "The flag: the subject score (mean half-width) above the calibration's cut; AUC 0.5 is chance, "
           f"given from {MIN_SUBJECTS} subjects with both classes ({TOO_FEW} below).", ""]
    out += _table(["task", "subjects", "outside", f"{100 * CONFIDENCE:g} % CI of mean", "min – max", "above α",
                   "constant: outside"],
                  [[t["task"], str(t["subjects"]), _pm(t["outside"], 4),
                    "–" if not t["outside"]["ci95"] else f"{t['outside']['ci95'][0]:.4f} – {t['outside']['ci95'][1]:.4f}",
                    f"{_num(t['outside']['min'], 4)} – {_num(t['outside']['max'], 4)}",
                    str(t["outside"].get("above_alpha", "–")), _pm(t["constant_outside"], 4)] for t in lines])
    out += _table(["task", "mean half-width", "constant", "ratio", "narrower", "flagged",
                   "AUC worst PSNR decile", "AUC hard vs normal"],
                  [[t["task"], _num(t["half_width"]["adaptive"], 1), _num(t["half_width"]["constant"], 1),
                    _num(t["half_width"]["ratio"]),
                    _narrower(t["half_width"]["narrower"]),
                    f"{t['flag']['flagged']} of {t['subjects']}", auc_text(t["flag"], "worst_decile"),
                    f"{auc_text(t['flag'], 'hard')} ({t['flag']['n_hard']} hard)"]
                   for t in lines])
    if iv["not_applied"]:
        out += ["The guarantee does not apply to (not counted above): " + "; ".join(
            f"{n['subject']} {n['task']}: {n['reason']}" for n in iv["not_applied"]) + ".", ""]
    if iv["not_calibrated"]:
        out += [f"Tasks the calibration does not hold (no interval): {', '.join(iv['not_calibrated'])}.", ""]
    return out


def _narrower(fraction: float | None) -> str:
    return "–" if fraction is None else f"{round(100 * fraction, 1) + 0.0:.1f} %"  # + 0.0: never "-0.0"


def write_markdown(path: Path, summary: Mapping[str, Any]) -> None:
    with atomic_path(path, overwrite=True, own_location=True) as tmp:
        tmp.write_text(markdown(plain(summary)))
