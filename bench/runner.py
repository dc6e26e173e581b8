"""The benchmark itself: every backend x batch size on one subject, in one run, as one report.

Why through :func:`tsf_trt.jobs.infer_subject`: each iteration is exactly what
`tsf-trt infer` does (read NIfTI, preprocess, encode, fuse, decode 2N, reassemble,
write NIfTI and the JSON report), timed by the Synthesizer's own stage clocks, so the
figures describe the real tool rather than a separate loop. A row is one
:class:`~.variants.Variant` (backend, precision, ONNX decoder) at one batch size, and says how
far its output is from torch fp32's. The report's layout is documented in bench/SCHEMA.md;
`SCHEMA_VERSION` changes whenever a field changes meaning.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.backends import Backend
from tsf_trt.errors import TsfError
from tsf_trt.pipeline import Result

from .environment import PeakMemory, environment, gemm_rate, transfer_seconds
from .stats import ratios, summarize
from .variants import BASELINE, REFERENCE, Agreement, Variant, create_variant, expand
from .workload import Workload, copy_subjects, flops_per_volume, padded, phantom_workload, subject_workload

SCHEMA_VERSION = 2  # 2: efficiency against the GEMM peak of the row's own precision
#: Report stage -> the Synthesizer / infer_subject timing keys it sums.
STAGES = {"read": ("read",), "preprocess": ("preprocess",), "encoder": ("encode",), "fusion": ("fuse",),
          "decoder": ("decode",), "gather": ("gather",), "postprocess": ("postprocess",), "write": ("write",)}
NETWORK_STAGES = ("encoder", "fusion", "decoder")
DEFAULT_SHAPE = (155, 240, 240)
NOTES = [
    "Times are seconds of wall clock. Speed-ups are baseline mean time / row mean time (> 1: faster).",
    "vs_torch compares with the torch fp32 row of the same batch size; vs_reference with the single reference row "
    "(the authors' way: full ConvLSTM, one slice per network call, two decoder passes; batch size 1).",
    "gflops_per_s counts the graphs' FLOPs over the encoder + fusion + decoder time; %GEMM divides it by the "
    "fastest GEMM measured in this run at the row's own precision (null where that precision has no peak here); "
    "fast convolution algorithms (Winograd, FFT, implicit-GEMM variants) do fewer multiplications than counted, "
    "so it can exceed 100 %.",
    "Peak RSS is the whole process's resident high-water mark during the row (model, runtime, volumes).",
    "agreement compares the row's image, TSEM and weights with a torch fp32 row's (same batch size when one ran) "
    "on the same subject; PSNR over the whole volume in network units (data range 2), null when identical.",
]
ProgressFn = Callable[[str, int, int], None]


@dataclass
class BenchSettings:
    """Everything a run depends on; the CLI fills it from its options."""

    model: Path
    backends: list[str]
    batch_sizes: list[int | None]  # None: each backend's own choice
    target: int = 2
    shape_zyx: tuple[int, int, int] | None = None
    subject: Path | None = None
    sources: tuple[int, ...] | None = None  # None: workload.choose_sources' default
    tsem: bool = True
    warmup: int = 1
    iterations: int = 3
    threads: int | None = None
    device: str = "cpu"
    io_subjects: int = 2
    precisions: list[str] = field(default_factory=lambda: ["fp32"])  # each backend runs those it takes
    decoders: list[str] = field(default_factory=lambda: ["baked"])  # ONNX Runtime backends only
    frames: list[str] = field(default_factory=lambda: ["head"])  # tsf_trt.frame; the reference: full
    variants: list[Variant] | None = None  # exactly these (of `backends`), not backends x precisions x decoders

    def plan(self) -> tuple[list[Variant], list[dict[str, str]]]:
        """The variants to run, and the backends that none of them can run (with the reason)."""
        if self.variants is not None:
            return list(self.variants), []
        return expand(self.backends, self.precisions, self.decoders, self.frames)


class Ticker:
    """Counts finished steps for a progress callback."""

    def __init__(self, callback: ProgressFn | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, description: str, steps: int = 0) -> None:
        self.done = min(self.total, self.done + steps)
        if self.callback:
            self.callback(description, self.done, self.total)


def load_target(path: Path) -> tuple[Any, dict[str, Any]]:
    """The model (a ModelSource, what create_backend takes) and its facts for the report."""
    from tsf_trt.source import ModelSource

    source = ModelSource.resolve(Path(path))
    kind = "export directory" if source.kind == "export" else "model directory"
    return source, {"path": str(source.path), "kind": kind, "id": source.model_id, "has_fusion": source.has_fusion}


class BenchRun:
    """A prepared benchmark: model loaded, subject on disk in a temporary folder.

    Preparing first lets every user error (a bad model, a subject without the asked
    inputs) surface before any progress display; `run` then only measures. Use as a
    context manager: the temporary folder goes on exit.
    """

    def __init__(self, settings: BenchSettings):
        self.settings = settings
        self.model, self.model_info = load_target(settings.model)
        self._tmp = tempfile.TemporaryDirectory(prefix="tsf-trt-bench-")
        self.tmp = Path(self._tmp.name)
        try:
            self.workload = self._workload(self.model_info["has_fusion"])
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self) -> "BenchRun":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def _workload(self, has_fusion: bool) -> Workload:
        s = self.settings
        if s.subject is not None:
            return subject_workload(s.subject, s.sources, s.target, has_fusion)
        return phantom_workload(s.shape_zyx or DEFAULT_SHAPE, s.sources, s.target, has_fusion, self.tmp / "subject")

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Measure every (backend, batch size) row, then FLOPs, ratios and folder-mode I/O."""
        settings, workload, model = self.settings, self.workload, self.model
        variants, skipped = settings.plan()
        plan = [(v, [1] if v.backend == REFERENCE else settings.batch_sizes) for v in variants]
        per_row = settings.warmup + settings.iterations
        tick = Ticker(progress, sum(len(b) for _, b in plan) * per_row + settings.io_subjects)
        tick("measuring the GEMM rate")
        env = environment(settings.threads)
        env.update(precision="fp32", device=settings.device, model_id=self.model_info["id"])
        gemm = gemm_rate(settings.threads)
        rows: list[dict[str, Any]] = []
        agreement = Agreement()
        for variant, batches in plan:
            name = variant.name
            tick(f"{name}: loading" + (" (exported to ONNX into the cache on first use)"
                                       if variant.backend.startswith("ort") else ""))
            try:
                backend = create_variant(variant, model, device=settings.device, threads=settings.threads)
            except TsfError as exc:
                skipped.append({"backend": variant.backend, "variant": name, "reason": str(exc)})
                tick(f"{name}: skipped", len(batches) * per_row)
                continue
            with backend:
                try:
                    for batch in batches:
                        row, result = measure_row(variant, backend, batch, workload, settings,
                                                  self.tmp / "out" / f"{name}-{batch or 'auto'}", tick)
                        rows.append(row)
                        agreement.add(variant, row, result)
                except TsfError as exc:
                    skipped.append({"backend": variant.backend, "variant": name,
                                    "reason": f"failed while running: {exc}"})
        agreement.finish()
        tick("counting FLOPs")
        flops = _flops(model, settings, workload)
        _derive(rows, flops, gemm)
        io = io_overlap(rows, model, settings, workload, self.tmp, tick)
        tick("done")
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "tsf-trt bench",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": env,
            "model": self.model_info,
            "workload": {"task": workload.task, "sources": [sequences.NAMES[i] for i in workload.sources],
                         "target": sequences.NAMES[workload.target], "shape_zyx": list(workload.shape_zyx),
                         "slices": workload.depth, "tsem": settings.tsem and self.model_info["has_fusion"],
                         "origin": workload.origin},
            "settings": {"backends": settings.backends, "variants": [v.name for v in variants],
                         "precisions": list(dict.fromkeys(v.precision for v in variants)),
                         "decoders": list(dict.fromkeys(v.decoder for v in variants if v.decoder)),
                         "batch_sizes": settings.batch_sizes,
                         "warmup": settings.warmup, "iterations": settings.iterations, "threads": settings.threads,
                         "device": settings.device, "io_subjects": settings.io_subjects},
            "gemm": gemm,
            "flops": flops,
            "rows": rows,
            "skipped": skipped,
            "io_overlap": io,
            "warnings": contention_warnings(env),
            "notes": NOTES,
        }


def contention_warnings(env: dict[str, Any]) -> list[str]:
    """Say so when other work already occupies the CPUs: OpenMP threads that find their core busy
    wait for it, so a run with more threads than idle cores can be many times slower than usual
    (measured here: 2 threads 10x slower than 1 while a training job used 1.25 of the 2 cores)."""
    load, cpus, threads = env["load_average_1m"], env["usable_cpus"], env["threads"]
    if load is None or not cpus or load + threads <= cpus + 0.5:
        return []
    return [f"load average {load} on {cpus} usable CPUs before the run: other processes compete with these "
            f"{threads} thread(s); the figures are slower and noisier than on an idle machine "
            f"(fewer --threads than idle cores avoids the worst of it)"]


def run_bench(settings: BenchSettings, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Prepare and run the whole benchmark; the report (bench/SCHEMA.md)."""
    with BenchRun(settings) as bench:
        return bench.run(progress)


def measure_row(variant: Variant, backend: Backend, batch: int | None, workload: Workload,
                settings: BenchSettings, out_dir: Path, tick: Ticker) -> tuple[dict[str, Any], Result]:
    """K warm-up and M timed iterations of one subject through `infer_subject` (files in, files out);
    the row, and the last iteration's result (for the agreement with torch fp32)."""
    import torch

    from tsf_trt.jobs import infer_subject
    from tsf_trt.options import InferRequest
    from tsf_trt.pipeline import Synthesizer

    name = variant.name
    synth = Synthesizer(backend, batch_size=batch, frame=variant.frame)
    request = InferRequest(workload.target, output=out_dir, tsem=settings.tsem, overwrite=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[float]] = defaultdict(list)
    transfers = backend.on_gpu and torch.cuda.is_available()
    plane = 3 * 4 * workload.depth * padded(workload.shape_zyx[1], backend.config.downsample) * \
        padded(workload.shape_zyx[2], backend.config.downsample)  # bytes of one (z, 3, H, W) fp32 stack
    with PeakMemory() as memory:
        for i in range(settings.warmup + settings.iterations):
            warm = i < settings.warmup
            step = f"warm-up {i + 1}" if warm else f"iteration {i + 1 - settings.warmup}"
            tick(f"{name} batch {batch}: {step}")
            start = time.perf_counter()
            outcome = infer_subject(synth, workload.subject, request, backend_name=variant.backend)
            seconds = time.perf_counter() - start
            tick(f"{name} batch {batch}", 1)
            if warm:
                continue
            timings = outcome.result.timings
            for stage, keys in STAGES.items():
                samples[stage].append(sum(timings.get(k, 0.0) for k in keys))
            if transfers:
                passes = 2 if settings.tsem and backend.has_fusion else 1
                h2d, d2h = transfer_seconds(plane * len(workload.sources), plane * passes)
                samples["h2d"].append(h2d)
                samples["d2h"].append(d2h)
            samples["compute"].append(timings["total"])
            samples["end_to_end"].append(seconds)
    end_to_end, compute = summarize(samples.pop("end_to_end")), summarize(samples.pop("compute"))
    return {
        "backend": variant.backend,
        "variant": name,
        "precision": backend.precision,  # what ran (auto resolved)
        "decoder": variant.decoder,
        "frame": variant.frame,
        "frame_box": outcome.result.frame,
        "truth_psnr_db": truth_psnr(workload, outcome.result),
        "description": backend.describe(),
        "on_gpu": backend.on_gpu,
        "batch_size": batch,
        "effective_batch_size": outcome.result.batch_size,
        "stages": {stage: summarize(values) for stage, values in samples.items()},
        "end_to_end": end_to_end,
        "compute": compute,
        "throughput": rates(workload.depth, end_to_end["mean"]),
        "compute_throughput": rates(workload.depth, compute["mean"]),
        "memory": {"peak_rss_bytes": memory.rss_bytes, "rss_method": memory.method,
                   "gpu_peak_bytes": memory.gpu_bytes},
    }, outcome.result


def truth_psnr(workload: Workload, result: Result) -> float | None:
    """PSNR of the synthesis against the subject's real target inside its head (network units, as
    `evaluate`), when the subject has one: what a frame or a precision costs in quality."""
    from tsf_trt.metrics import psnr
    from tsf_trt.preprocess import normalize
    from tsf_trt.volume import load_volume

    if workload.truth is None:
        return None
    truth = load_volume(workload.truth).data
    return round(psnr(result.image, normalize(truth), truth > 0), 3)


def rates(slices: int, seconds: float) -> dict[str, float]:
    return {"slices_per_s": slices / seconds, "volumes_per_min": 60.0 / seconds}


def _flops(model: Any, settings: BenchSettings, workload: Workload) -> dict[str, Any]:
    """FLOP counts from the export (the cached export of a model directory, made once if needed)."""
    try:
        return flops_per_volume(model.export_dir(), workload, settings.tsem)
    except (TsfError, ImportError, ValueError) as exc:  # ValueError: a graph the counter cannot follow
        return {"error": f"no FLOP counts: {exc}"}


def _derive(rows: list[dict[str, Any]], flops: dict[str, Any], gemm: dict[str, Any]) -> None:
    """Add efficiency and the ratios to torch (same batch size), to the reference row, and at
    another frame than full to the same row at full."""
    torch_rows = {r["batch_size"]: r for r in rows if r["backend"] == BASELINE and r["precision"] == "fp32"}
    reference = next((r for r in rows if r["backend"] == REFERENCE), None)
    for row in rows:
        baseline = torch_rows.get(row["batch_size"])
        row["vs_torch"] = ratios(baseline, row) if baseline else None
        row["vs_reference"] = ratios(reference, row) if reference else None
        full = next((r for r in rows if r["frame"] == "full" and r["frame"] != row["frame"] and all(
            r[k] == row[k] for k in ("backend", "precision", "decoder", "batch_size"))), None)
        row["vs_full_frame"] = ratios(full, row) if full else None  # what the frame alone gives
        row["efficiency"] = efficiency(row, flops, gemm)


#: Row precisions measured against the GPU's fp16 peak: TensorRT's `best` runs the convolutions in fp16.
GPU_FP16 = ("fp16", "best")


def peak_kind(row: dict[str, Any]) -> str:
    """The `gemm.peaks` entry a row is measured against: its device and its own precision."""
    precision = row.get("precision") or "fp32"
    if row["on_gpu"]:
        return "gpu fp16" if precision in GPU_FP16 else f"gpu {precision}"
    return f"cpu {precision}"


def efficiency(row: dict[str, Any], flops: dict[str, Any], gemm: dict[str, Any]) -> dict[str, Any] | None:
    """GFLOP/s of the row's network stages, as a fraction of the GEMM peak of the row's precision;
    `fraction_of_gemm` null, with `no_peak_reason`, where that precision has no measured peak."""
    if "per_volume" not in flops:
        return None
    executed = flops["reference_per_volume"] if row["backend"] == REFERENCE else flops["per_volume"]
    network = sum(row["stages"][s]["mean"] for s in NETWORK_STAGES)
    kind = peak_kind(row)
    found = gemm["peaks"].get(kind)
    peak = found["gflops"] if found else None
    reason = None if peak else (found["reason"] if found else f"not measured (peaks: {', '.join(gemm['peaks'])})")
    rate = executed / network / 1e9 if network > 0 else None
    return {"flops_per_volume": executed, "network_seconds": network, "gflops_per_s": rate,
            "end_to_end_gflops_per_s": executed / row["end_to_end"]["mean"] / 1e9,
            "gemm_kind": kind, "gemm_gflops": peak, "gemm_library": found["library"] if found else None,
            "fraction_of_gemm": rate / peak if rate and peak else None, "no_peak_reason": reason}


def io_overlap(rows: list[dict[str, Any]], model: Any, settings: BenchSettings, workload: Workload, tmp: Path,
               tick: Ticker) -> dict[str, Any]:
    """Folder-mode throughput over copies of the subject against compute-only throughput, for the
    fastest row: the fraction of compute throughput that survives reading and writing NIfTI."""
    from tsf_trt.jobs import infer_folder
    from tsf_trt.options import InferRequest
    from tsf_trt.pipeline import Synthesizer
    from tsf_trt.volume import load_volume

    candidates = [r for r in rows if r["backend"] != REFERENCE] or rows
    if settings.io_subjects < 1 or not candidates:
        return {"skipped": "no subjects asked for (--io-subjects 0)" if candidates else "no backend ran"}
    best = min(candidates, key=lambda r: r["end_to_end"]["mean"])
    subjects = copy_subjects(workload, settings.io_subjects, tmp / "io_in")
    with create_variant(Variant(best["backend"], best["precision"], best["decoder"], best["frame"]), model,
                        device=settings.device, threads=settings.threads) as backend:
        synth = Synthesizer(backend, batch_size=best["batch_size"], frame=best["frame"])
        tick(f"folder mode: warming up {best['variant']}")
        synth.run({i: load_volume(p) for i, p in workload.subject.inputs.items()}, workload.target, tsem=settings.tsem)
        start = time.perf_counter()
        request = InferRequest(workload.target, output=tmp / "io_out", tsem=settings.tsem)
        summary = infer_folder(synth, subjects, request, on_end=lambda o: tick(f"folder mode: {o.subject}", 1),
                               backend_name=best["backend"])
        seconds = time.perf_counter() - start
    if summary.failed:
        raise TsfError(f"folder mode failed on {summary.failed[0].subject}: {summary.failed[0].error}")
    count = settings.io_subjects
    folder = rates(workload.depth, seconds / count)
    compute = best["compute_throughput"]
    return {"backend": best["backend"], "variant": best["variant"], "batch_size": best["batch_size"],
            "subjects": count,
            "folder_seconds": seconds, "folder_throughput": folder, "compute_throughput": compute,
            "surviving_fraction": folder["slices_per_s"] / compute["slices_per_s"]}
