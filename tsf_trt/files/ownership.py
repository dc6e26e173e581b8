"""What tsf-trt wrote, and what a command reads: the one place that decides what `--overwrite`
may replace, and which output locations are refused because they are (or hold) an input.

Why: `--overwrite` replaces only tsf-trt's own outputs. A user's file that happens to carry an
output's name, or a folder given as `-o` that holds anything tsf-trt did not write there, is
refused in one line; an input of a command is never written or removed, with or without
`--overwrite`. Recognition is by content, cheaply (a header, a tag, a first line):

* NIfTI: the header's ``descrip`` starts with "tsf-trt" (:mod:`tsf_trt.files.volume` and the
  phantoms write it so);
* JSON: a "tsf_trt_version" key, a "format" tag starting with "tsf-trt", bench's "tool", a
  BIDS sidecar's "tsf-trt" block (tsf_trt.runs.bids_outputs), or an earlier version's TSEM
  sidecar ("Description" starting with "TSEM:");
* PNG: a tEXt "Software" chunk starting with "tsf-trt" (:data:`PNG_METADATA`, written by
  :mod:`tsf_trt.runs.figures` and the bench plot);
* Markdown: the first line of a bench report or of `bench suite`'s table;
* TSV: a cohort table's header (tsf_trt.runs.table): first column "subject", and a
  "tsf_trt_version" column (:data:`TABLE_MARK_COLUMN`);
* anything inside tsf-trt's cache (``TSF_TRT_CACHE``) or inside the engine and runtime caches
  of an export directory (``engines/``, ``.ort-cache/``, ...): TensorRT engines and optimised
  graphs carry no mark of their own.

A folder is replaced only when it is recognisably tsf-trt's output of the kind being written
(:class:`FolderKind`: a model directory, an export directory, ...) and holds nothing else
than what that kind writes, plus tsf-trt's own caches and the temporary files of its writers.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsf_trt.errors import InputError
from tsf_trt.files.fileformat import (EXPORT_FORMAT, EXPORT_MANIFEST, MODEL_CALIBRATION, MODEL_CONFIG,
                                      MODEL_EXPORT_SUBDIR, MODEL_FORMAT, MODEL_WEIGHTS)
from tsf_trt.files.owners import leftover_owner

MARK = "tsf-trt"
#: PNG text chunks of every figure tsf-trt draws (matplotlib's `savefig(metadata=...)`).
PNG_METADATA = {"Software": MARK}
_MAX_JSON = 64 << 20  # a bigger file is not one of ours: never read it whole
_TEXT_PREFIXES = ("# tsf-trt", "Measured with `tsf-trt")  # bench --markdown, bench suite -o
#: The column that marks a cohort table as tsf-trt's (its header's first column is "subject").
TABLE_MARK_COLUMN = "tsf_trt_version"
#: Caches tsf-trt keeps inside an export directory (tsf_trt.machine.cache_dir.runtime_cache, engines/).
_CACHE_DIR = re.compile(r"^(engines|\.[a-z0-9_-]+-cache)$")
_PROBE = re.compile(r"^\.probe-\d+$")  # tsf_trt.machine.cache_dir.writable_dir


# -- files --------------------------------------------------------------------------------------
def is_own_file(path: str | Path) -> bool:
    """Whether `path` is recognisably a file tsf-trt wrote (see the module docstring); False for
    anything unreadable, a folder, or a link to nothing."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        if _in_own_cache(path):
            return True
        with open(path, "rb") as handle:
            head = handle.read(8)
        name = path.name.lower()
        if head.startswith(b"\x89PNG"):
            return _png_software(path).startswith(MARK)
        if name.endswith((".nii", ".nii.gz")):
            return nifti_descrip(path).startswith(MARK.encode())
        if head.lstrip().startswith(b"{"):
            return _own_json(path)
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(4096)
        if name.endswith(".tsv"):
            header = first.rstrip("\r\n").split("\t")
            return header[0] == "subject" and TABLE_MARK_COLUMN in header
        return first.startswith(_TEXT_PREFIXES)
    except (OSError, ValueError, EOFError, zlib.error, struct.error):
        return False


def refuse_foreign_file(path: Path) -> None:
    """One line naming a file that `--overwrite` must not replace."""
    if not is_own_file(path):
        raise InputError(path, "exists and was not written by tsf-trt: --overwrite replaces only tsf-trt's own "
                               "outputs; move it away or choose another output")


def nifti_descrip(path: Path) -> bytes:
    """The header's descrip field (NIfTI-1 at byte 148, NIfTI-2 at 240), gzipped or not;
    OSError, EOFError, zlib.error or struct.error when it cannot be read."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as handle:
        header = handle.read(540)
    size = struct.unpack("<i", header[:4])[0]
    if size not in (348, 540):
        size = struct.unpack(">i", header[:4])[0]
    offset = {348: 148, 540: 240}.get(size)
    if offset is None or len(header) < offset + 80:
        return b""
    return header[offset:offset + 80].split(b"\0", 1)[0]


def _png_software(path: Path) -> str:
    """The text of the tEXt 'Software' chunk before the image data, '' if there is none."""
    with open(path, "rb") as handle:
        handle.read(8)
        for _ in range(16):
            length, kind = struct.unpack(">I4s", handle.read(8))
            if kind == b"IDAT" or length > 1 << 16:
                return ""
            data = handle.read(length)
            handle.read(4)  # CRC
            if kind == b"tEXt" and data.startswith(b"Software\0"):
                return data[len(b"Software\0"):].decode("latin-1")
    return ""


def _own_json(path: Path) -> bool:
    if path.stat().st_size > _MAX_JSON:
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return False
    fmt, description = data.get("format"), data.get("Description")
    return ("tsf_trt_version" in data or isinstance(data.get(MARK), dict)
            or (isinstance(fmt, str) and fmt.startswith(MARK))
            or data.get("tool") == f"{MARK} bench"
            or (isinstance(description, str) and description.startswith("TSEM:")))


def _in_own_cache(path: Path) -> bool:
    """Inside tsf-trt's cache, or inside a cache folder of a tsf-trt export directory."""
    from tsf_trt.machine.cache_dir import cache_root

    where = path.resolve()
    root = cache_root().expanduser().resolve()
    if root in where.parents:
        return True
    for folder in list(where.parents)[:3]:
        if _CACHE_DIR.match(folder.name) and _tagged(folder.parent / EXPORT_MANIFEST, EXPORT_FORMAT):
            return True
    return False


def _tagged(path: Path, fmt: str) -> bool:
    """`path` is a JSON object whose "format" is `fmt`."""
    return read_tagged(path, fmt) is not None


def read_tagged(path: Path, fmt: str) -> dict[str, Any] | None:
    """The JSON object at `path` when its "format" is `fmt`, else None (unreadable included)."""
    try:
        if path.stat().st_size > _MAX_JSON:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == fmt else None


# -- folders ------------------------------------------------------------------------------------
def is_leftover(name: str) -> bool:
    """A hidden file of one of tsf-trt's writers: a temp file or folder, a write probe, an old
    folder being replaced (:mod:`tsf_trt.files.atomic`), a runtime's probe."""
    return leftover_owner(name) is not None or bool(_PROBE.match(name))


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder tsf-trt writes whole, and how to tell one (with nothing else in it)."""

    what: str                                    # "a tsf-trt export directory"
    foreign: Callable[[Path], str | None]        # why a folder is not one; None when it is

    def check(self, folder: Path) -> None:
        """One line naming `folder` (and the first entry that is not ours) unless it is one."""
        why = self.foreign(folder)
        if why is not None:
            raise InputError(folder, f"{why}: tsf-trt replaces only {self.what} that holds nothing else "
                                     "(--overwrite too); move it away or choose another output")


def first_foreign(folder: Path, allowed: Callable[[str, Path], bool]) -> str | None:
    """'holds NAME, ...' for the first entry of `folder` (by name) that is neither `allowed` nor
    one of tsf-trt's own leftovers; None when there is none."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    for name in names:
        path = folder / name
        if is_leftover(name) or allowed(name, path):
            continue
        shown = name + ("/" if path.is_dir() and not path.is_symlink() else "")
        return f"holds {shown}, which tsf-trt did not write there"
    return None


def unrecognised(folder: Path, why: str) -> str:
    """`why` a folder is not of a kind, with its first entry named (when it has one)."""
    try:
        names = sorted(n for n in os.listdir(folder) if not is_leftover(n))
    except OSError:
        return why
    if not names:
        return why
    shown = names[0] + ("/" if _real_dir(folder / names[0]) else "")
    return f"{why}; it holds {shown}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _real_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _marker(folder: Path, name: str, fmt: str) -> dict[str, Any] | None:
    """The JSON file `name` that makes `folder` one of tsf-trt's (a real file tagged `fmt`), or None."""
    path = folder / name
    return read_tagged(path, fmt) if _real_file(path) else None


def _export_foreign(folder: Path) -> str | None:
    data = _marker(folder, EXPORT_MANIFEST, EXPORT_FORMAT)
    if data is None:
        return unrecognised(folder, f"is not a tsf-trt export directory (no {EXPORT_MANIFEST} with the "
                                    f"{EXPORT_FORMAT} tag)")
    graphs = data.get("graphs")
    files = {g.get("file") for g in graphs.values() if isinstance(g, dict)} if isinstance(graphs, dict) else set()
    int8 = data.get("int8", {}).get("graphs") if isinstance(data.get("int8"), dict) else None  # export/quantize.py
    if isinstance(int8, dict):
        files |= {g.get(key) for g in int8.values() if isinstance(g, dict) for key in ("file", "weights")}

    def allowed(name: str, path: Path) -> bool:
        if _CACHE_DIR.match(name):
            return _real_dir(path)
        return (name == EXPORT_MANIFEST or name in files) and _real_file(path)

    return first_foreign(folder, allowed)


def _model_foreign(folder: Path) -> str | None:
    data = _marker(folder, MODEL_CONFIG, MODEL_FORMAT)
    if data is None:
        return unrecognised(folder, f"is not a tsf-trt model directory (no {MODEL_CONFIG} with the "
                                    f"{MODEL_FORMAT} tag)")
    files = {MODEL_CONFIG, str(data.get("weights", MODEL_WEIGHTS)), MODEL_WEIGHTS, "MODEL_CARD.md",
             MODEL_CALIBRATION}

    inner: list[str] = []  # why its export/ is not ours, when it is not

    def allowed(name: str, path: Path) -> bool:
        if name == MODEL_EXPORT_SUBDIR and _real_dir(path):
            inner.extend(filter(None, [_export_foreign(path)]))
            return not inner
        return name in files and _real_file(path)

    why = first_foreign(folder, allowed)
    return f"{MODEL_EXPORT_SUBDIR}/ {inner[0]}" if why is not None and inner else why


def _train_state_foreign(folder: Path) -> str | None:
    state, model = folder / "trainer_state.pt", folder / "model"
    if not _real_file(state) or not _real_dir(model) or _model_foreign(model) is not None:
        return unrecognised(folder, "is not a tsf-trt trainer state (no trainer_state.pt beside a model/ directory)")
    return first_foreign(folder, lambda name, path: name in ("trainer_state.pt", "model"))


MODEL_DIR = FolderKind("a tsf-trt model directory", _model_foreign)
EXPORT_DIR = FolderKind("a tsf-trt export directory", _export_foreign)
TRAIN_STATE = FolderKind("a tsf-trt trainer state (last/)", _train_state_foreign)


# -- inputs -------------------------------------------------------------------------------------
def refuse_input_overlap(output: str | Path, inputs: Iterable[tuple[str, str | Path | None]],
                         allowed: Iterable[str | Path] = ()) -> None:
    """An output that is, contains or is inside an input (through links too) is refused, with or
    without --overwrite: writing or replacing it would change or remove the input. `inputs` are
    (how the command names it, path) pairs; `allowed` outputs are places inside an input that
    are meant for it (a model directory's own export/)."""
    output = Path(output)
    out = output.resolve()
    if any(out == Path(a).resolve() for a in allowed):
        return
    for label, given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source or _same_file(output, Path(given)):
            relation = "is"
        elif source in out.parents:
            relation = "is inside"
        elif out in source.parents:
            relation = "contains"
        else:
            continue
        raise InputError(output, f"{relation} the {label} {given}: an input is never written or removed, with or "
                                 "without --overwrite; choose another output")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
