"""int8 against fp32 on the bundled demo model: quality over all 28 tasks and speed per graph (issue 27).

Builds the int8 graphs of the bundled demo export as `tsf-trt export --precision int8` does
(tsf_trt.export.quantize.write_int8 on samples of tsf_trt.runs.int8_samples: phantoms 6000-6003,
every 4th head-frame slice, 300 samples per graph), plus the alternatives the choices were made
against, each into its own copy of the export under --work:

    mixed        the shipped build: NNCF's OpenVINO backend, mixed preset, encoder input [-1, 1],
                 each decoder's output convolution fp32
    mixed-outq   the same with the decoders' output convolutions quantised too
    mixed-nofix  mixed-outq with NNCF's own estimate of the encoder's input range
    performance  mixed-outq with the performance preset (symmetric activations)
    onnx-qdq     mixed-outq by NNCF's ONNX backend (QDQ graph), read by OpenVINO

Quality: every variant through tsf-trt's OpenVINO backend (`--precision int8`) on the held-out
phantoms 5000-5003 (never trained or calibrated on), all 28 tasks, every 4th head slice, head
frame, scored as `evaluate` scores (PSNR against the true target inside the head) against ONNX
Runtime fp32 on the same slices: ΔPSNR per task (mean over subjects), PSNR of the int8 synthesis
against the fp32 one, TSEM's correlation with fp32 TSEM (head voxels) and its mean's change.
Speed: encoder and decoder_t2 (TSEM's batch of 2N) per slice at phantom 5000's head frame and the
backend's own batch, ONNX Runtime fp32, OpenVINO f32 and OpenVINO int8 interleaved, minimum of
--rounds rounds.

    python -m scripts.int8_study --work /tmp/int8-study                  # build, quality, speed
    python -m scripts.int8_study --work /tmp/int8-study --variants mixed --skip-quality
    python -m scripts.int8_study --work /tmp/int8-study --variants mixed --write-bundled  # ship mixed
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from tsf_trt import sequences

DEMO_EXPORT = Path(__file__).resolve().parent.parent / "tsf_trt" / "bundled" / "demo" / "export"
HELD_OUT = (5000, 5001, 5002, 5003)
VARIANTS = ("mixed", "mixed-outq", "mixed-nofix", "performance", "onnx-qdq")


def _onnx_qdq(path: Path, samples, input_name: str, *, preset: str, input_range, output_fp32: bool) -> object:
    """NNCF's ONNX backend on the ONNX graph (QDQ nodes), the input's QuantizeLinear set to
    `input_range` (int8, zero point 0, scale 1/127: [-128/127, 1]), read back by OpenVINO."""
    import nncf
    import onnx
    import openvino as ov
    from onnx import numpy_helper

    logging.getLogger("nncf").setLevel(logging.WARNING)
    quantized = nncf.quantize(onnx.load(str(path)), nncf.Dataset(list(samples), lambda x: {input_name: x}),
                              preset=nncf.QuantizationPreset(preset), subset_size=len(samples),
                              ignored_scope=nncf.IgnoredScope(types=["InstanceNormalization"], validate=False))  # MVN
    if input_range is not None:
        inits = {i.name: i for i in quantized.graph.initializer}
        for node in quantized.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] == input_name:
                zero = numpy_helper.to_array(inits[node.input[2]])
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.array(1 / 127, np.float32), node.input[1]))
                inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.zeros((), zero.dtype), node.input[2]))
    qdq = path.with_suffix(".qdq.onnx")
    onnx.save(quantized, str(qdq))
    model = ov.Core().read_model(str(qdq))
    qdq.unlink()
    return model


def build(work: Path, variant: str, samples) -> Path:
    """The demo export with `variant`'s int8 graphs, in work/<variant> (kept: built once)."""
    from tsf_trt.export.quantize import INPUT_RANGE, quantize_graph, write_int8

    folder = work / variant
    if folder.exists():
        return folder
    tmp = work / f".{variant}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(DEMO_EXPORT, tmp, ignore=shutil.ignore_patterns(".*", "*.int8.*"))
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest.pop("int8", None)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    quantised = {"output_fp32": False}
    options = {"mixed": {}, "mixed-outq": quantised, "mixed-nofix": {"input_range": None, **quantised},
               "performance": {"preset": "performance", **quantised},
               "onnx-qdq": {"quantize": _onnx_qdq, **quantised}}[variant]
    start = time.perf_counter()
    write_int8(tmp, samples, samples.describe_data, step=lambda m: print(f"  {variant}: {m}", flush=True),
               **{"input_range": INPUT_RANGE, "quantize": quantize_graph, **options})
    print(f"built {variant} in {time.perf_counter() - start:.0f} s", flush=True)
    tmp.rename(folder)
    return folder


class CachedSamples:
    """Int8Samples of the default calibration, each graph's computed once for every variant."""

    def __init__(self, samples: int):
        from tsf_trt.runs.int8_samples import int8_data

        self.found, self.describe_data = int8_data(DEMO_EXPORT, None, samples=samples)
        self.cache: dict[str, list[np.ndarray]] = {}

    def __call__(self, role: str) -> list[np.ndarray]:
        if role not in self.cache:
            self.cache[role] = self.found(role)
        return self.cache[role]


def held_out(work: Path) -> list[dict[int, Path]]:
    """The held-out phantoms' files (written once under work/heldout)."""
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.phantoms import write_subjects

    folder = work / "heldout"
    if not folder.exists():
        write_subjects(folder, len(HELD_OUT), seed=HELD_OUT[0])
    return [{i: p for i, p in s.inputs.items() if i < sequences.N_SEQUENCES} for s in find_subjects(folder)]


def backend(kind: str, folder: Path | None = None):
    from tsf_trt.backends.openvino_backend import OpenVinoBackend
    from tsf_trt.backends.ort_backend import OrtBackend

    if kind == "ort":
        return OrtBackend(DEMO_EXPORT, cache=False)
    if kind == "openvino":
        return OpenVinoBackend(DEMO_EXPORT, cache=False)
    return OpenVinoBackend(folder, precision="int8", cache=False)


#: Backend settings a variant can also run with (`quality`'s `also`): the int8 graphs' norms centred as
#: the fp32 graphs' are; the ConvLSTM's gates in one convolution (OpenVINO's graph as exported).
ALSO = {"centred": ("centre_int8", True), "joined": ("split_gates", False)}


def quality(work: Path, variants: dict[str, Path], slice_step: int, also: tuple[str, ...] = ()) -> dict[str, dict]:
    """Per variant and task: ΔPSNR vs ORT fp32 (mean over subjects), PSNR vs fp32, TSEM agreement.
    Each variant also with each setting of `also` (ALSO's keys) as "<variant> <setting>"."""
    from tsf_trt import metrics
    from tsf_trt.evaluation.loop import evaluate_images
    from tsf_trt.evaluation.tasks import all_tasks

    tasks = all_tasks()
    backends = {"ort": backend("ort"), **{v: backend("int8", f) for v, f in variants.items()}}
    for setting in also:
        attribute, value = ALSO[setting]
        for v, f in variants.items():
            backends[f"{v} {setting}"] = backend("int8", f)
            setattr(backends[f"{v} {setting}"], attribute, value)
    names = [name for name in backends if name != "ort"]
    rows: dict[str, dict[str, list]] = {v: {} for v in names}
    for n, inputs in enumerate(held_out(work)):
        start = time.perf_counter()
        ref = evaluate_images(backends["ort"], inputs, tasks, slice_step=slice_step, compare=False)
        for name in names:
            got = evaluate_images(backends[name], inputs, tasks, slice_step=slice_step, compare=False)
            for task in tasks:
                a, b, truth, head = got.tasks[task], ref.tasks[task], ref.truth[task.target], ref.head
                row = rows[name].setdefault(task.label, [])
                tsem_corr = np.corrcoef(a.tsem[head], b.tsem[head])[0, 1] if a.tsem is not None else np.nan
                tsem_mean = a.tsem[head].mean() / b.tsem[head].mean() - 1 if a.tsem is not None else np.nan
                row.append((metrics.psnr(a.image, truth, head) - metrics.psnr(b.image, truth, head),
                            metrics.psnr(a.image, b.image, head), tsem_corr, tsem_mean,
                            metrics.psnr(b.image, truth, head)))
            del got
        print(f"held-out subject {n + 1}/{len(HELD_OUT)}: {time.perf_counter() - start:.0f} s", flush=True)
    for be in backends.values():
        be.close()
    summary = {}
    for name, per_task in rows.items():
        table = {task: np.nanmean(np.array(values), axis=0).tolist() for task, values in per_task.items()}
        delta = [v[0] for v in table.values()]
        summary[name] = {"tasks": table, "mean_delta_db": float(np.mean(delta)), "worst_delta_db": float(min(delta)),
                         "worst_task": min(table, key=lambda t: table[t][0]),
                         "psnr_vs_fp32_db": float(np.mean([v[1] for v in table.values()])),
                         "tsem_corr": float(np.nanmean([v[2] for v in table.values()])),
                         "tsem_mean_change": [float(np.nanmin([v[3] for v in table.values()])),
                                              float(np.nanmax([v[3] for v in table.values()]))],
                         "fp32_psnr_db": float(np.mean([v[4] for v in table.values()]))}
    return summary


def speed(work: Path, variants: dict[str, Path], rounds: int, repeats: int) -> dict[str, dict]:
    """ms per slice of the encoder and decoder_t2 at phantom 5000's head frame, interleaved, min of rounds."""
    from tsf_trt.evaluation.loop import load_subject
    from tsf_trt.synthesis.frame import plan_frame
    from tsf_trt.synthesis.preprocess import stack_25d

    normed, head, *_ = load_subject(held_out(work)[0])
    frame = plan_frame("head", head, 4)
    kinds = {"ort fp32": backend("ort"), "openvino f32": backend("openvino"),
             **{f"openvino int8 ({v})": backend("int8", f) for v, f in variants.items()}}
    batch = kinds["openvino f32"].preferred_batch_size(*frame.shape)
    centres = frame.slices[len(frame.slices) // 2 - batch // 2:][:batch]
    images = stack_25d(frame.take(normed[0]), centres)
    features = kinds["ort fp32"].encode(images)
    best = {name: {"encoder": np.inf, "decoder_t2": np.inf} for name in kinds}
    for round_ in range(rounds + 1):  # round 0 compiles and warms up
        for name, be in kinds.items():
            for graph, run in (("encoder", lambda: be.encode(images)),
                               ("decoder_t2", lambda: be.decode(features, 2, features))):
                start = time.perf_counter()
                for _ in range(repeats):
                    run()
                ms = (time.perf_counter() - start) / repeats / batch * 1000
                if round_:
                    best[name][graph] = min(best[name][graph], ms)
    described = {name: be.describe() for name, be in kinds.items()}
    for be in kinds.values():
        be.close()
    return {"frame": list(frame.shape), "batch": batch, "ms_per_slice": best, "ran": described}


def write_bundled(folder: Path) -> int:
    """Copy `folder`'s int8 graphs and manifest block into the bundled demo export; returns bytes added."""
    from tsf_trt.export.manifest import read_manifest

    block = read_manifest(folder)["int8"]
    target = DEMO_EXPORT / "manifest.json"
    manifest = json.loads(target.read_text())
    added = 0
    for entry in block["graphs"].values():
        for key in ("file", "weights"):
            shutil.copy2(folder / entry[key], DEMO_EXPORT / entry[key])
            added += (folder / entry[key]).stat().st_size
    manifest["int8"] = block
    target.write_text(json.dumps(manifest, indent=2) + "\n")
    read_manifest(DEMO_EXPORT)  # hashes as listed
    return added


def report(q: dict | None, s: dict | None) -> str:
    lines = []
    if q:
        lines += ["| variant | mean ΔPSNR vs ORT fp32 (28 tasks) | worst task | PSNR vs fp32 output | TSEM corr. | "
                  "TSEM mean change |", "|---|---|---|---|---|---|"]
        for name, r in q.items():
            lines.append(f"| {name} | {r['mean_delta_db']:+.3f} dB | {r['worst_delta_db']:+.3f} dB ({r['worst_task']}) "
                         f"| {r['psnr_vs_fp32_db']:.1f} dB | {r['tsem_corr']:.3f} | "
                         f"{r['tsem_mean_change'][0]:+.0%} to {r['tsem_mean_change'][1]:+.0%} |")
    if s:
        ort = s["ms_per_slice"]["ort fp32"]
        lines += ["", f"head frame {s['frame'][0]}×{s['frame'][1]}, batch {s['batch']}", "",
                  "| runtime | encoder ms/slice (× ORT fp32) | decoder_t2 ms/slice, TSEM pass (× ORT fp32) |",
                  "|---|---|---|"]
        for name, r in s["ms_per_slice"].items():
            lines.append(f"| {name} | {r['encoder']:.2f} ({ort['encoder'] / r['encoder']:.2f}×) | "
                         f"{r['decoder_t2']:.2f} ({ort['decoder_t2'] / r['decoder_t2']:.2f}×) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="builds and held-out phantoms (reused)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--slice-step", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--centred", action="store_true", help="quality also with the int8 graphs' norms centred")
    parser.add_argument("--joined", action="store_true",
                        help="quality also with the ConvLSTM's gates in one convolution (as up to commit eef46c3)")
    parser.add_argument("--write-bundled", action="store_true", help="ship the first variant's int8 graphs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.getLogger("tsf_trt").setLevel(logging.ERROR)
    names = [n for n in args.variants.split(",") if n]
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variants {', '.join(unknown)} (use {', '.join(VARIANTS)})")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    samples = None
    folders = {}
    for name in names:
        if not (args.work / name).exists() and samples is None:
            samples = CachedSamples(args.samples)
        folders[name] = build(args.work, name, samples)
    samples = None
    q = None if args.skip_quality else quality(args.work, folders, args.slice_step,
                                                     tuple(k for k in ALSO if getattr(args, k)))
    s = None if args.skip_speed else speed(args.work, folders, args.rounds, args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(report(q, s))
    if args.json:
        args.json.write_text(json.dumps({"quality": q, "speed": s}, indent=2, default=float) + "\n")
    if args.write_bundled:
        print(f"bundled: {write_bundled(folders[names[0]]) / 1e6:.2f} MB of int8 graphs added to {DEMO_EXPORT}")


if __name__ == "__main__":
    main()
