"""NIfTI volumes: load, validate and orient (writing them: tsf_trt.files.volume_write).

The network's weights were trained on axial slices exactly as the authors'
SimpleITK loader saw BraTS files, which nibabel reports as stored in ('L', 'P', 'S')
order: SimpleITK's array is then ``nib_data.transpose(2, 1, 0)`` (z, y, x) and an
axial slice is ``arr[k]``. Files stored any other way are brought to that layout by
axis permutations and flips only (never resampling), so every voxel value reaches
the network untouched, and results are written back in the input's own layout,
affine and header so that they overlay the input in any viewer.

Every problem a user can cause is raised as :class:`~tsf_trt.errors.InputError`
naming the file. Writing volumes back is :mod:`tsf_trt.files.volume_write`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import is_proxy
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
                                  apply_orientation,
                                  axcodes2ornt,
                                  inv_ornt_aff,
                                  io_orientation,
                                  ornt_transform,
                                  )
from nibabel.spatialimages import HeaderDataError

from tsf_trt.errors import InputError
from tsf_trt.files.gunzip import checked_voxels, inflate

CANONICAL_AXCODES = ("L", "P", "S")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_MAX_DEFLATE_RATIO = 1100  # deflate cannot compress beyond about 1032:1
# What a corrupt, truncated or foreign file can raise inside nibabel and gzip.
_READ_ERRORS = (
    ImageFileError, HeaderDataError, EOFError, zlib.error, gzip.BadGzipFile,
    OSError, ValueError, struct.error,
)


@dataclass(frozen=True, eq=False)
class Volume:
    """One loaded volume: canonical (z, y, x) float32 voxels plus what is needed to write back.

    ``data`` is writable but shared; treat it as read-only (copy before editing in place).
    """

    path: Path
    data: np.ndarray  # float32, C-contiguous, (z, y, x) of the LPS-reoriented volume
    affine: np.ndarray  # the file's own 4x4 affine (float64)
    header: nib.Nifti1Header  # a copy of the file's own header
    _native_ornt: np.ndarray = field(repr=False)  # nibabel ornt of the stored axes
    _native_shape: tuple[int, int, int] = field(repr=False)
    _image_class: type = field(repr=False, default=nib.Nifti1Image)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical shape (z, y, x): what the network and all array code see."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def native_shape(self) -> tuple[int, int, int]:
        """The file's own 3D shape (a single-volume 4D file reports its 3 spatial axes)."""
        return self._native_shape

    @property
    def canonical_affine(self) -> np.ndarray:
        """Affine of the LPS-reoriented (x, y, z) array, before the (z, y, x) transpose.

        Two files holding the same physical grid in different storage orders share it,
        which is why :func:`check_same_grid` compares it rather than the raw affines.
        """
        to_lps = ornt_transform(self._native_ornt, _CANONICAL_ORNT)
        return self.affine @ inv_ornt_aff(to_lps, self._native_shape)

    def to_native(self, array_zyx: np.ndarray) -> np.ndarray:
        """Undo the reorientation exactly: canonical (z, y, x) array -> the file's own layout.

        Returns a view where possible; raises ValueError for a shape other than ``shape``.
        """
        arr = np.asarray(array_zyx)
        if arr.shape != self.shape:
            raise ValueError(f"array shape {arr.shape} does not match volume shape {self.shape}")
        back = ornt_transform(_CANONICAL_ORNT, self._native_ornt)
        return apply_orientation(arr.transpose(2, 1, 0), back)

    def grid_only(self) -> "Volume":
        """This volume without its voxels (a read-only zero-stride stand-in of the same shape): what
        writing a result back on its grid needs (:func:`output_image`), kept without holding the data."""
        return replace(self, data=np.broadcast_to(np.zeros((), np.float32), self.data.shape))


def nifti_suffix(path: Path) -> str | None:
    """'.nii.gz' or '.nii' (case-insensitive), or None: nibabel picks the format by name."""
    name = path.name.lower()
    return next((s for s in _NIFTI_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def check_input_file(path: Path) -> None:
    """Cheap checks before anything heavy runs: the file exists, is a file, is named NIfTI, is readable."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, not a NIfTI file")
    if nifti_suffix(path) is None:
        raise InputError(path, "not a NIfTI file (.nii or .nii.gz expected)")
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read: permission denied")


def _why(exc: BaseException, path: Path | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # nibabel messages span lines
    if path is not None:  # the error line already names the file
        for form in (str(path.resolve()), str(path)):
            text = text.replace(f"File {form} ", "").replace(form, path.name)
    return text


def shape_text(shape: Sequence[int]) -> str:
    """A file's shape as nibabel and viewers show it: its own (x, y, z[, t]) order, '240x240x155'."""
    return "x".join(str(int(n)) for n in shape)


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Accept 3D, or 4D with exactly one volume; checked on the header, before reading voxels."""
    if len(shape) == 4 and shape[3] != 1:
        raise InputError(path, f"is 4D with {shape[3]} volumes (shape {shape_text(shape)}); one 3D volume expected")
    if len(shape) not in (3, 4):
        raise InputError(path, f"is {len(shape)}D (shape {shape_text(shape)}); a 3D volume expected")
    if min(shape) < 1:
        raise InputError(path, f"has an empty axis (shape {shape_text(shape)})")
    return tuple(int(n) for n in shape[:3])  # type: ignore[return-value]


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, or less under a cgroup limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _check_claimed_size(path: Path, img: nib.Nifti1Image) -> None:
    """Refuse a header whose voxel count the file cannot hold (or memory cannot), before any
    allocation: a damaged header must not end in MemoryError."""
    shape, dtype = img.shape, img.get_data_dtype()
    voxels = math.prod(int(n) for n in shape)
    stored = voxels * dtype.itemsize
    size = path.stat().st_size
    claims = f"its header claims {shape_text(shape)} voxels of {dtype} ({_size(stored)})"
    need = voxels * 4 * 2  # float32 voxels and their reoriented copy
    if nifti_suffix(path) == ".nii.gz":
        contents = _contents_size(img)
        if contents > size * _MAX_DEFLATE_RATIO + (1 << 20):
            raise InputError(path, f"is truncated or corrupt: {claims}, more than a {_size(size)} gzip file can hold")
        need += contents  # the decompressed file is held while its voxels are read (gunzip.inflate)
    elif _data_offset(img) + stored > size:
        raise InputError(path, f"is truncated or corrupt: {claims}, but the file holds {_size(size)}")
    available = _available_memory()
    if available is not None and need > available:
        raise InputError(path, f"is {shape_text(shape)} voxels: loading it needs about {_size(need)} of memory, "
                               f"more than the {_size(available)} available")


def _data_offset(img: nib.Nifti1Image) -> int:
    """Where the voxels start in the (decompressed) file: the loaded proxy's offset (a loaded
    image's own header has vox_offset reset to 0 by nibabel)."""
    return max(0, int(getattr(img.dataobj, "offset", 0)))


def _contents_size(img: nib.Nifti1Image) -> int:
    """Bytes of the (decompressed) file up to the end of its voxels, as its header says."""
    voxels = math.prod(int(n) for n in img.shape)
    return _data_offset(img) + voxels * img.get_data_dtype().itemsize


def _check_affine(path: Path, img: nib.Nifti1Image) -> None:
    """Refuse NaN or infinity in the header's geometry (the affine nibabel derives, the voxel
    sizes, and the sform and qform the header declares in use): orientation and voxel sizes come
    from them, outputs carry them, and numpy's SVD fails on them (issue 22) where it should be
    one line naming the file. A qform or sform whose code is 0 is unused and not looked at."""
    header = img.header
    fields = {"affine": img.affine, "voxel sizes (pixdim)": header["pixdim"][1:4]}
    if int(header["sform_code"]):
        fields["sform"] = header.get_sform()
    if int(header["qform_code"]):
        fields["qform"] = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                                                       "qoffset_y", "qoffset_z")] + [float(header["pixdim"][0])]
    bad = [name for name, value in fields.items() if not np.isfinite(np.asarray(value, np.float64)).all()]
    if bad:
        raise InputError(path, f"has NaN or infinite values in its header's {', '.join(bad)}: "
                               "its orientation and voxel size are unknown")


def _parse(path: Path) -> nib.Nifti1Image:
    """The file's header, checked (voxels not read yet)."""
    try:
        img = nib.load(path, mmap=False)  # no memmap: read now, never keep a handle on the input
    except PermissionError:
        raise InputError(path, "cannot be read: permission denied") from None
    except _READ_ERRORS as exc:
        raise InputError(path, f"is not a readable NIfTI file ({_why(exc, path)})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InputError(path, f"is a {type(img).__name__}, not a NIfTI-1/NIfTI-2 image")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise InputError(path, f"has voxel type {dtype} (RGB or complex); real-valued voxels expected")
    _spatial_shape(path, img.shape)
    _check_claimed_size(path, img)
    _check_affine(path, img)
    return img


def _read_voxels(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Parse the file and force its voxels into memory as 3D float32 (slope/intercept applied).

    A .nii.gz is inflated once, whole, with its CRC-32 and length checked (:mod:`.gunzip`;
    nibabel alone stops before the gzip trailer), and its voxels are read from those bytes.
    When the header itself is refused, a damaged gzip stream is named as the cause instead."""
    gz = nifti_suffix(path) == ".nii.gz"
    try:
        img = _parse(path)
    except InputError:
        if gz and path.is_file() and os.access(path, os.R_OK):
            inflate(path, 1)  # raises if the stream is damaged: the real cause of an odd header
        raise
    try:
        data = checked_voxels(path, img, _contents_size(img)) if gz else \
            np.asarray(np.asanyarray(img.dataobj, dtype=np.float32))
    except _READ_ERRORS as exc:
        raise InputError(path, f"is truncated or corrupt: its voxel data cannot be read ({_why(exc, path)})") from None
    return img, data.reshape(_spatial_shape(path, img.shape))  # drops a single-volume 4th axis, as a view


def _check_values(path: Path, data: np.ndarray) -> None:
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(path, f"contains {bad} NaN or infinite voxel(s) out of {data.size}")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(path, f"all voxels are equal (value {lo:g}): nothing to synthesise from")


def load_volume(path: str | Path) -> Volume:
    """Load and validate one NIfTI file; its voxels come back in the canonical (z, y, x) layout."""
    path = Path(path)
    check_input_file(path)
    img, data = _read_voxels(path)
    return _volume(path, img, data)


def volume_from_image(img: nib.Nifti1Image, name: str = "image") -> Volume:
    """A nibabel image (in memory or from ``nib.load``) as a :class:`Volume`, with the checks and the
    reorientation of :func:`load_volume`, so an image gives what its file gives. Its ``path`` is the
    image's file, or ``<name>`` for one held only in memory (what messages name)."""
    filename = img.get_filename() if isinstance(img, nib.Nifti1Image) else None
    path = Path(filename) if filename else Path(f"<{name}>")
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InputError(path, f"is a {type(img).__name__}, not a NIfTI-1/NIfTI-2 image")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise InputError(path, f"has voxel type {dtype} (RGB or complex); real-valued voxels expected")
    shape = _spatial_shape(path, img.shape)
    _check_affine(path, img)
    if filename and is_proxy(img.dataobj) and Path(filename).is_file():
        _check_claimed_size(Path(filename), img)  # its voxels are still on disk
    try:
        data = np.asarray(np.asanyarray(img.dataobj, dtype=np.float32))
    except _READ_ERRORS as exc:
        raise InputError(path, f"is truncated or corrupt: its voxel data cannot be read ({_why(exc, path)})") from None
    return _volume(path, img, data.reshape(shape))


def volume_from_array(array: np.ndarray, affine: np.ndarray, name: str = "array") -> Volume:
    """A numpy array with the affine that places it: voxel [i, j, k] of `array` is at
    ``affine @ (i, j, k, 1)``, as in ``nib.Nifti1Image(array, affine)`` (nibabel's order, not the
    network's (z, y, x)). The orientation comes from the affine only, never guessed."""
    path = Path(f"<{name}>")
    try:
        matrix = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (4, 4):
        got = f"shape {matrix.shape}" if matrix is not None else repr(affine)[:40]
        raise InputError(path, f"the affine must be a 4x4 array of numbers, got {got}")
    data = np.asarray(array)
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D array, got shape {data.shape}")
    return volume_from_image(nib.Nifti1Image(data, matrix), name)


def volume_standing_for(img: nib.Nifti1Image, path: str | Path) -> Volume:
    """An image computed from a file (tsf_trt.inputs.resample's resampled inputs) as a Volume that
    stands for that file: messages name `path`, and save_volume refuses to write it. Its values are
    not checked again (they come from a checked file; outside its field of view they are 0)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"a 3D image expected, got shape {data.shape}")
    return _volume(Path(path), img, data, check_values=False)


def _volume(path: Path, img: nib.Nifti1Image, data: np.ndarray, check_values: bool = True) -> Volume:
    """The one reorientation to the canonical layout, for files and images alike."""
    if check_values:
        _check_values(path, data)
    native = io_orientation(img.affine)
    if np.isnan(native).any():
        raise InputError(path, "has a degenerate affine (a voxel axis has zero length); orientation unknown")
    to_lps = ornt_transform(native, _CANONICAL_ORNT)
    # Flips and transposes are views; one copy at the end makes it C-contiguous
    # (none at all for an LPS file, whose Fortran-ordered data transposes to C order).
    canonical = np.ascontiguousarray(apply_orientation(data, to_lps).transpose(2, 1, 0))
    return Volume(
        path=path,
        data=canonical,
        affine=np.array(img.affine, dtype=np.float64),
        header=img.header.copy(),
        _native_ornt=native,
        _native_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        _image_class=type(img),
    )


def check_same_grid(volumes: Sequence[Volume], shape_only: bool = False, atol: float = 1e-3) -> None:
    """Refuse inputs that are not voxel-aligned: the network mixes them voxel by voxel.

    Compares canonical shapes and (unless ``shape_only``) the canonical affines, so the
    same grid stored in two different axis orders is accepted.
    """
    if not volumes:
        return
    ref = volumes[0]
    for vol in volumes[1:]:
        if vol.shape != ref.shape:
            raise InputError(
                vol.path, f"grid shape differs from {ref.path.name}: "
                          f"shape {shape_text(vol.native_shape)} vs {shape_text(ref.native_shape)} (x, y, z)"
            )
        if shape_only:
            continue
        diff = float(np.max(np.abs(vol.canonical_affine - ref.canonical_affine)))
        if not diff <= atol:
            raise InputError(
                vol.path,
                f"affine differs from {ref.path.name}: max difference {diff:.6g} (tolerance {atol:g}); "
                "the images are not on the same voxel grid",
            )
