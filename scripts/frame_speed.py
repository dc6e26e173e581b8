"""What the runtime, the precision and the frame each give on the CPU, whole volume, files in and
files out: docs/performance.md (issue 15's Goal table).

Every variant on the same held-out phantom (seed 5000, 240x240 slices), T1 + T1Gd + FLAIR -> T2
with TSEM, each run exactly as `tsf-trt infer` runs one subject (tsf_trt.runs.jobs.infer_subject:
read the NIfTI inputs, preflight, synthesise, write the NIfTI outputs and the report). The
variants are interleaved, one warm-up each, then the round with the smallest end-to-end time
of --rounds counts, so other load on a shared machine hurts every variant alike. Prints one
Markdown row per variant: what ran (runtime, precision read back from the backend), frame,
slices computed, end-to-end seconds, network seconds (encoder + fusion + decoder), the share
outside the network, the ratio to the reference, the ratio to the same variant at the full
frame (what the frame alone gives), and PSNR against the phantom's true T2 inside the head.

    python -m scripts.frame_speed --rounds 3 --slices 40                 # bundled demo model
    python -m scripts.frame_speed --config paper --slices 12 --rounds 2  # paper configuration, random weights
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from tsf_trt.backends.base import CPU_BATCH_BYTES
from tsf_trt.synthesis.frame import FrameSpec
from tsf_trt.synthesis.options import RunOptions

#: name -> (backend, precision, frame, batch size); "default" is `tsf-trt infer` with no options.
VARIANTS = {
    "reference": ("reference", "fp32", "full", 1),
    "ort-full": ("ort", "fp32", "full", None),
    "openvino-full": ("openvino", "fp32", "full", None),
    "openvino-bf16-full": ("openvino", "bf16", "full", None),
    "openvino-bf16": ("openvino", "bf16", "head", None),
    "openvino-int8": ("openvino", "int8", "head", None),
    "ort": ("ort", "fp32", "head", None),
    "default-full": ("auto", "auto", "full", None),
    "default": ("auto", "auto", "head", None),
    "default-before": ("auto", "auto", "head", None),
    "default-joined": ("auto", "auto", "head", None),
    "default-margin16": ("auto", "auto", FrameSpec("head", margin=16), None),
}
#: Variants that run the defaults with some of OpenVINO's backend settings as they were, graphs read and
#: compiled again. default-before: as before 7 Dec 2026, the decoder's head compiled as exported, one 7x7
#: convolution (no tsf_trt.backends.openvino_graph.rows_then_sum), the int8 graphs' norms centred, the batch
#: of the budget every backend shared (tsf_trt.backends.base.CPU_BATCH_BYTES) and, as every variant here
#: up to commit eef46c3, the ConvLSTM's gates in one convolution cut by a Split node (no
#: tsf_trt.backends.openvino_graph.convolution_per_slice). default-joined: only the last.
AS_BEFORE = {
    "default-before": {"split_rows": False, "centre_int8": True, "split_gates": False,
                       "cpu_batch_bytes": CPU_BATCH_BYTES},
    "default-joined": {"split_gates": False},
}
LABELS = {
    "reference": "`reference` (authors' way: full frame, fp32, full ConvLSTM, 1 slice per call, 2 decoder passes)",
    "ort-full": "ORT fp32, `--frame full` (before issue 15)",
    "openvino-full": "OpenVINO fp32, `--frame full`",
    "openvino-bf16-full": "OpenVINO bf16, `--frame full`",
    "openvino-bf16": "OpenVINO bf16, `--frame head`",
    "openvino-int8": "OpenVINO int8 (the export's int8 graphs; fusion fp32), `--frame head`",
    "ort": "ORT fp32, `--frame head`",
    "default-full": "defaults at `--frame full` (auto backend, `--precision auto`)",
    "default": "**defaults** (`tsf-trt infer`: auto backend, `--precision auto`, `--frame head`)",
    "default-before": "defaults before 7 Dec (head not split into rows, int8 norms centred, batch of 32 MiB, "
                      "gates in one convolution)",
    "default-margin16": "defaults with the head frame's margin of 16 pixels (up to commit 1a01ef0; 8 since)",
    "default-joined": "defaults as of eef46c3 (the ConvLSTM's gates in one convolution, cut by a Split)",
}


def phantom(folder: Path, slices: int):
    """The held-out phantom's subject (T1, T1Gd, FLAIR) and its true T2, as gzip NIfTI files."""
    from tsf_trt.inputs.subjects import Subject, find_subjects
    from tsf_trt.phantoms import make_subject, subject_name, write_subject

    name = subject_name(5000, "brats2021")
    (folder / name).mkdir(parents=True)
    write_subject(make_subject(5000, (240, 240, slices)), folder / name, name, "brats2021")
    found = find_subjects(folder)[0]
    return Subject(name, {i: found.inputs[i] for i in (0, 1, 3)}), found.inputs[2]


def as_before(backend, settings: dict) -> None:
    """`backend` with `settings` (see AS_BEFORE), its graphs read and compiled again; only an OpenVINO
    backend has them (auto may pick another where OpenVINO runs neither int8 nor bf16)."""
    if not hasattr(backend, "split_gates"):
        return
    for key, value in settings.items():
        setattr(backend, key, value)
    backend.cache_dir = None
    backend._models.clear()
    backend._compiled.clear()


def measure(model, names: list[str], slices: int, rounds: int, threads: int) -> list[dict]:
    """Every variant `rounds` times after a warm-up, interleaved; per variant its fastest round."""
    from tsf_trt.files.volume import load_volume
    from tsf_trt.metrics import psnr
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.preprocess import normalize

    tmp = Path(tempfile.mkdtemp(prefix="tsf-trt-frame-speed-"))
    subject, truth_path = phantom(tmp / "in", slices)
    truth = load_volume(truth_path).data
    synths = {}
    for name in names:
        backend, precision, frame, batch = VARIANTS[name]
        synths[name] = Synthesizer(model, RunOptions(backend=backend, frame=frame, threads=threads, precision=precision,
                                                     batch_size=batch))
        if name in AS_BEFORE:
            as_before(synths[name].backend, AS_BEFORE[name])
    for name in names:
        (tmp / "out" / name).mkdir(parents=True)
    best: dict[str, dict] = {}
    for round_ in range(rounds + 1):  # round 0 warms every variant up
        for name, synth in synths.items():
            request = InferRequest(2, output=tmp / "out" / name, overwrite=True)
            start = time.perf_counter()
            outcome = infer_subject(synth, subject, request, backend_name=name)
            seconds = time.perf_counter() - start
            t = outcome.result.timings
            network = t["encode"] + t["fuse"] + t["decode"]
            if round_ and seconds < best.get(name, {}).get("seconds", float("inf")):
                be = synth.backend
                best[name] = {"variant": name, "backend": be.name,
                              "precision": getattr(be, "runtime_precision", be.precision),
                              "frame": outcome.result.frame, "seconds": seconds, "network": network,
                              "compute": t["total"], "read": t["read"], "write": t["write"],
                              "psnr": round(psnr(outcome.result.image, normalize(truth), truth > 0), 2)}
        print(f"round {round_} done" + (" (warm-up)" if not round_ else ""), flush=True)
    rows = [best[name] for name in names]
    reference = best.get("reference")
    for row in rows:
        row["vs_reference"] = reference["seconds"] / row["seconds"] if reference else None
        full = best.get(f"{row['variant']}-full")
        row["vs_full_frame"] = full["seconds"] / row["seconds"] if full else None
    return rows


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | ran | frame | slices computed | s / volume, files in → out | network s | outside the "
             "network | × reference | × same at full frame | PSNR vs truth (dB) |", "|" + "---|" * 10]
    for r in rows:
        frame = r["frame"]
        lines.append(f"| {LABELS[r['variant']]} | {r['backend']} {r['precision']} | {frame['size'][0]}×"
                     f"{frame['size'][1]} | {frame['slices_computed']}/{frame['slices']} | {r['seconds']:.2f} | "
                     f"{r['network']:.2f} | {1 - r['network'] / r['seconds']:.1%} | {_ratio(r['vs_reference'])} | "
                     f"{_ratio(r['vs_full_frame'])} | {r['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="demo (the bundled model) or a preset with random "
                        "weights, seed 0 (paper)")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="reference,ort-full,openvino-full,default-full,default")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    logging.getLogger("tsf_trt").setLevel(logging.ERROR)  # the phantom's voxel-size warning, once per run, not here
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)} (use {', '.join(VARIANTS)})")
    if args.config == "demo":
        model = "demo"
    else:
        from tsf_trt.bench.suite import make_model

        model = make_model(args.config, Path(tempfile.mkdtemp(prefix="tsf-trt-model-")))
    rows = measure(model, names, args.slices, args.rounds, args.threads)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
