"""Which per-voxel heuristic u(x) carries the error signal (issue 24's measurement).

For each candidate u (built from TSEM, the one-to-one syntheses' spread, the output's edges), its
coefficients are fitted on the `fit` subjects (|error| regressed on the features, non-negative
least squares), λ is calibrated by conformal risk control on the `cal` subjects
(tsf_trt.uncertainty.conformal), and on the held-out `test` subjects it reports the fraction of
head voxels outside ŷ ± λ·u (mean, min, max over subjects), the mean half-width (0-1000 output
units) and its ratio to the constant-width interval's at the same α, and the subject score's AUC
for the worst PSNR decile.

    tsf-trt phantom -o study/fit --subjects 20 --seed 20000 --hard-fraction 0.25
    tsf-trt phantom -o study/cal --subjects 80 --seed 30000 --hard-fraction 0.25
    tsf-trt phantom -o study/test --subjects 24 --seed 40000 --hard-fraction 0.25
    python -m scripts.uncertainty_study study --backend ort --slice-step 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TASKS = ("t1,t1gd,flair->t2", "t1,flair->t2")
SAMPLE = 4  # keep every 4th head voxel of a subject (a fixed stride): the ratios' memory
FIT_VOXELS = 20_000  # per fit subject, for the regression


def subject_arrays(backend, subject, tasks, slice_step):
    from tsf_trt.evaluation.loop import evaluate_images
    from tsf_trt.metrics import psnr
    from tsf_trt.uncertainty.heuristic import feature_maps

    si = evaluate_images(backend, subject.inputs, tasks, slice_step=slice_step, compare=True)
    out = {}
    for task in tasks:
        images = si.tasks[task]
        singles = [si.one_to_one[(s, task.target)] for s in task.sources]
        maps = feature_maps(images.image, images.tsem, singles)
        truth = si.truth[task.target]
        head = si.head
        err = np.abs(truth - images.image)[head]
        out[task.key] = {"features": {k: v[head] for k, v in maps.items()}, "err": err,
                         "psnr": psnr(images.image, truth, head)}
    return out


def main() -> None:
    from tsf_trt.evaluation.ranks import rank_auc
    from tsf_trt.evaluation.tasks import parse_tasks
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.synthesis.backend import create_backend
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.uncertainty.conformal import calibrate_lambda, risk
    from tsf_trt.uncertainty.heuristic import CANDIDATES, fit_heuristic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--slice-step", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--limit", type=int, nargs=3, default=None, metavar=("FIT", "CAL", "TEST"),
                        help="use only the first N subjects of each part (a quicker look)")
    args = parser.parse_args()
    tasks = parse_tasks(args.tasks)
    backend = create_backend(args.model, RunOptions(backend=args.backend, precision="fp32"))
    data = {}
    for index, part in enumerate(("fit", "cal", "test")):
        subjects = find_subjects(args.root / part)
        if args.limit:
            subjects = subjects[: args.limit[index]]
        start = time.perf_counter()
        data[part] = [(s.name, subject_arrays(backend, s, tasks, args.slice_step)) for s in subjects]
        print(f"{part}: {len(subjects)} subjects in {time.perf_counter() - start:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    report = {}
    for task in tasks:
        rows = {}
        for name, names in CANDIDATES.items():
            feats, errs = [], []
            for _, subject in data["fit"]:
                d = subject[task.key]
                pick = rng.choice(d["err"].size, min(FIT_VOXELS, d["err"].size), replace=False)
                feats.append({k: d["features"][k][pick] for k in names})
                errs.append(d["err"][pick])
            heuristic = fit_heuristic(names, feats, errs)

            def ratios(part):
                return [(s[task.key]["err"] / heuristic.u(s[task.key]["features"]))[::SAMPLE]
                        for _, s in data[part]]

            lam = calibrate_lambda(ratios("cal"), args.alpha)
            test = data["test"]
            outside = [risk([r], lam) for r in ratios("test")]
            widths = [float(np.mean(lam * heuristic.u(s[task.key]["features"]))) * 500 for _, s in test]
            scores = [float(np.mean(heuristic.u(s[task.key]["features"]))) for _, s in test]
            psnrs = np.array([s[task.key]["psnr"] for _, s in test])
            worst = psnrs <= np.quantile(psnrs, 0.1)
            hard = np.array(["Hard" in n for n, _ in test])
            rows[name] = {"coefficients": heuristic.coefficients, "lambda": lam,
                          "outside_mean": float(np.mean(outside)), "outside_min": float(np.min(outside)),
                          "outside_max": float(np.max(outside)), "width_mean": float(np.mean(widths)),
                          "auc_worst_decile": rank_auc(scores, worst), "auc_hard": rank_auc(scores, hard)}
        base = rows["constant"]["width_mean"]
        for row in rows.values():
            row["width_vs_constant"] = row["width_mean"] / base
        report[task.label] = rows
        print(task.label)
        for name, row in rows.items():
            print(f"  {name:24s} outside {row['outside_mean']:.3f} [{row['outside_min']:.3f}, "
                  f"{row['outside_max']:.3f}]  width {row['width_mean']:.1f} ({row['width_vs_constant']:.2f}x)  "
                  f"AUC worst {row['auc_worst_decile']:.2f} hard {row['auc_hard']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
