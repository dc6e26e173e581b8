"""The BIDS App's input check (`tsf-trt bids`, unless --skip-bids-validation): is the dataset
BIDS as far as this run reads it? Fails the run in one line, before any model loads.

What is checked:

* `dataset_description.json` at the top: present, a JSON object with the fields the specification
  REQUIRES (`Name`, `BIDSVersion`: "Modality agnostic files"), and not a derivative
  (`DatasetType` "derivative": a derivative is an output, not a raw dataset to synthesise from);
* the name of every file in the chosen participants' folders, `.bidsignore` patterns excepted:
  by the `bids-validator` Python package where it is installed (its `BIDSValidator.is_bids`, the
  file-name rules of the BIDS validator 1.x; it is in tsf-trt's [dev] extra, not in the base
  install), else by tsf-trt's own rules (tsf_trt.inputs.bids: entities known, in order, with valid
  labels; `sub-`/`ses-` those of the folders the file is in), and the log says which.

The full validator (the Deno `bids-validator`, which also reads sidecars and headers) is not
run: a dataset that passes here may still have problems it would report.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tsf_trt.errors import InputError
from tsf_trt.inputs.bids import parse_name

_log = logging.getLogger(__name__)

#: Examples of rejected names in the one-line error.
SHOWN = 3
_HINT = "fix them, or run with --skip-bids-validation"


def validate_dataset(root: Path, participants: Iterable[str] | None = None) -> str:
    """Raise an InputError naming `root` if the dataset fails the checks above for the folders of
    `participants` (labels; None: every sub-* folder); returns which name checker ran."""
    root = Path(root)
    _check_description(root)
    try:
        from bids_validator import BIDSValidator
    except ImportError:
        checker, is_bids = "tsf-trt's own BIDS name rules (the bids-validator package is not installed)", _own_rules
    else:
        checker, is_bids = "bids-validator (Python, file names)", BIDSValidator().is_bids
    ignore = _bidsignore(root)
    wanted = None if participants is None else {f"sub-{label}" for label in participants}
    bad = []
    for folder in sorted(p for p in root.iterdir() if p.name.startswith("sub-") and p.is_dir()):
        if wanted is not None and folder.name not in wanted:
            continue
        for relative in _files(root, folder):
            if not _ignored(relative, ignore) and not is_bids("/" + relative):
                bad.append(relative)
    if bad:
        shown = ", ".join(bad[:SHOWN]) + (", ..." if len(bad) > SHOWN else "")
        raise InputError(root, f"not a valid BIDS dataset: {len(bad)} file name(s) break the BIDS rules ({checker}): "
                               f"{shown}; {_HINT}")
    _log.info("BIDS check of %s: passed (%s)", root, checker)
    return checker


def _check_description(root: Path) -> None:
    path = root / "dataset_description.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(root, f"not a valid BIDS dataset: no dataset_description.json (the specification requires "
                               f"one); {_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a valid dataset description ({getattr(exc, 'msg', None) or exc}); {_HINT}") from None
    missing = [f for f in ("Name", "BIDSVersion") if not isinstance(data, dict) or f not in data]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}, which the specification requires; {_HINT}")
    if data.get("DatasetType") == "derivative":
        raise InputError(root, "is a derivative dataset (DatasetType derivative): give the raw dataset it came from")


def _own_rules(relative: str) -> bool:
    """A BIDS file name whose sub-/ses- are its folders' (the part of the rules tsf-trt holds)."""
    *folders, name = relative.strip("/").split("/")
    parsed = parse_name(name)
    if parsed is None:
        return False
    labels = {part.split("-", 1)[0]: part.split("-", 1)[1] for part in folders if part.startswith(("sub-", "ses-"))}
    return all(parsed.entities.get(key) == value for key, value in labels.items())


def _files(root: Path, folder: Path) -> list[str]:
    """Relative paths of the visible files under `folder` (dotfiles are hidden in BIDS)."""
    found = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top, n).relative_to(root).as_posix() for n in sorted(names) if not n.startswith(".")]
    return found


def _bidsignore(root: Path) -> list[str]:
    try:
        lines = (root / ".bidsignore").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """A .bidsignore match (gitignore-like: `dir/` ignores a folder anywhere, a pattern without `/`
    matches a name at any depth, one with `/` the path from the top)."""
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.strip("/") in parts[:-1] or relative.startswith(pattern.lstrip("/")):
                return True
        elif "/" in pattern.strip("/"):
            if fnmatch.fnmatch(relative, pattern.lstrip("/").replace("**/", "*")):
                return True
        elif any(fnmatch.fnmatch(part, pattern.lstrip("/")) for part in parts):
            return True
    return False
