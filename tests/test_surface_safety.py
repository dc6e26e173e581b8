"""What `infer` shows and reads, taken at its word: one file given as two sequences, two inputs
with the same voxels, paths or names that look like rich markup, a head in a noise floor (issue
22, items 9, 13 and 17).

Names are printed as given whatever they hold: `[b]`, `[/i]` are characters of a file name,
not styles (tsf_trt.console), on a pipe (CliRunner) and on a terminal (a pseudo-terminal,
where the progress bars and the spinner are drawn).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (FAST, SCRIPT, SHAPE, assert_clean_error, cli, files_under, infer, make_head, problem_lines,
                           subject_folder, write_nifti)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OUTPUTS = ("{}_t2.json", "{}_t2_synth.nii.gz", "{}_t2_tsem.nii.gz")


# --- one file as two sequences (item 9) -----------------------------------------------------


def _same_file(t1: Path, how: str) -> Path:
    """t1 itself, a symbolic link to it, or a hard link to it, as the second input."""
    if how == "same path":
        return t1
    other = t1.with_name("other.nii.gz")
    if how == "symlink":
        other.symlink_to(t1.name)
    else:
        os.link(t1, other)
    return other


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_one_file_as_two_sequences_is_an_error(case, small_model_dir, how):
    inp, out, t1, flair = case
    second = _same_file(t1, how)
    result = infer(small_model_dir, out, f"t1={t1}", f"flair={second}", extra=FAST)
    words = ("given as both T1 and FLAIR",) if how == "same path" else (
        "the FLAIR input is the same file as the T1 input", str(t1))
    assert_clean_error(result, str(second), *words, "one file cannot be two sequences")
    assert files_under(out) == []


def test_one_file_as_two_sequences_fails_its_subject_in_a_folder(tmp_path, small_model_dir):
    data, out = tmp_path / "data", tmp_path / "out"
    bad = subject_folder(data, ("sub01", "sub02")) / "sub02"
    (bad / "sub02_flair.nii.gz").unlink()
    (bad / "sub02_flair.nii.gz").symlink_to("sub02_t1.nii.gz")
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *FAST)
    assert result.exit_code == 1, result.output
    failed = problem_lines(result.stderr)
    assert len(failed) == 1 and "sub02: failed: " in failed[0], result.stderr
    assert "the FLAIR input is the same file as the T1 input" in " ".join(result.stderr.split())
    assert "1 done, 0 skipped (already complete), 1 failed" in result.stdout
    assert sorted(os.listdir(out / "sub01")) == sorted(n.format("sub01") for n in OUTPUTS)
    assert files_under(out / "sub02") == []


def test_one_file_as_two_sequences_in_a_map(tmp_path, small_model_dir):
    data, out = tmp_path / "data", tmp_path / "out"
    write_nifti(data / "scan.nii.gz", make_head(SHAPE, seed=0))
    with open(data / "map.csv", "w", newline="") as f:
        csv.writer(f).writerows([("subject", "sequence", "path"), ("a", "t1", "scan.nii.gz"),
                                 ("a", "flair", "./scan.nii.gz")])
    result = cli("infer", "--map", data / "map.csv", "--target", "t2", "--model", small_model_dir, "-o", out,
                 *FAST)
    assert result.exit_code == 1, result.output
    text = " ".join(result.stderr.split())
    assert f"a: failed: {data / 'scan.nii.gz'}: given as both T1 and FLAIR" in text  # ./scan.nii.gz is scan.nii.gz
    assert files_under(out) == ["tsf-trt_t2.tsv"]  # no output of the subject; the cohort table records its failure
    rows = list(csv.DictReader(open(out / "tsf-trt_t2.tsv", newline=""), delimiter="\t"))
    assert [(r["subject"], r["status"]) for r in rows] == [("a", "failed")] and "given as both" in rows[0]["error"]


def test_identical_voxels_warn_and_fail_with_strict(case, small_model_dir):
    inp, out, t1, flair = case
    copy = inp / "copy.nii.gz"
    shutil.copyfile(t1, copy)  # another file, the same voxels
    result = infer(small_model_dir, out, f"t1={t1}", f"flair={copy}", extra=FAST)
    assert result.exit_code == 0, result.output
    warned = problem_lines(result.stderr)
    assert len(warned) == 1, result.stderr
    assert "WARNING" in warned[0] and str(copy) in warned[0] and str(t1) in warned[0], warned
    assert "FLAIR holds exactly the voxels of T1" in warned[0]

    strict = tmp_path_out = out.parent / "strict"
    result = infer(small_model_dir, strict, f"t1={t1}", f"flair={copy}", extra=(*FAST, "--strict"))
    assert_clean_error(result, str(copy), "FLAIR holds exactly the voxels of T1")
    assert files_under(tmp_path_out) == []


# --- names that look like markup (item 13) ---------------------------------------------------


def test_output_folder_that_looks_like_markup(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    odd = tmp_path / "o[" / "i]"  # the path .../o[/i]: a closing tag to rich
    result = infer(small_model_dir, odd, t1, flair, extra=FAST)
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for name in OUTPUTS:
        assert f"wrote {odd / name.format('sub')}" in result.stdout, result.stdout
        assert (odd / name.format("sub")).is_file()


def test_input_names_that_look_like_markup(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    t1b, flairb = inp / "x[b]_t1.nii.gz", inp / "x[b]_flair.nii.gz"
    os.rename(t1, t1b)
    os.rename(flair, flairb)
    result = infer(small_model_dir, out, t1b, flairb, extra=FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("x[b]: T1,FLAIR->T2"), result.stdout
    for name in OUTPUTS:
        assert f"wrote {out / name.format('x[b]')}" in result.stdout, result.stdout
        assert (out / name.format("x[b]")).is_file()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def _in_terminal(args: list[str], timeout: float = 300.0) -> tuple[int, str]:
    """Run a command with stdin, stdout and stderr on a pseudo-terminal 400 columns wide (so rich
    draws its bars and spinner, and wraps no line); its exit code and what it showed, without
    the terminal's control sequences."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "400", "LINES": "50"}
    for name in ("NO_COLOR", "TERM_PROGRAM", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                pytest.fail(f"no end after {timeout} s: {b''.join(chunks)[-2000:]!r}")
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    return code, raw


def test_terminal_run_with_names_that_look_like_markup(tmp_path, small_model_dir):
    """On a terminal: the spinner shows the model's path, the bars the subjects' names, the log and
    the results every name: all as given."""
    model = tmp_path / "m[" / "i]"  # .../m[/i]: the spinner's text would be a closing tag
    shutil.copytree(small_model_dir, model)
    data, out = tmp_path / "data", tmp_path / "o[" / "i]"
    subject_folder(data, ("x[b]", "y[bold]"))
    code, raw = _in_terminal([str(SCRIPT), "infer", "--data", str(data), "--target", "t2", "--model", str(model),
                              "-o", str(out), *FAST])
    shown = _ANSI.sub("", raw)
    assert code == 0, shown[-3000:]
    assert "Traceback" not in shown and "MarkupError" not in shown
    assert "━" in raw or "\x1b[?25l" in raw, "no progress bar was drawn: not a terminal run"
    assert f"loading model {model}" in shown, shown[-3000:]
    for name in ("x[b]", "y[bold]"):
        assert f"{name}: T1,FLAIR->T2" in shown, shown[-3000:]
        assert str(out / name / f"{name}_t2_synth.nii.gz") in shown, shown[-3000:]
        assert sorted(os.listdir(out / name)) == sorted(n.format(name) for n in OUTPUTS)
    assert "2 done, 0 skipped (already complete), 0 failed" in shown


# --- a head in a noise floor (item 17) --------------------------------------------------------


def test_head_in_a_noise_floor_warns(tmp_path, small_model_dir):
    """A raw head (skull and scalp kept) in uniform 50-200 noise, a 40 mm slab (far less than a
    brain's volume, so the size rule cannot see it): a warning naming the file, an error with
    --strict; the skull-stripped input beside it gets none."""
    from scripts import skullstrip_check as bench

    h = bench.make_head(bench.FIRST_SEED, bench.COARSE_SHAPE)
    rng = np.random.default_rng(0)
    raw = bench.slab(bench.uniform_outside(bench.with_skull(h, h.volumes["t1"], rng), h.head, rng), h)
    t1 = write_nifti(tmp_path / "in" / "s_t1.nii.gz", raw)
    flair = write_nifti(tmp_path / "in" / "s_flair.nii.gz", bench.slab(h.volumes["flair"], h))
    result = infer(small_model_dir, tmp_path / "out", t1, flair, extra=FAST)
    assert result.exit_code == 0, result.output
    warned = problem_lines(result.stderr)
    assert len(warned) == 1 and "WARNING" in warned[0], result.stderr
    assert f"{t1}: not skull-stripped? " in warned[0], warned
    result = infer(small_model_dir, tmp_path / "strict", t1, flair, extra=(*FAST, "--strict"))
    assert_clean_error(result, str(t1), "not skull-stripped?")
    assert files_under(tmp_path / "strict") == []
