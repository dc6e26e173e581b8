"""NIfTI outputs: a canonical (z, y, x) array written back in an input's own layout, affine and header.

Results overlay their input in any viewer because they are written as the input was stored
(:class:`~tsf_trt.files.volume.Volume` remembers how). One image builder (:func:`output_image`)
serves every writer: :func:`save_volume` (atomic, one file), :func:`write_volume` (to a temporary
name a caller publishes with others) and ``Result.to_nifti`` (tsf_trt.synthesis.result), so the
Python API's files equal the CLI's. Wrong shapes or non-finite arrays are programming errors and
raise :class:`ValueError`; a path that is an input is an :class:`~tsf_trt.errors.InputError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.volume import Volume, nifti_suffix

#: python-isal's igzip level for .nii.gz outputs (its own default). Measured on a 240x240x155
#: synthesis and TSEM of the demo model: 4-6x faster than nibabel's zlib level 1, 1-2 % larger
#: (docs/performance.md, "Writing outputs"). The decompressed bytes are the same as nibabel writes.
ISAL_LEVEL = 2


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save_volume(
    like: Volume,
    array_zyx: np.ndarray,
    path: str | Path,
    *,
    description: str,
    overwrite: bool = False,
    intent: str = "estimate",
) -> Path:
    """Write a canonical (z, y, x) array as float32 in ``like``'s own layout, affine and header.

    Values are stored as-is (no scaling). A single-volume 4D input is written back as 3D.
    Never writes over ``like``'s file, and never leaves a half-written file behind.
    """
    path = Path(path)
    if _same_file(path, like.path):
        raise InputError(path, f"is the input {like.path.name}; refusing to overwrite an input")
    if nifti_suffix(path) is None:
        raise InputError(path, "not a NIfTI file name (.nii or .nii.gz expected)")
    img = output_image(like, array_zyx, description=description, intent=intent)
    with atomic_path(path, overwrite) as tmp:
        write_image(img, tmp)
    return path


def write_volume(like: Volume, array_zyx: np.ndarray, path: str | Path, *, description: str,
                 intent: str = "estimate") -> None:
    """What :func:`save_volume` writes, straight to `path`: for callers that publish several
    files together (:func:`tsf_trt.files.atomic.atomic_group`) and have made `path` a temp name."""
    write_image(output_image(like, array_zyx, description=description, intent=intent), Path(path))


def _igzip():
    """python-isal's igzip, or None where it is not installed (then nibabel's zlib writes)."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def write_image(img: nib.Nifti1Image, path: Path) -> None:
    """``img.to_filename(path)``, with a .nii.gz compressed by python-isal when it is installed.

    The stream nibabel writes is the same; only the deflate encoder differs. Like nibabel's
    own gzip writer, the gzip header holds no file name and mtime 0, so equal images give
    equal files.
    """
    igzip = _igzip() if nifti_suffix(path) == ".nii.gz" else None
    if igzip is None:
        img.to_filename(path)
        return
    with open(path, "wb") as raw, \
            igzip.IGzipFile(filename="", mode="wb", compresslevel=ISAL_LEVEL, fileobj=raw, mtime=0) as gz:
        img.to_file_map({"image": nib.FileHolder(fileobj=gz)})


def output_image(like: Volume, array_zyx: np.ndarray, *, description: str,
                 intent: str = "estimate") -> nib.Nifti1Image:
    """The image :func:`save_volume` and :func:`write_volume` write (``write_image`` gives their bytes):
    a canonical (z, y, x) array as float32 in ``like``'s own layout, affine and header."""
    arr = np.asarray(array_zyx)
    if arr.shape != like.shape:
        raise ValueError(f"array shape {arr.shape} does not match volume shape {like.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("array contains NaN or infinite values")
    native = like.to_native(arr)
    header = like.header.copy()
    header.set_data_shape(like.native_shape)
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["descrip"] = description.encode("ascii", "replace")[:79]
    header.set_intent(intent)
    header["cal_min"] = float(arr.min())
    header["cal_max"] = float(arr.max())
    # The affine equals the header's best affine, so nibabel leaves q/sform and codes alone.
    return like._image_class(native, like.affine, header)
