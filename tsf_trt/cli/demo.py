"""`tsf-trt demo`: see the tool work, with no data and no download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import app, log, out, progress_bar, setup_logging, step, user_errors


@app.command("demo")
@user_errors
def demo(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the phantom subject, both "
                                                   "syntheses, the figures and demo.json (created if missing). "
                                                   "Default: tsf-trt-demo in the current folder (a run's report "
                                                   "goes where you run it: docs/outputs.md, \"Where outputs go\").",
                                                   show_default=False)] = None,
    model: params.Model = None,
    backend: Annotated[params.BackendName, typer.Option("--backend", "-b", case_sensitive=False,
                                                        rich_help_panel=params.RUNTIME_PANEL,
                                                        help="Runtime, as for infer (auto: the fastest here, "
                                                        "measured once and cached).")] = "auto",
    threads: params.Threads = None,
    frame: params.Frame = "head",
    shape: params.Shape = (240, 240, 155),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the outputs of an earlier demo.")] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Synthesise the T2 of a held-out phantom from T1 + FLAIR, then from T1 + T1Gd + FLAIR, and score both.

    Prints PSNR and SSIM against the phantom's true T2 (inside the head), the contribution ω of each input and the PSNR inside vs outside the top-1 % TSEM region; writes the subject, the syntheses with their TSEM and JSON reports (as `infer` does), one PNG figure per task and demo.json.

    Example: tsf-trt demo -o demo
    """
    from rich.table import Table

    from tsf_trt.runs.demo import TARGET, check_demo, run_demo
    from tsf_trt.runs.outputs import default_output
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.source import ModelSource

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    options = RunOptions(backend, threads=threads, frame=frame)  # every value, before any work
    source = ModelSource.resolve(model)  # reads config.json only
    if output is None:
        output = default_output(command="demo")
        log.info("output: %s (the default, in the current folder; choose another with -o)", output)
    check_demo(output, overwrite, inputs=[("--model directory", source.path)])  # before the model loads
    with step(f"loading model {source.path}"):
        synth = Synthesizer(source, options)
    log.info("backend: %s", synth.backend.describe())
    with progress_bar() as bar:
        def on_task(task: str):
            log.info("demo: %s", task)
            job = bar.add_task(task, total=None)
            return lambda done, total: bar.update(job, completed=done, total=total)

        scores = run_demo(synth, output, overwrite=overwrite, shape=shape, on_task=on_task)
    table = Table(title=f"{TARGET.upper()} of a held-out phantom", caption=synth.backend.describe())
    for column in ("task", "PSNR", "SSIM", "ω", "PSNR top 1 % TSEM | rest", "s"):
        table.add_column(column, justify="left" if column in ("task", "ω") else "right", no_wrap=column == "task")
    for s in scores:
        tsem = "-" if s.tsem_psnr_top1 is None else f"{s.tsem_psnr_top1:.2f} | {s.tsem_psnr_rest:.2f}"
        table.add_row(s.task, f"{s.psnr:.2f}", f"{s.ssim:.3f}",
                      "\n".join(f"{k} {v:.2f}" for k, v in s.weights.items()), tsem, f"{s.seconds:.1f}")
    out.print(table)
    out.print("PSNR (dB) and SSIM inside the head, against the phantom's true T2 (which carries noise no "
              "synthesis can predict); ω: each input's contribution.", highlight=False, soft_wrap=True)
    for s in scores:
        out.print(f"  {s.task}: {output / s.folder}/ and {output / s.figure}", highlight=False, soft_wrap=True)
    out.print(f"  scores: {output / 'demo.json'}", highlight=False, soft_wrap=True)
