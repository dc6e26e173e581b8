"""tsf_trt.files.volume: loading, validation, orientation and saving (what saving shares with every
write, tsf_trt.files.atomic, is in tests/test_atomic.py)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tsf_trt.errors import InputError
from tsf_trt.files.volume import CANONICAL_AXCODES, check_same_grid, load_volume
from tsf_trt.files.volume_write import save_volume

SHAPE = (12, 10, 8)  # native (x, y, z) of the LPS reference file


def _rot_z(deg: float) -> np.ndarray:
    """A small in-plane rotation, so that the 'oblique' files really are oblique."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    r = np.eye(4)
    r[:2, :2] = [[c, -s], [s, c]]
    return r


def _lps_affine(oblique: bool = False) -> np.ndarray:
    aff = np.array([[-1.5, 0, 0, 90.0], [0, -2.0, 0, 120.0], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])
    return _rot_z(10) @ aff if oblique else aff


def _random(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, cls=nib.Nifti1Image) -> Path:
    img = cls(data, _lps_affine() if affine is None else affine)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=2)
    nib.save(img, path)
    return path


def _index_map(perm, flips, shape) -> np.ndarray:
    """M with lps_index = M @ new_index, built by hand (not with nibabel.orientations).

    New axis a holds LPS axis perm[a], reversed where flips[a].
    """
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for a, (src, flip) in enumerate(zip(perm, flips)):
        m[src, a] = -1 if flip else 1
        if flip:
            m[src, 3] = shape[src] - 1
    return m


def _reorder(data: np.ndarray, affine: np.ndarray, perm, flips) -> tuple[np.ndarray, np.ndarray]:
    out = data.transpose(perm)
    for a, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out), affine @ _index_map(perm, flips, data.shape)


# Storage orders: (permutation of LPS axes, flips) -> expected nibabel axis codes.
ORDERS = {
    "RAS": ((0, 1, 2), (True, True, False), ("R", "A", "S")),
    "axial-first": ((2, 0, 1), (True, False, True), ("I", "L", "A")),
    "PIR": ((1, 2, 0), (False, True, True), ("P", "I", "R")),
}


# ------------------------------------------------------------------ loading / round trip


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_lps_round_trip(tmp_path: Path, suffix: str) -> None:
    data = _random()
    src = _save(tmp_path / f"t1{suffix}", data)
    vol = load_volume(src)
    assert nib.aff2axcodes(vol.affine) == CANONICAL_AXCODES
    assert vol.shape == (8, 10, 12) and vol.native_shape == SHAPE
    assert vol.data.dtype == np.float32 and vol.data.flags.c_contiguous
    np.testing.assert_array_equal(vol.data, nib.load(src).get_fdata().transpose(2, 1, 0))
    np.testing.assert_array_equal(vol.data[3], data[:, :, 3].T)  # an axial slice

    out = save_volume(vol, vol.data, tmp_path / f"out{suffix}", description="synthetic T2 " * 20)
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32 and img.shape == SHAPE
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_array_equal(img.affine, vol.affine)
    hdr = img.header
    assert hdr["descrip"].item().decode() == ("synthetic T2 " * 20)[:79]
    assert hdr.get_intent()[0] == "estimate"
    assert hdr["cal_min"] == pytest.approx(data.min()) and hdr["cal_max"] == pytest.approx(data.max())
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 2)
    assert hdr["scl_slope"] in (1.0,) or np.isnan(hdr["scl_slope"])
    with open(out, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == suffix.endswith(".gz")


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("oblique", [False, True])
def test_other_orientations_match_lps(tmp_path: Path, order: str, oblique: bool) -> None:
    data = _random(seed=1)
    lps = load_volume(_save(tmp_path / "lps.nii.gz", data, _lps_affine(oblique)))
    perm, flips, codes = ORDERS[order]
    other_data, other_aff = _reorder(data, _lps_affine(oblique), perm, flips)
    src = _save(tmp_path / "other.nii.gz", other_data, other_aff)
    vol = load_volume(src)
    assert nib.aff2axcodes(vol.affine) == codes
    assert vol.native_shape == other_data.shape
    np.testing.assert_array_equal(vol.data, lps.data)
    np.testing.assert_allclose(vol.canonical_affine, lps.canonical_affine, atol=1e-9)
    check_same_grid([lps, vol])  # same physical grid despite different storage order

    np.testing.assert_array_equal(vol.to_native(vol.data), other_data)
    out = nib.load(save_volume(vol, vol.data * 2, tmp_path / "out.nii.gz", description="x"))
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), other_data * 2)
    np.testing.assert_array_equal(out.affine, vol.affine)


def test_nifti2_written_back_as_nifti2(tmp_path: Path) -> None:
    vol = load_volume(_save(tmp_path / "n2.nii", _random(), cls=nib.Nifti2Image))
    out = nib.load(save_volume(vol, vol.data, tmp_path / "o.nii", description="x"))
    assert isinstance(out, nib.Nifti2Image)


def test_int16_with_slope_is_read_scaled(tmp_path: Path) -> None:
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    img = nib.Nifti1Image(raw, _lps_affine(), dtype=np.int16)
    img.header.set_slope_inter(2.0, 0.0)
    nib.save(img, tmp_path / "i16.nii.gz")
    vol = load_volume(tmp_path / "i16.nii.gz")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, 2 * raw.transpose(2, 1, 0).astype(np.float32))
    out = nib.load(save_volume(vol, vol.data, tmp_path / "o.nii.gz", description="x"))
    assert out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.get_fdata(), 2 * raw)


def test_4d_single_volume_accepted_and_written_3d(tmp_path: Path) -> None:
    data = _random()
    vol = load_volume(_save(tmp_path / "v.nii.gz", data[..., None]))
    assert vol.shape == (8, 10, 12) and vol.native_shape == SHAPE
    out = nib.load(save_volume(vol, vol.data, tmp_path / "o.nii.gz", description="x"))
    assert out.shape == SHAPE
    np.testing.assert_array_equal(out.get_fdata(), data)


# ------------------------------------------------------------------ load errors


def _assert_input_error(path: Path, *words: str) -> None:
    with pytest.raises(InputError) as info:
        load_volume(path)
    msg = str(info.value)
    assert path.name in msg
    for word in words:
        assert word in msg


def test_missing_directory_and_wrong_name(tmp_path: Path) -> None:
    _assert_input_error(tmp_path / "nope.nii.gz", "not found")
    (tmp_path / "dir.nii").mkdir()
    _assert_input_error(tmp_path / "dir.nii", "directory")
    _save(tmp_path / "img.nii", _random())
    os.rename(tmp_path / "img.nii", tmp_path / "img.mgz")
    _assert_input_error(tmp_path / "img.mgz", "not a NIfTI file (.nii or .nii.gz expected)")


@pytest.mark.parametrize("name,content", [
    ("text.nii.gz", b"hello, this is not an image\n" * 20),
    ("text.nii", b"hello, this is not an image\n" * 20),
    ("empty.nii.gz", b""),
    ("empty.nii", b""),
])
def test_unparsable_files(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    _assert_input_error(tmp_path / name)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    full = _save(tmp_path / f"full{suffix}", _random((40, 40, 40)))
    blob = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(blob[: int(len(blob) * 0.6)])
    _assert_input_error(cut, "truncated")


@pytest.mark.parametrize("shape,word", [
    ((12, 10), "2D"),
    ((12, 10, 8, 3), "3 volumes"),
    ((6, 5, 4, 1, 2), "5D"),
])
def test_wrong_dimensionality(tmp_path: Path, shape, word: str) -> None:
    path = _save(tmp_path / "bad.nii.gz", _random(shape))
    _assert_input_error(path, word)


def test_non_finite_voxels(tmp_path: Path) -> None:
    data = _random()
    data[0, 0, 0], data[1, 2, 3], data[4, 4, 4] = np.nan, np.inf, -np.inf
    _assert_input_error(_save(tmp_path / "nan.nii.gz", data), "3 NaN or infinite")


def test_constant_volume(tmp_path: Path) -> None:
    path = _save(tmp_path / "flat.nii.gz", np.full(SHAPE, 7.0, np.float32))
    _assert_input_error(path, "all voxels are equal (value 7)", "nothing to synthesise")


def test_degenerate_affine(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # y axis has zero length
    nib.save(nib.Nifti1Image(_random(), None, hdr), tmp_path / "deg.nii")
    _assert_input_error(tmp_path / "deg.nii", "degenerate affine")


# ------------------------------------------------------------------ grids


def test_check_same_grid(tmp_path: Path) -> None:
    a = load_volume(_save(tmp_path / "a.nii.gz", _random()))
    b = load_volume(_save(tmp_path / "b.nii.gz", _random(seed=2)))
    check_same_grid([a, b])
    check_same_grid([])

    c = load_volume(_save(tmp_path / "c.nii.gz", _random((12, 10, 9))))
    with pytest.raises(InputError, match=r"c\.nii\.gz.*differs from a\.nii\.gz.*shape"):
        check_same_grid([a, b, c], shape_only=True)

    shifted = _lps_affine()
    shifted[0, 3] += 0.5
    d = load_volume(_save(tmp_path / "d.nii.gz", _random(), shifted))
    check_same_grid([a, d], shape_only=True)
    check_same_grid([a, d], atol=0.6)
    with pytest.raises(InputError, match=r"d\.nii\.gz.*affine differs from a\.nii\.gz.*0\.5"):
        check_same_grid([a, d])


def test_to_native_rejects_wrong_shape(tmp_path: Path) -> None:
    vol = load_volume(_save(tmp_path / "a.nii", _random()))
    with pytest.raises(ValueError):
        vol.to_native(np.zeros(SHAPE, np.float32))


# ------------------------------------------------------------------ writing


def test_save_refuses_existing_and_own_input(tmp_path: Path) -> None:
    src = _save(tmp_path / "in.nii.gz", _random())
    vol = load_volume(src)
    before = src.read_bytes()
    for target in (src, tmp_path / "." / "in.nii.gz"):
        with pytest.raises(InputError, match="input"):
            save_volume(vol, vol.data, target, description="x", overwrite=True)
    os.symlink(src, tmp_path / "link.nii.gz")
    with pytest.raises(InputError, match="input"):
        save_volume(vol, vol.data, tmp_path / "link.nii.gz", description="x", overwrite=True)
    assert src.read_bytes() == before

    out = save_volume(vol, vol.data, tmp_path / "out.nii.gz", description="tsf-trt x")
    with pytest.raises(InputError, match="exists"):
        save_volume(vol, vol.data + 1, out, description="tsf-trt x")
    save_volume(vol, vol.data + 1, out, description="tsf-trt x", overwrite=True)
    np.testing.assert_array_equal(load_volume(out).data, vol.data + 1)


def test_save_rejects_bad_arrays(tmp_path: Path) -> None:
    vol = load_volume(_save(tmp_path / "in.nii", _random()))
    with pytest.raises(ValueError):
        save_volume(vol, vol.data[:-1], tmp_path / "o.nii", description="x")
    bad = vol.data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        save_volume(vol, bad, tmp_path / "o.nii", description="x")
    with pytest.raises(InputError, match="NIfTI"):
        save_volume(vol, vol.data, tmp_path / "o.img", description="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii"]
