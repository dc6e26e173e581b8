"""docs/performance.md's whole-slice tables, regenerated on this machine as Markdown: `tsf-trt bench suite`.

Why a preset of its own over :mod:`.runner`: the table compares ways of running (bf16 autocast,
the code-input ONNX decoder beside the baked ones, the authors' way) on the paper configuration
with random weights (the authors' published weights are not shipped), all in one process with
the same threads, so that anyone can reproduce it with one command. The measuring is
`tsf-trt bench`'s own (:class:`.runner.BenchRun`); this module picks the model, the phantom and
the variants, and writes the table: "s / volume" is the in-memory synthesis (the report's
`compute`), "image vs torch fp32" the rows' `agreement`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsf_trt.errors import TsfError

from tsf_trt.bench.runner import BenchRun, BenchSettings, ProgressFn
from tsf_trt.bench.variants import Variant

TARGET = 2  # T1 + T1Gd + FLAIR -> T2, docs/performance.md's task (three inputs: bench's first three for T2)
VARIANTS: dict[str, Variant] = {
    "reference": Variant("reference"),
    "torch": Variant("torch"),
    "torch-bf16": Variant("torch", "bf16"),
    "ort-code": Variant("ort", decoder="code"),
    "ort-baked": Variant("ort", decoder="baked"),
}
LABELS = {
    "reference": "`reference` (authors' way: full ConvLSTM, one slice per call, 2 decoder passes)",
    "torch": "`torch` (folded ConvLSTM, 2N decoder batch)",
    "torch-bf16": "`torch --precision bf16` (autocast; norms and ω in fp32)",
    "ort-code": "`ort`, code-input decoder",
    "ort-baked": "`ort`, baked per-target decoders (the default)",
}


def parse_variants(text: str) -> list[str]:
    """'reference,torch' -> the names, each one of VARIANTS, in the table's order as given."""
    return check_variants([v.strip() for v in text.split(",") if v.strip()])


def check_variants(names: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    if unknown := [v for v in names if v not in VARIANTS]:
        raise TsfError(f"--variants: unknown {', '.join(unknown)} (use {', '.join(VARIANTS)})")
    if not names:
        raise TsfError(f"--variants: name at least one of {', '.join(VARIANTS)}")
    return names


def make_model(config: str, folder: Path) -> Path:
    """A model directory with seeded random weights of a preset (what docs/performance.md measures)."""
    import torch

    from tsf_trt.model import PRESETS, TSFSeq2Seq, save_model

    if config not in PRESETS:
        raise TsfError(f"--config '{config}': use one of {', '.join(PRESETS)}")
    torch.manual_seed(0)
    return save_model(TSFSeq2Seq(PRESETS[config]).eval(), folder / config,
                      origin={"random_weights": {"config": config, "seed": 0}})


def run_suite(*, model: Path | None = None, config: str = "paper", shape_zyx: tuple[int, int, int] = (155, 240, 240),
              variants: Sequence[str] = tuple(VARIANTS), threads: int | None = None, batch_size: int | None = None,
              warmup: int = 1, progress: ProgressFn | None = None) -> str:
    """Measure `variants` on phantom subject 0 of `shape_zyx` with `model` (default: random weights of
    `config`, seed 0), each warmed up with `warmup` whole volumes, then timed once; the Markdown table."""
    chosen = [VARIANTS[v] for v in check_variants(variants)]
    with tempfile.TemporaryDirectory(prefix="tsf-trt-suite-") as tmp:
        model_dir = model or make_model(config, Path(tmp))
        settings = BenchSettings(model=model_dir, backends=list(dict.fromkeys(v.backend for v in chosen)),
                                 batch_sizes=[batch_size], target=TARGET, shape_zyx=shape_zyx, sources=(0, 1, 3),
                                 warmup=warmup, iterations=1, threads=threads, device="cpu", io_subjects=0,
                                 variants=chosen)
        with BenchRun(settings) as bench:
            report = bench.run(progress)
    if report["skipped"]:
        failed = report["skipped"][0]
        raise TsfError(f"{failed.get('variant', failed['backend'])}: {failed['reason']}")
    label = f"{config.capitalize()} configuration (random weights, seed 0)" if model is None else f"Model {model}"
    return to_markdown(report, model=label)


def agreement(name: str, row: dict[str, Any]) -> str:
    """The tables' last column (docs/performance.md): how far the variant's image is from torch fp32."""
    found = row["agreement"]
    if found is None:
        return "—"
    psnr = found["image_psnr_db"]
    if name == "torch-bf16":
        return f"PSNR {psnr:.1f} dB, ω max diff {found['weights_max_abs_diff']:.0e}" if psnr is not None \
            else "identical"
    text = f"max abs {found['image_max_abs_diff']:.1e}"
    return text if name == "reference" or psnr is None else f"{text}, PSNR {psnr:.0f} dB"


def to_markdown(report: dict[str, Any], *, model: str) -> str:
    """docs/performance.md's table from a bench report whose rows are VARIANTS."""
    env = report["environment"]
    z, y, x = report["workload"]["shape_zyx"]
    names = {variant: name for name, variant in VARIANTS.items()}
    intro = (f"Measured with `tsf-trt bench suite` (every variant on the same subject, in one run, "
             f"same threads: {env['threads']}, warmed up) on {env['cpu']}, {env['usable_cpus']} usable CPUs, "
             f"load {env['load_average_1m']}, GPU: {env['gpu']['name'] if env['gpu'] else 'none'}. "
             f"{model}, {report['workload']['task'].replace(',', ' + ').replace('->', ' → ')} with TSEM, one "
             f"{x}×{y}×{z} phantom volume.")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [intro, "", f"Versions: {versions}.", "",
             "| variant | batch | s / volume | vs reference | image vs torch fp32 |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        name = names[Variant(row["backend"], row["precision"], row["decoder"])]
        ratio = (row["vs_reference"] or {}).get("compute")
        lines.append(f"| {LABELS[name]} | {row['effective_batch_size']} | {row['compute']['mean']:.4g} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}×'} | {agreement(name, row)} |")
    return "\n".join(lines) + "\n"
