"""What `infer` and the BIDS App (`tsf-trt bids`) make of their options before any file is read: the
help texts they share, the checks of which options go with which mode, the label and filter
lists, and the log lines of the files a run does not use."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("tsf_trt")

HELP_INPUTS = ("One subject's input volumes (.nii/.nii.gz). The sequence is read from the file name (BraTS "
               "_t1/_t1ce/_t2/_flair, -t1n/-t1c/-t2w/-t2f, or t1/t1gd/t2/flair) or given as t1=PATH. Several "
               "files may follow one --inputs. A folder of subjects is --data.")
HELP_DATA = ("A folder of subjects (folder mode): one sub-folder per subject (BraTS 2021/2023 names, or `tsf-trt "
             "phantom` output), flat BraTS-named files, nnU-Net CASE_XXXX.nii.gz with --channels, or a BIDS "
             "dataset (it has dataset_description.json; as --bids). The same folder `evaluate --data` scores.")
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

#: The analysis levels of a BIDS App call (`APP BIDS_DIR OUTPUT_DIR participant`).
BIDS_APP_LEVELS = ("participant", "group")


def data_items(inputs: list[str] | None, more: list[str] | None, data: Path | None) -> tuple[str, ...]:
    """What the run reads, as :class:`tsf_trt.inputs.intake.Intake` takes it: one subject's files, or
    the --data folder. A folder given to --inputs still works for one release, said once."""
    from tsf_trt.console import deprecated
    from tsf_trt.errors import InputError, TsfError

    items = (*(inputs or ()), *(more or ()))
    if data is None:
        if len(items) == 1 and Path(items[0]).is_dir():
            deprecated("--inputs FOLDER (a folder of subjects)", f"--data {items[0]}")
        return items
    if items:
        raise TsfError("--data names a folder of subjects and --inputs one subject's files: give one of them")
    if not data.is_dir():
        raise InputError(data, "is a file: --data takes a folder of subjects (one subject's files: --inputs)"
                         if data.exists() else "no such folder (--data: a folder of subjects)")
    return (str(data),)


def not_a_bids_app_call(inputs: list[str] | None, more: list[str] | None, target: str) -> None:
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


def calibration_file(value: str | None) -> Path | None:
    """--calibration FILE, or none (no interval; also what is left when it is not given, until the
    model's own calibration is looked for: `infer` does that once the model is resolved)."""
    if value is None or value.strip().lower() == "none":
        return None
    return Path(value)


def check_mode(intake, many: dict, bids: dict, data_flag: str = "--inputs") -> None:
    """Options that do not apply to the mode are errors, not silently ignored (`data_flag`: how the
    user named the folder or files, --data or --inputs)."""
    from tsf_trt.errors import TsfError

    mode = intake.mode
    if mode == "single":
        for flag in (f for f, value in {**many, **bids}.items() if value):
            raise TsfError(f"{flag} is for folder mode (many subjects: --data FOLDER, --bids DIR or --map CSV)")
        return
    if intake.subject:
        raise TsfError("--subject-name names one subject; with many subjects the names come from the data")
    if mode != "bids":
        for flag in (f for f, value in bids.items() if value):
            raise TsfError(f"{flag} is for a BIDS dataset (--bids DIR)")
    if mode != "folder" and many["--channels"]:
        raise TsfError("--channels is for a folder of nnU-Net files (--data FOLDER)")
    if (intake.bids is not None or intake.map_file is not None) and intake.items:
        raise TsfError(f"{data_flag} and {'--bids' if intake.bids is not None else '--map'} both name the data: "
                       "give one of them")
    if intake.bids is not None and intake.map_file is not None:
        raise TsfError("--bids and --map both name the data: give one of them")


def labels(values: list[str] | None) -> tuple[str, ...] | None:
    """`--participant-label 01 --participant-label 02` or `--participant-label 01,02`."""
    if not values:
        return None
    return tuple(v.strip() for value in values for v in value.replace(",", " ").split() if v.strip())


def bids_filter_pairs(values: list[str] | None) -> tuple[tuple[str, str | None], ...]:
    """`--bids-filter ENTITY=LABEL` values as (entity, label or None) pairs."""
    from tsf_trt.errors import TsfError

    pairs = []
    for value in values or ():
        key, sep, label = value.partition("=")
        if not sep or not key.strip():
            raise TsfError(f"--bids-filter '{value}': expected ENTITY=LABEL (e.g. acq=mprage, t1.run=1, or "
                           "ce= for files without the entity)")
        pairs.append((key.strip(), label.strip() or None))
    return tuple(pairs)


#: Subjects whose unused files are listed one line each; with more, one line per reason (--verbose: all).
#: One: a run logs at most one line per subject (its outcome) besides a short header and summary.
UNUSED_LINES = 1


def log_unused(gathered, intake, verbose: bool = False) -> None:
    """No silent drops: every file of the data set that is not used is named, one line per
    subject where one subject has such files (or with --verbose), else one line per reason with
    a count and an example."""
    from tsf_trt.inputs.subjects import shown

    per_subject = [(subject.name, subject.unused) for subject in gathered.subjects if subject.unused]
    if gathered.unused:
        per_subject.append((None, gathered.unused))
    if verbose or len(per_subject) <= UNUSED_LINES:
        for name, items in per_subject:
            log.info("%s: not used: %s", f"{intake.root} (no subject)" if name is None else shown(name),
                     _files(items), extra={"subject": name})
        return
    reasons: dict[str, list] = {}
    for name, items in per_subject:
        for path, why in items:
            reasons.setdefault(why, []).append((name, path))
    for why, found in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        log.info("not used: %d file(s) (%s) in %d subject(s), e.g. %s (--verbose lists them per subject)",
                 len(found), why, len({name for name, _ in found}), found[0][1])


def _files(items) -> str:
    return "; ".join(f"{path.name} ({why})" for path, why in items)
