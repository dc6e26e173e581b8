"""Whole-volume synthesis at several batch sizes, interleaved: what chose each CPU backend's batch
budget (tsf_trt.backends.base.Backend.cpu_batch_bytes; docs/performance.md, "Where the time goes").

Held-out phantom 5000 (240x240 slices, --slices of them), T1 + T1Gd + FLAIR -> T2 with TSEM, inputs
in memory (Synthesizer.run: no file reading or writing), one Synthesizer per batch size ("auto": the
backend's own choice), round 0 a warm-up, then the fastest of --rounds rounds each.

    python -m scripts.batch_sizes --backend openvino --precision int8 --sizes auto,2,4,8
    python -m scripts.batch_sizes --backend ort --sizes auto,4,8
    python -m scripts.batch_sizes --model path/to/model --frame full --sizes auto,1,2 --slices 12
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from scripts.frame_speed import phantom


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="a model or export directory (default: the bundled demo)")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--frame", default="head")
    parser.add_argument("--sizes", default="auto,2,4,8", help="comma-separated batch sizes; auto: the backend's")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.getLogger("tsf_trt").setLevel(logging.ERROR)

    from tsf_trt.files.volume import load_volume
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    subject, _ = phantom(Path(tempfile.mkdtemp(prefix="tsf-trt-batch-sizes-")), args.slices)
    volumes = {i: load_volume(p) for i, p in subject.inputs.items()}
    sizes = [None if s == "auto" else int(s) for s in args.sizes.split(",") if s]
    synths = {size: Synthesizer(args.model, RunOptions(backend=args.backend, precision=args.precision,
                                                       frame=args.frame, threads=args.threads, batch_size=size))
              for size in sizes}
    best = dict.fromkeys(sizes, float("inf"))
    used = {}
    for round_ in range(args.rounds + 1):
        for size, synth in synths.items():
            start = time.perf_counter()
            result = synth.run(volumes, "t2")
            seconds = time.perf_counter() - start
            used[size] = result.batch_size
            if round_:
                best[size] = min(best[size], seconds)
    print(f"{synths[sizes[0]].backend.describe()}, frame {args.frame}, {args.slices} slices, fastest of "
          f"{args.rounds} rounds")
    print("| batch | s / volume | × the first |\n|---|---|---|")
    for size in sizes:
        name = f"auto ({used[size]})" if size is None else str(size)
        print(f"| {name} | {best[size]:.3f} | {best[sizes[0]] / best[size]:.2f}× |")


if __name__ == "__main__":
    main()
