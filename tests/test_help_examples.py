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
    for name in ("infer", "demo", "evaluate", "export", "phantom", "bench", "bench suite", "import-reference",
                 "train seq2seq", "train tsf", "train bundle", "engines build", "doctor"):
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
ORDER = ("doctor", "phantom", "infer", "import-reference", "export", "engines build", "bench", "evaluate", "demo",
         "bench suite", "train seq2seq", "train tsf", "train bundle")
#: Minutes on 2 cores, so CI runs the others only: TSF_RUN_EXAMPLES=all runs these too.
SLOW = ("demo", "bench suite", "train seq2seq", "train tsf", "train bundle")
#: Exits that are the truth on a machine without an NVIDIA GPU, as one line naming what is missing.
NEEDS_GPU = ("engines build",)


def test_every_example_is_run_below():
    assert {name for name, _ in EXAMPLES} <= set(ORDER)


def test_examples_run(tmp_path):
    """Every example, in a fresh folder that holds only the repository's tests/data (for
    import-reference): exit 0, or on a CPU-only machine the GPU command's one-line refusal."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import problem_lines

    shutil.copytree(Path(__file__).parent / "data", tmp_path / "tests" / "data")
    run_all = os.environ.get("TSF_RUN_EXAMPLES") == "all"
    ran = []
    for name, example in sorted(EXAMPLES, key=lambda e: ORDER.index(e[0])):
        if name in SLOW and not run_all:
            continue
        words = shlex.split(example)
        done = subprocess.run([sys.executable, "-m", "tsf_trt", *words[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=1800)
        if name in NEEDS_GPU and done.returncode != 0:
            lines = problem_lines(done.stderr)
            assert len(lines) == 1 and ("GPU" in lines[0] or "TensorRT" in lines[0]), (example, done.stderr)
        else:
            assert done.returncode == 0, (example, done.stdout[-2000:], done.stderr[-2000:])
        ran.append(name)
    assert "infer" in ran and "export" in ran
