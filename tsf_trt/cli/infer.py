"""`tsf-trt infer`: whole-volume synthesis with TSEM for one subject or a folder of them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import EXIT_ERROR, app, log, out, progress_bar, setup_logging, step, user_errors
from tsf_trt.files.atomic import make_folder, remove_empty_folders
from tsf_trt.runs.claims import DEFAULT_LEASE_S

HELP_INPUTS = ("Input volumes (.nii/.nii.gz). The sequence is read from the file name (BraTS _t1/_t1ce/_t2/_flair, "
               "-t1n/-t1c/-t2w/-t2f, or t1/t1gd/t2/flair) or given as t1=PATH. Several files may follow one "
               "--inputs. A single folder runs folder mode: one sub-folder per subject, or flat files "
               "(BraTS names, or nnU-Net CASE_XXXX.nii.gz with --channels).")
HELP_OUTPUT = ("Output folder (created if missing): one subject's files go in it, many subjects' in "
               "OUTPUT/<subject>/ (a BIDS dataset: the derivatives layout). One subject: a name ending in .nii.gz "
               "(or .nii) is the synthesis file itself, and the other outputs go beside it named after it "
               "(NAME_tsem.nii.gz, NAME_halfwidth.nii.gz, NAME.json). Default: derivatives/tsf-trt in the data "
               "set's folder (the folder, BIDS dataset or --map CSV's folder given; the current folder for files "
               "given one by one): never inside a subject's folder, never among the raw files.")
HELP_CALIBRATION = ("Interval calibration (calibration.json from `tsf-trt calibrate`, made for this model on "
                    "subjects with the target known). Where its guarantee applies, each subject also gets "
                    "<subject>_<target>_halfwidth.nii.gz, in the synthesis's units (0..1000): for subjects like "
                    "the calibration subjects, the expected fraction of head voxels whose true intensity lies "
                    "outside synth ± halfwidth is at most its alpha; the report's \"interval\" block gives alpha, "
                    "the mean half-width in the head and the subject's score and flag. Where it does not apply "
                    "(a task it did not calibrate, voxel sizes outside its range, any preprocessing finding, "
                    "--combine mean) the "
                    "block says why and no half-width map is written. Default: the model's own calibration.json "
                    "(in its model or export directory), if it has one; 'none': no interval. Another model's "
                    "calibration is refused.")


@app.command("infer", no_args_is_help=True)
@user_errors
def infer(
    target: params.Target,
    inputs: Annotated[Optional[list[str]], typer.Option("--inputs", "-i", help=HELP_INPUTS, show_default=False)] = None,
    more_inputs: Annotated[Optional[list[str]], typer.Argument(help="More input files (same forms as --inputs).",
                                                                 show_default=False, metavar="FILE")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help=HELP_OUTPUT, show_default=False,
                                                   metavar="DIR|FILE.nii.gz")] = None,
    model: params.Model = None,
    backend: params.Backend = "auto",
    batch_size: params.BatchSize = None,
    device: params.Device = "auto",
    precision: params.Precision = "auto",
    compile: params.Compile = False,
    tsem: Annotated[bool, typer.Option("--tsem/--no-tsem", help="Also write the TSEM map (costs a second "
                                       "decoder pass, run in the same batch).")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs; in folder mode, "
                                            "redo finished subjects too.")] = False,
    subject: Annotated[Optional[str], typer.Option("--subject", help="Subject name used in output file names "
                                                   "(with -o NAME.nii.gz, in the report only; default: the inputs' "
                                                   "common name without the sequence suffix). Single-subject mode "
                                                   "only.", show_default=False)] = None,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Folder mode, nnU-Net naming: the "
                                                    "sequence of each channel _0000, _0001, ... e.g. "
                                                    "t1,t1gd,t2,flair.", show_default=False)] = None,
    sources: Annotated[Optional[str], typer.Option("--sources", help="Folder mode: the input sequences to use, "
                                                   "e.g. t1,flair (default: every sequence a subject has "
                                                   "except the target).", show_default=False)] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Folder mode: process only shard i of n "
                                                 "(i/n, round-robin over sorted subjects), to split a data set "
                                                 "across processes or machines.", show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Folder mode on several GPUs: one worker "
                                                   "process per GPU index (e.g. 0,1), each over a disjoint share of "
                                                   "the subjects, file reading and writing overlapping GPU work.",
                                                   show_default=False)] = None,
    combine: Annotated[str, typer.Option("--combine", help="How the 3 output channels of neighbouring 2.5D "
                                         "samples make a slice: middle (the reference) or mean (of every "
                                         "prediction of the slice).")] = "middle",
    threads: params.Threads = None,
    frame: params.Frame = "head",
    calibration: Annotated[Optional[str], typer.Option("--calibration", help=HELP_CALIBRATION, show_default=False,
                                                       metavar="FILE|none")] = None,
    claim_lease: Annotated[float, typer.Option("--claim-lease", help="Folder mode: seconds after which a claim "
                                               "of a run on another machine that stopped refreshing it counts as "
                                               "dead and is taken over (claims of this machine's runs, in this PID "
                                               "namespace, are checked by pid). Longer than the longest pause a "
                                               "machine may have; clocks of machines sharing a folder must agree to "
                                               "within a fraction of it. From 1 s to a week.")] = DEFAULT_LEASE_S,
    wait: Annotated[bool, typer.Option("--wait", help="Folder mode: when other runs hold subjects, wait for them "
                                       "to finish those (or take them over if they die) instead of leaving them: "
                                       "when this run ends, every subject is done or failed.")] = False,
    bids: Annotated[Optional[Path], typer.Option("--bids", help="A BIDS dataset: subjects sub-*/[ses-*/]anat/ "
                                                 "with T1w (ce-*: T1Gd), T2w, FLAIR; outputs as a BIDS derivative "
                                                 "dataset (default -o BIDS/derivatives/tsf-trt). A folder given "
                                                 "to --inputs that has dataset_description.json is read the same "
                                                 "way.", show_default=False)] = None,
    participant_label: Annotated[Optional[list[str]], typer.Option("--participant-label", help="BIDS: only "
                                                                   "these subjects (01 or sub-01; repeat, or "
                                                                   "01,02).", show_default=False)] = None,
    session: Annotated[Optional[list[str]], typer.Option("--session", help="BIDS: only these sessions (repeat, or "
                                                         "pre,post).", show_default=False)] = None,
    bids_filter: Annotated[Optional[list[str]], typer.Option("--bids-filter", help="BIDS: keep the candidates "
                                                             "with ENTITY=LABEL (acq=mprage; t1.run=2 for one "
                                                             "sequence; ce= for those without the entity) when "
                                                             "a sequence has several; repeat for more.",
                                                             show_default=False, metavar="ENTITY=LABEL")] = None,
    map_file: Annotated[Optional[Path], typer.Option("--map", help="CSV of subject,sequence,path rows (paths "
                                                     "relative to the CSV): subjects for any layout the naming "
                                                     "rules do not read.", show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Make the preprocessing checks' warnings (voxel size "
                                         "far from 1 mm, not skull-stripped, inputs not aligned) errors: that "
                                         "subject fails.")] = False,
    resample: Annotated[bool, typer.Option("--resample", help="Inputs on different grids or far from 1 mm: "
                                           "resample them to 1 mm isotropic for the network and write the "
                                           "outputs back on the first input's grid.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List the files not used one line per "
                                          "subject however many there are (default: past 10 subjects, one line "
                                          "per reason, with a count and an example).")] = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
) -> None:
    """Synthesise a missing sequence for whole volumes, with TSEM and contribution weights.

    Writes three files per subject, in the input's own grid, orientation and header, each only when complete: <subject>_<target>_synth.nii.gz (the network's [-1, 1] output mapped to 0..1000), <subject>_<target>_tsem.nii.gz (|output with - without attention|, paper Eq. 6, network units) and <subject>_<target>.json (ω per input, TSEM summary, the interval block, model id, backend, timings); with a calibration that applies to the subject (--calibration), a fourth: <subject>_<target>_halfwidth.nii.gz, the interval's half-width in the synthesis's units. One subject with -o NAME.nii.gz: NAME.nii.gz, NAME_tsem.nii.gz, NAME.json (and NAME_halfwidth.nii.gz).

    Without -o, outputs go to derivatives/tsf-trt of the data set's folder, or of the current folder for files given one by one; the log says where.

    Folder mode is safe to run in many processes at once, on one machine or many sharing the folders: each subject is claimed before work, finished ones are skipped, claims of dead runs are taken over (README, "Many processes, many machines").

    Example: tsf-trt infer --inputs phantoms/Phantom_00000/Phantom_00000_t1.nii.gz phantoms/Phantom_00000/Phantom_00000_flair.nii.gz --target t2

    Example: tsf-trt infer --inputs phantoms/Phantom_00000/Phantom_00000_t1.nii.gz phantoms/Phantom_00000/Phantom_00000_flair.nii.gz --target t2 -o Phantom_00000_synthT2.nii.gz

    Example: tsf-trt infer --inputs phantoms --target t2 --sources t1,flair -o synth

    Example: tsf-trt infer --inputs phantoms --target t2 --sources t1,flair -o synth-interval --calibration calibration.json
    """
    from tsf_trt import sequences
    from tsf_trt.errors import TsfError
    from tsf_trt.inputs.intake import Intake
    from tsf_trt.runs.outputs import default_output
    from tsf_trt.runs.request import InferRequest, file_output_error, split_output
    from tsf_trt.synthesis.options import RunOptions

    setup_logging(quiet, no_progress, log_file)
    # every value, before any work
    _not_a_bids_app_call(inputs, more_inputs, target)
    options = RunOptions(backend, device, precision, batch_size, threads, combine, frame, compile)
    try:
        target_index = sequences.parse(target)
    except TsfError as exc:
        raise TsfError(f"--target: {exc}") from None
    intake = Intake(tuple([*(inputs or []), *(more_inputs or [])]), subject,
                    tuple(sequences.parse_list(channels)) if channels else None, shard, bids,
                    _labels(participant_label), _labels(session), _bids_filter(bids_filter), map_file)
    _check_mode(intake, {"--channels": channels, "--sources": sources, "--shard": shard, "--devices": devices,
                         "--wait": wait, "--claim-lease": claim_lease != DEFAULT_LEASE_S},
                {"--participant-label": participant_label, "--session": session, "--bids-filter": bids_filter})
    output_given = output is not None
    output, synth_name = split_output(output) if output is not None else (default_output(intake.root), None)
    if synth_name is not None and intake.mode != "single":
        raise file_output_error(output / synth_name)  # before the data set is read
    request = InferRequest(target_index, output, sequences.parse_list(sources) if sources else None, tsem,
                           overwrite, claim_lease, wait, strict=strict, resample=resample,
                           calibration=_calibration_file(calibration), synth_name=synth_name)
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
    _log_unused(gathered, intake, verbose)
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


#: The analysis levels of a BIDS App call (`APP BIDS_DIR OUTPUT_DIR participant`).
BIDS_APP_LEVELS = ("participant", "group")


def _not_a_bids_app_call(inputs: list[str] | None, more: list[str] | None, target: str) -> None:
    """`tsf-trt infer bids_in bids_out participant` is the BIDS App's form, which `infer` would read as
    three input files: one line that names the command that takes it (and `infer`'s own BIDS form)."""
    from tsf_trt.errors import TsfError

    words = [*(inputs or []), *(more or [])]
    level = next((w for w in words if w.lower() in BIDS_APP_LEVELS and not Path(w).exists()), None)
    if level is None:
        return
    call = " ".join(words) if len(words) == 3 and words[2] == level else f"BIDS_DIR OUTPUT_DIR {level}"
    raise TsfError(f"'{level}' is a BIDS App analysis level, and `infer` takes input files: run `tsf-trt bids "
                   f"{call} --target {target}` (the BIDS App), or `tsf-trt infer --bids BIDS_DIR -o OUTPUT_DIR "
                   f"--target {target}`")


def _calibration_file(value: str | None) -> Path | None:
    """--calibration FILE, or none (no interval; also what is left when it is not given, until the
    model's own calibration is looked for: `infer` does that once the model is resolved)."""
    if value is None or value.strip().lower() == "none":
        return None
    return Path(value)


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


def _check_mode(intake, many: dict, bids: dict) -> None:
    """Options that do not apply to the mode are errors, not silently ignored."""
    from tsf_trt.errors import TsfError

    mode = intake.mode
    if mode == "single":
        for flag in (f for f, value in {**many, **bids}.items() if value):
            raise TsfError(f"{flag} is for folder mode (many subjects: --inputs FOLDER, --bids DIR or --map CSV)")
        return
    if intake.subject:
        raise TsfError("--subject names one subject; with many subjects the names come from the data")
    if mode != "bids":
        for flag in (f for f, value in bids.items() if value):
            raise TsfError(f"{flag} is for a BIDS dataset (--bids DIR)")
    if mode != "folder" and many["--channels"]:
        raise TsfError("--channels is for a folder of nnU-Net files (--inputs FOLDER)")
    if (intake.bids is not None or intake.map_file is not None) and intake.items:
        raise TsfError(f"--inputs and {'--bids' if intake.bids is not None else '--map'} both name the data: "
                       "give one of them")
    if intake.bids is not None and intake.map_file is not None:
        raise TsfError("--bids and --map both name the data: give one of them")


def _labels(values: list[str] | None) -> tuple[str, ...] | None:
    """`--participant-label 01 --participant-label 02` or `--participant-label 01,02`."""
    if not values:
        return None
    return tuple(v.strip() for value in values for v in value.replace(",", " ").split() if v.strip())


def _bids_filter(values: list[str] | None) -> tuple[tuple[str, str | None], ...]:
    from tsf_trt.errors import TsfError

    pairs = []
    for value in values or ():
        key, sep, label = value.partition("=")
        if not sep or not key.strip():
            raise TsfError(f"--bids-filter '{value}': expected ENTITY=LABEL (e.g. acq=mprage, t1.run=1, or "
                           "ce= for files without the entity)")
        pairs.append((key.strip(), label.strip() or None))
    return tuple(pairs)


#: Subjects with unused files listed one line each; past this, a summary by reason (--verbose: all).
UNUSED_LINES = 10


def _log_unused(gathered, intake, verbose: bool = False) -> None:
    """No silent drops: every file of the data set that is not used is named, one line per
    subject, or past UNUSED_LINES subjects one line per reason with a count and an example."""
    from tsf_trt.inputs.subjects import shown

    per_subject = [(shown(subject.name), subject.unused) for subject in gathered.subjects if subject.unused]
    if gathered.unused:
        per_subject.append((f"{intake.root} (no subject)", gathered.unused))
    if verbose or len(per_subject) <= UNUSED_LINES:
        for name, items in per_subject:
            log.info("%s: not used: %s", name, _files(items))
        return
    reasons: dict[str, list] = {}
    for _, items in per_subject:
        for path, why in items:
            reasons.setdefault(why, []).append(path)
    for why, paths in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        log.info("not used: %d file(s) (%s), e.g. %s", len(paths), why, paths[0])
    log.info("not used: files in %d subjects in all; --verbose lists them per subject", len(per_subject))


def _files(items) -> str:
    return "; ".join(f"{path.name} ({why})" for path, why in items)


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
    log.info("%s", outcome.line(f"{synth.backend.name} {synth.backend.runtime_precision}"))
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

    start = time.perf_counter()
    with progress_bar() as bar:
        overall = bar.add_task("subjects", total=len(subjects))
        slices = bar.add_task("", total=None, visible=False)

        def on_start(subject):
            bar.reset(slices, description=f"  {shown(subject.name)}", total=None, visible=True)
            return lambda done, total: bar.update(slices, completed=done, total=total)

        def on_end(outcome):
            bar.advance(overall)
            bar.update(slices, visible=False)
            (log.error if outcome.status == "failed" else log.info)("%s", outcome.line(f"{synth.backend.name} {synth.backend.runtime_precision}"))

        waited = []

        def on_wait(busy) -> None:
            if len(busy) != (waited[-1] if waited else None):
                log.info("waiting for %d subject(s) that other runs hold", len(busy))
            waited.append(len(busy))

        summary = infer_folder(synth, subjects, request, on_start=on_start, on_end=on_end, on_wait=on_wait,
                               backend_name=synth.backend.describe())
    out.print(summary.line(time.perf_counter() - start), highlight=False, soft_wrap=True)
    if summary.table is not None:
        out.print(f"cohort table: {summary.table}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_ERROR)
