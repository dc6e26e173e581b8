"""`infer --map map.csv`: subjects given explicitly, for every layout no naming rule reads.

One row per input file: `subject,sequence,path` (any sequence spelling `--target` takes; a
path relative to the CSV's folder). A first row `subject,sequence,path` is a header. Blank
lines and lines starting with `#` are skipped. A malformed row is an error naming the line;
a file that is missing, or a sequence given twice for one subject, fails that subject alone
(as in folder mode), naming the line.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.subjects import Subject, broken_link, check_subject_name

HEADER = ("subject", "sequence", "path")


def read_map(path: str | Path) -> list[Subject]:
    """The subjects of a map file, in the order they first appear."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(source, f"cannot be read ({exc.strerror or exc})") from None
    inputs: dict[str, dict[int, Path]] = {}
    problems: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and tuple(c.lower() for c in cells) == HEADER:
            continue
        if len(cells) != 3 or not all(cells):
            raise InputError(source, f"line {number}: expected subject,sequence,path, got {','.join(row)!r}")
        name, seq, file = cells
        try:
            check_subject_name(name)
            index = sequences.parse(seq)
        except TsfError as exc:
            raise InputError(source, f"line {number}: {exc}") from None
        where = Path(os.path.expanduser(file))
        where = where if where.is_absolute() else source.parent / where
        found = inputs.setdefault(name, {})
        if index in found:
            problems.setdefault(name, f"{source} line {number}: {sequences.DISPLAY[index]} of {name} is given twice "
                                      f"({found[index]} and {where}); keep one")
        elif not where.is_file() and not broken_link(where):  # a broken link: named by intake.gather
            problems.setdefault(name, f"{where}: no such file ({source} line {number})")
        else:
            found[index] = where
    if not inputs:
        raise InputError(source, "names no subject: expected rows of subject,sequence,path")
    return [Subject(name, dict(sorted(found.items())), problems.get(name)) for name, found in inputs.items()]
