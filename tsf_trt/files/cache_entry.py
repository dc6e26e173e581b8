"""Verified cache entries: what a runtime derived once (an optimised graph, a compiled model, an
engine, an FP16 graph) is used again only if it is byte for byte what was written.

Why: runtimes load what they are given. Flipped bits in an OpenVINO blob changed the synthesis
by up to 22 on the 0-1000 scale, and ONNX Runtime ran an optimised graph whose weights had been
scaled x4 (issue 22); a truncated entry was the only damage anything noticed.

One entry is one file, written to a temporary name and renamed into place (so a reader sees a
whole entry or none, and concurrent writers of the same entry each publish a whole one; the last
rename wins)::

    tsf-trt cache entry 1\\n
    <SHA-256 of everything after this line, hex>\\n
    <metadata: one line of JSON (the entry's key, what made it)>\\n
    <payload>

The hash covers the metadata and the payload and sits in the same file, so no torn or
concurrent write can pair one writer's data with another's hash. :func:`load` checks it (and
that the metadata holds the key asked for) before handing the payload out; a damaged entry is
removed (:class:`DamagedEntry`, one WARNING line naming it where :func:`load_or_none` is used)
and the caller builds it again.

Consumers that read a plain file by path (TensorRT's ONNX parser; ONNX Runtime, which opens an
optimised graph from a path in 2.8 ms and from bytes in 7.8 ms here) use :func:`save_named` /
:func:`publish_named` / :func:`find_named`: a plain file whose name holds its own SHA-256 (and
whose stem holds its key), checked before it is handed out (a file of that name can only ever
hold those bytes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import disk_full_as_error, remove_stale, temp_path
from tsf_trt.files.fileformat import file_sha256

_log = logging.getLogger(__name__)
MAGIC = b"tsf-trt cache entry 1\n"
#: Longest metadata line read by :func:`read_meta` (keys and build facts are small).
_MAX_META = 1 << 20
#: A dead writer's temporary file beside an entry is removed when the entry is written again
#: (same host: at once, by its pid; another host: after this long untouched).
_LEFTOVER_LEASE_S = 24 * 3600
#: Hex digits of the SHA-256 in a named file's name (64 bits: damage, not an adversary).
_NAME_DIGITS = 16


class DamagedEntry(TsfError):
    """A cache entry that is not what was written (it has been removed)."""


@dataclass(frozen=True)
class Entry:
    path: Path
    meta: dict[str, Any]
    payload: bytes


def digest(fields: Mapping[str, Any]) -> str:
    """A short stable name part for a key (JSON of `fields`, sorted)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write(path: Path, chunks: list[bytes]) -> None:
    """`chunks` as the file `path`, all at once: a temp name beside it, then a rename. A full disk
    is one DiskFullError line naming `path`; nothing partial is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, [path.name], _LEFTOVER_LEASE_S)
    tmp = temp_path(path)
    try:
        with disk_full_as_error(path):
            with open(tmp, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def scratch(path: Path) -> Path:
    """A temporary name beside `path` for a runtime that writes a file itself (ONNX Runtime's
    optimised graph), before it is read into an entry; dead writers' leftovers of it are removed."""
    remove_stale(path.parent, [path.name], _LEFTOVER_LEASE_S)
    return temp_path(path)


def write_atomic(path: Path, data: bytes) -> None:
    """A plain file (a record, a report of the cache) replaced all at once."""
    _write(Path(path), [data])


def save(path: Path, payload: bytes, meta: Mapping[str, Any] | None = None) -> Entry:
    """Write the entry `path` (replacing any) with its hash; returns it."""
    meta_line = json.dumps(dict(meta or {}), sort_keys=True).encode() + b"\n"
    if b"\n" in meta_line[:-1]:
        raise ValueError("entry metadata must be one line of JSON")
    sha = hashlib.sha256(meta_line)
    sha.update(payload)
    _write(Path(path), [MAGIC, sha.hexdigest().encode() + b"\n", meta_line, payload])
    return Entry(Path(path), json.loads(meta_line), payload)


def _split(blob: bytes) -> tuple[str, bytes, bytes] | str:
    """(recorded hash, metadata line, payload) of an entry file, or what is wrong with it."""
    if not blob.startswith(MAGIC):
        return "not a tsf-trt cache entry (its first line is missing)"
    head = len(MAGIC)
    end_sha = blob.find(b"\n", head)
    end_meta = blob.find(b"\n", end_sha + 1) if end_sha >= 0 else -1
    if end_sha != head + 64 or end_meta < 0:
        return "its header is cut short or damaged"
    return blob[head:end_sha].decode("ascii", "replace"), blob[end_sha + 1:end_meta + 1], blob[end_meta + 1:]


def load(path: Path, expect: Mapping[str, Any] | None = None) -> Entry | None:
    """The entry at `path`, checked; None when there is none, or when its metadata is intact but
    not `expect` (another key's entry under this name: left alone). Raises DamagedEntry, after
    removing the file, when the file is not exactly what was written."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
            inode = os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedEntry(f"{path}: cannot be read ({exc.strerror or exc}); not used") from None
    parts = _split(blob)
    problem = parts if isinstance(parts, str) else None
    meta: Any = None
    if problem is None:
        recorded, meta_line, payload = parts  # type: ignore[misc]
        sha = hashlib.sha256(meta_line)
        sha.update(payload)
        if sha.hexdigest() != recorded:
            problem = "its SHA-256 differs from the one recorded when it was written (modified or damaged)"
        else:
            try:
                meta = json.loads(meta_line)
            except ValueError:
                meta = None
            if not isinstance(meta, dict):
                problem = "its metadata is not a JSON object"
    if problem is not None:
        _remove(path, inode)
        raise DamagedEntry(f"{path}: {problem}; it was removed and will be rebuilt")
    if expect is not None and any(meta.get(k) != v for k, v in expect.items()):
        return None
    return Entry(path, meta, payload)  # type: ignore[arg-type]


def load_or_none(path: Path, expect: Mapping[str, Any] | None = None) -> Entry | None:
    """:func:`load`, with a damaged entry reported as one WARNING line naming it (then None)."""
    try:
        return load(path, expect)
    except DamagedEntry as exc:
        _log.warning("%s", exc)
        return None


def discard(entry_path: Path, problem: str) -> None:
    """An entry that passed its check but that the runtime refused: removed, with one WARNING."""
    Path(entry_path).unlink(missing_ok=True)
    _log.warning("%s: %s; it was removed and will be rebuilt", entry_path, problem)


def read_meta(path: Path) -> dict[str, Any] | None:
    """An entry's metadata without checking its payload (for listing which keys a folder holds;
    never for using an entry: :func:`load` checks it). None when unreadable."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC or len(handle.readline(80)) != 65:
                return None
            meta = json.loads(handle.readline(_MAX_META))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _remove(path: Path, inode: int) -> None:
    """Remove the damaged file read from `path`, unless another writer has since put a new entry
    there (a different inode): that one is checked when it is read."""
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


# -- plain files named by their own hash (for consumers that read a path) -------------------------------


def save_named(folder: Path, stem: str, suffix: str, payload: bytes) -> Path:
    """Publish `payload` as `folder/<stem>.<sha>.<suffix>` (sha: of the payload) and return it."""
    sha = hashlib.sha256(payload).hexdigest()[:_NAME_DIGITS]
    path = Path(folder) / f"{stem}.{sha}{suffix}"
    _write(path, [payload])
    return path


def publish_named(written: Path, folder: Path, stem: str, suffix: str) -> Path:
    """Publish the file a runtime wrote at `written` (a :func:`scratch` name in `folder`) as
    `folder/<stem>.<sha>.<suffix>`, by renaming it: no copy."""
    path = Path(folder) / f"{stem}.{file_sha256(written)[:_NAME_DIGITS]}{suffix}"
    with disk_full_as_error(path):
        with open(written, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(written, path)
    return path


def find_named(folder: Path, stem: str, suffix: str) -> tuple[Path, str] | None:
    """A file published by :func:`save_named` or :func:`publish_named` under `stem` whose bytes
    still have the hash its name records, and its full SHA-256; every other one found is removed
    with one WARNING line naming it."""
    for path in sorted(Path(folder).glob(f"{stem}.*{suffix}")):
        recorded = path.name[len(stem) + 1:len(path.name) - len(suffix)]
        if len(recorded) != _NAME_DIGITS or not all(c in "0123456789abcdef" for c in recorded):
            continue  # not one of ours
        try:
            sha = file_sha256(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("%s: cannot be read (%s); not used", path, exc.strerror or exc)
            continue
        if sha.startswith(recorded):
            return path, sha
        discard(path, "its SHA-256 differs from the one its name records (modified or damaged)")
    return None
