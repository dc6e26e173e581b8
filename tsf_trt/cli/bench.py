"""`tsf-trt bench`: latency, throughput, memory, efficiency and agreement of every backend, in one run;
`tsf-trt bench suite`: docs/performance.md's whole-slice tables from the same measurements."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperGroup

from tsf_trt.cli import params
from tsf_trt.cli.app import app, err, out, progress_bar, setup_logging, step, user_errors
from tsf_trt.cli.params import INPUTS_PANEL, OUTPUTS_PANEL, RUNTIME_PANEL
from tsf_trt.cli.vocabulary import renamed

#: bench's own panels: what each row is, and how it is timed.
ROWS_PANEL, TIMING_PANEL = "Rows (each a comma list: one row per combination)", "Timing"


def join_shape(args: list[str], commands: Sequence[str] = ()) -> list[str]:
    """`--shape X Y Z` -> `--shape 'X Y Z'`, before click parses: click gives an option one fixed
    number of values, and bench's --shape takes one word (SxHxW) or three (X Y Z). Only the
    group's own words are looked at (a subcommand's --shape is its own); the words are joined
    as typed, so a malformed value reaches the one-line check whole."""
    joined: list[str] = []
    for k, word in enumerate(args):
        if word == "--" or word in commands:
            return joined + args[k:]
        if joined and joined[-1] == "--shape" and word.isascii() and word.isdigit():
            rest = list(itertools.takewhile(lambda w: (not w.startswith("-") or w[1:].isdigit()) and w not in commands,
                                            args[k + 1:k + 3]))  # a negative number is a bad Z, not an option
            return joined + [" ".join([word, *rest])] + join_shape(args[k + 1 + len(rest):], commands)
        joined.append(word)
    return joined


class BenchGroup(TyperGroup):
    """`tsf-trt bench`, whose --shape takes one word (old) or three (:func:`join_shape`), and whose old
    option names still work (tsf_trt.cli.vocabulary.RENAMED)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        commands = list(self.commands)
        return super().parse_args(ctx, renamed("bench", join_shape(list(args), commands), stop=commands))


bench_app = typer.Typer(name="bench", cls=BenchGroup, add_completion=False, pretty_exceptions_enable=False,
                        rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
@user_errors
def bench(
    ctx: typer.Context,
    backends: Annotated[str, typer.Option("--backend", "-b", metavar="NAME[,NAME...]|all",
                                          rich_help_panel=ROWS_PANEL,
                                          help="Backends to time: a comma list of torch, ort, openvino, ort-cuda, "
                                          "ort-trt, trt, reference, or 'all'. Unavailable ones are listed as "
                                          "skipped with the reason. 'reference' (the authors' way, batch 1) is "
                                          "added unless --no-reference.")] = "all",
    batch_sizes: Annotated[str, typer.Option("--batch-size", metavar="N[,N...]|auto", rich_help_panel=ROWS_PANEL,
                                             help="Slices per network batch to measure, a comma list; one row per "
                                             "backend and batch size. 'auto': each backend's own choice for the "
                                             "volume's size.")] = "1,4,16",
    precisions: Annotated[str, typer.Option("--precision", metavar="P[,P...]", rich_help_panel=ROWS_PANEL,
                                            help="A comma list of fp32, bf16, int8, fp16, best: each backend runs "
                                            "those it takes (torch: fp32, bf16; openvino: fp32, bf16, int8 (an "
                                            "export with int8 graphs); ort-cuda, ort-trt: fp32, fp16; trt: also "
                                            "best), one row each; a backend that takes none is listed as "
                                            "skipped.")] = "fp32",
    frames: Annotated[str, typer.Option("--frame", metavar="F[,F...]", rich_help_panel=ROWS_PANEL,
                                        help="A comma list of head, full or HxW (as infer's --frame), one row "
                                        "each; the reference row is always the full frame (its definition), and "
                                        "a row at head also gets its ratio to the same row at full.")] = "head",
    decoders: Annotated[str, typer.Option("--decoder", metavar="D[,D...]", rich_help_panel=ROWS_PANEL,
                                          help="ONNX Runtime rows: baked (per-target decoders, the runtime's "
                                          "default when the export has them), code (the code-input decoder), or "
                                          "baked,code for one row each.")] = "baked",
    reference: Annotated[bool, typer.Option("--reference/--no-reference", rich_help_panel=ROWS_PANEL,
                                            help="Add the reference row, so every figure is also a ratio to the "
                                            "authors' way.")] = True,
    compile: Annotated[bool, typer.Option("--compile", rich_help_panel=ROWS_PANEL,
                                          help="Also time each torch row with torch.compile: a torch-compile row "
                                          "beside each torch row (compiled in its warm-up runs: minutes on a "
                                          "CPU; give --warmup 1 at least).")] = False,
    shape: Annotated[Optional[str], typer.Option("--shape", metavar="X Y Z", rich_help_panel=INPUTS_PANEL,
                                                 help="Voxels of the phantom per axis, in the file's (x, y, z) "
                                                 "order, as for `tsf-trt phantom` (240 240 40: 40 slices of "
                                                 "240x240). The one word SxHxW (slices x height x width, "
                                                 "40x240x240) still works for one release.",
                                                 show_default="240 240 155")] = None,
    subject: Annotated[Optional[Path], typer.Option("--subject-dir", metavar="DIR", rich_help_panel=INPUTS_PANEL,
                                                    help="Benchmark this real subject's folder instead of a "
                                                    "phantom (any layout `infer` reads).", show_default=False)] = None,
    target: params.Target = "t2",
    sources: Annotated[Optional[str], typer.Option("--sources", rich_help_panel=INPUTS_PANEL,
                                                   help="Input sequences, e.g. t1,flair (default: the first three "
                                                   "of T1, FLAIR, T1Gd, T2 that are not the target; T1 alone for "
                                                   "a Seq2Seq-only model).", show_default=False)] = None,
    tsem: Annotated[bool, typer.Option("--tsem/--no-tsem", rich_help_panel=INPUTS_PANEL,
                                       help="Include TSEM (the decoder runs on 2N slices).")] = True,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", rich_help_panel=RUNTIME_PANEL,
                                                  help="Model directory or export directory (an export runs on the "
                                                  "ONNX Runtime backends only; the torch rows are then skipped). "
                                                  "Default: the bundled demo model.", show_default=False)] = None,
    threads: params.Threads = None,
    device: params.Device = "auto",
    warmup: Annotated[int, typer.Option("--warmup", rich_help_panel=TIMING_PANEL,
                                        help="Untimed whole-volume runs per row first.")] = 1,
    iterations: Annotated[int, typer.Option("--iterations", rich_help_panel=TIMING_PANEL,
                                            help="Timed whole-volume runs per row.")] = 3,
    interleave: Annotated[bool, typer.Option("--interleave/--no-interleave", rich_help_panel=TIMING_PANEL,
                                             help="Rows take turns, one whole-volume run each, so that other load "
                                             "on a shared machine falls on every row alike (every backend is "
                                             "loaded at once, and a row's peak RSS holds them all); "
                                             "--no-interleave: one row after the other, one backend at a time "
                                             "(GPU rows that do not fit together).")] = True,
    io_subjects: Annotated[int, typer.Option("--io-subjects", rich_help_panel=TIMING_PANEL,
                                             help="Copies of the subject run in folder mode with the fastest row, "
                                             "to measure how much throughput survives NIfTI reading and writing "
                                             "(0: skip).")] = 2,
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", rich_help_panel=OUTPUTS_PANEL,
                                                      help="Write the report as JSON (schema: bench/SCHEMA.md).",
                                                      show_default=False)] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", metavar="FILE", rich_help_panel=OUTPUTS_PANEL,
                                                     help="Write the report as Markdown.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", rich_help_panel=OUTPUTS_PANEL,
                                                 help="Write a PNG: latency per stage per row, and throughput "
                                                 "against batch size.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", rich_help_panel=OUTPUTS_PANEL,
                                            help="Replace existing report files.")] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Time every backend on one volume: per-stage latency (mean, p50, p90, p99, min), end-to-end seconds, throughput, peak memory, GFLOP/s against the machine's GEMM rate, ratios to torch and to the authors' way, agreement with torch fp32 (PSNR, max differences of image, TSEM and ω), and folder-mode I/O overlap.

    Each iteration is what `tsf-trt infer` does for one subject: read the NIfTI inputs, synthesise, write the outputs. `tsf-trt bench suite` regenerates the whole-slice tables of docs/performance.md (options of its own: tsf-trt bench suite --help).

    --backend, --batch-size, --precision, --frame and --decoder each take a comma list: one row per combination.

    Example: tsf-trt bench --backend torch,ort --batch-size 1,4 --shape 96 96 16 --json bench/small.json
    """
    if ctx.invoked_subcommand is not None:
        _refuse_own_options(ctx)
        return
    from tsf_trt.bench.report import print_report, write_files
    from tsf_trt.bench.runner import DEFAULT_SHAPE, BenchRun, BenchSettings
    from tsf_trt.bench.variants import DECODERS, check_compile, parse_backends, parse_batch_sizes, parse_list
    from tsf_trt.bench.workload import check_sources, parse_shape

    from tsf_trt import sequences
    from tsf_trt.backends import PRECISIONS
    from tsf_trt.console import deprecated
    from tsf_trt.bundled import resolve_model
    from tsf_trt.errors import InputError, TsfError
    from tsf_trt.synthesis.options import RunOptions

    for flag, value, low in (("--warmup", warmup, 0), ("--iterations", iterations, 1),
                             ("--io-subjects", io_subjects, 0)):
        if value is not None and value < low:
            raise TsfError(f"{flag} must be at least {low}, got {value}")
    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    options = RunOptions(device=device, threads=threads)  # the one check of --device and --threads
    target_index = sequences.parse(target)  # a --target choice: one of sequences.ALIASES
    source_list = tuple(_sequences("--sources", sources)) if sources else None
    if source_list:
        check_sources(source_list, target_index)  # before any model loads
    if subject is not None and shape is not None:
        raise TsfError("--shape makes a phantom; --subject-dir benchmarks a real one: give only one of them")
    if subject is not None and not subject.is_dir():
        raise InputError(subject, "no such subject folder")
    shape_zyx = parse_shape(shape) if shape is not None else None
    if shape is not None and len(shape.split()) == 1 and shape_zyx is not None:
        deprecated(f"--shape {shape} (slices x height x width)", f"--shape {' '.join(map(str, shape_zyx[::-1]))} "
                   "(X Y Z, the file's axes, as every command writes a volume's shape)")
    outputs = [p for p in (json_path, markdown, plot) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise TsfError("--json, --markdown and --plot must name different files")
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(plot, "the plot is a PNG: give a file name ending in .png")
    all_precisions = tuple(dict.fromkeys(p for taken in PRECISIONS.values() for p in taken))
    row_kinds = {"precisions": parse_list("--precision", precisions, all_precisions),
                 "decoders": parse_list("--decoder", decoders, DECODERS), "frames": _frames(frames)}
    model_path = resolve_model(model)
    if not model_path.is_dir():
        raise InputError(model_path, "no such model or export directory")
    for path in outputs:  # before minutes of measuring
        _check_output(path, overwrite, [("--model directory", model_path), ("--subject-dir folder", subject)])
    backend_names = parse_backends(backends, reference)
    if compile:
        check_compile(backend_names)
    settings = BenchSettings(model=model_path, backends=backend_names, compile=compile,
                             batch_sizes=parse_batch_sizes(batch_sizes), target=target_index, shape_zyx=shape_zyx,
                             subject=subject, sources=source_list, tsem=tsem, warmup=warmup, iterations=iterations,
                             threads=threads, device=_device(options.device), io_subjects=io_subjects,
                             interleave=interleave, **row_kinds)
    what = "the subject" if subject is not None else f"a {' '.join(map(str, (shape_zyx or DEFAULT_SHAPE)[::-1]))} phantom"
    with step(f"loading {model_path} and writing {what}"):
        bench_run = BenchRun(settings)
    with bench_run, progress_bar() as bar:
        task = bar.add_task("bench", total=None)
        report = bench_run.run(lambda text, done, total: bar.update(task, description=text, completed=done,
                                                                      total=total))
    print_report(report, out)
    for path in write_files(report, json_path=json_path, markdown=markdown, png=plot, overwrite=overwrite):
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _check_output(path: Path, overwrite: bool, inputs: list[tuple[str, Path | None]]) -> None:
    """A report file of bench or bench suite, before any measuring: never an input, its folder made
    and swept of killed runs' leftovers, replaced only with --overwrite and only if tsf-trt's."""
    from tsf_trt.files.atomic import check_writable, make_folder, sweep
    from tsf_trt.files.ownership import refuse_input_overlap

    refuse_input_overlap(path, inputs)
    make_folder(path.parent)
    sweep(path.parent, [path.name])
    check_writable(path, overwrite)


def _frames(text: str) -> list[str]:
    from tsf_trt.synthesis.frame import FrameSpec

    return list(dict.fromkeys(str(FrameSpec.parse(f)) for f in text.split(",") if f.strip())) or ["head"]


def _refuse_own_options(ctx: typer.Context) -> None:
    """`tsf-trt bench --threads 1 suite` would drop --threads silently: say so instead."""
    from tsf_trt.errors import TsfError

    sources = {p.opts[0]: ctx.get_parameter_source(p.name) for p in ctx.command.params if p.name}
    given = [opt for opt, source in sources.items() if source is not None and source.name == "COMMANDLINE"]
    if given:
        raise TsfError(f"{', '.join(given)} before '{ctx.invoked_subcommand}' belong(s) to `tsf-trt bench` itself; "
                       f"give them after it (tsf-trt bench {ctx.invoked_subcommand} --help lists its options)")


@bench_app.command("suite")
@user_errors
def suite(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory to measure (default: "
                                                  "seeded random weights of --config, as docs/performance.md).",
                                                  show_default=False)] = None,
    config: Annotated[Literal["paper", "small", "demo"], typer.Option(
        "--config", case_sensitive=False, help="Preset of the random-weight model.")] = "paper",
    shape: params.Shape = (240, 240, 155),
    variants: Annotated[str, typer.Option("--variants", help="Comma list of the table's rows: reference, torch, "
                                          "torch-bf16 (autocast), ort-code (code-input decoder), ort-baked "
                                          "(per-target decoders); default: all five, in this order.",
                                          show_default=False)] = "reference,torch,torch-bf16,ort-code,ort-baked",
    threads: params.Threads = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices per network batch "
                                                      "(default: each backend's own choice; reference is always "
                                                      "1).", show_default=False)] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed whole-volume runs per variant before "
                                        "the timed one.")] = 1,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Markdown file (default: standard "
                                                   "output).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output.")] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Regenerate the whole-slice tables of docs/performance.md on this machine, as Markdown: every variant on the same phantom, in one run, same threads, on the CPU; seconds of in-memory synthesis per volume, the ratio to the authors' way, and the image's agreement with torch fp32.

    The paper configuration at 240 240 155 takes hours on a few cores; --config small --shape 128 128 32 takes minutes.

    Example: tsf-trt bench suite --config small --shape 128 128 32 --threads 2 -o performance.md
    """
    import sys

    from tsf_trt.bench.suite import parse_variants, run_suite
    from tsf_trt.bench.workload import check_shape

    from tsf_trt.files.atomic import atomic_path
    from tsf_trt.synthesis.options import check_threads

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    check_threads(threads)
    names, shape_zyx = parse_variants(variants), check_shape(shape)
    if output is not None:  # before hours of measuring
        _check_output(output, overwrite, [("--model directory", model)])
    with progress_bar() as bar:
        task = bar.add_task("suite", total=None)
        text = run_suite(model=model, config=config, shape_zyx=shape_zyx, variants=names, threads=threads,
                         batch_size=batch_size, warmup=warmup,
                         progress=lambda what, done, total: bar.update(task, description=what, completed=done,
                                                                       total=total))
    if output is None:
        sys.stdout.write(text)
    else:
        with atomic_path(output, overwrite) as path:
            path.write_text(text)
        err.print(f"wrote {output}", highlight=False, soft_wrap=True)


def _sequences(flag: str, text: str) -> list[int]:
    from tsf_trt import sequences
    from tsf_trt.errors import TsfError

    try:
        return sequences.parse_list(text)
    except TsfError as exc:
        raise TsfError(f"{flag}: {exc}") from None


def _device(device: str) -> str:
    """torch and reference rows run on one device: auto is CUDA when torch sees it (the CPU where
    torch is not installed: its rows are then skipped with the extra named)."""
    if device == "auto":
        from tsf_trt.bench.environment import optional_torch

        torch = optional_torch()
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    return device
