"""`tsf-trt bids` (console script `tsf-trt-bids`): the BIDS App, `APP BIDS_DIR OUTPUT_DIR
participant|group [options]`, as the BIDS Apps convention and fMRIPrep's interface give it.

The participant level is `infer --bids BIDS_DIR -o OUTPUT_DIR`, the same path
(:func:`tsf_trt.cli.infer.run_request` with an `Intake` and an `InferRequest` built as `infer`
builds them), so its outputs, claims, `--wait` and cohort table are `infer`'s: OUTPUT_DIR is the
derivative dataset itself (OUTPUT_DIR/dataset_description.json, OUTPUT_DIR/sub-01/anat/...). The
group level writes the cohort table (`tsf-trt table OUTPUT_DIR`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from tsf_trt.cli import params
from tsf_trt.cli.params import CHECKS_PANEL, FOLDER_PANEL, INPUTS_PANEL, OUTPUTS_PANEL, RUNTIME_PANEL
from tsf_trt.cli.app import app, log, out, setup_logging, user_errors
from tsf_trt.cli.infer import run_request
from tsf_trt.cli.infer_options import BIDS_APP_LEVELS, HELP_CALIBRATION, bids_filter_pairs, calibration_file, labels
from tsf_trt.runs.claims import DEFAULT_LEASE_S
from tsf_trt.version import __version__

#: Options that take a space-separated list, as argparse's nargs="+" in BIDS Apps (`--participant_label 01 02`).
LISTS = ("--participant-label", "--session-label")


def bids_app_args(args: list[str]) -> list[str]:
    """The BIDS Apps' spellings in click's: `--participant_label` is `--participant-label` (every
    option's underscores), and the words after a LISTS option up to the next option are each one
    more value of it, as argparse reads nargs="+" (so positional arguments go before such a list)."""
    words: list[str] = []
    current: str | None = None  # the LISTS option whose values follow
    first = False               # its first value is still to come (click reads that one itself)
    for k, word in enumerate(args):
        if word == "--":
            return words + args[k:]
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            if word.startswith("--"):
                name = name.replace("_", "-")
            current, first = (name if name in LISTS and not eq else None), True
            words.append(name + eq + value)
            continue
        if current is not None and not first:
            words.append(current)  # one more value of the list
        first = False
        words.append(word)
    return words


class BidsAppCommand(TyperCommand):
    """A command that reads the BIDS Apps' argument spellings (:func:`bids_app_args`) first."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bids_app_args(list(args)))


def _version(value: bool) -> None:
    if value:
        out.print(f"tsf-trt {__version__}")
        raise typer.Exit()


@app.command("bids", cls=BidsAppCommand, no_args_is_help=True)
@user_errors
def bids(
    bids_dir: Annotated[Path, typer.Argument(metavar="BIDS_DIR", show_default=False, help="The raw BIDS dataset "
                                             "(read only: nothing is ever written in it, but OUTPUT_DIR may be its "
                                             "derivatives/ folder).")],
    output_dir: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR", show_default=False, help="The derivative "
                                               "dataset itself (e.g. BIDS_DIR/derivatives/tsf-trt): "
                                               "OUTPUT_DIR/dataset_description.json, OUTPUT_DIR/sub-<label>/anat/; "
                                               "created if missing. Many runs may share it (claims).")],
    analysis_level: Annotated[str, typer.Argument(metavar="participant|group", show_default=False, help=
                                                  "participant: synthesise (--target); group: write the cohort "
                                                  "table of OUTPUT_DIR from its records.")],
    participant_label: Annotated[Optional[list[str]], typer.Option(
        "--participant-label", show_default=False, rich_help_panel=INPUTS_PANEL, metavar="LABEL ...",
        help="Only these participants: 01 or sub-01, space-separated after the option (--participant_label 01 02), "
             "repeated, or 01,02. Default: every sub-* folder.")] = None,
    session_label: Annotated[Optional[list[str]], typer.Option(
        "--session-label", show_default=False, rich_help_panel=INPUTS_PANEL, metavar="LABEL ...",
        help="Only these sessions (pre or ses-pre; lists as --participant-label). Default: every session.")] = None,
    bids_filter_file: Annotated[Optional[Path], typer.Option(
        "--bids-filter-file", show_default=False, rich_help_panel=INPUTS_PANEL, metavar="FILE",
        help="fMRIPrep's JSON filter file, to choose among several images of a sequence: queries t1w (T1w without "
             "ce-), t1gd (T1w with ce-), t2w and flair, of entity: value (a label or index, null: without the "
             "entity, \"*\": with any, a list: any of), e.g. {\"t1w\": {\"acquisition\": \"mprage\", \"run\": 1}}. "
             "fMRIPrep's other queries (bold, fmap, ...) are skipped; session and subject are refused "
             "(--session-label, --participant-label). The rule: tsf_trt/inputs/bids_filter.py.")] = None,
    bids_filter: Annotated[Optional[list[str]], typer.Option(
        "--bids-filter", show_default=False, rich_help_panel=INPUTS_PANEL, metavar="ENTITY=LABEL",
        help="The same choice typed in (as `infer --bids-filter`): acq=mprage, t1.run=2 for one sequence, ce= "
             "for the images without the entity, run=1|2 for either; repeat for more.")] = None,
    skip_bids_validation: Annotated[bool, typer.Option(
        "--skip-bids-validation", rich_help_panel=CHECKS_PANEL,
        help="Do not check the dataset first. Otherwise: dataset_description.json (present, Name and BIDSVersion, "
             "not a derivative) and the name of every file of the chosen participants, by the bids-validator "
             "Python package where it is installed (file-name rules only; it is not in the base install), else "
             "by tsf-trt's own BIDS name rules; a failure is one line and nothing runs.")] = False,
    work_dir: Annotated[Optional[Path], typer.Option(
        "--work-dir", "-w", show_default=False, rich_help_panel=RUNTIME_PANEL,
        help="Where intermediate files go: tsf-trt's cache (exported and runtime-optimised graphs, the --backend "
             "auto and --precision auto records; TSF_TRT_CACHE otherwise, default ~/.cache/tsf-trt). Outside "
             "BIDS_DIR and OUTPUT_DIR; reuse it across runs and array tasks to build each cache entry once.")] = None,
    nprocs: Annotated[Optional[int], typer.Option(
        "--nprocs", "--nthreads", "--n-cpus", min=1, show_default=False, rich_help_panel=RUNTIME_PANEL,
        help="CPUs this process may use: the network's threads unless --omp-nthreads says otherwise. One process "
             "synthesises one subject at a time; its input reading and output writing threads overlap the "
             "network and are not counted. For more subjects at once, run more processes (array tasks) on one "
             "OUTPUT_DIR.")] = None,
    omp_nthreads: Annotated[Optional[int], typer.Option(
        "--omp-nthreads", min=1, show_default=False, rich_help_panel=RUNTIME_PANEL,
        help="The network's threads (infer --threads); at most --nprocs.")] = None,
    target: Annotated[Optional[params.TargetName], typer.Option(
        "--target", "-t", show_default=False, case_sensitive=False, metavar=params.TARGET_METAVAR,
        rich_help_panel=INPUTS_PANEL,
        help="Sequence to synthesise: t1, t1gd, t2 or flair (aliases t1n, t1w, t1ce, t1c, t2w, t2f). Required at the "
             "participant level; at the group level, the table to write (default: every target with records).")] = None,
    sources: Annotated[Optional[str], typer.Option(
        "--sources", show_default=False, rich_help_panel=INPUTS_PANEL,
        help="The input sequences, e.g. t1,flair (default: every sequence a subject has except the target).")] = None,
    model: params.Model = None,
    backend: params.Backend = "auto",
    device: params.Device = "auto",
    precision: params.Precision = "auto",
    batch_size: params.BatchSize = None,
    frame: params.Frame = "head",
    tsem: Annotated[bool, typer.Option("--tsem/--no-tsem", help="Also write the TSEM map.",
                                       rich_help_panel=OUTPUTS_PANEL)] = True,
    calibration: Annotated[Optional[str], typer.Option("--calibration", help=HELP_CALIBRATION, show_default=False,
                                                       metavar="FILE|none", rich_help_panel=OUTPUTS_PANEL)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo finished subjects (replacing only tsf-trt's "
                                            "own outputs).", rich_help_panel=OUTPUTS_PANEL)] = False,
    strict: Annotated[bool, typer.Option("--strict", help="The preprocessing checks' warnings fail the "
                                         "subject.", rich_help_panel=CHECKS_PANEL)] = False,
    resample: Annotated[bool, typer.Option("--resample", help="Inputs on different grids or far from 1 mm: "
                                           "through 1 mm isotropic, outputs on the first input's grid.",
                                           rich_help_panel=CHECKS_PANEL)] = False,
    wait: Annotated[bool, typer.Option("--wait", help="When other runs hold subjects, wait for them (or take them "
                                       "over if they die): when this run ends, every chosen subject is done or "
                                       "failed. For array tasks sharing one OUTPUT_DIR.",
                                       rich_help_panel=FOLDER_PANEL)] = False,
    claim_lease: Annotated[float, typer.Option("--claim-lease", help="Seconds after which a claim of a run on "
                                               "another machine that stopped refreshing it is taken over (as "
                                               "infer --claim-lease).", rich_help_panel=FOLDER_PANEL)
                  ] = DEFAULT_LEASE_S,
    shard: Annotated[Optional[str], typer.Option("--shard", show_default=False, help="Only share i of n of the "
                                                 "chosen subjects (i/n, round-robin over sorted names).",
                                                 metavar="i/n", rich_help_panel=FOLDER_PANEL)] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", show_default=False, help="One worker process per "
                                                   "GPU index (e.g. 0,1), as infer --devices.",
                                                   rich_help_panel=FOLDER_PANEL)] = None,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """The BIDS App: synthesise a sequence for the participants of a BIDS dataset (participant), or write the cohort table (group).

    The participant level runs exactly what `tsf-trt infer --bids BIDS_DIR -o OUTPUT_DIR` runs: each subject (and session) is read from sub-*/\\[ses-*/]anat/ (T1w, T1w with ce-: T1Gd, T2w, FLAIR), claimed, synthesised and written as a BIDS derivative (docs/outputs.md, "BIDS derivatives"); finished subjects are skipped, so a rerun resumes. Any number of processes may share OUTPUT_DIR, with the same or different --participant-label: a Slurm array (docs/clusters.md, "A cohort on a cluster"). Every option and OUTPUT_DIR are checked before the model loads. `tsf-trt-bids ARGS` is `tsf-trt bids ARGS` (a container's entry point).

    Example: tsf-trt bids bids-phantoms bids-phantoms/derivatives/tsf-trt participant --target t2 --participant-label Phantom00000 --backend ort

    Example: tsf-trt bids bids-phantoms bids-phantoms/derivatives/tsf-trt participant --target t2 --wait --backend ort --nprocs 1

    Example: tsf-trt bids bids-phantoms bids-phantoms/derivatives/tsf-trt group
    """
    from tsf_trt.errors import TsfError

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    if analysis_level not in BIDS_APP_LEVELS:
        raise TsfError(f"analysis level '{analysis_level}': use participant or group (BIDS_DIR OUTPUT_DIR LEVEL)")
    _check_bids_dir(bids_dir)
    if analysis_level == "group":
        given = {"--participant-label": participant_label, "--session-label": session_label,
                 "--bids-filter-file": bids_filter_file, "--bids-filter": bids_filter, "--sources": sources,
                 "--work-dir": work_dir, "--wait": wait, "--shard": shard, "--devices": devices,
                 "--calibration": calibration, "--model": model, "--overwrite": overwrite}
        for flag in (f for f, value in given.items() if value):
            raise TsfError(f"{flag} is for the participant level: the group level tabulates every subject of "
                           "OUTPUT_DIR from its records")
        return _group(output_dir, target, quiet, log_file, verbose, log_format)
    _participant(bids_dir, output_dir, participant_label, session_label, bids_filter_file, bids_filter,
                 skip_bids_validation, work_dir, nprocs, omp_nthreads, target, sources, model, backend, device,
                 precision, batch_size, frame, tsem, calibration, overwrite, strict, resample, wait, claim_lease,
                 shard, devices, verbose)


def _participant(bids_dir: Path, output_dir: Path, participant_label, session_label, bids_filter_file: Path | None,
                 bids_filter, skip_validation: bool, work_dir: Path | None, nprocs: int | None,
                 omp_nthreads: int | None, target: str | None, sources: str | None, model: Path | None, backend: str,
                 device: str, precision: str, batch_size: int | None, frame: str, tsem: bool, calibration: str | None,
                 overwrite: bool, strict: bool, resample: bool, wait: bool, claim_lease: float, shard: str | None,
                 devices: str | None, verbose: bool) -> None:
    """Every value checked, in the order a user reads them, then `infer`'s own path."""
    from tsf_trt import sequences
    from tsf_trt.errors import TsfError
    from tsf_trt.inputs.bids import label_of
    from tsf_trt.inputs.intake import Intake
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions, check_threads

    if target is None:
        raise TsfError("--target is required at the participant level (the sequence to synthesise: t1, t1gd, t2 "
                       "or flair)")
    try:
        target_index = sequences.parse(target)
    except TsfError as exc:
        raise TsfError(f"--target: {exc}") from None
    check_threads(nprocs, "--nprocs")
    check_threads(omp_nthreads, "--omp-nthreads")
    if nprocs is not None and omp_nthreads is not None and omp_nthreads > nprocs:
        raise TsfError(f"--omp-nthreads {omp_nthreads} is more than --nprocs {nprocs}")
    options = RunOptions(backend, device, precision, batch_size, omp_nthreads or nprocs, "middle", frame)
    participants = tuple(label_of(v, "sub", "--participant-label") for v in labels(participant_label) or ())
    sessions = tuple(label_of(v, "ses", "--session-label") for v in labels(session_label) or ())
    filters = bids_filter_pairs(bids_filter)
    if bids_filter_file is not None:
        from tsf_trt.inputs.bids_filter import read_filter_file

        filters = (*read_filter_file(bids_filter_file), *filters)
    _check_output(bids_dir, output_dir)
    if work_dir is not None:
        _use_work_dir(work_dir, bids_dir, output_dir)
    if skip_validation:
        log.info("BIDS check of %s: skipped (--skip-bids-validation)", bids_dir)
    else:
        from tsf_trt.inputs.bids_validation import validate_dataset

        validate_dataset(bids_dir, participants or None)
    intake = Intake(shard=shard, bids=bids_dir, participants=participants or None, sessions=sessions or None,
                    bids_filter=filters)
    request = InferRequest(target_index, output_dir, sequences.parse_list(sources) if sources else None, tsem,
                           overwrite, claim_lease, wait, strict=strict, resample=resample,
                           calibration=calibration_file(calibration))
    run_request(intake, request, options, model, own_calibration=calibration is None, verbose=verbose,
                devices=devices)


def _check_bids_dir(bids_dir: Path) -> None:
    from tsf_trt.errors import InputError

    if not bids_dir.is_dir():
        raise InputError(bids_dir, "no such folder" if not bids_dir.exists() else "is a file, not a BIDS dataset")


def _check_output(bids_dir: Path, output_dir: Path) -> None:
    """OUTPUT_DIR is a derivative: never the raw dataset itself nor inside it, but in its derivatives/."""
    from tsf_trt.errors import InputError

    raw, derivative = bids_dir.resolve(), output_dir.resolve()
    if derivative == raw or (derivative.is_relative_to(raw) and
                             derivative.relative_to(raw).parts[0] != "derivatives"):
        where = "is the raw dataset BIDS_DIR itself" if derivative == raw else f"is inside the raw dataset {bids_dir}"
        raise InputError(output_dir, f"{where}: give its derivatives/ folder (e.g. "
                                     f"{bids_dir / 'derivatives' / 'tsf-trt'}) or a folder outside it")


def _use_work_dir(work_dir: Path, bids_dir: Path, output_dir: Path) -> None:
    """--work-dir is this run's cache root (TSF_TRT_CACHE, which worker processes inherit)."""
    from tsf_trt.errors import InputError
    from tsf_trt.files.atomic import check_folder_writable

    where = work_dir.resolve()
    for name, folder in (("BIDS_DIR", bids_dir), ("OUTPUT_DIR", output_dir)):
        if where.is_relative_to(folder.resolve()):
            raise InputError(work_dir, f"--work-dir is inside {name} ({folder}): intermediate files go elsewhere")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(work_dir, f"--work-dir cannot be made ({exc.strerror or exc})") from None
    check_folder_writable(work_dir)
    os.environ["TSF_TRT_CACHE"] = str(where)
    log.info("work dir (tsf-trt's cache): %s", where)


def _group(output_dir: Path, target: str | None, quiet: bool, log_file: Path | None, verbose: bool,
           log_format: str) -> None:
    """The group level: `tsf-trt table OUTPUT_DIR [--target T]`."""
    from tsf_trt.cli.table import table

    table(output_dir, target, None, False, quiet, log_file, verbose, log_format)
