"""What `--backend auto`'s first-run CPU probe costs and picks (issue 27 item 4): the probe that
ships (tsf_trt.synthesis.auto.choose_backend, rules p4) against the full probe it replaced (p3:
every candidate built, --precision auto's check run for each bf16 backend, best of 2 timed calls
after a warm-up at each backend's own batch size of 240x240 slices: auto.measure, which the GPU
ranking still uses), on the bundled demo model.

Each probe runs in a fresh process with an empty cache (TSF_TRT_CACHE), as a first run does: the
runtimes are imported, graphs optimised and compiled, --precision auto's check run, inside it. The
two probes alternate which goes first in each round; the load average is printed per round (only
ratios on a quiet machine mean much). A third process per round builds OpenVINO, named, at the
same --precision, cold (imports, the bf16 check under auto): what a first run pays without auto.
Printed: per probe its wall seconds (min, median, max), its picks (backend and the precision it
runs), how often the two agree, and what the new probe adds over naming OpenVINO.

--volumes N: each pick's cost per volume: every candidate (backend, precision) runs the held-out
phantom 5000 (240x240, --slices slices, T1 + T1Gd + FLAIR -> T2 with TSEM, files in and out as
`tsf-trt infer` does: runs.jobs.infer_subject), interleaved, one warm-up round, the fastest of N;
then each probe's picks are priced against the fastest candidate.

--check N: --precision auto's bf16 check on OpenVINO (precision_auto.check_bf16), by phase, in N
fresh processes with empty caches each on 8 central slices (before issue 27) and 4 (now), and the
check's PSNR on 8, 4 and 2 central slices (--check-config paper: the paper configuration's random
weights, whose bf16 fails the check).

--sizes: the new probe at other batches too (HxWxN, interleaved); --shapes N: OpenVINO's fp32 time
per slice over ONNX Runtime's at batches 1, 2, 4, 9 of 240x240 and 220x188 (warm, in one process).

    python -m scripts.probe_study --rounds 5 --volumes 3 --check 3 --json probe.json   # --precision auto
    python -m scripts.probe_study --rounds 5 --precision fp32 --volumes 5             # the AVX2 path (no bf16)
    python -m scripts.probe_study --rounds 3 --precision fp32 --sizes 224x192x4,240x240x4,240x240x2 --shapes 3
    python -m scripts.probe_study --rounds 0 --check 1 --check-config paper
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The (backend, precision) pairs a probe may pick on an x86-64 CPU with the demo model.
PICKS = (("ort", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("torch", "fp32"), ("torch", "bf16"))


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


# --- in a child process (fresh imports, empty cache) ---------------------------------------------
def child_probe(which: str, precision: str, size: str) -> dict:
    """Run one probe in this (fresh) process; its seconds, pick and the check's share. `size`: the
    new probe's batch, HxWxN (auto.CPU_PROBE, auto.PROBE_BATCH; the shipped one by default)."""
    import logging

    from tsf_trt.synthesis import auto, precision_auto
    from tsf_trt.synthesis.precision_auto import build_at
    from tsf_trt.synthesis.source import ModelSource

    logging.getLogger("tsf_trt").setLevel(logging.ERROR)
    checks: list[float] = []

    def timed(real):
        def timed_check(*args):
            start = time.perf_counter()
            try:
                return real(*args)
            finally:
                checks.append(time.perf_counter() - start)
        return timed_check

    precision_auto.check_bf16 = timed(precision_auto.check_bf16)
    precision_auto.check_int8 = timed(precision_auto.check_int8)  # the demo ships int8 graphs: checked first
    height, width, batch = map(int, size.split("x"))
    auto.CPU_PROBE, auto.PROBE_BATCH = (height, width), batch
    source = ModelSource.resolve("demo")
    start = time.perf_counter()
    if which == "named":  # the floor: the backend the probe picks here, named, built cold (imports, check)
        choice = "openvino"
        build_at(choice, source, device="cpu", threads=None, precision=precision).close()
        timings = {}
    elif which == "new":
        choice = auto.choose_backend(source, precision=precision)
        timings = {}
    else:  # p3: every candidate, each backend's batch, best of 2 timed calls after a warm-up
        asked = "fp32" if precision == "auto" and precision_auto.fp32_only("cpu") else precision
        timings = auto.measure(source, None, auto.cpu_candidates(source, asked), asked)
        choice = min(timings, key=timings.get)
    seconds = time.perf_counter() - start
    ran = precision_auto.resolve(choice, source, device="cpu", threads=None).precision if precision == "auto" \
        else precision
    return {"probe": which, "size": size if which == "new" else None, "seconds": seconds, "check_seconds": checks,
            "choice": choice, "ran": ran,
            "timings_ms": {k: round(1e3 * v, 1) for k, v in timings.items()}}


def child_check(model: str, slices: int) -> dict:
    """--precision auto's check on OpenVINO, phase by phase (as precision_auto.check_bf16 runs it)."""
    import logging

    import numpy as np

    from tsf_trt.metrics import psnr
    from tsf_trt.synthesis import precision_auto as pa
    from tsf_trt.synthesis.frame import plan_frame
    from tsf_trt.synthesis.source import ModelSource

    logging.getLogger("tsf_trt").setLevel(logging.ERROR)
    phases, results = {}, {}
    pa.CHECK_SLICES = slices
    source = ModelSource.resolve(model)

    def cold() -> None:
        """No compiled model to import: make_model's export keeps its runtime caches beside its graphs."""
        if model != "demo":
            for cache in (".openvino-cache", ".ort-cache"):
                shutil.rmtree(Path(model) / "export" / cache, ignore_errors=True)

    cold()
    start = time.perf_counter()  # the check as a first run does it (imports, compiles), then phase by phase
    verdict = pa.check_bf16("openvino", source, None)
    phases["the whole check, cold"] = time.perf_counter() - start
    cold()
    os.environ["TSF_TRT_CACHE"] = str(Path(os.environ["TSF_TRT_CACHE"]) / "again")  # compiles again, imports done
    start = time.perf_counter()
    inputs, head = pa.check_inputs(source.has_fusion)
    phases["inputs (phantom 5000)"] = time.perf_counter() - start
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        backend = pa.build_backend("openvino", source, device="cpu", threads=None, precision=precision)
        phases[f"{precision} build"] = time.perf_counter() - start
        start = time.perf_counter()
        results[precision] = pa.synthesize(backend, inputs, head)
        phases[f"{precision} compile + run"] = time.perf_counter() - start
        start = time.perf_counter()
        pa.synthesize(backend, inputs, head)
        phases[f"({precision} run again: no compile)"] = time.perf_counter() - start
        backend.close()
    frame = plan_frame("head", head, source.config.downsample)
    mask = frame.take(head.astype(np.float32)) > 0
    (image32, _), (image16, _) = results["fp32"], results["bf16"]
    centre = image32.shape[0] // 2
    psnrs = {k: float(psnr(image16[centre - k // 2:centre + k - k // 2], image32[centre - k // 2:centre + k - k // 2],
                           mask[centre - k // 2:centre + k - k // 2])) for k in (8, 4, 2) if k <= slices}
    return {"slices": slices, "verdict": verdict.precision, "phases": phases, "psnr_by_slices": psnrs}


# --- in the parent --------------------------------------------------------------------------------
def run_child(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tsf-trt-probe-cache-") as cache:
        env = {**os.environ, "TSF_TRT_CACHE": cache}
        out = subprocess.run([sys.executable, "-m", "scripts.probe_study", *args], env=env, capture_output=True,
                             text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def probes(rounds: int, precision: str, sizes: list[str]) -> list[dict]:
    """Each round: the new probe at each of `sizes`, the full probe and OpenVINO named, each in a
    fresh process with an empty cache; the order reversed every other round."""
    rows = []
    for round_ in range(rounds):
        order = [("new", size) for size in sizes] + [("full", sizes[0]), ("named", sizes[0])]
        for which, size in (order if round_ % 2 == 0 else order[::-1]):
            before = load()
            row = run_child(["--child", which, "--precision", precision, "--size", size])
            row.update(round=round_, load_before=before, load_after=load())
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def volume_seconds(rounds: int, slices: int, picks: set[tuple[str, str]]) -> dict[str, float]:
    """Fastest of `rounds` (after a warm-up round) end-to-end seconds per volume, per pick, interleaved."""
    import logging

    from scripts.frame_speed import phantom
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    logging.getLogger("tsf_trt").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="tsf-trt-probe-study-"))
    subject, _ = phantom(tmp / "in", slices)
    synths = {f"{b} {p}": Synthesizer("demo", RunOptions(backend=b, precision=p)) for b, p in sorted(picks)}
    best: dict[str, float] = {}
    for round_ in range(rounds + 1):
        for name, synth in synths.items():
            out = tmp / "out" / name.replace(" ", "-")
            out.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            infer_subject(synth, subject, InferRequest(2, output=out, overwrite=True), backend_name=name)
            seconds = time.perf_counter() - start
            if round_:
                best[name] = min(best.get(name, float("inf")), seconds)
        print(f"volumes: round {round_} done (load {load()})" + (" (warm-up)" if not round_ else ""), flush=True)
    return best


def summary(rows: list[dict], volumes: dict[str, float] | None) -> str:
    """Each probe's seconds and picks; with `volumes` (only the picks at the probes' precision), what
    each pick costs per volume against the fastest of them."""
    lines = []
    sizes = list(dict.fromkeys(r["size"] for r in rows if r["probe"] == "new"))
    groups = [("full", None, "full probe (p3)")] + [("new", size, f"probe p4 at {size}") for size in sizes] + [
        ("named", None, "openvino named, built cold")]
    for which, size, label in groups:
        mine = [r for r in rows if r["probe"] == which and r["size"] == size]
        secs = sorted(r["seconds"] for r in mine)
        checks = [sum(r["check_seconds"]) for r in mine]
        picks = [f"{r['choice']} {r['ran']}" for r in mine]
        lines.append(f"{label}: {len(mine)} runs, {secs[0]:.1f} s min, {statistics.median(secs):.1f} median, "
                     f"{secs[-1]:.1f} max (of which bf16 checks: min {min(checks):.1f} s); picks: "
                     + ", ".join(f"{p} x{picks.count(p)}" for p in sorted(set(picks))))
    new = [r for r in rows if r["probe"] == "new" and r["size"] == sizes[0]]  # the first size: the shipped one
    pairs = [(a, b) for a in new for b in rows if b["probe"] == "full" and b["round"] == a["round"]]
    agree = sum((a["choice"], a["ran"]) == (b["choice"], b["ran"]) for a, b in pairs)
    lines.append(f"same pick (p4 at {sizes[0]} and p3) in {agree} of {len(pairs)} rounds")
    ratios = [b["seconds"] / a["seconds"] for a, b in pairs]
    lines.append(f"full / p4 wall time per round: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x")
    floor = {r["round"]: r["seconds"] for r in rows if r["probe"] == "named"}
    extra = [a["seconds"] - floor[a["round"]] for a in new if a["round"] in floor]
    if extra:
        lines.append(f"p4 minus naming openvino, per round: min {min(extra):.1f} s, median {statistics.median(extra):.1f} s")
    if volumes:
        fastest = min(volumes.values())
        lines.append("seconds per volume: " + ", ".join(f"{k} {v:.2f} s ({v / fastest:.2f}x)"
                                                        for k, v in sorted(volumes.items(), key=lambda kv: kv[1])))
        for which, size, label in groups[:-1]:
            costs = [volumes[f"{r['choice']} {r['ran']}"] / fastest - 1 for r in rows
                     if r["probe"] == which and r["size"] == size]
            lines.append(f"{label}: its pick is slower than the fastest per volume by mean "
                         f"{statistics.mean(costs):.1%}, worst {max(costs):.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="probe rounds (each runs both probes)")
    parser.add_argument("--precision", default="auto", help="auto (the default of infer) or fp32")
    parser.add_argument("--volumes", type=int, default=0, help="rounds of the per-volume cost of each pick (0: none)")
    parser.add_argument("--slices", type=int, default=40, help="slices of the volume for --volumes")
    parser.add_argument("--check", type=int, default=0, help="fresh processes timing the bf16 check (0: none)")
    parser.add_argument("--check-config", default="demo", help="the model of --check: demo (bundled) or a preset "
                        "with random weights, seed 0 (paper: its bf16 fails the check)")
    parser.add_argument("--sizes", default=None, help="the new probe's batches to compare, HxWxN,... (default: the "
                        "shipped one, auto.CPU_PROBE x auto.PROBE_BATCH; the first is compared with the full probe)")
    parser.add_argument("--shapes", type=int, default=0, help="rounds of OpenVINO's over ONNX Runtime's fp32 time per "
                        "slice at batches 1, 2, 4, 9 of 240x240 and 220x188, warm, in this process (0: none)")
    parser.add_argument("--json", type=Path, help="also write everything as JSON")
    parser.add_argument("--model", default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--check-slices", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--size", default="224x192x4", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("new", "full", "named", "check"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_check(args.model, args.check_slices) if args.child == "check"
                         else child_probe(args.child, args.precision, args.size)))
        return
    from tsf_trt.synthesis import auto

    print(f"CPU: {cpu_line()}; load {load()} at the start", flush=True)
    sizes = (args.sizes or "x".join(map(str, (*auto.CPU_PROBE, auto.PROBE_BATCH)))).split(",")
    rows = probes(args.rounds, args.precision, sizes) if args.rounds else []
    model = "demo" if args.check_config == "demo" or not args.check else str(make_model(args.check_config))
    checks = [run_child(["--child", "check", "--model", model, "--check-slices", str(n)])
              for _ in range(args.check) for n in (8, 4)]  # 8: the check before issue 27, 4: now
    for check in checks:
        print(json.dumps(check), flush=True)
    if rows:
        print(summary(rows, None), flush=True)
    if args.json:  # kept before the long part
        args.json.write_text(json.dumps({"cpu": cpu_line(), "probes": rows, "checks": checks}, indent=2) + "\n")
    allowed = {p for p in PICKS if args.precision == "auto" or p[1] == args.precision}  # what the probes may pick
    picks = {(r["choice"], r["ran"]) for r in rows} | (allowed if args.volumes else set())
    volumes = volume_seconds(args.volumes, args.slices, picks) if args.volumes else None
    if volumes:
        fastest = min(volumes.values())
        print(summary(rows, volumes) if rows else "seconds per volume: " + ", ".join(
            f"{k} {v:.2f} s ({v / fastest:.2f}x)" for k, v in sorted(volumes.items(), key=lambda kv: kv[1])))
    for slices in (8, 4):
        mine = [c for c in checks if c["slices"] == slices]
        if mine:
            phases = {k: min(c["phases"][k] for c in mine) for k in mine[0]["phases"]}
            print(f"bf16 check on {slices} slices, min of {len(mine)} cold runs:",
                  ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()), "| verdicts:",
                  ", ".join(sorted({c["verdict"] for c in mine})), "| PSNR bf16 vs fp32 by central slices:",
                  {k: round(v, 2) for k, v in mine[0]["psnr_by_slices"].items()})
    ratios = shape_ratios(args.shapes) if args.shapes else None
    for (n, height, width), ratio in (ratios or {}).items():
        print(f"OpenVINO / ONNX Runtime fp32 time per slice at {n}x{height}x{width}: {ratio:.2f}")
    print(f"load {load()} at the end")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_line(), "probes": rows, "checks": checks, "volumes": volumes,
                                         "shape_ratios": {"x".join(map(str, k)): v for k, v in (ratios or {}).items()}},
                                        indent=2) + "\n")


def shape_ratios(rounds: int) -> dict[tuple[int, int, int], float]:
    """OpenVINO's fp32 seconds per slice over ONNX Runtime's, per (batch, height, width): one probe call
    each (T1 and FLAIR, TSEM), warmed up, interleaved, the fastest of `rounds` per backend."""
    import numpy as np

    from tsf_trt.synthesis import auto
    from tsf_trt.synthesis.build import build_backend
    from tsf_trt.synthesis.source import ModelSource

    source = ModelSource.resolve("demo")
    backends = {name: build_backend(name, source, device="cpu", threads=None, precision="fp32")
                for name in ("ort", "openvino")}
    shapes = [(n, h, w) for h, w in ((240, 240), (220, 188)) for n in (1, 2, 4, 9)]
    best: dict[tuple, float] = {}
    for round_ in range(rounds + 1):  # round 0 compiles and warms up
        for shape in shapes:
            for name, backend in backends.items():
                auto.CPU_PROBE, auto.PROBE_BATCH = shape[1:], shape[0]
                seconds = auto._time_cpu(backend, np.random.default_rng(0), [0, 3], float("inf"))
                if round_:
                    best[name, shape] = min(best.get((name, shape), float("inf")), seconds)
    return {shape: best["openvino", shape] / best["ort", shape] for shape in shapes}


def make_model(config: str) -> Path:
    """A model directory of `config` with seeded random weights, exported once into its cache."""
    from tsf_trt.bench.suite import make_model as make

    from tsf_trt.synthesis.source import ModelSource

    folder = make(config, Path(tempfile.mkdtemp(prefix="tsf-trt-probe-model-")))
    shutil.copytree(ModelSource.resolve(folder).export_dir(), folder / "export")  # the children's caches are empty
    return folder


def cpu_line() -> str:
    from tsf_trt.machine.cpu import cpu_flags, cpu_name, native_bf16_flags

    flags = cpu_flags() or frozenset()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_name()}, {os.cpu_count()} CPUs, {isa}, native bf16: {', '.join(native_bf16_flags(flags)) or 'none'}"


if __name__ == "__main__":
    main()
