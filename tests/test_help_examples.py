"""Every command's --help examples name options that exist, with values of the right type
and count (click parses each one exactly as the CLI would, without running it)."""

from __future__ import annotations

import shlex

import pytest
import typer

from tsf_trt.cli import app


def _commands(group, path: tuple[str, ...] = ()):
    yield path, group
    if hasattr(group, "commands"):  # a group (typer may carry its own click)
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))


def _examples():
    root = typer.main.get_command(app)
    for path, command in _commands(root):
        for line in (command.help or "").splitlines():
            if "Example" in line and "tsf-trt " in line:
                yield " ".join(path), line[line.index("tsf-trt "):].strip()


EXAMPLES = list(_examples())


def test_every_long_command_has_an_example():
    documented = {name for name, _ in EXAMPLES}
    for name in ("infer", "bids", "calibrate", "demo", "evaluate", "export", "phantom", "bench", "bench suite",
                 "import-reference", "train seq2seq", "train tsf", "train bundle", "engines build", "doctor"):
        assert name in documented, name


@pytest.mark.parametrize("name, example", EXAMPLES)
def test_example_parses(name, example):
    words = shlex.split(example)[1:]
    root = typer.main.get_command(app)
    command, args = root, words
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    assert " ".join(words[: len(words) - len(args)]) == name
    command.make_context(name, list(args))  # raises on an unknown option or a bad value


#: Examples in the order their outputs feed each other (phantoms first, the export before its
#: engines, training stage 1 before stage 2 and the bundle), each run as a user would type it.
ORDER = ("doctor", "phantom", "calibrate", "infer", "bids", "table", "import-reference", "export", "engines build", "bench", "evaluate", "demo",
         "bench suite", "train seq2seq", "train tsf", "train bundle")
#: Minutes on 2 cores, so CI runs the others only: TSF_RUN_EXAMPLES=all runs these too.
SLOW = ("demo", "bench suite", "train seq2seq", "train tsf", "train bundle")
#: Exits that are the truth on a machine without an NVIDIA GPU, as one line naming what is missing.
NEEDS_GPU = ("engines build",)
#: The examples that read what others wrote (phantoms/, exports/demo, runs/, report/) run in one
#: chain, in ORDER; every other example reads nothing another wrote and runs in the second chain,
#: beside the first (two processes at a time: the suite's 2-core budget). Any example not named
#: here joins the first chain.
ALONGSIDE = ("doctor", "import-reference", "export", "engines build", "bench", "demo", "bench suite")
#: The smallest inputs that exercise the same code (each example is parsed as written by
#: test_example_parses): the same phantoms (4 subjects, 5 mm voxels; 20 for calibrate) at 48x48x24 voxels rather than
#: 96x96x64, which infer, evaluate and train then read; bench on 8 slices of 48x48 rather than 16 of
#: 96x96 (still two batches of 4). Each value must be in its example: a changed example fails here
#: until this table follows it.
SMALLER = {"phantom": ("--shape 96 96 64", "--shape 48 48 24"), "bench": ("--shape 96 96 16", "--shape 48 48 8")}


def test_every_example_is_run_below():
    assert {name for name, _ in EXAMPLES} <= set(ORDER)
    assert set(ALONGSIDE) <= set(ORDER)
    for name, (old, _) in SMALLER.items():
        assert any(old in example for command, example in EXAMPLES if command == name), (name, old)


def _as_run(name: str, example: str) -> list[str]:
    """The example's words, with SMALLER's inputs, run as `python -m tsf_trt ...`."""
    if name in SMALLER:
        example = example.replace(*SMALLER[name])
    return shlex.split(example)[1:]


def test_smaller_inputs_parse_as_the_examples_do():
    for name, example in EXAMPLES:
        root = typer.main.get_command(app)
        command, args = root, _as_run(name, example)
        while hasattr(command, "commands") and args and args[0] in command.commands:
            command, args = command.commands[args[0]], args[1:]
        command.make_context(name, list(args))


def test_examples_run(tmp_path):
    """Every example, in a fresh folder that holds only the repository's tests/data (for
    import-reference): exit 0, or on a CPU-only machine the GPU command's one-line refusal.
    Two chains run side by side (ALONGSIDE); each runs its examples one after the other."""
    import os
    import shutil
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tests.helpers import problem_lines

    shutil.copytree(Path(__file__).parent / "data", tmp_path / "tests" / "data")
    run_all = os.environ.get("TSF_RUN_EXAMPLES") == "all"
    todo = [(name, example) for name, example in sorted(EXAMPLES, key=lambda e: ORDER.index(e[0]))
            if run_all or name not in SLOW]
    chains = [[e for e in todo if e[0] not in ALONGSIDE], [e for e in todo if e[0] in ALONGSIDE]]

    def run(chain: list[tuple[str, str]]) -> list[tuple[str, str, subprocess.CompletedProcess]]:
        done = []
        for name, example in chain:
            done.append((name, example, subprocess.run([sys.executable, "-m", "tsf_trt", *_as_run(name, example)],
                                                       cwd=tmp_path, capture_output=True, text=True, timeout=1800)))
            if done[-1][2].returncode != 0 and name not in NEEDS_GPU:
                break  # what follows in this chain may read what this one failed to write
        return done

    with ThreadPoolExecutor(max_workers=len(chains)) as pool:
        results = [r for chain in pool.map(run, chains) for r in chain]
    ran = []
    for name, example, done in results:
        if name in NEEDS_GPU and done.returncode != 0:
            lines = problem_lines(done.stderr)
            assert len(lines) == 1 and ("GPU" in lines[0] or "TensorRT" in lines[0]), (example, done.stderr)
        else:
            assert done.returncode == 0, (example, done.stdout[-2000:], done.stderr[-2000:])
        ran.append(name)
    assert sorted(ran) == sorted(name for name, _ in todo)
    assert "infer" in ran and "export" in ran
