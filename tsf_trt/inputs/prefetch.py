"""Folder mode's input prefetch: subject k+1's NIfTI inputs are read while subject k computes.

Why: every subject's inputs are gunzipped, validated and reoriented (:func:`~tsf_trt.files.volume.load_volume`)
and given the preflight checks (:func:`~tsf_trt.inputs.preflight.check_subject`) before its network
runs, on the computing thread; a background thread does this for the next subject while the
network runs, as :mod:`tsf_trt.runs.writer` writes the one before.

What stays exactly as without it:

* what is read: a prefetched file is used only if its inode, size and modification times are
  what they were when its reading began; otherwise the subject's inputs are read again;
* errors: anything that goes wrong in the background is dropped and the subject's inputs are
  read again on the calling thread, in the subject's turn, so a bad file fails only its own
  subject, with the same one line naming the file;
* log lines: nothing here logs (the preflight findings are only computed; the caller logs them);
* a stopped run: only reading happens here, so a Ctrl-C or a kill leaves nothing to clean up;
  the thread is a daemon and its result is dropped (Python still lets a file being read finish
  at exit, as it does for any ThreadPoolExecutor).

Memory: at most one subject's inputs are held ahead.

Every subject's files are read in parallel threads, ahead or not (:func:`load_subject`): gunzip and
numpy release the GIL, so 3 inputs of 240x240x40 took 0.09 s instead of 0.20 s on this project's
2-core machine under load (min of 7), and each file's own preflight checks run in its thread too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tsf_trt.errors import InputError
from tsf_trt.files.volume import Volume, load_volume
from tsf_trt.inputs.preflight import Finding, align_pairs, check_across, check_subject, sequence_name, shift_voxels
from tsf_trt.sequences import NAMES
from tsf_trt.uncertainty.profile import InputProfile, measure


@dataclass
class Loaded:
    """A subject's inputs as read (sequence index -> Volume), their preflight findings, and their
    profile (what a calibration's range is held against: tsf_trt.uncertainty.profile)."""

    volumes: dict[int, Volume]
    findings: list[Finding]
    profile: InputProfile | None = None


def _read_one(path: Path) -> tuple[Volume, list[Finding], dict[str, float]]:
    """One input, the checks of it alone (check_subject of one volume: its alignment with the
    others is checked once all are read) and its noise and bias levels."""
    volume = load_volume(path)
    return volume, check_subject({0: volume}), measure(volume.data)


def check_distinct_files(inputs: Mapping[int, Path]) -> None:
    """One file cannot be two sequences: an InputError naming both and the file, when two inputs
    are one file (the same path, or a symbolic or hard link to it: same device and inode). A file
    that cannot be stat'ed is left to the reader, which names its own problem."""
    seen: dict[tuple[int, int], int] = {}
    for i, path in inputs.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), i)
        if first != i:
            a, b, other = sequence_name(first), sequence_name(i), inputs[first]
            same = os.path.abspath(other) == os.path.abspath(path)
            problem = (f"given as both {a} and {b}" if same
                       else f"the {b} input is the same file as the {a} input {other}")
            raise InputError(path, f"{problem}: one file cannot be two sequences; give each sequence its own file")


def load_subject(inputs: Mapping[int, Path]) -> Loaded:
    """Read and check one subject's inputs, one thread per file; the findings are check_subject's,
    in its order (each file's by sequence index, then those across the files). Two inputs that
    are one file raise first (check_distinct_files); then the first file in `inputs`' order that
    fails raises its error, as reading them one after the other would."""
    check_distinct_files(inputs)
    with ThreadPoolExecutor(max_workers=max(1, len(inputs)), thread_name_prefix="tsf-trt read") as pool:
        futures = {i: pool.submit(_read_one, p) for i, p in inputs.items()}
    read = {i: future.result() for i, future in futures.items()}
    volumes = {i: volume for i, (volume, _, _) in read.items()}
    own = [finding for i in sorted(read) for finding in read[i][1]]
    pairs = align_pairs(volumes)  # measured once: for the findings and the profile
    profile = InputProfile({NAMES[i]: read[i][2] for i in sorted(read)},
                           max((shift_voxels(al) for al in pairs.values()), default=0.0))
    return Loaded(volumes, own + check_across(volumes, pairs), profile)


Stamp = tuple[int, int, int, int, int]


def stamp(path: Path) -> Stamp | None:
    """What changes when a file is replaced or written to: (device, inode, size, mtime, ctime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass
class _Ahead:
    """One subject's inputs being read on the background thread."""

    inputs: dict[int, Path]
    stamps: dict[Path, Stamp | None] = field(default_factory=dict)
    loaded: Loaded | None = None
    thread: threading.Thread | None = None

    def run(self, load: Callable[[Mapping[int, Path]], Loaded]) -> None:
        self.stamps = {p: stamp(p) for p in self.inputs.values()}  # before reading: a later write shows
        try:
            self.loaded = load(self.inputs)
        except Exception:  # noqa: BLE001 - read again on the calling thread, which raises it in its turn
            self.loaded = None

    def usable(self, inputs: Mapping[int, Path]) -> Loaded | None:
        """The prefetched inputs if they are these, were read without error, and are unchanged."""
        if dict(inputs) != self.inputs:
            return None
        self.thread.join()
        if self.loaded is None or any(s is None or stamp(p) != s for p, s in self.stamps.items()):
            return None
        return self.loaded


class Prefetcher:
    """Reads one subject ahead on a background thread.

    `ahead(inputs)` names what to read next; it starts once the current subject's inputs are
    taken by `load`, so the two reads never compete. `load` gives the prefetched inputs when
    they are usable (see the module's docstring), else reads them on the calling thread.
    """

    def __init__(self, load: Callable[[Mapping[int, Path]], Loaded] | None = None):
        self._load = load or load_subject
        self._next: dict[int, Path] | None = None
        self._ahead: _Ahead | None = None

    def ahead(self, inputs: Mapping[int, Path] | None) -> None:
        """Read these after the next `load` (None: nothing; the last call counts)."""
        self._next = dict(inputs) if inputs else None

    def load(self, inputs: Mapping[int, Path]) -> Loaded:
        ahead, self._ahead = self._ahead, None
        try:
            found = ahead.usable(inputs) if ahead is not None else None
            return found if found is not None else self._load(inputs)
        finally:
            self._start()

    def _start(self) -> None:
        if self._next is None:
            return
        ahead, self._next = _Ahead(self._next), None
        ahead.thread = threading.Thread(target=ahead.run, args=(self._load,), name="tsf-trt prefetch", daemon=True)
        self._ahead = ahead
        ahead.thread.start()

    def close(self) -> None:
        """Drop what is read ahead, without waiting for it (it only reads)."""
        self._ahead = self._next = None
