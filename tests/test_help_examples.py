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
                 "train seq2seq", "train tsf", "train bundle", "engines build"):
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
