"""One prepared command for the first machine with an NVIDIA GPU: ``python -m scripts.gpu_check``.

Why one script: a GPU session is short and may come once, on a bare machine (Python 3.12, a CUDA
build of torch, cuda-bindings, CuPy and ONNX Runtime CPU preinstalled, no TensorRT, no network,
nothing of this project installed). Everything that needs a GPU is settled in one run under a time
budget, each step timed and kept with its error, one failing step never stopping the others, into
one JSON + Markdown report (``--out``, default $OUT), rewritten after every step so that a call cut
off at its limit still brings back what ran. How it gets there (scripts/gpu_check_plan.py, the one
place): ``--device-command`` prints the device tool's call, which installs the checkout offline
(``pip install --no-index --no-deps --no-build-isolation -e .``) and the carried wheels (``--wheels
DIR`` downloads them here: nibabel and onnxslim, ~3.5 MB), then runs this; ``--plan`` prints each
step's estimated seconds against the call's and the session's limits. ``--dry-run`` runs the same
plan on the CPU with tiny shapes (CUDA graphs replaced by their eager stand-in, the CUDA runtime by
tests/fake_cuda.py), which CI runs, through that very command (tests/test_device_command.py): a dry
run's figures say nothing about a GPU. Run it from the checkout's root as a module, after the
install (scripts/__init__.py says why). NOT yet run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scripts import gpu_check_plan as plan
from tsf_trt.synthesis.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = "tsf-trt-gpu-check/1"
BUDGET_S = 450            # the device call's 600 s, less the install and a margin (--plan)
FULL_SHAPE_XYZ = (240, 240, 155)
DRY_SHAPE_XYZ = (16, 16, 4)
SOURCES, TARGET = (0, 1, 3), 2  # T1 + T1Gd + FLAIR -> T2, with TSEM (bench/suite.py's task)
REFERENCE_SLICES = 31     # the authors' way is timed on this many slices and scaled to the volume
DATAFLOW = "trt backend data flow, each engine its torch module on the same CUDA stream, vs ONNX Runtime CPU"
# Each step of a real run: its estimated seconds on the device, also the least time left to start it
# (guesses: no GPU run yet; measured here on 2 CPU cores: the full-size phantom 4 s, the data flow's two
# exports 8 s), and whether it needs TensorRT (absent on the device: skipped at once). --plan adds them up.
PLAN = (("versions", 10, False), ("versions the project needs", 2, False), ("gpu-marked tests", 60, False),
        ("engines/cuda.py on the CUDA runtime", 5, False), ("phantom", 5, False),
        ("torch backend on the GPU: demo", 40, False), ("torch backend on the GPU: paper", 90, False),
        (DATAFLOW, 30, False), ("trt backend on the GPU: demo", 120, True),
        ("trt backend on the GPU: paper", 240, True), ("ratios and PSNR of the rows", 1, False))
NEED_S = {name: seconds for name, seconds, _ in PLAN}


class Skip(Exception):
    """A step that does not apply here (said in the report as skipped, with why)."""


@dataclass
class Check:
    out: Path
    dry_run: bool
    budget_s: float
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.steps: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.images: dict[tuple[str, str], tuple[Any, Any]] = {}  # (model, variant) -> (image, head mask)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def step(self, name: str, run: Callable[[], dict[str, Any] | None], need_s: float = 0.0) -> None:
        """Run one step, keeping its time, status and error; it never raises."""
        record: dict[str, Any] = {"name": name, "status": "passed", "seconds": 0.0, "error": None, "details": {}}
        if not self.dry_run and self.left() < need_s:
            record.update(status="skipped", error=f"out of time: needs ~{need_s:.0f} s, {self.left():.0f} s left")
        else:
            start = time.monotonic()
            try:
                record["details"] = run() or {}
                if record["details"].pop("failed", False):
                    record["status"] = "failed"
                    record["error"] = record["details"].pop("error", "see details")
            except Skip as exc:
                record.update(status="skipped", error=str(exc))
            except BaseException as exc:  # noqa: BLE001 - a step's failure is the report's content
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc(limit=8)[-3000:])
            record["seconds"] = round(time.monotonic() - start, 3)
        self.steps.append(record)
        print(f"[{record['status']}] {name} ({record['seconds']} s){': ' + str(record['error']) if record['error'] else ''}",
              flush=True)


# -- steps --------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    """`tsf-trt doctor`'s report, and where the mapped packages were imported from (the install's)."""
    import tsf_trt.engines

    origin = {"imported_from": {"tsf_trt.engines": str(Path(tsf_trt.engines.__file__).parent)}}
    try:
        from tsf_trt.doctor import collect
    except ImportError:
        from tsf_trt.bench.environment import environment

        return {"source": "tsf_trt.bench.environment", **origin, **environment(None)}
    return {"source": "tsf_trt.doctor", **origin, **collect().to_dict()}


def gpu_tests(dry_run: bool) -> dict[str, Any]:
    """`pytest -m gpu` on the test files that have such tests (the same on a dry run: collecting
    tests/test_engines.py needs the install, tests/test_device_command.py checks that it works)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs", *files]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300 if dry_run else 180)
    except subprocess.TimeoutExpired as exc:
        return {"failed": True, "error": "pytest ran past its time limit", "output": str(exc.stdout or "")[-4000:]}
    tail = (done.stdout + done.stderr)[-4000:]
    summary = next((line for line in reversed(tail.splitlines()) if " in " in line and ("passed" in line or
                    "skipped" in line or "failed" in line or "error" in line)), "")
    return {"failed": done.returncode != 0, "error": f"pytest exit {done.returncode}", "command": " ".join(cmd[1:]),
            "summary": summary, "output": tail}


def cuda_runtime(dry_run: bool) -> dict[str, Any]:
    """engines/cuda.py's GpuContext on the real runtime (on a dry run: on tests/fake_cuda.py)."""
    from scripts import gpu_check_trt
    from tsf_trt.engines import gpu

    if not dry_run and gpu.device_count() == 0:
        raise Skip("no NVIDIA GPU visible to cuda-python")
    return gpu_check_trt.cuda_checks(dry_run)


# -- the torch CUDA and trt backends on one volume ------------------------------------------------
VARIANTS = (  # name, backend, precision, graphs + channels-last, mode
    ("eager fp32", "torch", "fp32", False, "fast"),
    ("graphs fp32", "torch", "fp32", True, "fast"),
    ("graphs fp16", "torch", "fp16", True, "fast"),
    ("graphs bf16", "torch", "bf16", True, "fast"),
    ("reference fp32", "torch", "fp32", False, "reference"),
)
COMPILED = ("graphs fp16 + torch.compile", "torch", "fp16", True, "fast")
TRT_VARIANTS = (("trt fp32", "trt", "fp32", True, "fast"), ("trt fp16", "trt", "fp16", True, "fast"))
# The speed goal (paper configuration, one 240x240x155 volume, H100/H200): (variant, what, bound).
GOALS = (("graphs fp16", "seconds_per_volume", "<=", 0.5), ("graphs fp16", "vs_eager_fp32", ">=", 3.0),
         ("graphs fp16", "psnr_vs_fp32_db", ">=", 45.0), ("trt fp16", "seconds_per_volume", "<=", 0.25))


def phantom(shape_xyz: tuple[int, int, int]) -> dict[int, Any]:
    from tsf_trt.bench.workload import PHANTOM_SEED
    from tsf_trt.phantoms import SEQUENCES, make_subject

    subject = make_subject(PHANTOM_SEED, shape_xyz)
    return {SEQUENCES.index(name): subject.volumes[name].transpose(2, 1, 0).copy()
            for name in (SEQUENCES[i] for i in SOURCES)}


def make_backend(source, backend: str, precision: str, graphs: bool, mode: str, dry_run: bool,
                 compile: bool = False):
    """The backend a variant asks for; on a dry run, torch on the CPU with the CUDA path's runner and
    the eager stand-in for its graphs (as tests/test_torch_cuda.py does)."""
    import torch

    from tsf_trt.backends.torch_backend import TorchBackend
    from tsf_trt.backends.torch_staged import PlainIO, StagedRunner, eager_capture, prepared

    if backend == "trt":
        from tsf_trt.synthesis.backend import create_backend

        return create_backend(source, RunOptions(backend="trt", device="cuda", precision=precision))
    if not dry_run:
        return TorchBackend(source.module(), device="cuda", precision=precision, mode=mode, graphs=graphs,
                            channels_last=graphs, compile=compile)
    made = TorchBackend(source.module(), precision="bf16" if precision == "bf16" else "fp32", mode=mode,
                        compile=compile)
    if graphs:
        cpu = torch.device("cpu")
        made.runner = StagedRunner(prepared(made.model, cpu, True), cpu, precision=precision, channels_last=True,
                                   capture=eager_capture, io=PlainIO(), compile=compile)
    return made


def model_rows(check: Check, model_name: str, volumes: dict[int, Any], variants) -> dict[str, Any]:
    """`variants` on `model_name`: 'demo', or 'paper' (random weights, seed 0; on a dry run the small
    preset stands in: same code path, CPU-sized)."""
    from tsf_trt.synthesis.source import ModelSource

    if model_name == "paper":
        from tsf_trt.bench.suite import make_model

        # Not under --out: what is written there comes back from the GPU machine.
        with tempfile.TemporaryDirectory(prefix="tsf-trt-gpu-check-") as tmp:
            source = ModelSource.resolve(make_model("small" if check.dry_run else "paper", Path(tmp)))
            return _rows(check, source, model_name, volumes, variants)
    return _rows(check, ModelSource.resolve(model_name), model_name, volumes, variants)


def _rows(check: Check, source, model_name: str, volumes: dict[int, Any], variants) -> dict[str, Any]:
    from tsf_trt.synthesis.pipeline import Synthesizer

    depth = next(iter(volumes.values())).shape[0]
    errors = []
    for name, backend_name, precision, graphs, mode in variants:
        row: dict[str, Any] = {"model": model_name, "variant": name, "precision": precision}
        try:
            if not check.dry_run and check.left() < 30:
                raise Skip(f"out of time ({check.left():.0f} s left)")
            slices = min(depth, REFERENCE_SLICES) if mode == "reference" else depth
            subset = {i: v[:slices] for i, v in volumes.items()}
            backend = make_backend(source, backend_name, precision, graphs, mode, check.dry_run, "compile" in name)
            synth = Synthesizer(backend)
            start = time.perf_counter()
            synth.run_canonical(subset, TARGET)  # warm-up: builds engines, captures graphs, compiles, per batch shape
            row["first_run_s"] = round(time.perf_counter() - start, 3)
            samples = []
            for _ in range(1 if check.dry_run or mode == "reference" else 2):
                start = time.perf_counter()
                result = synth.run_canonical(subset, TARGET)
                samples.append(time.perf_counter() - start)
            row.update(description=backend.describe(), batch=result.batch_size, slices_timed=slices,
                       seconds_per_volume=round(min(samples) * depth / slices, 4), scaled=slices != depth)
            if slices == depth:
                check.images[(model_name, name)] = (result.image, result.head_mask)
            backend.close()
        except Skip as exc:
            row["skipped"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
            errors.append(f"{name}: {row['error']}")
        check.rows.append(row)
    return {"rows": len(variants), "failed": bool(errors), "error": "; ".join(errors) or None}


def compare_rows(check: Check) -> None:
    """Each row's ratios to torch eager fp32 and to the reference mode of its model (same GPU, same
    run), and its PSNR against graphs fp32's image (eager fp32's without it), head mask, range 2."""
    import numpy as np

    from tsf_trt.metrics import psnr

    timed = {(r["model"], r["variant"]): r["seconds_per_volume"] for r in check.rows if "seconds_per_volume" in r}
    for row in check.rows:
        model, variant = row["model"], row["variant"]
        if (model, variant) in timed:
            for key, ref in (("vs_eager_fp32", "eager fp32"), ("vs_reference", "reference fp32")):
                row[key] = round(timed[(model, ref)] / timed[(model, variant)], 2) if (model, ref) in timed else None
        base = check.images.get((model, "graphs fp32")) or check.images.get((model, "eager fp32"))
        image = check.images.get((model, variant))
        if image is not None and base is not None and image is not base:
            row["psnr_vs_fp32_db"] = round(psnr(image[0], base[0], mask=image[1]), 2)
            row["max_abs_vs_fp32"] = float(np.abs(image[0] - base[0]).max())


def goals(rows: list[dict[str, Any]], dry_run: bool) -> list[dict[str, Any]]:
    """The speed goal's bounds against the paper configuration's rows (met: None where not measured)."""
    found = {r["variant"]: r for r in rows if r["model"] == "paper"}
    out = []
    for variant, what, sign, bound in GOALS:
        value = found.get(variant, {}).get(what)
        met = None if value is None or dry_run else (value <= bound if sign == "<=" else value >= bound)
        out.append({"goal": f"{variant} {what} {sign} {bound:g}", "measured": value, "met": met})
    return out


def trt_rows(check: Check, model_name: str, volumes: dict[int, Any]) -> dict[str, Any]:
    from tsf_trt.engines.gpu import has_module

    if not has_module("tensorrt"):
        raise Skip("tensorrt not importable")
    if check.dry_run:
        raise Skip("dry run: TensorRT engines need a GPU")
    return model_rows(check, model_name, volumes, TRT_VARIANTS)


def trt_dataflow(dry_run: bool) -> dict[str, Any]:
    """scripts/gpu_check_trt.py: the trt backend's data flow, each engine its torch module, vs ONNX Runtime CPU."""
    from scripts import gpu_check_trt

    problem = gpu_check_trt.unavailable(dry_run)
    if problem:
        raise Skip(problem)
    return gpu_check_trt.dataflow_check(dry_run, phantom)


# -- report -------------------------------------------------------------------------------------
def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({'DRY RUN on the CPU: no figure here is a GPU figure' if report['dry_run'] else 'GPU'})",
             "", f"Shape {report['shape_xyz']}, task {report['task']}, budget {report['budget_s']} s, "
             f"took {report['seconds']} s.", "", "| step | status | s | error |", "|---|---|---|---|"]
    for step in report["steps"]:
        error = (step["error"] or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} | {error} |")
    lines += ["", "| model | variant | batch | s / volume | first run s | vs eager fp32 | vs reference | "
              "PSNR vs fp32 (dB) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        note = row.get("error") or row.get("skipped") or (
            f"timed on {row['slices_timed']} slices, scaled" if row.get("scaled") else "")
        cells = [row.get(k) for k in ("batch", "seconds_per_volume", "first_run_s", "vs_eager_fp32", "vs_reference",
                                      "psnr_vs_fp32_db")]
        cells = [row["model"], row["variant"], *("—" if c is None else c for c in cells), note]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    met = {True: "yes", False: "no", None: "—"}
    lines += ["", "| goal (paper configuration) | measured | met |", "|---|---|---|"] + [
        f"| {g['goal']} | {'—' if g['measured'] is None else g['measured']} | {met[g['met']]} |"
        for g in report["goals"]]
    lines += [""] + [f"- {note}" for note in report["notes"]] + ["", "```", report["plan"]["text"], "```"]
    return "\n".join(lines) + "\n"


NOTES = [f"reference rows are timed on the first {REFERENCE_SLICES} slices and scaled to the volume",
         "paper configuration: random weights, seed 0 (bench/suite.py make_model)",
         "ratios: torch eager fp32 (and reference) time of the same model in this run / the row's",
         "PSNR vs fp32: against the graphs fp32 row over the head mask, data range 2",
         "first run: engine builds (trt), CUDA graph captures, torch.compile, per batch shape",
         "the pipeline asks for the middle output channel only (combine middle), which the torch "
         "CUDA path copies back alone; it reads each batch before it stacks the next, so the "
         "staged path's overlap across batches waits for a one-batch lookahead there "
         "(tsf_trt/backends/torch_staged.py)"]
DRY_NOTE = "DRY RUN: CPU, tiny shapes, the small preset for 'paper', eager stand-in for CUDA graphs, fake CUDA runtime"


def write_report(check: Check, shape: tuple[int, int, int], timing: dict[str, Any]) -> None:
    """The report so far (after every step: a call cut off at its limit still brings back what ran)."""
    report = {"schema": SCHEMA, "dry_run": check.dry_run, "shape_xyz": list(shape), "budget_s": check.budget_s,
              "task": "T1 + T1Gd + FLAIR -> T2, TSEM", "seconds": round(time.monotonic() - check.started, 1),
              "steps": check.steps, "rows": check.rows, "goals": goals(check.rows, check.dry_run),
              "imported_distributions": plan.imported_distributions(), "plan": timing,
              "notes": ([DRY_NOTE] if check.dry_run else []) + NOTES}
    (check.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (check.out / "gpu_check.md").write_text(to_markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="report folder (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="the whole plan on the CPU with tiny shapes")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (demo model, fp16)")
    parser.add_argument("--list-wheels", action="store_true", help="print the wheels the GPU machine lacks")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="download them into DIR here (PyPI), for "
                        "Python 3.12; fails over 10 MiB")
    parser.add_argument("--device-command", action="store_true", help="print the device call that installs "
                        "the checkout and the wheels offline, then runs this")
    parser.add_argument("--plan", action="store_true", help="print each step's estimated seconds on the device "
                        "and the call's total")
    args = parser.parse_args(argv)
    timing = plan.time_plan(list(PLAN), args.budget)
    if args.list_wheels or args.device_command or args.plan:
        print("\n".join(f"{n}=={v}" for n, v in plan.carried().items()) if args.list_wheels else
              plan.usage() if args.device_command else timing["text"])
        return 0
    if args.wheels:
        return plan.download(args.wheels)
    if args.out is None:
        parser.error("--out is required when $OUT is not set")
    args.out.mkdir(parents=True, exist_ok=True)
    print(timing["text"], flush=True)
    if args.dry_run:
        import torch

        torch.set_num_threads(1)  # tiny shapes: spinning OpenMP threads only slow them (tests/conftest.py)
    check = Check(args.out, args.dry_run, args.budget)
    shape = DRY_SHAPE_XYZ if args.dry_run else FULL_SHAPE_XYZ

    def step(name: str, run: Callable[[], dict[str, Any] | None], key: str | None = None) -> None:
        check.step(name, run, need_s=NEED_S[key or name])
        write_report(check, shape, timing)

    step("versions", versions)
    step("versions the project needs", plan.check_requirements)
    step("gpu-marked tests", lambda: gpu_tests(args.dry_run))
    step("engines/cuda.py on the CUDA runtime", lambda: cuda_runtime(args.dry_run))
    volumes: dict[int, Any] = {}
    step(f"phantom {shape}", lambda: volumes.update(phantom(shape)) or {"sources": list(volumes)}, "phantom")
    torch_variants = list(VARIANTS) + ([COMPILED] if args.compile else [])
    for model in ("demo", "paper"):
        step(f"torch backend on the GPU: {model}", lambda m=model: model_rows(
            check, m, volumes, torch_variants if m == "demo" else VARIANTS))
    step(DATAFLOW, lambda: trt_dataflow(args.dry_run))
    for model in ("demo", "paper"):  # engine builds: minutes each (cached afterwards)
        step(f"trt backend on the GPU: {model}", lambda m=model: trt_rows(check, m, volumes))
    step("ratios and PSNR of the rows", lambda: compare_rows(check))
    print(f"report: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a file: tests/ (the stand-ins) is not importable then
        sys.exit("run it from the checkout's root as a module: python -m scripts.gpu_check")
    sys.exit(main())
