"""Regenerate the README's performance table on this machine, as Markdown.

    python -m tsf_trt.bench.suite -o performance.md                 # paper config, 155x240x240: long
    python -m tsf_trt.bench.suite --config small --shape 32x128x128  # minutes, not hours

Why a script of its own: the README's table compares variants that `tsf-trt bench`
does not expose as backends (bf16 autocast, the code-input ONNX decoder), on the
paper configuration with random weights (the authors' published weights are not
shipped), all in one process with the same threads, so the numbers can be
reproduced on any machine with one command. The per-variant measurement lives in
:mod:`tsf_trt.bench.backends`; this module makes the model and subject and writes
the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.errors import TsfError

from .backends import VARIANTS, compare
from .environment import environment
from .workload import parse_shape

SOURCES, TARGET = (0, 1, 3), 2  # T1 + T1Gd + FLAIR -> T2, the README's task
LABELS = {
    "reference": "`reference` (authors' way: full ConvLSTM, one slice per call, 2 decoder passes)",
    "torch": "`torch` (folded ConvLSTM, 2N decoder batch)",
    "torch-bf16": "`torch --precision bf16` (autocast; norms and ω in fp32)",
    "ort-code": "`ort`, code-input decoder",
    "ort-baked": "`ort`, baked per-target decoders (the default)",
}


def make_model(config: str, folder: Path) -> Path:
    """A model directory with seeded random weights of a preset (what the README measures)."""
    import torch

    from tsf_trt.model import PRESETS, TSFSeq2Seq, save_model

    if config not in PRESETS:
        raise TsfError(f"--config '{config}': use one of {', '.join(PRESETS)}")
    torch.manual_seed(0)
    return save_model(TSFSeq2Seq(PRESETS[config]).eval(), folder / config,
                      origin={"random_weights": {"config": config, "seed": 0}})


def phantom_volumes(shape_zyx: tuple[int, int, int]) -> dict[int, np.ndarray]:
    """The sources of phantom subject 0, as canonical (z, y, x) arrays (phantoms are (x, y, z))."""
    from tsf_trt.train.phantom import make_subject

    z, y, x = shape_zyx
    phantom = make_subject(0, (x, y, z))
    return {i: np.ascontiguousarray(phantom.volumes[sequences.NAMES[i]].transpose(2, 1, 0)) for i in SOURCES}


def agreement(row: dict[str, Any]) -> str:
    """The README's last column: how far the variant's image is from torch fp32."""
    if row["variant"] == "torch":
        return "—"
    if row["variant"] == "torch-bf16":
        return f"PSNR {row['image_psnr_vs_torch_db']:.1f} dB, ω max diff {row['weights_max_abs_diff_vs_torch']:.0e}"
    text = f"max abs {row['image_max_abs_diff_vs_torch']:.1e}"
    return text if row["variant"] == "reference" else f"{text}, PSNR {row['image_psnr_vs_torch_db']:.0f} dB"


def to_markdown(rows: list[dict[str, Any]], *, model: str, shape_zyx: tuple[int, int, int],
                env: dict[str, Any]) -> str:
    z, y, x = shape_zyx
    intro = (f"Measured with `python -m tsf_trt.bench.suite` (every variant on the same subject, in one run, "
             f"same threads: {env['threads']}, warmed up) on {env['cpu']}, {env['usable_cpus']} usable CPUs, "
             f"load {env['load_average_1m']}, GPU: {env['gpu']['name'] if env['gpu'] else 'none'}. "
             f"{model}, T1 + T1Gd + FLAIR → T2 with TSEM, one "
             f"{x}×{y}×{z} phantom volume.")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [intro, "", f"Versions: {versions}.", "",
             "| variant | batch | s / volume | vs reference | image vs torch fp32 |", "|---|---|---|---|---|"]
    for row in rows:
        ratio = row["speedup_vs_reference"]
        lines.append(f"| {LABELS.get(row['variant'], row['variant'])} | {row['batch_size']} | {row['seconds']:.4g} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}×'} | {agreement(row)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: random weights of --config, seed 0)")
    parser.add_argument("--config", default="paper", help="preset for the random-weight model (default: paper)")
    parser.add_argument("--shape", default="155x240x240", help="phantom volume, Z x Y x X (default: 155x240x240)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each backend's preference")
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown file (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TsfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from tsf_trt.atomic import atomic_path, check_writable

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise TsfError(f"--variants: unknown {', '.join(unknown)} (use {', '.join(VARIANTS)})")
    shape = parse_shape(args.shape)
    if args.output is not None:
        check_writable(args.output, args.overwrite)
    with tempfile.TemporaryDirectory(prefix="tsf-trt-suite-") as tmp:
        model_dir = args.model or make_model(args.config, Path(tmp))
        model = f"{args.config.capitalize()} configuration (random weights, seed 0)" if args.model is None \
            else f"Model {args.model}"
        rows = compare(model_dir, phantom_volumes(shape), TARGET, variants, threads=args.threads,
                       batch_size=args.batch_size)
    text = to_markdown(rows, model=model, shape_zyx=shape, env=environment(args.threads))
    if args.output is None:
        sys.stdout.write(text)
    else:
        with atomic_path(args.output, args.overwrite) as out:
            out.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
