"""A benchmark report as a terminal table, JSON, Markdown and a PNG plot.

Why one module: the terminal table and the Markdown show the same columns, taken from
one list (`COLUMNS`), so they cannot disagree; every file is written through
:func:`tsf_trt.files.atomic.atomic_path`, so a failed or interrupted run leaves nothing
half-written and existing files are only replaced with --overwrite, and only when tsf-trt
wrote them (the JSON's "tool", the Markdown's title, the PNG's Software text).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.ownership import PNG_METADATA

Row = dict[str, Any]


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _maybe(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _batch(row: Row) -> str:
    """'4', or 'auto 4' where the backend chose (--batch-size auto)."""
    return str(row["batch_size"]) if row["batch_size"] is not None else f"auto {row['effective_batch_size']}"


def _psnr(row: Row) -> str:
    agreement = row.get("agreement")
    if agreement is None:
        return "—"
    return "identical" if agreement["image_psnr_db"] is None else f"{agreement['image_psnr_db']:.1f} dB"


def _precision(row: Row) -> str:
    """What ran, and what was asked where that differs: 'bf16', or 'fp32 (bf16 asked)'."""
    ran, asked = row.get("precision_ran") or row["precision"], row["precision"]
    return ran if ran == asked else f"{ran} ({asked} asked)"


def _peak_of(efficiency: dict[str, Any] | None) -> str:
    """What %GEMM divides by: 'cpu fp32 (openvino)', or the kind alone where it has no peak."""
    if not efficiency:
        return "—"
    library = efficiency["gemm_library"]
    return efficiency["gemm_kind"] + (f" ({library})" if library else "")


#: (header, cell, shown on the terminal) for every (variant, batch size) row; Markdown shows all.
COLUMNS: list[tuple[str, Callable[[Row], str], bool]] = [
    ("backend", lambda r: r["variant"], True),
    ("batch", _batch, True),
    ("precision", _precision, True),
    ("frame", lambda r: "x".join(map(str, r["frame_box"]["size"])) if r.get("frame_box") else r.get("frame", "—"),
     False),
    ("s/vol", lambda r: f"{r['end_to_end']['mean']:.3g}", True),
    ("p50", lambda r: f"{r['end_to_end']['p50']:.3g}", False),
    ("p90", lambda r: f"{r['end_to_end']['p90']:.3g}", False),
    ("p99", lambda r: f"{r['end_to_end']['p99']:.3g}", True),
    ("min", lambda r: f"{r['end_to_end']['min']:.3g}", False),
    ("compute s", lambda r: f"{r['compute']['mean']:.3g}", False),
    ("slice/s", lambda r: f"{r['throughput']['slices_per_s']:.3g}", True),
    ("vol/min", lambda r: f"{r['throughput']['volumes_per_min']:.3g}", False),
    ("×torch", lambda r: _ratio((r["vs_torch"] or {}).get("end_to_end")), True),
    ("×ref", lambda r: _ratio((r["vs_reference"] or {}).get("end_to_end")), True),
    ("×full", lambda r: _ratio((r.get("vs_full_frame") or {}).get("end_to_end")), False),
    ("GFLOP/s", lambda r: _maybe((r["efficiency"] or {}).get("gflops_per_s"), ".3g"), True),
    ("%GEMM", lambda r: _maybe((r["efficiency"] or {}).get("fraction_of_gemm"), ".0%"), True),
    ("GEMM peak", lambda r: _peak_of(r["efficiency"]), False),
    ("RSS MiB", lambda r: f"{r['memory']['peak_rss_bytes'] / 2**20:.0f}", True),
    ("PSNR vs torch", _psnr, False),
    ("PSNR vs truth", lambda r: _maybe(r.get("truth_psnr_db"), ".2f"), False),
    ("max abs vs torch", lambda r: _maybe((r.get("agreement") or {}).get("image_max_abs_diff"), ".1e"), False),
]


#: Stage headers shortened to fit an 80-column terminal.
TERMINAL_STAGE = {"preprocess": "prep", "encoder": "enc", "fusion": "fuse", "decoder": "dec", "postprocess": "post"}


def stage_names(report: dict[str, Any]) -> list[str]:
    """Stages present in any row, in pipeline order."""
    names: list[str] = []
    for row in report["rows"]:
        names += [s for s in row["stages"] if s not in names]
    return names


def stage_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Mean milliseconds per stage for every row."""
    stages = stage_names(report)
    body = [[row["variant"], _batch(row),
             *(f"{row['stages'][s]['mean'] * 1e3:.1f}" if s in row["stages"] else "—" for s in stages)]
            for row in report["rows"]]
    return ["backend", "batch", *(f"{s} ms" for s in stages)], body


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Environment, workload, GEMM, FLOPs, skipped backends and I/O overlap as short lines."""
    env, work, gemm, flops = report["environment"], report["workload"], report["gemm"], report["flops"]
    gpu = env["gpu"]
    lines = [
        f"machine: {env['cpu']}, {env['usable_cpus']} usable CPUs ({env['physical_cores'] or '?'} cores), "
        f"threads: {env['threads']}, load {env['load_average_1m']}; "
        f"GPU: {gpu['name'] + ', driver ' + str(gpu['driver']) + ', CUDA ' + str(gpu['cuda']) if gpu else 'none'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"model {report['model']['id'] or '?'} ({report['model']['kind']} {report['model']['path']}), "
        f"{env['precision']}, device {env['device']}",
        f"task {work['task']}{' with TSEM' if work['tsem'] else ''}, volume {'x'.join(map(str, work['shape_zyx']))} "
        f"(Z×Y×X, {work['origin']['kind']}), warm-up runs: {report['settings']['warmup']}, "
        f"timed: {report['settings']['iterations']}",
        *gemm_lines(gemm),
    ]
    if "per_volume" in flops:
        lines.append(f"FLOPs per volume: {flops['per_volume'] / 1e9:.2f} G (reference way "
                     f"{flops['reference_per_volume'] / 1e9:.2f} G); fast convolution algorithms can exceed the "
                     "GEMM rate")
    else:
        lines.append(flops.get("error", "no FLOP counts"))
    lines += no_peak_lines(report["rows"])
    lines += [f"skipped {s.get('variant', s['backend'])}: {s['reason']}" for s in report["skipped"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    io = report["io_overlap"]
    if "surviving_fraction" in io:
        steady = (f"; each further subject: {io['steady_throughput']['slices_per_s']:.2f} slices/s, "
                  f"{io['steady_fraction']:.0%} (the run of {io['subjects']} less a run of one)"
                  if io.get("steady_fraction") is not None else "")
        lines.append(f"folder mode ({io['variant']}, batch {io['batch_size'] or 'auto'}, "
                     f"subjects: {io['subjects']}): "
                     f"{io['folder_throughput']['slices_per_s']:.2f} slices/s against "
                     f"{io['compute_throughput']['slices_per_s']:.2f} compute-only (same backend, just before): "
                     f"{io['surviving_fraction']:.0%} survives NIfTI reading and writing over the whole run{steady}")
    else:
        lines.append(f"folder mode: skipped ({io.get('skipped')})")
    return lines


def _peak(kind: str, peak: dict[str, Any]) -> str:
    """'cpu fp32 412 GFLOP/s (openvino, over torch 198, onnxruntime 405)', or why there is no figure."""
    if peak["gflops"] is None:
        return f"{kind} none: {peak['reason']}"
    others = [f"{lib} {rate:.0f}" for lib, rate in peak["candidates"].items() if lib != peak["library"]]
    others += [f"{lib}: {why}" for lib, why in peak["unavailable"].items()]
    return f"{kind} {peak['gflops']:.0f} GFLOP/s ({peak['library']}" + (f", over {', '.join(others)})" if others else ")")


def gemm_lines(gemm: dict[str, Any]) -> list[str]:
    """The measured peaks, one line, and the bf16 evidence (whether the CPU runs it natively)."""
    threads = gemm["threads"] or "runtime default" + (f" (torch {gemm['cpu_threads']})" if gemm["cpu_threads"] else "")
    lines = [f"GEMM peaks, fastest library per precision ({gemm['cpu_size']}² on the CPU, threads: {threads}"
             + (f", {gemm['gpu_size']}² on the GPU" if gemm["gpu_size"] else "") + "): "
             + "; ".join(_peak(kind, peak) for kind, peak in gemm["peaks"].items())]
    if "evidence" in gemm["peaks"].get("cpu bf16", {}):
        lines.append(f"bf16 {'native' if gemm['peaks']['cpu bf16']['native'] else 'not native'} on this CPU, by "
                     f"{gemm['peaks']['cpu bf16']['evidence']}")
    return lines


def no_peak_lines(rows: list[Row]) -> list[str]:
    """Why a row has no %GEMM, once per reason."""
    missing: dict[str, list[str]] = {}
    for row in rows:
        eff = row["efficiency"] or {}
        if eff.get("no_peak_reason"):
            missing.setdefault(f"{eff['gemm_kind']} {eff['no_peak_reason']}", []).append(row["variant"])
    return [f"no %GEMM for {', '.join(dict.fromkeys(names))}: {reason}" for reason, names in missing.items()]


def _rich_table(title: str, headers: list[str], body: list[list[str]]):
    """Cells never cut (every cell's width is reserved); long headers wrap instead."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    for k, header in enumerate(headers):
        table.add_column(header, justify="left" if k == 0 else "right", no_wrap=True,
                         min_width=max([len(header)] + [len(line[k]) for line in body]))
    for line in body:
        table.add_row(*line)
    return table


def print_report(report: dict[str, Any], console) -> None:
    shown = [(header, cell) for header, cell, terminal in COLUMNS if terminal]
    body = [[cell(row) for _, cell in shown] for row in report["rows"]]
    console.print(_rich_table("seconds per volume, end to end (×: speed-up)", [h for h, _ in shown], body))
    console.print()
    headers, body = stage_table(report)
    short = [TERMINAL_STAGE.get(h.removesuffix(" ms"), h.removesuffix(" ms")) for h in headers]
    console.print(_rich_table("mean milliseconds per stage", short, body))
    console.print()
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)  # reasons hold "[gpu]"


def _markdown_table(headers: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(line) + " |" for line in body)]


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# tsf-trt bench", "", *(f"* {line}" for line in summary_lines(report)), ""]
    body = [[cell(row) for _, cell, _ in COLUMNS] for row in report["rows"]]
    lines += _markdown_table([header for header, _, _ in COLUMNS], body)
    lines += ["", "Mean latency per stage:", "", *_markdown_table(*stage_table(report)), ""]
    lines += [f"* {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: stacked mean stage latency per row; throughput against batch size per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, stages = report["rows"], stage_names(report)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.5 * max(4, len(rows)) + 2))
    labels = [f"{r['variant']} " + (f"b{r['batch_size']}" if r["batch_size"] else f"auto b{r['effective_batch_size']}")
              for r in rows]
    offset = [0.0] * len(rows)
    for stage in stages:
        widths = [r["stages"].get(stage, {}).get("mean", 0.0) for r in rows]
        left.barh(labels, widths, left=offset, label=stage)
        offset = [a + b for a, b in zip(offset, widths)]
    left.invert_yaxis()
    left.set_xlabel("seconds per volume (mean)")
    left.set_title("latency per stage")
    left.legend(fontsize="small")
    used = {id(r): r["batch_size"] or r["effective_batch_size"] for r in rows}  # auto: what the backend chose
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((used[id(r)], r["throughput"]["slices_per_s"]) for r in rows
                      if r["variant"] == variant)
        right.plot([b for b, _ in mine], [t for _, t in mine], marker="o", label=variant)
    right.set_xscale("log", base=2)
    batches = sorted(set(used.values()))
    right.set_xticks(batches, [str(b) for b in batches])
    right.minorticks_off()
    right.set_xlabel("batch size (slices)")
    right.set_ylabel("slices / s (end to end)")
    right.set_title("throughput")
    right.legend(fontsize="small")
    fig.suptitle(f"tsf-trt bench: {report['workload']['task']}, {'x'.join(map(str, report['workload']['shape_zyx']))}"
                 f", {report['environment']['cpu']}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata=PNG_METADATA)  # marked: --overwrite may replace it
    plt.close(fig)


def write_files(report: dict[str, Any], *, json_path: Path | None = None, markdown: Path | None = None,
                png: Path | None = None, overwrite: bool = False) -> list[Path]:
    """Each requested file, written atomically; existing ones refused unless `overwrite`."""
    writers: list[tuple[Path | None, Callable[[Path], None]]] = [
        (json_path, lambda p: p.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")),
        (markdown, lambda p: p.write_text(to_markdown(report))),
        (png, lambda p: plot(report, p)),
    ]
    written = []
    for path, write in writers:
        if path is None:
            continue
        with atomic_path(path, overwrite) as tmp:
            write(tmp)
        written.append(path)
    return written
