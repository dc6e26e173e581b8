"""Damaged bytes are never trusted (issue 22, items 6, 7, 8 and 10).

* 6: a .nii.gz whose gzip stream is damaged anywhere (data or trailer) is refused in one line;
  nibabel alone stops before the CRC trailer.
* 7: a runtime cache entry (ORT optimised graph, TensorRT engine and its metadata, FP16 graph
  variant) that does not match the hash recorded when it was written is removed and rebuilt
  with one WARNING naming it. OpenVINO's compiled models are tested in
  tests/test_openvino_backend.py (OpenVINO tests stay in that file: tests/conftest.py).
* 8: a `--backend auto` / `--precision auto` record that is not what tsf-trt writes is measured
  again, with one WARNING naming it, and replaced.
* 10: NaN or infinity in a header's sform/qform/voxel sizes is one line naming the file, and a
  folder run goes on with the other subjects, on every rerun.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (AFFINE_LPS, FAST, SCRIPT, SHAPE, cli, files_under, make_head, payload_start, problem_lines,
                           snapshot, subject_folder, write_nifti)
from tsf_trt.errors import InputError
from tsf_trt.files.volume import load_volume

SMALL = (16, 14, 6)  # a tiny volume: a few hundred flips load in about a second


@pytest.fixture(params=["isal", "zlib"])
def inflater(request, monkeypatch):
    """Both inflaters tsf-trt may use: python-isal's (when installed) and the zlib fallback."""
    if request.param == "zlib":
        monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import isal_zlib` then fails
    else:
        pytest.importorskip("isal")
    return request.param


def _nifti_gz(path: Path, shape=SMALL) -> Path:
    """A .nii.gz written as nibabel writes it: one gzip member, no FNAME, mtime 0."""
    return write_nifti(path, make_head(shape, seed=3))


def _flip(blob: bytes, byte: int, bit: int) -> bytes:
    damaged = bytearray(blob)
    damaged[byte] ^= 1 << bit
    return bytes(damaged)


def _refused(path: Path) -> str | None:
    """The one-line message load_volume refuses `path` with, or None when it loads."""
    try:
        load_volume(path)
    except InputError as exc:
        return str(exc)
    return None


# --- 6. damaged gzip data ------------------------------------------------------------------------------


#: Fixed-header bytes whose damage changes no decompressed byte, which gzip 1.12 (`gzip -t`) accepts
#: too: MTIME (4-7), XFL (8), OS (9); and the FTEXT hint, bit 0 of FLG (3). Every other flip in the
#: header (magic, method, the other flags: they make the inflater read the deflate data as header
#: fields) is refused.
HARMLESS_HEADER = {(byte, bit) for byte in range(4, 10) for bit in range(8)} | {(3, 0)}


def _intact(blob: bytes, raw: bytes) -> bool:
    """Whether a damaged file still holds exactly the original contents, by the standard library's
    own gzip reader (which checks CRC-32 and length): some bits change nothing, such as unused
    bits near the end of the last deflate block, which every inflater skips."""
    try:
        return gzip.decompress(blob) == raw
    except (OSError, EOFError, ValueError, zlib.error):
        return False


def test_every_damaging_bit_flip_in_a_nii_gz_is_refused_in_one_line(tmp_path, inflater):
    """Flips at every bit of the 10-byte header and the 8-byte trailer, and at 300 positions
    spread over the compressed data (all 8 bit positions in turn). What is asserted:

    * every flip in the trailer (CRC-32, length) is refused;
    * in the header, every flip outside HARMLESS_HEADER is refused; the harmless ones load;
    * in the data, a flip is refused exactly when the file no longer holds the original contents
      (decided by Python's own gzip reader); a flip that changes no decompressed byte loads.

    A refusal is one line starting with the file's path; a flip that loads gives the very same
    voxels (exact: the decompressed bytes are the same)."""
    good = _nifti_gz(tmp_path / "good.nii.gz")
    blob, expected = good.read_bytes(), load_volume(good).data
    raw = gzip.decompress(blob)
    trailer = range(len(blob) - 8, len(blob))
    positions = {(byte, bit) for byte in (*range(10), *trailer) for bit in range(8)}
    positions |= {(int(byte), i % 8) for i, byte in enumerate(np.linspace(10, len(blob) - 9, 300).astype(int))}
    damaged = tmp_path / "damaged_t1.nii.gz"
    wrong, refused = [], 0
    for byte, bit in sorted(positions):
        flipped = _flip(blob, byte, bit)
        damaged.write_bytes(flipped)
        message = _refused(damaged)
        if byte < 10:
            harmless = (byte, bit) in HARMLESS_HEADER
        else:
            harmless = byte not in trailer and _intact(flipped, raw)
        if harmless:
            if message is not None or not np.array_equal(load_volume(damaged).data, expected):
                wrong.append((byte, bit, message or "other voxels"))
        elif message is None:
            wrong.append((byte, bit, "loaded"))
        else:
            assert "\n" not in message and message.startswith(str(damaged)), message
            refused += 1
    assert wrong == [], f"{len(wrong)} of {len(positions)} flips: {wrong[:10]}"
    assert refused > 0.8 * len(positions), refused  # most flips damage the contents


@pytest.mark.skipif(shutil.which("gzip") is None, reason="needs the gzip program")
def test_refusals_agree_with_gzip(tmp_path):
    """The oracle: `gzip -t` fails (exit 1) on exactly the flipped files tsf-trt refuses, at every
    bit of the header and trailer and at 64 positions of the data."""
    blob = _nifti_gz(tmp_path / "good.nii.gz").read_bytes()
    positions = [(byte, bit) for byte in (*range(10), *range(len(blob) - 8, len(blob))) for bit in range(8)]
    positions += [(int(byte), i % 8) for i, byte in enumerate(np.linspace(10, len(blob) - 9, 64).astype(int))]
    damaged = tmp_path / "damaged.nii.gz"
    for byte, bit in positions:
        damaged.write_bytes(_flip(blob, byte, bit))
        gzip_fails = subprocess.run(["gzip", "-t", str(damaged)], capture_output=True).returncode == 1
        assert (_refused(damaged) is not None) == gzip_fails, (byte, bit)


def test_members_padding_and_trailing_garbage_as_gzip_takes_them(tmp_path, inflater, caplog):
    """Two members are one stream; zero bytes after the last are padding; other trailing bytes are
    ignored with one WARNING naming the file (gzip: "decompression OK, trailing garbage ignored");
    a damaged second member is refused."""
    good = _nifti_gz(tmp_path / "good.nii.gz")
    raw = gzip.decompress(good.read_bytes())
    expected = load_volume(good).data
    half = len(raw) // 2
    two = gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    cases = {"members": two, "padded": two + b"\0" * 100, "garbage": good.read_bytes() + b"not gzip at all"}
    for name, blob in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(blob)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tsf_trt"):
            assert np.array_equal(load_volume(path).data, expected), name
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if name == "garbage":
            assert len(warnings) == 1 and str(path) in warnings[0] and "trailing garbage" in warnings[0], warnings
        else:
            assert warnings == [], (name, warnings)
    second = len(gzip.compress(raw[:half], mtime=0))
    for at in (second + 4 + (len(two) - second) // 2, len(two) - 6):  # member 2's data, its CRC
        path = tmp_path / f"member2_{at}.nii.gz"
        path.write_bytes(_flip(two, at, 2))
        assert _refused(path) is not None, at


def test_a_damaged_nii_gz_fails_its_subject_in_one_line(tmp_path, small_model_dir):
    """Through the CLI, in folder mode: a bit flipped in one input's gzip CRC (a byte nibabel never
    reads) fails that subject alone in one line naming the file; the others are synthesised."""
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    bad = data / "sub02" / "sub02_t1.nii.gz"
    blob = bad.read_bytes()
    bad.write_bytes(_flip(blob, len(blob) - 7, 3))  # inside the CRC-32 of the trailer
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *FAST)
    assert result.exit_code == 1, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and "sub02: failed" in lines[0] and "sub02_t1.nii.gz" in lines[0], result.stderr
    assert "CRC-32" in lines[0], lines
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    assert files_under(out / "sub02") == []


def test_a_header_claiming_more_than_memory_is_refused_before_inflating(tmp_path, monkeypatch):
    """The claimed size is checked on the header, before the whole stream is inflated: the held
    decompressed bytes count in the memory estimate."""
    import tsf_trt.files.volume as volume

    path = _nifti_gz(tmp_path / "big.nii.gz", (40, 40, 40))
    monkeypatch.setattr(volume, "_available_memory", lambda: 40 * 40 * 40 * 4 * 2 + 100)
    message = _refused(path)
    assert message is not None and "memory" in message, message


# --- 10. NaN or infinity in the header's geometry ---------------------------------------------------------


def _with_header(path: Path, edit) -> Path:
    """A .nii.gz whose header fields are edited after nibabel set them (nibabel would otherwise
    recompute sform and qform from the affine when saving)."""
    data = make_head(SHAPE, seed=0)
    header = nib.Nifti1Image(data, AFFINE_LPS).header
    header.set_qform(AFFINE_LPS, code=1)
    header.set_sform(AFFINE_LPS, code=1)
    header.set_data_offset(352)
    edit(header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"), mtime=0))
    return path


def _nan_sform(header):
    header["srow_x"][0] = np.nan


GEOMETRY = {
    "nan-sform": (_nan_sform, "sform"),
    "inf-sform": (lambda h: h["srow_y"].__setitem__(3, np.inf), "sform"),
    "nan-qform": (lambda h: h.__setitem__("quatern_b", np.nan), "qform"),
    "nan-qform-only": (lambda h: (h.__setitem__("sform_code", 0), h.__setitem__("qoffset_x", np.nan)), "qform"),
    "nan-voxel-size": (lambda h: h["pixdim"].__setitem__(2, np.nan), "pixdim"),
}


@pytest.mark.parametrize("case", GEOMETRY)
def test_non_finite_geometry_is_one_line(tmp_path, case):
    edit, word = GEOMETRY[case]
    path = _with_header(tmp_path / f"{case}.nii.gz", edit)
    message = _refused(path)
    assert message is not None and message.startswith(str(path)) and "\n" not in message, message
    assert word in message and "NaN or infinite" in message, message
    assert _refused(_with_header(tmp_path / "fine.nii.gz", lambda h: None)) is None


def test_a_nan_sform_fails_its_subject_and_the_folder_goes_on(tmp_path, small_model_dir):
    """Through the CLI: 3 subjects, one with a NaN sform: exit 1, 2 done, one line naming the
    file; a rerun does the same (skips the 2 done, fails the same one in one line)."""
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    bad = _with_header(data / "sub02" / "sub02_flair.nii.gz", _nan_sform)
    args = ("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *FAST)
    for attempt, summary in ((1, "2 done, 0 skipped (already complete), 1 failed"),
                             (2, "0 done, 2 skipped (already complete), 1 failed")):
        result = cli(*args)
        assert result.exit_code == 1, (attempt, result.output)
        assert "Traceback" not in result.output and "LinAlgError" not in result.output
        lines = problem_lines(result.stderr)
        assert len(lines) == 1 and "sub02: failed" in lines[0] and bad.name in lines[0], (attempt, result.stderr)
        assert "NaN or infinite" in lines[0] and "sform" in lines[0], lines
        assert summary in result.stdout, (attempt, result.stdout)
        if attempt == 1:
            written = snapshot(out)
    assert snapshot(out) == written
    assert files_under(out / "sub02") == []


# --- 7. cache entries are checked before use ---------------------------------------------------------------


def _scale_weights(path: Path, factor: float = 4.0) -> None:
    """Scale every float initializer of the ONNX graph held in `path` by `factor`, keeping the
    entry's header (as a damaged or tampered file would): the issue's "weights scaled x4"."""
    import onnx
    from onnx import numpy_helper

    blob = path.read_bytes()
    start = payload_start(blob)
    model = onnx.load_from_string(blob[start:])
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16:
            init.CopyFrom(numpy_helper.from_array(array * np.float32(factor), init.name))
    path.write_bytes(blob[:start] + model.SerializeToString())


def _synth(out: Path) -> np.ndarray:
    return np.asarray(nib.load(out / "sub_t2_synth.nii.gz").dataobj)


def test_a_tampered_ort_optimised_graph_is_rebuilt_with_one_warning(small_export_dir, tmp_path):
    """Through the CLI: `infer --backend ort` caches the optimised graphs in the export's
    .ort-cache; the encoder's, with its weights scaled x4, is named in one WARNING, removed and
    rebuilt, and the synthesis is the one a fresh cache gives (ONNX Runtime with one thread on the
    same machine and graphs: the same operations in the same order; 1e-5 of the 0-1000 scale
    allows for nothing else)."""
    export = shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns(".*-cache"))
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1))

    def run(out):
        return cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", export, "-o", out,
                   "--backend", "ort", "--threads", "1")

    assert run(tmp_path / "first").exit_code == 0
    (cached,) = [p for p in (export / ".ort-cache").iterdir() if p.name.startswith("encoder.")]
    _scale_weights(cached)
    result = run(tmp_path / "second")
    assert result.exit_code == 0, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and str(cached) in lines[0] and "WARNING" in lines[0], result.stderr
    assert np.allclose(_synth(tmp_path / "second"), _synth(tmp_path / "first"), rtol=0, atol=1e-5)
    again = run(tmp_path / "third")  # the rebuilt entry is intact: no warning
    assert again.exit_code == 0 and problem_lines(again.stderr) == [], again.stderr


def test_an_entry_is_used_only_when_every_byte_is_as_written(tmp_path, caplog):
    from tsf_trt.files import cache_entry

    path = tmp_path / "x.entry"
    payload = np.random.default_rng(0).bytes(3000)
    cache_entry.save(path, payload, {"kind": "test", "n": 1})
    blob = path.read_bytes()
    assert cache_entry.load(path, {"kind": "test"}).payload == payload
    assert cache_entry.load(path, {"kind": "other"}) is None and path.exists()  # another key: left alone
    for at in (0, 30, len(cache_entry.MAGIC) + 70, len(blob) // 2, len(blob) - 1):
        path.write_bytes(_flip(blob, at, 5))
        with pytest.raises(cache_entry.DamagedEntry, match=str(path)):
            cache_entry.load(path)
        assert not path.exists()
    for cut in (10, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with caplog.at_level(logging.WARNING, logger="tsf_trt"):
            caplog.clear()
            assert cache_entry.load_or_none(path) is None
        (warning,) = [r.getMessage() for r in caplog.records]
        assert warning.startswith(f"{path}: ") and "removed and will be rebuilt" in warning
    assert cache_entry.load(tmp_path / "absent") is None


_WRITER = """
import sys, os
from pathlib import Path
from tsf_trt.files import cache_entry
path, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[3])):
    cache_entry.save(path, (tag * 100 + str(i)).encode() * 40000, {"writer": tag, "i": i})
"""


def test_concurrent_writers_and_readers_see_a_whole_entry_or_none(tmp_path):
    """Four processes write the same entry (4 MB each time) while this one reads it: every read is
    a whole entry of one writer (its metadata and payload agree) or none, never damaged; a writer
    killed while writing leaves no entry of its own behind, and its temporary file is removed by
    the next write."""
    import signal
    import time

    from tsf_trt.files import cache_entry

    path = tmp_path / "shared.entry"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, "15"]) for tag in "abcd"]
    reads = 0
    while any(w.poll() is None for w in writers):
        entry = cache_entry.load(path)  # raises DamagedEntry on a torn or mixed entry
        if entry is not None:
            tag, i = entry.meta["writer"], entry.meta["i"]
            assert entry.payload == (tag * 100 + str(i)).encode() * 40000
            reads += 1
    assert [w.wait() for w in writers] == [0] * 4 and reads > 0
    assert cache_entry.load(path) is not None

    killed = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "k", "100000"])
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    entry = cache_entry.load(path)
    assert entry is not None and entry.payload.startswith(entry.meta["writer"].encode())
    cache_entry.save(path, b"fresh", {"writer": "me"})
    assert sorted(os.listdir(tmp_path)) == ["shared.entry"]  # the killed writer's temp file is gone


def test_processes_building_one_ort_cache_at_once_leave_valid_entries(small_export_dir, tmp_path):
    """Three `tsf-trt infer --backend ort` processes start at once on one export with an empty
    .ort-cache (as a folder run of many processes does): each optimises and publishes the same
    graphs; all three synthesise the same image, with no warning, and the cache then holds only
    entries that pass their check (and no temporary file)."""
    from tsf_trt.files import cache_entry

    export = shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns(".*-cache"))
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    procs = [subprocess.Popen([str(SCRIPT), "infer", "--inputs", str(t1), str(flair), "--target", "t2", "--model",
                               str(export), "-o", str(tmp_path / f"out{k}"), "--backend", "ort", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and problem_lines(stderr) == [], stderr
    images = [_synth(tmp_path / f"out{k}") for k in range(3)]
    assert all(np.array_equal(images[0], image) for image in images[1:])  # the same graphs, one thread
    files = sorted(p.name for p in (export / ".ort-cache").iterdir())
    assert files and not [f for f in files if f.startswith(".")], files
    for name in files:
        stem = name.rsplit(".", 2)[0]
        assert cache_entry.find_named(export / ".ort-cache", stem, ".onnx") is not None, name


def test_a_damaged_fp16_graph_is_made_again_with_one_warning(small_export_dir, tmp_path, caplog):
    """The FP16 variants (read by path by TensorRT's parser and ONNX Runtime) are named by their own
    hash: a damaged one is removed with one WARNING naming it and made again."""
    import json

    from tsf_trt.engines.fp16 import fp16_variant

    sha = json.loads((small_export_dir / "manifest.json").read_text())["graphs"]["encoder"]["sha256"]
    path, report = fp16_variant(small_export_dir / "encoder.onnx", sha, tmp_path)
    assert report is not None and fp16_variant(small_export_dir / "encoder.onnx", sha, tmp_path) == (path, None)
    good = path.read_bytes()
    path.write_bytes(_flip(good, len(good) // 2, 1))
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        again, report = fp16_variant(small_export_dir / "encoder.onnx", sha, tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(path) in warning and "SHA-256" in warning
    assert report is not None and again == path and again.read_bytes() == good


# --- 8. `auto` records -----------------------------------------------------------------------------------------


def _cpu_record(model_dir: Path) -> Path:
    from tsf_trt.machine.cache_dir import cache_root, machine_key
    from tsf_trt.synthesis.source import ModelSource

    model_id = ModelSource.resolve(model_dir).model_id
    return cache_root() / "auto" / f"{model_id}-{machine_key()}-t1-fp32-p4.json"


@pytest.fixture
def quick_auto(monkeypatch):
    """`--backend auto` on the CPU with a tiny probe and no OpenVINO (OpenVINO tests stay in their
    own file: tests/conftest.py): this checks which record is trusted, not the speed."""
    from tsf_trt.synthesis import auto

    monkeypatch.setattr(auto, "CPU_PROBE", (16, 16))
    monkeypatch.setattr(auto, "CPU_CANDIDATES", ("torch", "ort"))
    return auto


BAD_CPU_RECORDS = {
    "slowest": {"choice": "reference", "seconds_per_slice": {"reference": 9.0, "torch": 0.01}},
    "a-number": {"choice": 42, "seconds_per_slice": {"torch": 0.02, "ort": 0.01}},
    "not-the-fastest": {"choice": "torch", "seconds_per_slice": {"torch": 0.5, "ort": 0.01}},
    "nan-timing": {"choice": "ort", "seconds_per_slice": {"torch": float("nan"), "ort": 0.01}},
    "older-rules": {"rules": "p3", "choice": "ort", "seconds_per_slice": {"torch": 0.02, "ort": 0.01}},
}


@pytest.mark.parametrize("case", BAD_CPU_RECORDS)
def test_a_bad_cpu_choice_record_is_measured_again(case, small_model_dir, tmp_path, quick_auto):
    """Through the CLI: a record that is not what tsf-trt writes is named in one WARNING, measured
    again and replaced (a record of older probe rules too); the run uses the new choice."""
    import json

    record = _cpu_record(small_model_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    valid = {**quick_auto.cpu_setup("fp32"), "rule": "timed", "why": "edited", "failed": {}, "skipped": {}, "ran": {}}
    record.write_text(json.dumps({**valid, **BAD_CPU_RECORDS[case]}))
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    out = tmp_path / "out"
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--backend", "auto", "--threads", "1", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and str(record) in lines[0] and "measuring again" in lines[0], result.stderr
    fresh = json.loads(record.read_text())
    assert fresh["choice"] == "ort" and set(fresh["skipped"]) == {"torch"}, fresh  # at fp32: torch_skipped's rule
    backend = json.loads((out / "sub_t2.json").read_text())["backend"]
    assert backend.startswith({"torch": "torch", "ort": "onnxruntime"}[fresh["choice"]]), backend
    assert not backend.startswith("reference")


def test_a_bad_precision_verdict_is_checked_again(small_model_dir, tmp_path, monkeypatch):
    """Through the CLI: a `--precision auto` verdict of a precision the CPU backends do not take
    (fp16) is named in one WARNING and checked again (the check itself is a stand-in here: this
    tests which record is trusted)."""
    import json

    from tsf_trt.machine.cache_dir import cache_root, machine_key
    from tsf_trt.synthesis import precision_auto
    from tsf_trt.synthesis.source import ModelSource

    checked = []
    monkeypatch.setattr(precision_auto, "native_bf16", lambda: True)
    monkeypatch.setattr(precision_auto, "check_bf16", lambda *a: checked.append(a) or
                        precision_auto.Verdict("fp32", "the stand-in check", 30.0, 1e-2))
    model_id = ModelSource.resolve(small_model_dir).model_id
    record = cache_root() / "precision" / f"{model_id}-torch-{machine_key()}-bf16-v2.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"precision": "fp16", "why": "edited", "psnr_db": 99.0, "omega_diff": 0.0}))
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir,
                 "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and str(record) in lines[0] and "fp16" in lines[0], result.stderr
    assert len(checked) == 1 and json.loads(record.read_text())["why"] == "the stand-in check"


@pytest.mark.parametrize("record,problem", [
    ({"precision": "bf16", "why": "x", "psnr_db": 30.0, "omega_diff": 0.0}, "without figures that pass"),
    ({"precision": "fp32", "why": "x", "psnr_db": 60.0, "omega_diff": 0.0}, "although its figures pass"),
    ({"precision": "bf16", "why": "x", "psnr_db": float("nan"), "omega_diff": 0.0}, "PSNR"),
    ({"precision": "fp32", "why": "x", "psnr_db": None, "omega_diff": -1.0}, "ω difference"),
    ({"precision": "fp32", "why": ""}, "no reason"),
    ({"precision": "fp32", "why": "x", "extra": 1}, "unknown fields"),
])
def test_verdict_records_are_checked_against_the_rule(record, problem):
    from tsf_trt.synthesis import precision_auto, records

    found = records.verdict_problem(record, precision_auto.passes)
    assert found is not None and problem in found, found
    good = {"precision": "bf16", "why": "x", "psnr_db": float("inf"), "omega_diff": 0.0}  # bf16 equal to fp32
    assert records.verdict_problem(good, precision_auto.passes) is None
