"""Helpers shared by the test files: each defined once, here, and imported from here.

Fixtures stay in tests/conftest.py, where pytest finds them; tests/sample_subject.py (also the
README's first-run script, so it runs on its own) defines the synthetic heads re-exported below.
Nothing here imports torch when imported (tests/conftest.py imports this module, and the
lean-install tests need a conftest free of torch): what needs torch imports it inside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

# The synthetic heads of the README's sample subject, re-exported: tests import them from here.
from tests.sample_subject import AFFINE_LPS, make_head, write_subject  # noqa: F401
from tsf_trt.cli import app

#: The repository's test data: golden tensors, the authors' small checkpoints, key lists.
DATA = Path(__file__).parent / "data"
def wide_inputs():
    """Input ranges of a test calibration that hold any test head (tsf_trt.uncertainty.profile):
    the tests that need a calibration to apply are not about the inputs' noise or bias."""
    from tsf_trt.sequences import NAMES
    from tsf_trt.uncertainty.profile import ProfileRanges

    return ProfileRanges({n: {"noise": (0.0, 10.0), "bias": (0.0, 10.0)} for n in NAMES}, 20.0)


#: The usual test head (x, y, z): small enough for the small model to run in a second.
SHAPE = (40, 36, 12)
#: The subjects of the usual test folder (subject_folder).
SUBJECTS = ("sub01", "sub02", "sub03")
#: Sequence indices (docs/architecture.md, "Tensor contracts").
T1, T1GD, T2, FLAIR = 0, 1, 2, 3
#: The cheapest backend for tiny volumes: torch on one thread (OpenMP's spinning threads make
#: tiny volumes up to 100x slower on a busy machine).
FAST = ("--backend", "torch", "--threads", "1")
#: The console script, as a user runs it (a real process: signals, exit codes, stderr).
SCRIPT = Path(sys.executable).with_name("tsf-trt")


# --- files -----------------------------------------------------------------------------------------


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE_LPS) -> Path:
    """`data` saved as a NIfTI file at `path` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def write_pair(folder: Path, name: str = "sub", seeds: tuple[int, int] = (0, 1),
               shape: tuple[int, int, int] = SHAPE) -> tuple[Path, Path]:
    """A subject's T1 and FLAIR, `folder/NAME_t1.nii.gz` and `folder/NAME_flair.nii.gz`: two
    different heads (the seeds), so that no check takes them for one file."""
    return (write_nifti(folder / f"{name}_t1.nii.gz", make_head(shape, seed=seeds[0])),
            write_nifti(folder / f"{name}_flair.nii.gz", make_head(shape, seed=seeds[1])))


def subject_folder(root: Path, names: tuple[str, ...] | list[str] = SUBJECTS,
                   shape: tuple[int, int, int] = SHAPE) -> Path:
    """A BraTS-style folder `root/NAME/NAME_{t1,flair}.nii.gz`, every head different."""
    for k, name in enumerate(names):
        write_pair(root / name, name, (2 * k, 2 * k + 1), shape)
    return root


#: The heads of tests/test_folder_processes.py's cohorts: big enough that runs started together overlap.
COHORT_SHAPE = (48, 44, 14)


def cohort(root: Path, count: int, shape: tuple[int, int, int] = COHORT_SHAPE) -> list[str]:
    """subject_folder of `count` subjects sub00, sub01, ...; returns their names."""
    names = [f"sub{k:02d}" for k in range(count)]
    subject_folder(root, names, shape)
    return names


def touch(folder: Path, *names: str) -> None:
    """Empty files (folders made): where only names are read."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under folder (hidden ones included) -> (size, mtime_ns) of a file, or
    (-1, 0) of a folder (whose mtime a harmless write probe changes); {} if absent."""
    if not folder.exists():
        return {}
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = path.stat()
            found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


def files_under(folder: Path) -> list[str]:
    """Files (not folders) under folder, hidden ones included."""
    if not folder.exists():
        return []
    return sorted(str((Path(r) / f).relative_to(folder)) for r, _, fs in os.walk(folder) for f in fs)


def hidden_files(folder: Path) -> list[str]:
    """Files under folder that are hidden or in a hidden folder: temp files, claims, probes."""
    return [f for f in files_under(folder) if any(part.startswith(".") for part in Path(f).parts)]


# --- the command line --------------------------------------------------------------------------------

runner = CliRunner()


def cli(*args: object):
    """`tsf-trt ARGS` in this process (typer's CliRunner): a click Result."""
    return runner.invoke(app, [str(a) for a in args])


def infer(model: object, out: object, *inputs: object, target: str = "t2", extra: tuple | list = ()):
    """`tsf-trt infer --inputs INPUTS --target TARGET --model MODEL -o OUT EXTRA` (`--data FOLDER` for
    one folder of subjects)."""
    flag = "--data" if len(inputs) == 1 and Path(str(inputs[0])).is_dir() else "--inputs"
    return cli("infer", flag, *inputs, "--target", target, "--model", model, "-o", out, *extra)


def problem_lines(stderr: str) -> list[str]:
    """stderr without the INFO and DEBUG (--verbose) lines of the log (tsf_trt.console: one timestamped
    line per step when stderr is not a terminal): what is left is every warning and error."""
    info = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO|DEBUG) ")
    return [line for line in stderr.splitlines() if line.strip() and not info.match(line)]


def assert_clean_error(result, *needles: str, code: int = 1) -> str:
    """Exit `code`, no traceback, exactly one non-blank stderr line holding every needle."""
    assert result.exit_code == code, (result.exit_code, result.output)
    # CliRunner maps an uncaught exception to exit code 1 too: make sure it was a clean exit.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    message = lines[0]
    if code == 1:
        assert message.startswith("error: "), message
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)
    return message


# --- processes ---------------------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process of this host that has exited (reaped): an owner known to be dead."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- geometry and phantoms -----------------------------------------------------------------------------

#: The phantom grid of the preprocessing checks (x, y, z): small enough to keep them to seconds.
PREFLIGHT_SHAPE = (96, 96, 40)


def lps(voxel_mm: float | tuple[float, float, float], shape: tuple[int, ...] = PREFLIGHT_SHAPE) -> np.ndarray:
    """An L,P,S affine with the given voxel size, centred on the origin."""
    v = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
    aff = np.diag([-v[0], -v[1], v[2], 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    return aff


@lru_cache(maxsize=4)
def _phantom(seed: int, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    from tsf_trt.phantoms import make_subject

    return make_subject(seed, shape).volumes


def phantom_volumes(seed: int = 0, shape: tuple[int, int, int] = PREFLIGHT_SHAPE) -> dict[str, np.ndarray]:
    """A phantom subject's four volumes by sequence name, (x, y, z) on an L,P,S grid; made once
    per seed and shape (a few seconds each), so callers must not modify them."""
    return _phantom(seed, tuple(shape))


# --- model files -------------------------------------------------------------------------------------


def paper_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    """{'seq2seq'|'tsf': {reference key: shape}} parsed from checkpoint_keys_paper.txt."""
    found: dict[str, dict[str, tuple[int, ...]]] = {"seq2seq": {}, "tsf": {}}
    section = None
    for line in (DATA / "checkpoint_keys_paper.txt").read_text().splitlines():
        if line.startswith("MODEL Seq2Seq"):
            section = "seq2seq"
        elif line.startswith("MODEL TSF"):
            section = "tsf"
        match = re.match(r"^\s+([\w.]+)\s+\(([\d, ]*)\)\s+float32$", line)
        if section and match:
            found[section][match.group(1)] = tuple(int(v) for v in match.group(2).split(",") if v.strip())
    return found


def payload_start(blob: bytes) -> int:
    """Where the runtime's own bytes begin in a cache file: after the 3 header lines of a verified
    entry (tsf_trt.files.cache_entry), at 0 in a plain file (tsf-trt before issue 22)."""
    if not blob.startswith(b"tsf-trt cache entry"):
        return 0
    at = 0
    for _ in range(3):
        at = blob.index(b"\n", at) + 1
    return at


# --- backends ----------------------------------------------------------------------------------------


def stacks(seed: int, n: int = 3, size: int = 16) -> np.ndarray:
    """`n` random 2.5D stacks (n, 3, size, size) in the network's range [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def run_stages(backend, n: int = 3, size: int = 16, seed: int = 0):
    """T2 from T1, T1Gd and FLAIR stacks through `backend`'s encode, fuse and decode:
    (image, image_avg, omega) as the backend returns them."""
    from tsf_trt import sequences

    task = sequences.task_code([0, 1, 3], 2)
    feats = {i: backend.encode(stacks(seed + i, n, size)) for i in (0, 1, 3)}
    fused, fused_avg, omega = backend.fuse(feats, task)
    image, image_avg = backend.decode(fused, 2, fused_avg)
    return image, image_avg, omega


# --- the authors' published configs -------------------------------------------------------------------
# tests/data/authors_configs/ holds them byte for byte, from github.com/fiy2W/mri_seq2seq at commit
# 0414c07 (the commit tests/data was generated from; publications/config/seq2seq/, tsf/ and vq/): no
# final newline, and the blank line after their data: section holds two spaces. Their
# `seq2seq_brats_2d_complete.yaml` is published on Google Drive only
# (publications/src/seq2seq/README.md, "Pre-trained Models"), not in the repository. VQ-Seq2Seq is
# another network. tests/test_reference_config.py reads them.
_CONFIGS = DATA / "authors_configs"
SEQ2SEQ_MISSING_YAML = (_CONFIGS / "seq2seq_brats_2d_missing.yaml").read_text()
TSF_YAML = (_CONFIGS / "tsf_seq2seq_brats_2d.yaml").read_text()
VQ_YAML = (_CONFIGS / "vqseq2seq_brats_2d_missing_3_256.yaml").read_text()


def small_yaml() -> str:
    """tests/data/small_config.json written as the authors write configs (the published TSF layout)."""
    return (TSF_YAML.replace("c_w: 16 ", "c_w: 8  ").replace("[64, 128, 256]", "[8, 16, 32]")
            .replace("nres_enc: 6", "nres_enc: 2").replace("c_lstm: 256", "c_lstm: 32")
            .replace("[128, 64, 3]", "[16, 8, 3]").replace("nres_dec: 6", "nres_dec: 2")
            .replace("c_enc: [256]", "c_enc: [32]"))
