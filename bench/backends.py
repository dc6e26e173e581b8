"""Backends against each other on one subject, in one run, same threads and batch:
seconds per volume, per-stage times, and agreement with torch fp32.

    python -m tsf_trt.bench.backends --model MODEL_DIR --inputs t1.nii.gz t1ce.nii.gz flair.nii.gz \\
        --target t2 [--variants reference,torch,torch-bf16,ort-code,ort-baked] [--json out.json]

`reference` is the authors' way of running the same weights (full ConvLSTM, one
slice per call, TSEM as two decoder passes); every figure is also given as a ratio
to it. :mod:`tsf_trt.bench.suite` turns these rows into the README's performance
table; `tsf-trt bench` (:mod:`tsf_trt.bench.runner`) times the `--backend` choices
stage by stage.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.backends import Backend
from tsf_trt.pipeline import Result, Synthesizer
from tsf_trt.subjects import parse_inputs
from tsf_trt.volume import load_volume

VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"backend": "reference"},
    "torch": {"backend": "torch"},
    "torch-bf16": {"backend": "torch", "precision": "bf16"},
    "ort-code": {"backend": "ort", "decoder": "code"},
    "ort-baked": {"backend": "ort", "decoder": "baked"},
}


def make_backend(variant: str, model_dir: Path, export_dir: Path | None, threads: int | None) -> Backend:
    from tsf_trt.backends.ort_backend import OrtBackend
    from tsf_trt.backends.torch_backend import TorchBackend
    from tsf_trt.export.cache import ensure_export
    from tsf_trt.model import load_model

    spec = VARIANTS[variant]
    if spec["backend"] == "ort":
        return OrtBackend(export_dir or ensure_export(model_dir), threads=threads, decoder=spec["decoder"])
    mode = "reference" if spec["backend"] == "reference" else "fast"
    return TorchBackend(load_model(model_dir), threads=threads, mode=mode, precision=spec.get("precision", "fp32"))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def compare(model_dir: Path, volumes: dict[int, np.ndarray], target: int, variants: list[str], *,
            export_dir: Path | None = None, threads: int | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    results: dict[str, Result] = {}
    mid = len(next(iter(volumes.values()))) // 2
    warm = {i: v[max(0, mid - 1) : mid + 2] for i, v in volumes.items()}  # a few slices with content
    for variant in variants:
        # the reference way is one slice per network call whatever the batch: say so in the row
        synth = Synthesizer(make_backend(variant, model_dir, export_dir, threads),
                            batch_size=1 if variant == "reference" else batch_size)
        synth.run(warm, target)  # sessions, allocators and caches warm, outside the timing
        start = time.perf_counter()
        result = synth.run(volumes, target)
        seconds = time.perf_counter() - start
        results[variant] = result
        rows.append({"variant": variant, "backend": synth.backend.describe(), "batch_size": result.batch_size,
                     "seconds": seconds,
                     "stages": {k: round(v, 2) for k, v in result.timings.items()}})
        print(f"{variant:>11}: {seconds:8.1f} s  ({synth.backend.describe()})", file=sys.stderr, flush=True)
    base = results.get("torch") or next(iter(results.values()))
    reference = next((r["seconds"] for r in rows if r["variant"] == "reference"), None)
    for row in rows:
        result = results[row["variant"]]
        row["speedup_vs_reference"] = reference / row["seconds"] if reference else None
        row["image_max_abs_diff_vs_torch"] = float(np.abs(result.image - base.image).max())
        row["image_psnr_vs_torch_db"] = round(psnr(result.image, base.image), 1)
        if result.tsem is not None and base.tsem is not None:
            row["tsem_max_abs_diff_vs_torch"] = float(np.abs(result.tsem - base.tsem).max())
        row["weights_max_abs_diff_vs_torch"] = max(abs(result.weights[i] - base.weights[i]) for i in result.weights)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--export", type=Path, default=None, help="export directory (default: the cached export)")
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each backend's preference")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    inputs = parse_inputs(args.inputs)
    volumes = {i: load_volume(p).data for i, p in inputs.items()}
    target = sequences.parse(args.target)
    rows = compare(args.model, volumes, target, args.variants.split(","), export_dir=args.export,
                   threads=args.threads, batch_size=args.batch_size)
    report = {"task": sequences.describe(sorted(inputs), target), "shape_zyx": list(next(iter(volumes.values())).shape),
              "threads": args.threads, "batch_size": args.batch_size, "machine": platform.processor() or platform.machine(),
              "rows": rows}
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
