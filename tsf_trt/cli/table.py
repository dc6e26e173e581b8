"""`tsf-trt table`: the cohort table of an output folder, rebuilt on demand from its reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import app, out, setup_logging, user_errors


@app.command("table", no_args_is_help=True)
@user_errors
def table(
    folder: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR", show_default=False,
                                           help="An output folder of `tsf-trt infer` (-o, or the default "
                                                "derivatives/tsf-trt): a folder run's, a BIDS derivative, or "
                                                "single-subject runs written there.")],
    target: Annotated[Optional[params.TargetName], typer.Option("--target", "-t", show_default=False,
                                                  case_sensitive=False, metavar=params.TARGET_METAVAR,
                                                  help="The target whose table to write: t1, t1gd, t2 or flair "
                                                       "(aliases t1n, t1ce, t1c, t2w, t2f). Default: every target "
                                                       "with reports in OUTPUT_DIR, one table each.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", show_default=False,
                                                   help="Write the table to this file instead of "
                                                        "OUTPUT_DIR/tsf-trt_<target>.tsv (one target: give "
                                                        "--target when OUTPUT_DIR holds several). Its paths are "
                                                        "relative to its own folder.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file, only if it is a "
                                            "table tsf-trt wrote. The table in OUTPUT_DIR is tsf-trt's own and "
                                            "is refreshed without it; a user's file of its name is never "
                                            "replaced.")] = False,
    quiet: params.Quiet = False,
    log_file: params.LogFile = None,
    verbose: params.Verbose = False,
    log_format: params.LogFormat = "text",
) -> None:
    """Write the cohort table of an output folder: one row per subject, from the reports on disk.

    A TSV (tab-separated, UTF-8, one header line; pandas.read_csv(path, sep="\\t") and spreadsheets read it): subject, session, task, target, model_id, backend, precision (what ran), weight_<sequence> (ω of each input; empty where a sequence was not an input), tsem_mean_head and tsem_p99_head (the TSEM map in the head), interval_applies, interval_why, interval_alpha, interval_mean_half_width, interval_score and interval_flagged (the calibrated interval: numbers only where its guarantee applies, else why not), preflight (the input checks' findings), seconds, status (done, failed, busy), error, synth and report (paths relative to the table), tsf_trt_version. Rows are sorted by subject, session and task; numbers are written as Python's shortest exact repr; a BIDS derivative writes n/a where there is no value, and lists the table in its .bidsignore.

    Every folder run of `tsf-trt infer` writes this table when it ends, so the last of several runs sharing a folder leaves the complete one; this command rebuilds it at any time (after a killed run, or while runs go on). A failed subject writes no report: its row (with its one-line error) is the one a run recorded in the table, kept until the subject is done; "busy" is a subject another live run held when that run looked. Nothing is read but reports and the table; no input is written.

    Example: tsf-trt table synth

    Example: tsf-trt table synth --target t2 -o synth-t2.tsv
    """
    import csv
    from collections import Counter

    from tsf_trt import sequences
    from tsf_trt.errors import InputError, TsfError
    from tsf_trt.files.atomic import check_writable
    from tsf_trt.runs.table import check_table, find_run_records, is_own_table, table_path, write_table

    setup_logging(quiet, False, log_file, verbose=verbose, log_format=log_format)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder" if folder.exists() else "folder not found")
    if target is not None:
        targets = [sequences.parse(target)]
    else:
        targets = [t for t in range(sequences.N_SEQUENCES)
                   if is_own_table(table_path(folder, t)) or find_run_records(folder, t)]
        if not targets:
            raise TsfError(f"{folder}: no tsf-trt report found in it or in its sub-folders; is it an output "
                           "folder of `tsf-trt infer`?")
    if output is not None:
        if len(targets) > 1:
            raise TsfError(f"-o names one file, and {folder} holds reports of "
                           f"{', '.join(sequences.NAMES[t] for t in targets)}: give --target")
        check_writable(output, overwrite, own_location=True)  # exists without --overwrite; its folder
        check_table(output)  # a user's file is never replaced, --overwrite too
    for t in targets:
        check_table(table_path(folder, t) if output is None else output)
    for t in targets:
        written = write_table(folder, t, path=output)
        if written is None:
            out.print(f"{sequences.NAMES[t]}: no subject in {folder}", highlight=False, soft_wrap=True)
            continue
        with open(written, encoding="utf-8", newline="") as handle:
            counts = Counter(row["status"] for row in csv.DictReader(handle, delimiter="\t"))
        said = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        out.print(f"{sequences.NAMES[t]}: {written} ({said})", highlight=False, soft_wrap=True)
