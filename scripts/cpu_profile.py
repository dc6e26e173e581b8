"""Where the default path's time goes on this CPU, and what its convolution rates allow (issue 27, item 3).

One subject as `tsf-trt infer` runs it (tsf_trt.runs.jobs.infer_subject on held-out phantom 5000,
240x240 slices, T1 + T1Gd + FLAIR -> T2 with TSEM, files in and out), with the options given
(default: `auto`, `--precision auto`, `--frame head`). Prints:

* stages: wall and CPU seconds of each step (reading, preparing, encoder, fusion, decoder, gathering,
  placing, writing; fastest of --rounds rounds), and how many of the cores each kept busy;
* layers (OpenVINO only): the runtime's own per-node timing (PERF_COUNT) of one more round, by
  graph and by kind of node (int8 convolutions, fp32 convolutions, instance norms, the rest), with
  the multiply-accumulates (MACs) each graph's convolutions do and the rate they ran at;
* rates and bound: OpenVINO's attainable rate on one convolution shaped like the network's widest
  (64 -> 64 channels, 3x3, 128x128) and on a wider one (256 channels, 64x64), in fp32 and int8, on
  the same threads; the network's convolutions' time at the wider one's rates, and the volume's
  time with them at those rates and the rest (the profile's share of the fastest round) as measured;
  with --reference, also the authors' way (`reference`) in the same rounds, and the ratio to it.

--isa AVX2 holds oneDNN (OpenVINO's kernels) and torch to AVX2 by running this script again
with ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY set; on an AVX-512 CPU that stands in for an
AVX2-only CPU's instruction set, not for its clock, caches or memory (docs/performance.md, "int8").

    python -m scripts.cpu_profile --rounds 3 --slices 40 --reference
    python -m scripts.cpu_profile --isa AVX2 --rounds 3 --slices 40 --reference
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scripts.frame_speed import phantom

#: Stage keys of a Result's timings (the pipeline's `timed` blocks) and of infer_subject's, in order.
STAGES = ("read", "preprocess", "encode", "fuse", "decode", "gather", "postprocess", "write")


def reexec_with_isa(isa: str | None) -> None:
    """Run this script again with oneDNN and torch held to `isa` (they read it when loaded)."""
    if not isa or os.environ.get("ONEDNN_MAX_CPU_ISA") == isa.upper():
        return
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa.upper(), ATEN_CPU_CAPABILITY=isa.lower())
    os.execve(sys.executable, [sys.executable, "-m", "scripts.cpu_profile", *sys.argv[1:]], env)


@contextmanager
def cpu_timed_stages(cpu: dict[str, float]):
    """The pipeline's `timed` blocks, also adding each block's process CPU time to `cpu`."""
    from tsf_trt.synthesis import batches, pipeline

    original = batches.timed

    @contextmanager
    def timed(timings, key):
        start = time.process_time()
        try:
            with original(timings, key):
                yield
        finally:
            if timings is not None:
                cpu[key] = cpu.get(key, 0.0) + time.process_time() - start

    batches.timed = pipeline.timed = timed
    try:
        yield
    finally:
        batches.timed = pipeline.timed = original


def run_once(synth, subject, out: Path) -> dict:
    """One subject through infer_subject: wall and CPU seconds per stage."""
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest

    cpu: dict[str, float] = {}
    with cpu_timed_stages(cpu):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        outcome = infer_subject(synth, subject, InferRequest(2, output=out, overwrite=True), backend_name="profile")
        wall, total_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    timings = outcome.result.timings
    return {"wall": wall, "cpu": total_cpu, "stages": {k: timings.get(k, 0.0) for k in STAGES},
            "stages_cpu": cpu, "frame": outcome.result.frame, "batch": outcome.result.batch_size}


def macs(model, shapes: dict[str, list[int]]) -> dict[str, float]:
    """Multiply-accumulates of one call of `model` at `shapes`, split into convolutions whose input
    is quantised (FakeQuantize: run in int8) and the rest (fp32)."""
    from tsf_trt.backends.openvino_graph import quantised_input

    model = model.clone()
    model.reshape(shapes)
    counts = {"int8": 0.0, "fp32": 0.0}
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind not in ("Convolution", "GroupConvolution"):
            continue
        out = np.prod(list(node.get_output_shape(0)), dtype=np.float64)
        weights = list(node.input_value(1).get_shape())
        per_output = np.prod(weights[-3:], dtype=np.float64)  # (in channels per group) x kernel
        counts["int8" if quantised_input(node) else "fp32"] += out * per_output
    return counts


def layer_kind(node_type: str, exec_type: str) -> str:
    if node_type in ("Convolution", "GroupConvolution", "Deconvolution"):
        return "conv int8" if "I8" in exec_type.upper() or "U8" in exec_type.upper() else "conv fp32"
    if node_type == "MVN":
        return "instance norm"
    if node_type == "Reorder":
        return "reorder"
    return "other"


def profile_layers(synth, subject, out: Path) -> tuple[dict, dict, dict, dict]:
    """One more round with OpenVINO's per-node timing on: seconds by (graph, kind of node), calls and
    MACs by graph, seconds by (graph, node type, kernel)."""
    be = synth.backend
    be.settings["PERF_COUNT"] = True
    be.cache_dir = None          # compiled again with the counters, and not kept
    be._compiled.clear()
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    nodes: dict[tuple[str, str, str], float] = defaultdict(float)  # (graph, node type, kernel) -> seconds
    calls: dict[str, int] = defaultdict(int)
    work: dict[str, dict[str, float]] = defaultdict(lambda: {"int8": 0.0, "fp32": 0.0})
    requests = {}
    per_call = {}  # MACs of one call, per compiled model

    def run(graph, feeds):
        compiled = be.compiled(graph, feeds)
        key = id(compiled)
        if key not in requests:
            requests[key] = compiled.create_infer_request()
            per_call[key] = macs(be.model(graph), {n: list(a.shape) for n, a in feeds.items()})
        result = requests[key].infer(feeds)
        for info in requests[key].profiling_info:
            if str(info.status).endswith("EXECUTED"):  # not NOT_RUN, OPTIMIZED_OUT
                seconds[(graph, layer_kind(info.node_type, info.exec_type))] += info.real_time.total_seconds()
                nodes[(graph, info.node_type, info.exec_type)] += info.real_time.total_seconds()
        calls[graph] += 1
        for k, v in per_call[key].items():
            work[graph][k] += v
        return result

    be._run = run
    run_once(synth, subject, out)
    return seconds, calls, work, nodes


def conv_rate(ov, core, channels: int, size: int, precision: str, threads: int, calls: int = 10) -> float:
    """OpenVINO's rate on one 3x3 convolution, channels -> channels at size x size (GMAC/s, the
    fastest of `calls`), in fp32 or int8 (quantised as NNCF quantises: FakeQuantize on input and
    weights, as tsf_trt.backends.openvino_backend's probe does)."""
    ops = ov.opset13
    image = ops.parameter([1, channels, size, size], np.float32, name="x")
    rng = np.random.default_rng(0)
    data = image
    weights = ops.constant(rng.uniform(-0.1, 0.1, (channels, channels, 3, 3)).astype(np.float32))
    if precision == "int8":
        one = [ops.constant(np.float32(v)) for v in (-1, 1, -1, 1)]
        small = [ops.constant(np.float32(v)) for v in (-0.1, 0.1, -0.1, 0.1)]
        data, weights = ops.fake_quantize(image, *one, 256), ops.fake_quantize(weights, *small, 255)
    conv = ops.convolution(data, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = core.compile_model(ov.Model([conv], [image], "rate"), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                   "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    x = rng.uniform(-1, 1, (1, channels, size, size)).astype(np.float32)
    request.infer({"x": x})
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({"x": x})
        best = min(best, time.perf_counter() - start)
    return size * size * channels * channels * 9 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", help="hold oneDNN and torch to this instruction set (AVX2: an AVX2-only CPU's kernels)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--frame", default="head")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time the authors' way in the same rounds")
    args = parser.parse_args(argv)
    reexec_with_isa(args.isa)
    logging.getLogger("tsf_trt").setLevel(logging.ERROR)

    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    tmp = Path(tempfile.mkdtemp(prefix="tsf-trt-cpu-profile-"))
    subject, _ = phantom(tmp / "in", args.slices)
    for name in ("out", "ref"):
        (tmp / name).mkdir()
    synth = Synthesizer("demo", RunOptions(backend=args.backend, precision=args.precision, frame=args.frame,
                                           threads=args.threads, batch_size=args.batch_size))
    reference = Synthesizer("demo", RunOptions(backend="reference", frame="full", threads=args.threads,
                                               batch_size=1)) if args.reference else None
    be = synth.backend
    print(f"ISA limit: {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}; ran: {be.describe()}", flush=True)
    best, best_reference = None, float("inf")
    for round_ in range(args.rounds + 1):  # round 0 warms up
        got = run_once(synth, subject, tmp / "out")
        if round_ and (best is None or got["wall"] < best["wall"]):
            best = got
        if reference is not None:
            seconds = run_once(reference, subject, tmp / "ref")["wall"]
            if round_:
                best_reference = min(best_reference, seconds)
        print(f"round {round_}: {got['wall']:.2f} s" + (" (warm-up)" if not round_ else ""), flush=True)

    frame = best["frame"]
    print(f"\nfastest of {args.rounds} rounds: {best['wall']:.3f} s wall, {best['cpu']:.3f} s CPU "
          f"({best['cpu'] / best['wall']:.2f} cores busy); frame {frame['size'][0]}x{frame['size'][1]}, "
          f"{frame['slices_computed']} slices computed, batch {best['batch']}")
    if reference is not None:
        print(f"reference: {best_reference:.3f} s; this run {best_reference / best['wall']:.2f}x the reference")
    print("\n| stage | wall s | share | CPU s | cores busy |\n|---|---|---|---|---|")
    for key in STAGES:
        wall = best["stages"][key]
        cpu = best["stages_cpu"].get(key)
        busy = f"{cpu / wall:.2f}" if cpu is not None and wall > 0 else "—"
        print(f"| {key} | {wall:.3f} | {wall / best['wall']:.1%} | "
              f"{'—' if cpu is None else f'{cpu:.3f}'} | {busy} |")
    rest = best["wall"] - sum(best["stages"].values())
    print(f"| (between the stages) | {rest:.3f} | {rest / best['wall']:.1%} | | |")

    if be.name != "openvino":
        return
    seconds, calls, work, nodes = profile_layers(synth, subject, tmp / "out")
    kinds = ("conv int8", "conv fp32", "instance norm", "reorder", "other")
    print("\nOpenVINO's per-node times, one round (PERF_COUNT on: its own total can differ from the stages')\n")
    print("| graph | calls | " + " | ".join(f"{k} s" for k in kinds) + " | total s | GMAC int8 | GMAC fp32 | "
          "conv GMAC/s int8 | conv GMAC/s fp32 |")
    print("|" + "---|" * (len(kinds) + 7))
    totals = defaultdict(float)
    all_work = {"int8": 0.0, "fp32": 0.0}
    for graph in calls:
        row = [seconds.get((graph, k), 0.0) for k in kinds]
        for k, v in zip(kinds, row):
            totals[k] += v
        for k in all_work:
            all_work[k] += work[graph][k]
        rate = {p: work[graph][p] / 1e9 / seconds[(graph, f"conv {p}")] if seconds.get((graph, f"conv {p}")) else 0
                for p in ("int8", "fp32")}
        print(f"| {graph} | {calls[graph]} | " + " | ".join(f"{v:.3f}" for v in row) +
              f" | {sum(row):.3f} | {work[graph]['int8'] / 1e9:.2f} | {work[graph]['fp32'] / 1e9:.2f} | "
              f"{rate['int8']:.1f} | {rate['fp32']:.1f} |")
    network = sum(totals.values())
    print("| all | | " + " | ".join(f"{totals[k]:.3f}" for k in kinds) + f" | {network:.3f} | "
          f"{all_work['int8'] / 1e9:.2f} | {all_work['fp32'] / 1e9:.2f} | | |")
    print("share of the network: " + ", ".join(f"{k} {totals[k] / network:.1%}" for k in kinds))
    print("\n| graph | node type | OpenVINO kernel | s | share of the network |\n|---|---|---|---|---|")
    for (graph, node_type, kernel), value in sorted(nodes.items(), key=lambda kv: -kv[1])[:16]:
        print(f"| {graph} | {node_type} | {kernel} | {value:.3f} | {value / network:.1%} |")

    ov, core = be.ov, be.core
    rates = {}
    print("\n| convolution (3x3, same channels in and out) | fp32 GMAC/s | int8 GMAC/s | int8/fp32 |\n|---|---|---|---|")
    for channels, size in ((64, 128), (256, 64)):
        r = {p: conv_rate(ov, core, channels, size, p, args.threads) for p in ("fp32", "int8")}
        rates[channels] = r
        print(f"| {channels} channels, {size}x{size} | {r['fp32']:.1f} | {r['int8']:.1f} | {r['int8'] / r['fp32']:.2f} |")
    peak = rates[256]
    bound = all_work["int8"] / 1e9 / peak["int8"] + all_work["fp32"] / 1e9 / peak["fp32"]
    timed_network = sum(best["stages"][k] for k in ("encode", "fuse", "decode"))
    outside = best["wall"] - timed_network
    convolutions = totals["conv int8"] + totals["conv fp32"]
    rest = timed_network * (1 - convolutions / network)  # the profile's shares of the timed round's network
    print(f"\nnetwork's convolutions at the 256-channel rates: {bound:.3f} s (measured: convolutions "
          f"{convolutions / network:.1%} of the network, {timed_network * convolutions / network:.3f} of its "
          f"{timed_network:.3f} s in the fastest round); the rest of the network {rest:.3f} s, outside it {outside:.3f} s")
    if reference is not None:
        floor = bound + rest + outside
        print(f"with the convolutions at those rates and everything else as measured: {floor:.3f} s, "
              f"{best_reference / floor:.2f}x the reference; 5x the reference needs {best_reference / 5:.3f} s")


if __name__ == "__main__":
    main()
