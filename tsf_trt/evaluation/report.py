"""From rows (one per subject × task) to the paper's tables, and the files that hold them.

`summarize` computes Table 1 (mean ± std by number of inputs and by target, with the
ablation), Table 2 (PSNR inside vs outside the top-1 % TSEM region) and Fig. 3's ω per task;
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
from tsf_trt.evaluation.ranks import rank_auc, worst
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
#: The confidence of the interval given for a mean fraction outside (Student's t over subjects).
CONFIDENCE = 0.95


def _stat(values: Sequence[Any]) -> dict[str, Any]:
    """Mean, sample std (n - 1) and count of the finite values."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not len(x):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None, "n": int(len(x))}


def _quality(rows: Sequence[Mapping[str, Any]], prefix: str, lpips: bool) -> dict[str, Any]:
    out = {q: _stat([r.get(prefix + q) for r in rows]) for q in ("psnr", "ssim")}
    out["lpips"] = _stat([r.get(prefix + "lpips") for r in rows]) if lpips else UNAVAILABLE
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
            table.append({"n_inputs": n, "psnr_tsem_top": _stat([r["psnr_tsem_top"] for r in mine]),
                          "psnr_tsem_rest": _stat([r["psnr_tsem_rest"] for r in mine]),
                          "psnr_total": _stat([r["psnr"] for r in mine])})
    return table


def _weights(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ω per input for every task (ω depends on the task only, so the mean is that value)."""
    order = []
    for r in rows:
        if r["task"] not in order:
            order.append(r["task"])
    out = []
    for task in order:
        mine = [r for r in rows if r["task"] == task]
        w = {n: float(np.mean([r[f"w_{n}"] for r in mine])) for n in sequences.NAMES
             if mine[0].get(f"w_{n}") is not None}
        out.append({"task": task, "n_inputs": mine[0]["n_inputs"], "weights": w})
    return out


def _ordering(table1: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Methods by mean PSNR, best first, per number of inputs: the ordering as measured."""
    out = []
    for n in sorted({r["n_inputs"] for r in table1}):
        ranked = sorted((r for r in table1 if r["n_inputs"] == n and r["psnr"]["mean"] is not None),
                        key=lambda r: -r["psnr"]["mean"])
        out.append({"n_inputs": n, "by_psnr": [r["method"] for r in ranked],
                    "psnr": [r["psnr"]["mean"] for r in ranked]})
    return out


def _ranking(order: Mapping[str, Any]) -> str:
    """'A > B = C': '=' where the means agree to the 0.01 dB shown in the tables."""
    text = order["by_psnr"][0] if order["by_psnr"] else ""
    for k in range(1, len(order["by_psnr"])):
        tie = abs(order["psnr"][k - 1] - order["psnr"][k]) < 0.005
        text += (" = " if tie else " > ") + order["by_psnr"][k]
    return text


def summarize(rows: Sequence[Mapping[str, Any]], *, lpips: bool, compare: bool,
              model_method: str = METHODS[""]) -> dict[str, Any]:
    """The tables as data (see the module docstring); `model_method` names the model's own rows."""
    table1 = _table1(rows, "n_inputs", lpips, compare, model_method)
    return {
        "table1_by_inputs": table1,
        "table1_by_target": _table1(rows, "target", lpips, compare, model_method),
        "psnr_ordering": _ordering(table1),
        "table2": _table2(rows),
        "weights": _weights(rows),
    }


# -- calibrated intervals ---------------------------------------------------------------------
def _spread(values: Sequence[Any], alpha: float | None = None) -> dict[str, Any]:
    """Mean, sample std, range and the t-interval of the mean over subjects (few: hence t); with
    `alpha`, how many subjects lie above it."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(x)), "mean": None, "std": None, "min": None, "max": None, "ci95": None}
    if len(x):
        out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if len(x) > 1:
        from scipy.stats import t

        std = float(x.std(ddof=1))
        half = float(t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1)) * std / math.sqrt(len(x))
        out.update(std=std, ci95=[float(x.mean()) - half, float(x.mean()) + half])
    if alpha is not None:
        out["above_alpha"] = int((x > alpha).sum())
    return out


def _interval_stats(entries: Sequence[Mapping[str, Any]], alpha: float) -> dict[str, Any]:
    """Over subjects: coverage of the adaptive and constant intervals, their widths, and how well the
    subject score flags the worst PSNR decile (ranks.worst) and the hard phantoms."""
    adaptive = _spread([e["half_width"] for e in entries])["mean"]
    constant = _spread([e["constant_half_width"] for e in entries])["mean"]
    ratio = adaptive / constant if adaptive is not None and constant else None
    scored = [e for e in entries if e["score"] is not None and e["psnr"] is not None
              and math.isfinite(e["score"]) and math.isfinite(e["psnr"])]
    bad = worst([e["psnr"] for e in scored]) if len(scored) > 1 else np.zeros(len(scored), bool)
    hard = [e["subject"].startswith(HARD_PREFIX) for e in scored]
    return {
        "subjects": len(entries), "alpha": alpha,
        "outside": _spread([e["outside"] for e in entries], alpha),
        "constant_outside": _spread([e["constant_outside"] for e in entries], alpha),
        "half_width": {"adaptive": adaptive, "constant": constant, "ratio": ratio,
                       "narrower": None if ratio is None else 1.0 - ratio},
        "flag": {"flagged": sum(bool(e["flagged"]) for e in entries), "n_worst": int(bad.sum()),
                 "auc_worst_decile": rank_auc([e["score"] for e in scored], bad) if len(scored) > 1 else None,
                 "n_hard": sum(hard),
                 "auc_hard": rank_auc([e["score"] for e in scored], hard) if 0 < sum(hard) < len(hard) else None},
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
                **{k: _spread([e[k] for e in mine])["mean"] for k in numeric}} for name, mine in by_subject.items()]
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


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in lines), ""]


def markdown(summary: Mapping[str, Any]) -> str:
    """report.md: the tables, the figures linked, and how to read them."""
    s, out = summary, []
    settings = s["settings"]
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
            "axial slice, averaged over the head. Values are mean ± sample std over subject × task syntheses. "
            "LPIPS: " + (s["lpips"] if isinstance(s["lpips"], str) else "mean over axial slices") + ".", ""]
    if s["subjects"]["failed"]:
        failed = "; ".join(f"{f['subject']}: {f['error']}" for f in s["subjects"]["failed"])
        out += [f"**Failed subjects:** {failed}", ""]
    for title, group, label in (("Table 1 — by number of inputs", "table1_by_inputs", "n_inputs"),
                                ("Table 1 — by target", "table1_by_target", "target")):
        out += [f"## {title}", ""]
        out += _table([label.replace("n_inputs", "inputs"), "method", "PSNR (dB)", "SSIM", "LPIPS", "n"],
                      [[str(r[label]), r["method"], _pm(r["psnr"], 2), _pm(r["ssim"], 4), _pm(r["lpips"], 4),
                        str(r["psnr"]["n"])] for r in s[group]])
    if settings["compare"]:
        out += ["With one input, TSF w/o attention and the Seq2Seq stage are the same network (ω = 1). "
                "The best single input is an oracle (chosen by PSNR against the truth).", ""]
    if s["psnr_ordering"] and settings["compare"]:
        out += ["Measured ordering by mean PSNR (best first): " + "; ".join(
            f"{o['n_inputs']} input(s): " + _ranking(o) for o in s["psnr_ordering"]) + ".", ""]
    out += ["## Table 2 — PSNR inside vs outside the top-1 % TSEM region", ""]
    if s["table2"]:
        out += ["The region is the 1 % of head voxels with the highest TSEM (99th percentile of TSEM over the "
                "head, as the paper's threshold).", ""]
        out += _table(["inputs", "top 1 % TSEM", "rest of the head", "total", "n"],
                      [[str(r["n_inputs"]), _pm(r["psnr_tsem_top"], 2), _pm(r["psnr_tsem_rest"], 2),
                        _pm(r["psnr_total"], 2), str(r["psnr_total"]["n"])] for r in s["table2"]])
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
           "The flag: the subject score (mean half-width) above the calibration's cut; AUC 0.5 is chance.", ""]
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
                    f"{t['flag']['flagged']} of {t['subjects']}", _num(t["flag"]["auc_worst_decile"]),
                    "–" if t["flag"]["auc_hard"] is None else f"{_num(t['flag']['auc_hard'])} ({t['flag']['n_hard']} hard)"]
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
