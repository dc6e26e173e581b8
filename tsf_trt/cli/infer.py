"""`tsf-trt infer`: whole-volume synthesis with TSEM for one subject or a folder of them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import EXIT_ERROR, app, log, out, progress_bar, setup_logging, step, user_errors
from tsf_trt.cli.infer_options import (HELP_CALIBRATION, HELP_DATA, HELP_INPUTS, HELP_OUTPUT, bids_filter_pairs,
                                       calibration_file, check_mode, data_items, labels, log_unused,
                                       not_a_bids_app_call)
from tsf_trt.cli.params import CHECKS_PANEL, FOLDER_PANEL, INPUTS_PANEL, OUTPUTS_PANEL, RUNTIME_PANEL
from tsf_trt.cli.vocabulary import RenamedCommand
from tsf_trt.files.atomic import make_folder, remove_empty_folders
from tsf_trt.runs.claims import DEFAULT_LEASE_S


@app.command("infer", cls=RenamedCommand, no_args_is_help=True)
@user_errors
def infer(
    target: params.Target,
    inputs: Annotated[Optional[list[str]], typer.Option("--inputs", "-i", help=HELP_INPUTS, show_default=False,
                                                        rich_help_panel=INPUTS_PANEL)] = None,
    more_inputs: Annotated[Optional[list[str]], typer.Argument(help="More input files (same forms as --inputs).",
                                                                 show_default=False, metavar="FILE",
                                                                 rich_help_panel=INPUTS_PANEL)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help=HELP_DATA, show_default=False,
                                                 metavar="FOLDER", rich_help_panel=INPUTS_PANEL)] = None,
    bids: Annotated[Optional[Path], typer.Option("--bids", help="A BIDS dataset: subjects sub-*/\\[ses-*/]anat/ "
                                                 "with T1w (ce-*: T1Gd), T2w, FLAIR; outputs as a BIDS derivative "
                                                 "dataset (default -o BIDS/derivatives/tsf-trt). A folder given "
                                                 "to --data that has dataset_description.json is read the same "
                                                 "way.", show_default=False, rich_help_panel=INPUTS_PANEL)] = None,
    map_file: Annotated[Optional[Path], typer.Option("--map", help="CSV of subject,sequence,path rows (paths "
                                                     "relative to the CSV): subjects for any layout the naming "
                                                     "rules do not read.", show_default=False,
                                                     rich_help_panel=INPUTS_PANEL)] = None,
    sources: Annotated[Optional[str], typer.Option("--sources", help="Folder mode: the input sequences to use, "
                                                   "e.g. t1,flair (default: every sequence a subject has "
                                                   "except the target).", show_default=False,
                                                   rich_help_panel=INPUTS_PANEL)] = None,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Folder mode, nnU-Net naming: the "
                                                    "sequence of each channel _0000, _0001, ... e.g. "
                                                    "t1,t1gd,t2,flair.", show_default=False,
                                                    rich_help_panel=INPUTS_PANEL)] = None,
    subject: Annotated[Optional[str], typer.Option("--subject-name", help="One subject's name in its output file "
                                                   "names (with -o NAME.nii.gz, in the report only; default: the "
                                                   "inputs' common name without the sequence suffix).",
                                                   show_default=False, rich_help_panel=INPUTS_PANEL)] = None,
    participant_label: Annotated[Optional[list[str]], typer.Option("--participant-label", help="BIDS: only "
                                                                   "these subjects (01 or sub-01; repeat, or "
                                                                   "01,02).", show_default=False,
                                                                   rich_help_panel=INPUTS_PANEL)] = None,
    session: Annotated[Optional[list[str]], typer.Option("--session-label", help="BIDS: only these sessions (pre "
                                                         "or ses-pre; repeat, or pre,post).", show_default=False,
                                                         rich_help_panel=INPUTS_PANEL)] = None,
    bids_filter: Annotated[Optional[list[str]], typer.Option("--bids-filter", help="BIDS: keep the candidates "
                                                             "with ENTITY=LABEL (acq=mprage; t1.run=2 for one "
                                                             "sequence; ce= for those without the entity) when "
                                                             "a sequence has several; repeat for more.",
                                                             show_default=False, metavar="ENTITY=LABEL",
                                                             rich_help_panel=INPUTS_PANEL)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help=HELP_OUTPUT, show_default=False,
                                                   metavar="DIR|FILE.nii.gz", rich_help_panel=OUTPUTS_PANEL)] = None,
    tsem: Annotated[bool, typer.Option("--tsem/--no-tsem", help="Also write the TSEM map (costs a second "
                                       "decoder pass, run in the same batch).", rich_help_panel=OUTPUTS_PANEL)
                    ] = True,
    calibration: Annotated[Optional[str], typer.Option("--calibration", help=HELP_CALIBRATION, show_default=False,
                                                       metavar="FILE|none", rich_help_panel=OUTPUTS_PANEL)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs; in folder mode, "
                                            "redo finished subjects too.", rich_help_panel=OUTPUTS_PANEL)] = False,
    model: params.Model = None,
    backend: params.Backend = "auto",
    device: params.Device = "auto",
    precision: params.Precision = "auto",
    batch_size: params.BatchSize = None,
    threads: params.Threads = None,
    frame: params.Frame = "head",
    combine: Annotated[Literal["middle", "mean"], typer.Option(
        "--combine", case_sensitive=False, rich_help_panel=RUNTIME_PANEL,
        help="How the 3 output channels of neighbouring 2.5D samples make a slice: middle (the reference) or "
             "mean (of every prediction of the slice).")] = "middle",
    compile: params.Compile = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Process only shard i of n (i/n, round-robin "
                                                 "over sorted subjects), to split a data set across processes or "
                                                 "machines.", show_default=False, metavar="i/n",
                                                 rich_help_panel=FOLDER_PANEL)] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Several GPUs: one worker process per GPU "
                                                   "index (e.g. 0,1), each over a disjoint share of the subjects, "
                                                   "file reading and writing overlapping GPU work.",
                                                   show_default=False, rich_help_panel=FOLDER_PANEL)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="When other runs hold subjects, wait for them to finish "
                                       "those (or take them over if they die) instead of leaving them: when this "
                                       "run ends, every subject is done or failed.", rich_help_panel=FOLDER_PANEL)
                    ] = False,
    claim_lease: Annotated[float, typer.Option("--claim-lease", help="Seconds after which a claim of a run on "
                                               "another machine that stopped refreshing it counts as dead and is "
                                               "taken over (claims of this machine's runs, in this PID namespace, "
                                               "are checked by pid). Longer than the longest pause a machine may "
                                               "have; clocks of machines sharing a folder must agree to within a "
                                               "fraction of it. From 1 s to a week.",
                                               rich_help_panel=FOLDER_PANEL)] = DEFAULT_LEASE_S,
    strict: Annotated[bool, typer.Option("--strict", help="Make the preprocessing checks' warnings (voxel size "
                                         "far from 1 mm, not skull-stripped, inputs not aligned) errors: that "
                                         "subject fails.", rich_help_panel=CHECKS_PANEL)] = False,
    resample: Annotated[bool, typer.Option("--resample", help="Inputs on different grids or far from 1 mm: "
                                           "resample them to 1 mm isotropic for the network and write the "
                                           "outputs back on the first input's grid.",
                                           rich_help_panel=CHECKS_PANEL)] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Synthesise a missing sequence for whole volumes, with TSEM and contribution weights.

    Writes three files per subject, in the input's own grid, orientation and header, each only when complete: <subject>_<target>_synth.nii.gz (the network's [-1, 1] output mapped to 0..1000), <subject>_<target>_tsem.nii.gz (|output with - without attention|, paper Eq. 6, network units) and <subject>_<target>.json (ω per input, TSEM summary, the interval block, model id, backend, timings); with a calibration that applies to the subject (--calibration), a fourth: <subject>_<target>_halfwidth.nii.gz, the interval's half-width in the synthesis's units. One subject with -o NAME.nii.gz: NAME.nii.gz, NAME_tsem.nii.gz, NAME.json (and NAME_halfwidth.nii.gz).

    Without -o, outputs go to derivatives/tsf-trt of the data set's folder, or of the current folder for files given one by one; the log says where.

    Folder mode (--data, --bids, --map) is safe to run in many processes at once, on one machine or many sharing the folders: each subject is claimed before work, finished ones are skipped, claims of dead runs are taken over (docs/clusters.md, "Many processes, many machines").

    Example: tsf-trt infer --inputs phantoms/Phantom_00000/Phantom_00000_t1.nii.gz phantoms/Phantom_00000/Phantom_00000_flair.nii.gz --target t2

    Example: tsf-trt infer --inputs phantoms/Phantom_00000/Phantom_00000_t1.nii.gz phantoms/Phantom_00000/Phantom_00000_flair.nii.gz --target t2 -o Phantom_00000_synthT2.nii.gz

    Example: tsf-trt infer --data phantoms --target t2 --sources t1,flair -o synth

    Example: tsf-trt infer --data phantoms --target t2 --sources t1,flair -o synth-interval --calibration calibration.json
    """
    from tsf_trt import sequences
    from tsf_trt.inputs.intake import Intake
    from tsf_trt.runs.outputs import default_output
    from tsf_trt.runs.request import InferRequest, file_output_error, split_output
    from tsf_trt.synthesis.options import RunOptions

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    # every value, before any work
    not_a_bids_app_call(inputs, more_inputs, target)
    options = RunOptions(backend, device, precision, batch_size, threads, combine, frame, compile)
    target_index = sequences.parse(target)  # a --target choice: one of sequences.ALIASES
    intake = Intake(data_items(inputs, more_inputs, data), subject,
                    tuple(sequences.parse_list(channels)) if channels else None, shard, bids,
                    labels(participant_label), labels(session), bids_filter_pairs(bids_filter), map_file)
    check_mode(intake, {"--channels": channels, "--sources": sources, "--shard": shard, "--devices": devices,
                        "--wait": wait, "--claim-lease": claim_lease != DEFAULT_LEASE_S},
               {"--participant-label": participant_label, "--session-label": session, "--bids-filter": bids_filter},
               "--data" if data is not None else "--inputs")
    output_given = output is not None
    output, synth_name = split_output(output) if output is not None else (default_output(intake.root), None)
    if synth_name is not None and intake.mode != "single":
        raise file_output_error(output / synth_name)  # before the data set is read
    request = InferRequest(target_index, output, sequences.parse_list(sources) if sources else None, tsem,
                           overwrite, claim_lease, wait, strict=strict, resample=resample,
                           calibration=calibration_file(calibration), synth_name=synth_name)
    run_request(intake, request, options, model, own_calibration=calibration is None, output_given=output_given,
                verbose=verbose, devices=devices)


def run_request(intake, request, options, model: Path | None, *, own_calibration: bool, output_given: bool = True,
                verbose: bool = False, devices: str | None = None) -> None:
    """What `infer` does once its options are checked, and the BIDS App (`tsf-trt bids`,
    tsf_trt/cli/bids_app.py) with them: one path from an `Intake` and an `InferRequest` to outputs.
    Gathers the subjects, resolves the model without loading it (with `own_calibration`, its own
    calibration.json applies), checks every output location, then loads the model and runs."""
    from tsf_trt.inputs.intake import gather
    from tsf_trt.synthesis.source import ModelSource
    from tsf_trt.uncertainty.calibration import read_calibration

    output = request.output
    if devices:
        from tsf_trt.runs.multigpu import parse_devices

        parse_devices(devices)  # fails at once without GPUs, before any folder is scanned
    gathered = gather(intake, request.target, request.sources)
    source = ModelSource.resolve(model)  # its id and stages, read without loading weights
    if own_calibration and source.calibration_file is not None:  # the model's own, unless told otherwise
        request = replace(request, calibration=read_calibration(source.calibration_file))
        log.info("calibration: %s (the model's own; --calibration none to run without)", source.calibration_file)
    request.check_calibration(source.model_id)  # another model's: refused before the model loads
    if not output_given:
        log.info("output: %s (the default: %s; choose another with -o)", output,
                 "in the data set's folder" if intake.root is not None else "files given one by one: in the current "
                 "folder")
    log_unused(gathered, intake, verbose)
    created = make_folder(output)
    try:
        _check_before_load(intake.mode, gathered.subjects, request, source, options)
        if devices:
            from tsf_trt.cli.devices import run_devices

            return run_devices(devices, source, options, request, gathered.subjects)
        synth = _synthesizer(source, options)
        if intake.mode == "single":
            _run_one(synth, gathered.subjects[0], request)
        else:
            _run_folder(synth, gathered.subjects, request)
    except BaseException:
        remove_empty_folders(created, output)
        raise


def _check_before_load(mode: str, subjects, request, source, options) -> None:
    """What needs the model's config but not its weights, and every output location, before
    the model loads (which may take half a minute): a one-input model gets one input (--frame
    is checked against the model when the Synthesizer is built, before it loads); the output
    folder is writable; one subject's outputs do not exist (without --overwrite) and are no
    input; a folder's outputs are not another model's (tsf_trt.runs.outputs.check_folder_outputs),
    and its cohort table's name holds no file of the user's (tsf_trt.runs.table.check_table)."""
    from tsf_trt.files.atomic import check_folder_writable
    from tsf_trt.runs.outputs import check_folder_outputs
    from tsf_trt.sequences import check_task

    if mode == "single" or request.sources:
        sources = sorted(request.sources or subjects[0].inputs)
        check_task(sources, request.target, has_fusion=source.has_fusion, model=source.label)
    check_folder_writable(request.output)
    if mode == "single":
        subject = subjects[0]
        request.outputs_of(subject, source.has_fusion, own_folder=False).check(request.overwrite,
                                                                               subject.inputs.values())
    else:
        from tsf_trt.runs.table import check_table, table_path

        check_folder_outputs(request.output, subjects, request.target, source.model_id,
                             overwrite=request.overwrite, lease_s=request.lease_s)
        check_table(table_path(request.output, request.target))


def _synthesizer(source, options):
    from tsf_trt.synthesis.pipeline import Synthesizer

    with step(f"loading model {source.path}"):
        synth = Synthesizer(source, options)
    log.info("backend: %s; precision %s: %s", synth.backend.describe(), synth.backend.runtime_precision,
             synth.backend.precision_reason)
    return synth


def _run_one(synth, subject, request) -> None:
    from tsf_trt import sequences
    from tsf_trt.runs.jobs import infer_subject

    task = sequences.describe(list(subject.inputs), request.target)
    bar = progress_bar()
    slices = []  # the bar appears with the first batch, after every check has passed

    def progress(done: int, total: int) -> None:
        if not slices:
            bar.start()
            slices.append(bar.add_task(f"{subject.name} {task}", total=total))
        bar.update(slices[0], completed=done)

    try:
        outcome = infer_subject(synth, subject, request, progress=progress, backend_name=synth.backend.describe())
    finally:
        if slices:
            bar.stop()
    log.info("%s", outcome.line(f"{synth.backend.name} {synth.backend.runtime_precision}"),
             extra={"subject": outcome.subject})
    _print_outcome(outcome, request.tsem and not request.makes_tsem(synth.has_fusion))


def _print_outcome(outcome, tsem_unavailable: bool) -> None:
    from tsf_trt.runs.outcomes import interval_text

    result, paths = outcome.result, outcome.paths
    weights = ", ".join(f"{k}={v:.3f}" for k, v in result.weights_by_name().items())
    out.print(f"{outcome.subject}: {result.task} in {result.timings['total']:.1f} s; ω: {weights}",
              highlight=False, soft_wrap=True)
    for path in paths.all():
        out.print(f"  wrote {path}", highlight=False, soft_wrap=True)
    for path in outcome.removed:
        out.print(f"  removed {path} (left by a killed run)", highlight=False, soft_wrap=True)
    if outcome.interval:
        out.print(f"  {interval_text(outcome.interval)}", highlight=False, soft_wrap=True)
    if tsem_unavailable:
        out.print("  no TSEM: this model has no TSF stage (Seq2Seq only)", highlight=False)


def _run_folder(synth, subjects, request) -> None:
    from tsf_trt.inputs.subjects import shown
    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.runs.outcomes import findings_summary

    start = time.perf_counter()
    ran = f"{synth.backend.name} {synth.backend.runtime_precision}"
    with progress_bar() as bar:
        overall = bar.add_task("subjects", total=len(subjects))
        slices = bar.add_task("", total=None, visible=False)

        def on_start(subject):
            bar.reset(slices, description=f"  {shown(subject.name)}", total=None, visible=True)
            return lambda done, total: bar.update(slices, completed=done, total=total)

        def on_end(outcome):
            bar.advance(overall)
            bar.update(slices, visible=False)
            (log.error if outcome.status == "failed" else log.info)("%s", outcome.line(ran), extra={"subject":
                                                                                                    outcome.subject})

        waited = []

        def on_wait(busy) -> None:
            if len(busy) != (waited[-1] if waited else None):
                log.info("waiting for %d subject(s) that other runs hold", len(busy))
            waited.append(len(busy))

        summary = infer_folder(synth, subjects, request, on_start=on_start, on_end=on_end, on_wait=on_wait,
                               backend_name=synth.backend.describe())
    for line in findings_summary(summary.outcomes):  # once per run, not once per input per subject
        log.warning("%s", line)
    out.print(summary.line(time.perf_counter() - start), highlight=False, soft_wrap=True)
    if summary.table is not None:
        out.print(f"cohort table: {summary.table}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_ERROR)
