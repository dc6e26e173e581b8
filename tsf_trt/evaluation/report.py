"""From rows (one per subject × task) to the paper's tables, and the files that hold them.

`summarize` computes Table 1 (mean ± std by number of inputs and by target, with the
ablation), Table 2 (PSNR inside vs outside the top-1 % TSEM region), Fig. 3's ω per task
and the QC statistics; the writers put them in `results.csv`, `summary.json` and
`report.md`, each atomically, into a report folder already recognised as tsf-trt's
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
from tsf_trt.evaluation.scoring import METHODS, QUALITY
from tsf_trt.files.atomic import atomic_path
from tsf_trt.runs.qc import key as qc_key

CSV_COLUMNS = (
    "subject", "task", "target", "sources", "n_inputs", "slices", "voxels", *QUALITY,
    "psnr_tsem_top", "psnr_tsem_rest", "tsem_p99_head", "tsem_mean_head", "qc_score",
    *(f"w_{n}" for n in sequences.NAMES),
    *(p + q for p in METHODS if p for q in QUALITY), "seq2seq_best_input",
)
UNAVAILABLE = "unavailable"


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


def csv_row(row: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """A row as the CSV has it: the QC score at the active threshold, blanks for what is absent."""
    qc = (row.get("tsem_exceedance") or {}).get(qc_key(threshold))
    full = {**row, "qc_score": qc}
    return {c: "" if full.get(c) is None else full[c] for c in CSV_COLUMNS}


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], threshold: float) -> None:
    with atomic_path(path, overwrite=True, own_location=True) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(r, threshold) for r in rows)


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
    settings, qc = s["settings"], s.get("qc")
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
    if qc:
        out += _qc_markdown(qc)
    if s["figures"].get("subjects"):
        out += ["## Figures", "",
                "Inputs, synthesis, truth, |error| and TSEM over the synthesis, on three axial slices.", ""]
        for fig in s["figures"]["subjects"]:
            name = f"{fig['subject']} — {fig['task']}"
            out += [f"### {name}", "", f"![{name}]({fig['path']})", ""]
    out += ["## Files", "", "* `results.csv`: one row per subject × task (every score, ω, the QC score).",
            "* `summary.json`: these tables as data, the settings and the QC statistics.",
            "* `subjects/`: one JSON per subject, reused when the run is resumed."]
    if s.get("qc_file"):
        out += [f"* `{s['qc_file']}`: the QC calibration, for `tsf-trt infer --qc {s['qc_file']}`."]
    return "\n".join(out) + "\n"


def _qc_markdown(qc: Mapping[str, Any]) -> list[str]:
    rows, subj = qc["rows"], qc["subjects"]
    cut = qc.get("flag_above")
    out = ["## QC from TSEM", "",
           f"Score: fraction of head voxels with TSEM > τ = {qc['tsem_threshold']:g} ({qc['calibration']}). "
           "Bad syntheses: the worst decile by PSNR. AUC 0.5 is chance, 1 a perfect flag; a good score "
           "correlates negatively with PSNR." + (" Statistics at a threshold chosen on these same data "
                                                 "are optimistic (in-sample)." if qc.get("in_sample") else ""), ""]
    out += _table(["over", "n", "Pearson r (score, PSNR)", "Spearman ρ", "AUC worst decile", "flag"],
                  [["subject × task", str(rows["n"]), _num(rows["pearson"]), _num(rows["spearman"]),
                    _num(rows["auc_worst_decile"]),
                    "–" if cut is None else f"{rows.get('flagged', 0)} flagged (score > {cut:.4g}); sensitivity "
                                            f"{_num(rows.get('sensitivity'), 2)}, specificity "
                                            f"{_num(rows.get('specificity'), 2)}"],
                   ["subject (means over tasks)", str(subj["n"]), _num(subj["pearson"]), _num(subj["spearman"]),
                    _num(subj["auc_worst_decile"]), ""]])
    out += [f"Within each task, across subjects: mean Spearman ρ {_num(qc['within_task_spearman_mean'])}.", ""]
    if qc.get("per_threshold"):
        out += ["Calibration grid (subject × task rows):", ""]
        out += _table(["τ", "Pearson r", "Spearman ρ", "AUC worst decile"],
                      [[f"{t['tsem_threshold']:g}", _num(t["pearson"]), _num(t["spearman"]),
                        _num(t["auc_worst_decile"])] for t in qc["per_threshold"]])
    out += ["Subjects by mean QC score, highest first:", ""]
    out += _table(["subject", "mean PSNR (dB)", "mean QC score", "syntheses flagged"],
                  [[p["subject"], _num(p["psnr"], 2), _num(p["qc_score"], 5),
                    "–" if p.get("flagged") is None else f"{p['flagged']} of {p['syntheses']}"]
                   for p in sorted(qc["per_subject"], key=lambda p: -(p["qc_score"] or 0))])
    return out


def write_markdown(path: Path, summary: Mapping[str, Any]) -> None:
    with atomic_path(path, overwrite=True, own_location=True) as tmp:
        tmp.write_text(markdown(plain(summary)))
