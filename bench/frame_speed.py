"""What the frame and the runtime each give on the CPU, as README "Performance" reports it.

Every variant on the same held-out phantom (seed 5000, 240x240x40), bundled demo model,
T1 + T1Gd + FLAIR -> T2 with TSEM, fp32, 2 threads, arrays in memory (no file I/O); the
variants interleaved, the minimum of ROUNDS rounds (argument 1, default 3), so other load on
a shared machine hurts every variant alike. Prints one Markdown row per variant: frame,
slices computed, s/volume, network ms/slice, ratio to the reference, PSNR vs the truth.

    python bench/frame_speed.py 3
"""
import sys, time
import numpy as np
from tsf_trt.pipeline import Synthesizer
from tsf_trt.phantoms.generator import make_subject
from tsf_trt.preprocess import normalize
from tsf_trt.metrics import psnr
from tsf_trt.source import ModelSource


def main(rounds: int) -> None:
    src = ModelSource.resolve("demo")
    ph = make_subject(5000, (240, 240, 40))
    vols = {i: np.ascontiguousarray(ph.volumes[n].transpose(2, 1, 0)) for i, n in zip((0, 1, 3), ("t1", "t1gd", "flair"))}
    truth = normalize(np.ascontiguousarray(ph.volumes["t2"].transpose(2, 1, 0)))
    variants = {
        "reference (full, fp32, 1 slice/call)": ("reference", "full"),
        "torch fp32 full": ("torch", "full"),
        "ort fp32 full": ("ort", "full"),
        "openvino fp32 full": ("openvino", "full"),
        "torch fp32 head": ("torch", "head"),
        "ort fp32 head": ("ort", "head"),
        "openvino fp32 head": ("openvino", "head"),
    }
    synths = {k: Synthesizer(src, b, frame=f, threads=2, precision="fp32", batch_size=1 if b == "reference" else None)
              for k, (b, f) in variants.items()}
    best = {k: float("inf") for k in variants}; net = {k: float("inf") for k in variants}; out = {}
    for r in range(rounds):
        for k, s in synths.items():
            res = s.run(vols, 2)
            best[k] = min(best[k], res.timings["total"])
            net[k] = min(net[k], sum(res.timings[x] for x in ("encode", "fuse", "decode")))
            out[k] = res
        print(f"round {r + 1} done", flush=True)
    ref = best["reference (full, fp32, 1 slice/call)"]
    for k in variants:
        r = out[k]
        print(f"| {k} | {r.frame['size'][0]}x{r.frame['size'][1]} | {r.frame['slices_computed']} | {best[k]:.2f} | "
              f"{1e3 * net[k] / 40:.0f} | {ref / best[k]:.2f}x | {psnr(r.image, truth, truth > 0):.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
