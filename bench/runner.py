"""The benchmark itself: every backend x batch size on one subject, in one run, as one report.

Why through :func:`tsf_trt.runs.jobs.infer_subject`: each iteration is exactly what
`tsf-trt infer` does (read NIfTI, preprocess, encode, fuse, decode 2N, reassemble,
write NIfTI and the JSON report), timed by the Synthesizer's own stage clocks, so the
figures describe the real tool rather than a separate loop. A row is one
:class:`~.variants.Variant` (backend, precision, ONNX decoder) at one batch size, and says how
far its output is from torch fp32's. Rows take turns, one iteration each (`interleave`), so that
other load on a shared machine falls on every row alike. The report's layout is documented in bench/SCHEMA.md;
`SCHEMA_VERSION` changes whenever a field changes meaning.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.backends import PRECISIONS, Backend
from tsf_trt.errors import TsfError
from tsf_trt.synthesis.pipeline import Result

from tsf_trt.bench.environment import PeakMemory, environment, gemm_rate, optional_torch, transfer_seconds
from tsf_trt.bench.stats import ratios, summarize
from tsf_trt.bench.variants import BASELINE, REFERENCE, Agreement, Variant, create_variant, expand
from tsf_trt.bench.workload import (Workload, efficiency, flops_per_volume, io_overlap, padded, phantom_workload,
                                    rates, subject_workload, truth_psnr)
from tsf_trt.synthesis.options import RunOptions

SCHEMA_VERSION = 3  # 2: efficiency against the GEMM peak of the row's own precision; 3: of the precision that
#                     ran, FLOPs of the row's frame, `read` with the preflight checks, folder mode's steady state
#: Report stage -> the Synthesizer / infer_subject timing keys it sums.
STAGES = {"read": ("read",), "preprocess": ("preprocess",), "encoder": ("encode",), "fusion": ("fuse",),
          "decoder": ("decode",), "gather": ("gather",), "postprocess": ("postprocess",), "write": ("write",)}
DEFAULT_SHAPE = (155, 240, 240)
NOTES = [
    "Times are seconds of wall clock. Speed-ups are baseline mean time / row mean time (> 1: faster).",
    "vs_torch compares with the torch fp32 row of the same batch size; vs_reference with the single reference row "
    "(the authors' way: full ConvLSTM, one slice per network call, two decoder passes; batch size 1).",
    "precision is what the row asked for; precision_ran what ran (OpenVINO: read from the compiled models, which "
    "run f32 where the CPU has no native bf16).",
    "gflops_per_s counts the graphs' FLOPs of the row's frame and computed slices over the encoder + fusion + "
    "decoder time; %GEMM divides it by the fastest GEMM measured in this run at the precision that ran (null where "
    "that precision has no peak here); fast convolution algorithms (Winograd, FFT, implicit-GEMM variants) do "
    "fewer multiplications than counted, so it can exceed 100 %.",
    "Rows take turns (settings.interleave): iteration k of every row runs before iteration k+1 of any, so other "
    "load on the machine falls on all rows alike; every backend is then loaded at once.",
    "Peak RSS is the whole process's resident high-water mark during the row's timed iterations (model, runtime, "
    "volumes; interleaved, every row's backend too).",
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
    frames: list[str] = field(default_factory=lambda: ["head"])  # tsf_trt.synthesis.frame; the reference: full
    variants: list[Variant] | None = None  # exactly these (of `backends`), not backends x precisions x decoders
    interleave: bool = True  # rows take turns, one iteration each (every backend loaded at once)
    compile: bool = False  # a torch.compile twin of each torch row (bench.variants.expand)

    def plan(self) -> tuple[list[Variant], list[dict[str, str]]]:
        """The variants to run, and what was asked that no variant runs, with the reason: a backend
        that takes none of the precisions, or one precision a backend does not take. The reference
        row keeps its one definition (fp32, full frame) whatever --precision says."""
        if self.variants is not None:
            return list(self.variants), []
        others = [b for b in self.backends if b != REFERENCE]
        variants, skipped = expand(others, self.precisions, self.decoders, self.frames, compile=self.compile)
        whole = {s["backend"] for s in skipped}
        for backend in others:
            taken = PRECISIONS[backend]
            skipped += [{"backend": backend, "variant": Variant(backend, p).name,
                         "reason": f"{backend} takes {', '.join(taken)} only: no {p} row"}
                        for p in self.precisions if p not in taken and backend not in whole]
        return variants + ([Variant(REFERENCE, frame="full")] if REFERENCE in self.backends else []), skipped


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
    from tsf_trt.synthesis.source import ModelSource

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
        rows = self._rows(plan, per_row, skipped, tick)
        tick("measuring the GEMM rate again")
        gemm = faster_peaks(gemm, gemm_rate(settings.threads))
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
                         "device": settings.device, "io_subjects": settings.io_subjects,
                         "interleave": settings.interleave},
            "gemm": gemm,
            "flops": flops,
            "rows": rows,
            "skipped": skipped,
            "io_overlap": io,
            "warnings": contention_warnings(env),
            "notes": NOTES,
        }

    def _rows(self, plan: list[tuple[Variant, list[int | None]]], per_row: int, skipped: list, tick: Ticker
              ) -> list[dict[str, Any]]:
        """Every row of `plan` measured: interleaved, every backend loaded at once (rows that differ
        by frame share one), else one backend at a time; a backend that cannot start is skipped."""
        settings, workload = self.settings, self.workload
        rows: list[dict[str, Any]] = []
        agreement = Agreement()
        with ExitStack() as loaded:
            runs: list[RowRun] = []
            opened: dict[Variant, Backend | None] = {}  # interleaved, rows that differ by frame share a backend
            why: dict[Variant, str] = {}  # why one could not start
            for variant, batches in plan:
                if not settings.interleave:  # one backend at a time: its rows, then it closes
                    loaded.close()
                    runs, opened, why = [], {}, {}
                key = replace(variant, frame="")
                if key not in opened:
                    opened[key] = self._open(variant, loaded, skipped, tick, len(batches) * per_row)
                    why[key] = skipped[-1]["reason"] if opened[key] is None else ""
                elif opened[key] is None:  # the same backend could not start for a row before
                    skipped.append({"backend": variant.backend, "variant": variant.name, "reason": why[key]})
                    tick(f"{variant.name}: skipped", len(batches) * per_row)
                backend = opened[key]
                runs += [RowRun(variant, backend, batch, workload, settings,
                                self.tmp / "out" / f"{variant.name}-{batch or 'auto'}")
                         for batch in (batches if backend is not None else [])]
                if not settings.interleave:
                    _take_turns(runs, per_row, skipped, tick, rows, agreement)
            if settings.interleave:
                _take_turns(runs, per_row, skipped, tick, rows, agreement)
        agreement.finish()
        return rows

    def _open(self, variant: Variant, stack: ExitStack, skipped: list, tick: Ticker, steps: int) -> Backend | None:
        """The variant's backend, closed with `stack`; None, with the reason in `skipped`, where it cannot start."""
        tick(f"{variant.name}: loading" + (" (exported to ONNX into the cache on first use)"
                                           if variant.backend.startswith("ort") else ""))
        try:
            backend = create_variant(variant, self.model, device=self.settings.device, threads=self.settings.threads)
        except (TsfError, ImportError) as exc:  # ImportError: a package of an extra that is not installed
            reason = str(exc) if isinstance(exc, TsfError) else f"cannot start here: {exc}"
            skipped.append({"backend": variant.backend, "variant": variant.name, "reason": reason})
            tick(f"{variant.name}: skipped", steps)
            return None
        return stack.enter_context(backend)


def faster_peaks(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The GEMM peaks measured before and after the rows, each kind's faster one (a peak is what the
    machine can do: other load during one measurement only lowers it), `seconds` summed."""
    peaks = {kind: max((first["peaks"][kind], second["peaks"][kind]), key=lambda p: p["gflops"] or 0.0)
             for kind in first["peaks"]}
    return {**first, "peaks": peaks, "seconds": first["seconds"] + second["seconds"], "measurements": 2}


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


class RowRun:
    """One row being measured: K warm-up and M timed iterations of one subject through `infer_subject`
    (files in, files out), one iteration per `step`, so that rows can take turns (interleaved, a
    shared machine's other load falls on every row alike)."""

    def __init__(self, variant: Variant, backend: Backend, batch: int | None, workload: Workload,
                 settings: BenchSettings, out_dir: Path):
        from tsf_trt.runs.request import InferRequest
        from tsf_trt.synthesis.pipeline import Synthesizer

        self.variant, self.backend, self.batch, self.workload, self.settings = variant, backend, batch, workload, settings
        self.synth = Synthesizer(backend, RunOptions(batch_size=batch, frame=variant.frame))
        self.request = InferRequest(workload.target, output=out_dir, tsem=settings.tsem, overwrite=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.done, self.outcome = 0, None
        self.rss, self.gpu_bytes, self.rss_method = 0, None, ""
        torch = optional_torch()
        self.transfers = backend.on_gpu and torch is not None and torch.cuda.is_available()

    def step(self, tick: Ticker) -> None:
        from tsf_trt.runs.jobs import infer_subject

        settings, name = self.settings, self.variant.name
        warm = self.done < settings.warmup
        tick(f"{name} batch {self.batch}: " + (f"warm-up {self.done + 1}" if warm else
                                               f"iteration {self.done + 1 - settings.warmup}"))
        with PeakMemory() as memory:
            start = time.perf_counter()
            self.outcome = infer_subject(self.synth, self.workload.subject, self.request,
                                         backend_name=self.variant.backend)
            seconds = time.perf_counter() - start
        self.done += 1
        tick(f"{name} batch {self.batch}", 1)
        if warm:
            return
        self.rss, self.rss_method = max(self.rss, memory.rss_bytes), memory.method
        self.gpu_bytes = memory.gpu_bytes if self.gpu_bytes is None else max(self.gpu_bytes, memory.gpu_bytes or 0)
        timings = self.outcome.result.timings
        for stage, keys in STAGES.items():
            self.samples[stage].append(sum(timings.get(k, 0.0) for k in keys))
        if self.transfers:
            down = self.backend.config.downsample
            plane = 3 * 4 * self.workload.depth * padded(self.workload.shape_zyx[1], down) * \
                padded(self.workload.shape_zyx[2], down)  # bytes of one (z, 3, H, W) fp32 stack
            passes = 2 if settings.tsem and self.backend.has_fusion else 1
            h2d, d2h = transfer_seconds(plane * len(self.workload.sources), plane * passes)
            self.samples["h2d"].append(h2d)
            self.samples["d2h"].append(d2h)
        self.samples["compute"].append(timings["total"])
        self.samples["end_to_end"].append(seconds)

    def row(self) -> tuple[dict[str, Any], Result]:
        """The row, and the last iteration's result (for the agreement with torch fp32)."""
        variant, backend, result = self.variant, self.backend, self.outcome.result
        samples = dict(self.samples)
        end_to_end, compute = summarize(samples.pop("end_to_end")), summarize(samples.pop("compute"))
        return {
            "backend": variant.backend,
            "variant": variant.name,
            "compile": variant.compile,
            "precision": variant.precision,  # what the row asked for
            "precision_ran": getattr(backend, "runtime_precision", backend.precision),  # OpenVINO: compiled models'
            "decoder": variant.decoder,
            "frame": variant.frame,
            "frame_box": result.frame,
            "truth_psnr_db": truth_psnr(self.workload, result),
            "description": backend.describe(),
            "on_gpu": backend.on_gpu,
            "batch_size": self.batch,
            "effective_batch_size": result.batch_size,
            "stages": {stage: summarize(values) for stage, values in samples.items()},
            "end_to_end": end_to_end,
            "compute": compute,
            "throughput": rates(self.workload.depth, end_to_end["mean"]),
            "compute_throughput": rates(self.workload.depth, compute["mean"]),
            "memory": {"peak_rss_bytes": self.rss, "rss_method": self.rss_method, "gpu_peak_bytes": self.gpu_bytes},
        }, result


def _take_turns(runs: list[RowRun], steps: int, skipped: list, tick: Ticker, rows: list, agreement: Agreement) -> None:
    """`steps` iterations of every row, the rows taking turns; then their rows, in order. A row
    that fails is listed in `skipped` with the reason, and the others go on."""
    alive = list(runs)
    for _ in range(steps):
        for run in list(alive):
            try:
                run.step(tick)
            except TsfError as exc:
                skipped.append({"backend": run.variant.backend, "variant": run.variant.name,
                                "reason": f"failed while running (batch {run.batch or 'auto'}): {exc}"})
                tick(f"{run.variant.name}: failed", steps - run.done)
                alive.remove(run)
    for run in alive:
        row, result = run.row()
        rows.append(row)
        agreement.add(run.variant, row, result)
    runs.clear()


def _flops(model: Any, settings: BenchSettings, workload: Workload) -> dict[str, Any]:
    """FLOP counts from the export (the cached export of a model directory, made once if needed)."""
    try:
        return flops_per_volume(model.export_dir(), workload, settings.tsem)
    except (TsfError, ImportError, ValueError) as exc:  # ValueError: a graph the counter cannot follow
        return {"error": f"no FLOP counts: {exc}"}


def _derive(rows: list[dict[str, Any]], flops: dict[str, Any], gemm: dict[str, Any]) -> None:
    """Add efficiency and the ratios to torch (same batch size), to the reference row, and at
    another frame than full to the same row at full."""
    torch_rows = {r["batch_size"]: r for r in rows
                  if r["backend"] == BASELINE and r["precision"] == "fp32" and not r.get("compile")}
    reference = next((r for r in rows if r["backend"] == REFERENCE), None)
    for row in rows:
        baseline = torch_rows.get(row["batch_size"])
        row["vs_torch"] = ratios(baseline, row) if baseline else None
        row["vs_reference"] = ratios(reference, row) if reference else None
        full = next((r for r in rows if r["frame"] == "full" and r["frame"] != row["frame"] and all(
            r.get(k) == row.get(k) for k in ("backend", "precision", "decoder", "batch_size", "compile"))), None)
        row["vs_full_frame"] = ratios(full, row) if full else None  # what the frame alone gives
        row["efficiency"] = efficiency(row, flops, gemm)
