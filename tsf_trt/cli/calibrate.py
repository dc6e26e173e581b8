"""`tsf-trt calibrate`: per-voxel error bounds with a coverage guarantee, made on subjects with the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.params import INPUTS_PANEL, OUTPUTS_PANEL

#: calibrate's own panel: the bound and how the half-width is fitted.
BOUND_PANEL = "The bound"
from tsf_trt.cli.app import app, log, out, progress_bar, setup_logging, step, user_errors

#: The task calibrated unless --tasks says otherwise: the full multi-to-one case and the demo's.
DEFAULT_TASKS = "t1,t1gd,flair->t2;t1,flair->t2"


@app.command("calibrate", no_args_is_help=True)
@user_errors
def calibrate(
    data: Annotated[Path, typer.Option("--data", "-d", metavar="FOLDER", rich_help_panel=INPUTS_PANEL,
                                       help="Folder of subjects whose target is known (one "
                                       "sub-folder per subject: BraTS 2021/2023 names, or `tsf-trt phantom` "
                                       "output), never used to train the model. At least 9 of them set λ at "
                                       "--alpha 0.1 (about 100 make the bound tight); --fit-fraction of them fit "
                                       "the heuristic instead.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", rich_help_panel=OUTPUTS_PANEL,
                                         help="The calibration file to write (JSON), for "
                                         "`tsf-trt infer --calibration` and `tsf-trt evaluate --calibration`.",
                                         show_default=False)],
    model: params.Model = None,
    tasks: Annotated[str, typer.Option("--tasks", rich_help_panel=INPUTS_PANEL,
                                       help="Tasks to calibrate, as `evaluate --tasks` takes them "
                                       "('->t2', 't1,flair->t2', ...; ';' between several). Each gets its "
                                       "own λ.")] = DEFAULT_TASKS,
    alpha: Annotated[float, typer.Option("--alpha", rich_help_panel=BOUND_PANEL,
                                         help="The bound: on subjects like these, the expected fraction "
                                         "of head voxels whose truth lies outside synthesis ± half-width is at "
                                         "most alpha.")] = 0.1,
    heuristic: Annotated[Optional[str], typer.Option("--heuristic", rich_help_panel=BOUND_PANEL,
                                                     help="What the half-width follows (docs/trust.md, "
                                                     "\"Measured with the bundled demo model\", measures each): "
                                                     "edge+tsem_smooth (the default), tsem, tsem_smooth, edge, "
                                                     "intensity, edge+tsem_smooth+intensity, spread (one extra "
                                                     "decoder pass per input), edge+tsem_smooth+spread, or constant "
                                                     "(the same width everywhere).", show_default=False)] = None,
    fit_fraction: Annotated[float, typer.Option("--fit-fraction", rich_help_panel=BOUND_PANEL,
                                                help="About this fraction of the subjects (by "
                                                "a hash of their names) fits the heuristic's coefficients; "
                                                "the others set λ.")] = 0.25,
    slice_step: Annotated[int, typer.Option("--slice-step", min=1, rich_help_panel=INPUTS_PANEL,
                                            help="Use every K-th axial slice that holds "
                                            "head voxels (about K times faster; the bound is then over those "
                                            "slices' voxels).")] = 1,
    backend: params.Backend = "auto",
    batch_size: params.BatchSize = None,
    device: params.Device = "auto",
    precision: params.Precision = "auto",
    threads: params.Threads = None,
    frame: params.Frame = "head",
    overwrite: Annotated[bool, typer.Option("--overwrite", rich_help_panel=OUTPUTS_PANEL,
                                            help="Replace a calibration file tsf-trt wrote.")
                         ] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Calibrate per-voxel error bounds on subjects whose target is known: the half-width map `infer --calibration` writes.

    A heuristic u(x) (the synthesis's edges and its TSEM) is fitted to the |error| of some subjects, and λ is chosen on the others by conformal risk control (Angelopoulos et al. 2022/2024), so that on new subjects like these the expected fraction of head voxels whose truth lies outside synthesis ± λ·u(x) is at most --alpha. The file holds λ, α, the heuristic per task, the model id, the subjects used and their voxel sizes; `infer` says when a subject is outside what it covers.

    Example: tsf-trt calibrate --data calibration-set --tasks 't1,flair->t2' -o calibration.json --slice-step 4
    """
    from tsf_trt.evaluation.calibrate import (DEFAULT_HEURISTIC, CalibrationPlan, calibrate as run_calibration,
                                              check_subjects)
    from tsf_trt.evaluation.tasks import parse_tasks
    from tsf_trt.files.atomic import check_writable
    from tsf_trt.files.ownership import refuse_input_overlap
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.sequences import check_task
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.source import ModelSource
    from tsf_trt.uncertainty.calibration import write_calibration
    from tsf_trt.uncertainty.heuristic import needs

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    options = RunOptions(backend, device, precision, batch_size, threads, frame=frame)
    plan = CalibrationPlan(tuple(parse_tasks(tasks)), alpha, heuristic or DEFAULT_HEURISTIC, fit_fraction, slice_step,
                           str(options.frame))
    subjects = find_subjects(data)
    source = ModelSource.resolve(model)
    for task in plan.tasks:
        check_task(list(task.sources), task.target, has_fusion=source.has_fusion, model=source.label)
    if "tsem" in needs(plan.features) and not source.has_fusion:
        from tsf_trt.errors import TsfError

        raise TsfError(f"--heuristic {plan.heuristic} needs TSEM, and {source.label} has no TSF stage: use edge, spread "
                       "or constant")
    fit, rest = check_subjects(subjects, plan)
    refuse_input_overlap(output, [("--data folder", data), ("--model directory", source.path)])
    check_writable(output, overwrite)
    with step(f"loading model {source.path}"):
        synth = Synthesizer(source, options)
    log.info("calibrating %s on %d subjects (%d fit the heuristic, %d set λ) at α = %g",
             ", ".join(t.key for t in plan.tasks), len(subjects), len(fit), len(rest), alpha)
    bar = progress_bar()
    bar.start()
    try:
        task_id = bar.add_task("subjects", total=len(subjects))
        calibration = run_calibration(synth.backend, subjects, plan,
                                      progress=lambda what: (bar.advance(task_id), log.info("%s", what)))
    finally:
        bar.stop()
    write_calibration(calibration, output, overwrite)
    for key, entry in calibration.tasks.items():
        out.print(f"{key}: λ = {entry.lam:.4g} on {entry.n_subjects} subjects; {100 * entry.empirical_outside:.1f} % "
                  f"of their head voxels outside (bound {100 * alpha:g} % in expectation); flag above "
                  f"{entry.flag_above:.1f}", highlight=False)
    out.print(f"calibration: {output}", highlight=False, soft_wrap=True)
