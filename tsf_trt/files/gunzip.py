"""A .nii.gz file's whole gzip stream, inflated once with every member's CRC-32 and length checked,
and its voxels read from those checked bytes (:func:`checked_voxels`, used by tsf_trt.files.volume).

Why: nibabel stops reading a .nii.gz as soon as it has the voxels it needs, before the gzip
trailer, so a damaged byte in the compressed data reached the synthesis unnoticed (issue 22:
155 of 200 single-bit flips loaded without error). Here the inflater checks the trailer of
every member while it decompresses (zlib's and ISA-L's gzip mode verify CRC-32 and length
themselves), so nothing is decompressed twice; python-isal's inflater is used when it is
installed (the project's optional fast gzip), else the standard library's zlib.

Members and trailing bytes are taken as gzip 1.12 takes them: members are concatenated;
zero bytes after a member are padding; anything else after a member that does not start a
new member is "trailing garbage", ignored with a warning (gzip exits 2 there: a warning, not
an error). The fixed header is checked as gzip checks it (magic, method, reserved flags);
a damaged MTIME, XFL or OS byte, or the FTEXT hint, changes no data and is accepted, as
gzip accepts it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.arrayproxy import ArrayProxy

from tsf_trt.errors import InputError

_log = logging.getLogger(__name__)
MAGIC = b"\x1f\x8b"
_DEFLATE = 8
_RESERVED_FLAGS = 0xE0
#: Output beyond what the caller keeps is inflated in pieces of this size (checked, then dropped).
_CHUNK = 64 << 20


def _inflater():
    """python-isal's zlib interface when installed (several times faster), else zlib."""
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        return zlib
    return isal_zlib


def _problem(text: str) -> str:
    """A decompressor's message in the words of this file's failure."""
    low = text.lower()
    if "check" in low or "checksum" in low or "crc" in low:
        return "its gzip data fails the CRC-32/length check (the file was damaged after it was written)"
    return f"its gzip data cannot be decompressed ({text})"


def inflate(path: Path, keep: int) -> bytes:
    """The first `keep` (> 0) bytes of the decompressed contents of the .nii.gz at `path`. The
    whole stream is inflated and checked, but output past `keep` is not kept (so a stream holding
    more than its header claims costs time, never memory). One InputError naming the file for
    any damage."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    library = _inflater()
    kept: list[bytes] = []
    have = member = 0
    while True:
        _check_header(path, data, member)
        decompressor = library.decompressobj(wbits=31)
        pending = data
        try:
            while not decompressor.eof:
                before = len(pending)
                out = decompressor.decompress(pending, keep - have if have < keep else _CHUNK)
                if have < keep:
                    kept.append(out)
                have += len(out)
                pending = decompressor.unconsumed_tail
                if not out and len(pending) in (0, before):
                    break  # no progress: the input ends before the stream does
        except library.error as exc:
            raise InputError(path, f"is truncated or corrupt: {_problem(str(exc))}") from None
        if not decompressor.eof:
            raise InputError(path, "is truncated or corrupt: its gzip data ends before its end-of-stream marker")
        member += 1
        data = decompressor.unused_data.lstrip(b"\0")  # zero bytes after a member: padding
        if not data:
            break
        if data[:2] != MAGIC:
            _log.warning("%s: %d bytes of trailing garbage after the gzip data, ignored (as gzip does)",
                         path, len(data))
            break
    joined = kept[0] if len(kept) == 1 else b"".join(kept)
    return joined[:keep] if len(joined) > keep else joined


def _check_header(path: Path, data: bytes, member: int) -> None:
    """What gzip refuses in a member's fixed header and ISA-L does not check (reserved flags)."""
    where = f" (member {member + 1})" if member else ""
    if len(data) < 10 or data[:2] != MAGIC:
        raise InputError(path, f"is not a readable NIfTI file (not gzip data{where})")
    if data[2] != _DEFLATE:
        raise InputError(path, f"is truncated or corrupt: unknown gzip compression method {data[2]}{where}")
    if data[3] & _RESERVED_FLAGS:
        raise InputError(path, f"is truncated or corrupt: reserved gzip header flags are set{where}")


class BytesReader(io.RawIOBase):
    """A read-only binary file over bytes held in memory, without copying them (io.BytesIO copies
    bytes it is given once it is written to or its buffer is exported; this never does)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = (0, self._at, len(self._view))[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        piece = self._view[self._at:self._at + len(memoryview(buffer).cast("B"))]
        memoryview(buffer).cast("B")[:len(piece)] = piece
        self._at += len(piece)
        return len(piece)


class _ContentsProxy(ArrayProxy):
    """nibabel's ArrayProxy over a .nii.gz's checked contents: the raw voxels are a view of those
    bytes (no zero-filled bytearray and copy: 20 ms per 240x240x155 float32 volume here), and
    nibabel's own dtype, order and slope/intercept handling does the rest. Should a nibabel
    release stop calling ``_get_unscaled``, its reader takes the same bytes through
    BytesReader.readinto: slower, never different."""

    def __init__(self, contents: bytes, spec: tuple, order: str) -> None:
        super().__init__(BytesReader(contents), spec, mmap=False, order=order)
        self._contents = contents

    def _get_unscaled(self, slicer):  # noqa: ANN001, ANN202 - nibabel's signature
        if slicer != ():
            return super()._get_unscaled(slicer)
        return np.ndarray(self.shape, self.dtype, buffer=self._contents, offset=self.offset, order=self.order)


def checked_voxels(path: Path, img: Any, keep: int) -> np.ndarray:
    """The voxels of `img` (a NIfTI image nibabel loaded from the .nii.gz at `path`, its header
    checked; `keep`: the bytes up to the end of its voxels) as float32, from the file's checked
    contents (:func:`inflate`): the header is parsed again from them, so header and voxels both
    come from bytes that passed the CRC. Always writable (one copy where nibabel's scaling made
    none: then it is a view of the bytes)."""
    contents = inflate(path, keep)
    checked = type(img).from_bytes(contents).dataobj
    spec = (checked.shape, checked.dtype, checked.offset)
    if spec != (img.dataobj.shape, img.dataobj.dtype, img.dataobj.offset):
        raise InputError(path, "changed while it was being read; run again")
    if len(contents) < keep:
        raise InputError(path, f"is truncated or corrupt: it holds {len(contents)} bytes, its header says "
                               f"{keep} (header and voxels)")
    proxy = _ContentsProxy(contents, (*spec, checked.slope, checked.inter), checked.order)
    data = np.asarray(np.asanyarray(proxy, dtype=np.float32))
    return data if data.flags.writeable else data.copy(order="K")
