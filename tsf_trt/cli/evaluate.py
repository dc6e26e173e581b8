"""`tsf-trt evaluate`: the paper's tables and figures, and how a calibration's intervals hold, on a data set
with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.params import INPUTS_PANEL, OUTPUTS_PANEL

#: evaluate's own panel: what is scored besides PSNR and SSIM.
SCORING_PANEL = "Scoring"
from tsf_trt.cli.app import (EXIT_ERROR, EXIT_INTERRUPTED, app, err, log, out, progress_bar, setup_logging, step,
                             user_errors)


@app.command("evaluate", no_args_is_help=True)
@user_errors
def evaluate(
    data: Annotated[Path, typer.Option("--data", "-d", metavar="FOLDER", rich_help_panel=INPUTS_PANEL,
                                       help="Folder of subjects with all the sequences to score "
                                       "against: one sub-folder per subject (BraTS 2021/2023 names, or "
                                       "`tsf-trt phantom` output) or flat BraTS-named files.", show_default=False)],
    model: params.Model = None,
    tasks: Annotated[Optional[list[str]], typer.Option("--tasks", rich_help_panel=INPUTS_PANEL,
                                                       help="Tasks to score: 'all' (every "
                                                       "non-empty source subset x every other target: 28), 'single' "
                                                       "(the 12 one-input tasks), '->t2' "
                                                       "(every task with that target), or tasks such as "
                                                       "'t1,flair->t2'; several separated by ';' or spaces, or "
                                                       "repeat the option.", show_default="all",
                                                       metavar="TASKS")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUTS_PANEL,
                                                   help="Report folder (created if missing): "
                                                   "report.md, summary.json, results.csv, figures/, subjects/ (the "
                                                   "resume cache); never inside --data. Default: tsf-trt-evaluate in "
                                                   "the current folder (a run's report goes where you run it: "
                                                   "docs/outputs.md, \"Where outputs go\").", show_default=False)] = None,
    backend: params.Backend = "auto",
    slice_step: Annotated[int, typer.Option("--slice-step", min=1, rich_help_panel=INPUTS_PANEL,
                                            help="Score only the axial slices z = 0, K, 2K, "
                                            "... that hold head voxels (about K times faster). The slices "
                                            "scored are what a full run gives for them: each output slice "
                                            "depends only on its own stack of 3.")] = 1,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", rich_help_panel=SCORING_PANEL,
                                          help="Also score the ablation of Table 1 "
                                          "from the same encodings: TSF without attention (fused_avg decoded) "
                                          "and the Seq2Seq stage (each input decoded on its own: their average, "
                                          "and the best single input).")] = True,
    figures: Annotated[str, typer.Option("--figures", rich_help_panel=OUTPUTS_PANEL,
                                         help="Subjects drawn (inputs / synthesis / truth / "
                                         "|error| / TSEM on three slices, one figure per target): a number (the "
                                         "first N subjects) or comma-separated subject names.")] = "1",
    lpips_weights: Annotated[Optional[Path], typer.Option("--lpips-weights", rich_help_panel=SCORING_PANEL,
                                                          help="Local torchvision AlexNet "
                                                          "(or VGG16, --lpips-net vgg) state dict: scores LPIPS "
                                                          "with the `lpips` package. Without it LPIPS is reported "
                                                          "as unavailable.", show_default=False)] = None,
    lpips_net: Annotated[Literal["alex", "vgg"], typer.Option("--lpips-net", case_sensitive=False,
                                                              rich_help_panel=SCORING_PANEL,
                                                              help="Backbone of --lpips-weights.")] = "alex",
    calibration: Annotated[Optional[Path], typer.Option("--calibration", rich_help_panel=SCORING_PANEL,
                                                        help="A calibration file from `tsf-trt "
                                                        "calibrate` for this model: measure its intervals on these "
                                                        "data (held out from the calibration): the fraction of "
                                                        "head voxels whose truth lies outside synthesis ± "
                                                        "half-width, per subject and task, beside the constant-"
                                                        "width baseline, the mean half-widths and the subject "
                                                        "flag's AUC. Figures then show the half-width beside "
                                                        "|error|.", show_default=False)] = None,
    batch_size: params.BatchSize = None,
    device: params.Device = "auto",
    precision: params.Precision = "auto",
    compile: params.Compile = False,
    threads: params.Threads = None,
    frame: params.Frame = "head",
    overwrite: Annotated[bool, typer.Option("--overwrite", rich_help_panel=OUTPUTS_PANEL,
                                            help="Start afresh in a report folder that holds "
                                            "another run (by default a folder holding the same run is resumed: "
                                            "finished subjects are reused).")] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Score a model against ground truth, as the paper's Tables 1-2 and Fig. 3, and measure a calibration's intervals.

    Every subject is synthesised for every task (the inputs are encoded once and shared by all tasks) and scored inside the head mask against its real target, normalised as in training: PSNR and SSIM (scikit-image), LPIPS with --lpips-weights. The report has Table 1 (mean ± std by number of inputs and by target, with the ablation), Table 2 (PSNR inside vs outside the top-1 % TSEM region), ω per task (Fig. 3), figures of chosen subjects, and with --calibration how its intervals and subject flag held. An interrupted run resumes: rerun the same command.

    Example: tsf-trt evaluate --data phantoms --tasks 't1,flair->t2;->t1gd' -o report --slice-step 2
    """
    from tsf_trt.errors import TsfError
    from tsf_trt.evaluation import Settings, parse_tasks
    from tsf_trt.evaluation.run import check_run
    from tsf_trt.runs.outputs import default_output
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.source import ModelSource
    from tsf_trt.uncertainty.calibration import read_calibration

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    # every value and the report folder, before any model loads
    options = RunOptions(backend, device, precision, batch_size, threads, frame=frame, compile=compile)
    chosen = parse_tasks(tasks)
    figure_spec: int | list[str]
    try:
        figure_spec = int(figures)
        if figure_spec < 0:
            raise TsfError(f"--figures must be a number >= 0 or subject names, got '{figures}'")
    except ValueError:
        figure_spec = [n.strip() for n in figures.split(",") if n.strip()]
    intervals = read_calibration(calibration) if calibration is not None else None
    if output is None:
        output = default_output(command="evaluate")
        log.info("output: %s (the default, in the current folder; choose another with -o)", output)
    source = ModelSource.resolve(model)
    settings = Settings(tasks=chosen, slice_step=slice_step, compare=compare, figures=figure_spec,
                        lpips_label=f"{lpips_net}: {lpips_weights}" if lpips_weights is not None else None,
                        batch_size=batch_size, overwrite=overwrite, frame=str(options.frame), calibration=intervals)
    check_run(data, output, settings, model_id=source.model_id, has_fusion=source.has_fusion,
              inputs=[("--model directory", source.path), ("--calibration file", calibration),
                      ("--lpips-weights file", lpips_weights)])
    if lpips_weights is not None:
        from tsf_trt.evaluation.lpips import load_lpips

        settings.lpips = load_lpips(lpips_weights, lpips_net)
    synth, model_path = _synthesizer(source, options)
    result = _run(synth, data, output, settings, str(model_path))
    _print_result(result)
    if result.failed:
        raise typer.Exit(EXIT_ERROR)


def _synthesizer(model, options):
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.source import ModelSource

    source = ModelSource.resolve(model)
    with step(f"loading model {source.path}"):
        return Synthesizer(source, options), source.path


def _run(synth, data: Path, output: Path, settings, model_label: str):
    from tsf_trt.evaluation import Hooks, evaluate as run_evaluation

    bar = progress_bar()  # started once every check has passed, so an error comes without a bar
    sizes: dict[str, int] = {}
    scored: dict[str, int] = {}
    ids: list = []

    def on_ready(tasks_per_subject):
        sizes.update(tasks_per_subject)
        bar.start()
        ids.append(bar.add_task("subjects x tasks", total=sum(sizes.values())))
        ids.append(bar.add_task("", total=None, visible=False))

    def on_subject(subject, n_tasks):
        bar.reset(ids[1], description=f"  {subject.name} ({n_tasks} tasks): slices", total=None, visible=True)
        return lambda done, total: bar.update(ids[1], completed=done, total=total)

    def on_task(subject, task):
        bar.update(ids[1], visible=False)
        scored[subject.name] = scored.get(subject.name, 0) + 1
        bar.advance(ids[0])

    def on_end(outcome):
        bar.advance(ids[0], sizes.get(outcome.subject, 0) - scored.get(outcome.subject, 0))
        bar.update(ids[1], visible=False)
        if outcome.status == "failed":
            log.error("%s: failed: %s", outcome.subject, outcome.error)
        elif outcome.status == "skipped":
            log.info("%s: skipped: %s", outcome.subject, outcome.error)
        else:
            log.info("%s: scored%s", outcome.subject, " (reused from an earlier run)" if outcome.status == "cached" else "")

    try:
        return run_evaluation(synth, data, output, settings, model_label=model_label,
                              hooks=Hooks(on_ready=on_ready, on_subject=on_subject, on_task=on_task, on_end=on_end))
    except KeyboardInterrupt:
        if not ids:
            raise
        bar.stop()
        err.print(f"interrupted: finished subjects are kept in {output / 'subjects'}; rerun the same command "
                  "to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if ids:
            bar.stop()


def _print_result(result) -> None:
    s = result.summary
    subj = s["subjects"]
    out.print(f"scored {subj['scored']} subject(s) ({subj['reused']} reused from an earlier run), "
              f"{len(subj['failed'])} failed, {len(subj['skipped'])} skipped", highlight=False)
    for row in s["table1_by_inputs"]:
        if row["method"] == s["table1_by_inputs"][0]["method"] and row["psnr"]["mean"] is not None:
            out.print(f"  {row['n_inputs']} input(s): PSNR {row['psnr']['mean']:.2f} dB, SSIM "
                      f"{row['ssim']['mean']:.4f} over {row['psnr']['n']} syntheses", highlight=False)
    for line in _interval_lines(s.get("interval")):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"report: {result.report_dir / 'report.md'}", highlight=False, soft_wrap=True)


def _interval_lines(iv) -> list[str]:
    """One line per calibrated task: how often the truth fell outside, the widths, the flag."""
    from tsf_trt.evaluation.report import auc_text

    if not iv:
        return []
    lines = []
    for t in iv["tasks"]:
        outside, width, flag = t["outside"], t["half_width"], t["flag"]
        narrower = "" if width["narrower"] is None else f" ({round(100 * width['narrower']):d} % narrower)"
        lines.append(f"  interval {t['task']}: {_pct(outside['mean'])} of head voxels outside (α {100 * t['alpha']:g} "
                     f"%; {outside.get('above_alpha', 0)} of {t['subjects']} subject(s) above), constant width "
                     f"{_pct(t['constant_outside']['mean'])}; mean half-width {_fmt(width['adaptive'], 1)} vs "
                     f"{_fmt(width['constant'], 1)} constant{narrower}; flag AUC worst decile "
                     f"{auc_text(flag, 'worst_decile')}")
    if iv["not_applied"]:
        lines.append(f"  interval: the guarantee does not apply to {len(iv['not_applied'])} synthesis(es) "
                     f"(e.g. {iv['not_applied'][0]['subject']}: {iv['not_applied'][0]['reason']}); see the report")
    return lines


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"
