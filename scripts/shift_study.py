"""Coverage of a calibration under shift, and whether `infer` marks the shifted subjects (issue 24).

Each held-out subject is copied with one change to its inputs: `noise` (Rician noise of σ = 3 % of
the head's 99th percentile added inside the head, about twice the phantoms' own), `bias` (a smooth
multiplicative field, log-gain std 0.3, about three times the phantoms'), `misregistered` (T1 moved
by 2 voxels along x), and `2.5mm` (the same seeds made at 96x96x62 voxels over the same field of
view). For each, over the subjects: the fraction of head voxels outside synthesis ± half-width
(computed whether or not the guarantee applies), and how many subjects the report would mark as
outside the calibration (Calibration.why_not with the preprocessing findings infer computes).

    python -m scripts.shift_study study/test study/shift --calibration tsf_trt/bundled/demo/calibration.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

TASK = "t1,t1gd,flair->t2"
KINDS = ("none", "noise", "bias", "misregistered", "2.5mm")


def shifted(kind: str, path: Path, seq: str, rng: np.random.Generator) -> np.ndarray:
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    head = data > 0
    if kind == "noise" and seq != "seg":
        sigma = 0.03 * np.percentile(data[head], 99)
        noisy = np.hypot(data + rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape))
        data = np.where(head, noisy, 0).astype(np.float32)
    elif kind == "bias" and seq != "seg":
        from scipy.ndimage import gaussian_filter, zoom

        coarse = gaussian_filter(rng.normal(size=(6, 6, 5)), 1.0)
        field = zoom(coarse / coarse.std(), np.array(data.shape) / coarse.shape, order=1)[: data.shape[0],
                                                                                        : data.shape[1],
                                                                                        : data.shape[2]]
        data = np.where(head, data * np.exp(0.3 * field), 0).astype(np.float32)
    elif kind == "misregistered" and seq == "t1":
        data = np.roll(data, 2, axis=0)
    return data


def make(test: Path, out: Path, kind: str) -> Path:
    target = out / kind
    if target.exists():
        return target
    if kind == "2.5mm":
        seeds = sorted(int(p.name.split("_")[-1]) for p in test.iterdir() if p.is_dir())
        subprocess.run([sys.executable, "-m", "tsf_trt", "phantom", "-o", str(target), "--subjects", str(len(seeds)),
                        "--seed", str(seeds[0]), "--hard-fraction", "0.25", "--shape", "96", "96", "62", "-q"],
                       check=True)
        return target
    rng = np.random.default_rng(24)
    for subject in sorted(p for p in test.iterdir() if p.is_dir()):
        (target / subject.name).mkdir(parents=True)
        for path in sorted(subject.glob("*.nii.gz")):
            seq = path.name[len(subject.name) + 1:].split(".")[0]
            img = nib.load(path)
            data = shifted(kind, path, seq, rng)
            nib.save(nib.Nifti1Image(data, img.affine, img.header), target / subject.name / path.name)
    return target


def main() -> None:
    from tsf_trt.evaluation.loop import evaluate_images
    from tsf_trt.evaluation.tasks import parse_task
    from tsf_trt.inputs.prefetch import load_subject
    from tsf_trt.inputs.preflight import voxel_size_mm
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.synthesis.backend import create_backend
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.uncertainty.calibration import read_calibration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--slice-step", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    calibration = read_calibration(args.calibration)
    entry = calibration.tasks[TASK]
    task = parse_task(TASK)
    backend = create_backend(args.model, RunOptions(backend="ort", precision="fp32"))
    rows = {}
    for kind in KINDS:
        folder = args.test if kind == "none" else make(args.test, args.out, kind)
        outside, marked, reasons = [], 0, []
        for subject in find_subjects(folder):
            loaded = load_subject({i: subject.inputs[i] for i in task.sources})  # what infer reads
            first = loaded.volumes[task.sources[0]]
            findings = [f"{f.kind}" for f in loaded.findings if f.kind != "different-grid"]
            why = calibration.why_not(backend.model_id, TASK, voxel_size_mm(first), findings, loaded.profile)
            marked += why is not None
            if why:
                reasons.append(why)
            images = evaluate_images(backend, subject.inputs, [task], slice_step=args.slice_step, compare=False)
            out = images.tasks[task]
            width = entry.half_width(out.image, out.tsem)
            head = images.head
            err = np.abs(images.truth[task.target] - out.image)
            outside.append(float(np.mean(err[head] > width[head])))
        rows[kind] = {"subjects": len(outside), "outside_mean": float(np.mean(outside)),
                      "outside_min": float(np.min(outside)), "outside_max": float(np.max(outside)),
                      "marked_outside": marked, "reasons": sorted(set(reasons))[:3]}
        row = rows[kind]
        print(f"{kind:14s} outside {row['outside_mean']:.3f} [{row['outside_min']:.3f}, {row['outside_max']:.3f}]  "
              f"marked {marked} of {len(outside)}  {row['reasons'][:1]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
