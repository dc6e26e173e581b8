"""The run folder of `tsf-trt train` (`-o`), checked before any data is read or model built.

Why: the trainer writes into a folder the user names, replacing its own files there as it
goes (train_config.json, split.json, the logs, step_NNNNNN/ and last/). It must never write
into an input (--data, --init, --split, --vgg-weights), nor replace a file or folder of the
same name that it did not write: those are refused in one line, before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tsf_trt.errors import InputError
from tsf_trt.files.atomic import check_folder_target, sweep
from tsf_trt.files.ownership import MODEL_DIR, TRAIN_STATE, refuse_input_overlap

CONFIG = "train_config.json"
#: Files of a run that the trainer rewrites whole (runlog.RunLog, data.write_split, CONFIG).
RUN_FILES = (CONFIG, "split.json", "log.json", "log.csv", "train.log")
_STEP = re.compile(r"^step_\d{6,}$")


def is_run_config(path: Path) -> bool:
    """`path` is a train_config.json the trainer wrote (a TrainConfig as JSON)."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"stage", "data", "out", "steps"} <= set(data)


def check_run_folder(out: Path, *, inputs: list[tuple[str, Path | None]]) -> None:
    """Refuse `out` when it is, holds or is inside an input, cannot be written, or holds
    files or folders under the trainer's names that are not a run's (see the module docstring)."""
    refuse_input_overlap(out, inputs)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; give a folder for the run")
    if not out.exists():
        check_folder_target(out, False, None)  # its parent can be created and written
        return
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(out, "run folder is not writable")
    present = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if present and not is_run_config(out / CONFIG):
        raise InputError(out / present[0], "exists and was not written by tsf-trt train (no train_config.json of "
                                           "a run beside it): not replaced; choose another -o")
    for name in sorted(os.listdir(out)):
        path = out / name
        kind = MODEL_DIR if _STEP.match(name) else TRAIN_STATE if name == "last" else None
        if kind is not None and (path.is_symlink() or not path.is_dir()):
            raise InputError(path, "is not a folder the trainer wrote: not replaced; choose another -o")
        if kind is not None:
            kind.check(path)


def sweep_run_folder(out: Path) -> list[Path]:
    """Remove what killed runs left half-written here (temp files and folders of the trainer's
    own names whose writer is dead; a live process's are kept)."""
    return sweep(out, lambda name: name in RUN_FILES or name == "last" or bool(_STEP.match(name)))
