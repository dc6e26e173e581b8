"""One name per idea on the command line (tsf_trt/cli/vocabulary.py): the old spellings still work
for one release with one deprecation line on stderr (never stdout), choices are listed and
completed, and long commands group their options in help panels."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest
import typer

from tests.helpers import FAST, SHAPE, assert_clean_error, cli, problem_lines, write_pair
from tsf_trt import console
from tsf_trt.cli import app
from tsf_trt.cli.vocabulary import RENAMED, renamed

ROOT = typer.main.get_command(app)


def command(*path: str):
    found = ROOT
    for name in path:
        found = found.commands[name]
    return found


@contextmanager
def said():
    """The tsf_trt log's records, as their messages (what a command's handlers would print)."""
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("tsf_trt")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


#: Every renamed option family: (command, old words, new words). Each old name of RENAMED appears.
OLD_SPELLINGS = [
    ("infer", ["--subject", "s1"], ["--subject-name", "s1"]),
    ("infer", ["--session", "pre", "--session=post"], ["--session-label", "pre", "--session-label=post"]),
    ("bench", ["--backends", "torch,ort"], ["--backend", "torch,ort"]),
    ("bench", ["--batch-sizes", "1,4"], ["--batch-size", "1,4"]),
    ("bench", ["--precisions=fp32,bf16"], ["--precision=fp32,bf16"]),
    ("bench", ["--frames", "head,full"], ["--frame", "head,full"]),
    ("bench", ["--decoders", "baked,code"], ["--decoder", "baked,code"]),
    ("bench", ["--subject", "one"], ["--subject-dir", "one"]),
]
BASE = {"infer": ["--target", "t2"], "bench": []}


def test_every_renamed_option_is_tested():
    tested = {(name, word.partition("=")[0]) for name, old, _ in OLD_SPELLINGS for word in old}
    assert {(name, old) for name, table in RENAMED.items() for old in table} <= tested


@pytest.mark.parametrize("name, old, new", OLD_SPELLINGS)
def test_an_old_spelling_means_what_the_new_one_does_and_says_so_once(name, old, new):
    console.start_command()
    with said() as lines:
        before = command(name).make_context(name, [*BASE[name], *old]).params
        console.say_deprecations()
    after = command(name).make_context(name, [*BASE[name], *new]).params
    assert before == after
    old_name, new_name = old[0].partition("=")[0], new[0].partition("=")[0]
    assert lines == [f"{old_name} is deprecated and will stop working in the next release: use {new_name}"]


def test_a_subcommand_keeps_its_own_words():
    """Words after `bench suite` are suite's own options, never read as bench's old spellings."""
    console.start_command()
    with said() as lines:
        words = renamed("bench", ["--backends", "ort", "suite", "--backends", "x"], stop=("suite",))
        console.say_deprecations()
    assert words == ["--backend", "ort", "suite", "--backends", "x"] and len(lines) == 1


def test_the_old_spelling_runs_and_its_line_goes_to_stderr(tmp_path, small_model_dir):
    """infer --subject (now --subject-name) on one subject: the same outputs, one warning on stderr."""
    t1, flair = write_pair(tmp_path / "in", "p")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--subject", "named", "-o", tmp_path / "out",
                 "--model", small_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "named_t2_synth.nii.gz").is_file()
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and "WARNING" in lines[0] and "--subject is deprecated" in lines[0], result.stderr
    assert "--subject-name" in lines[0] and "deprecated" not in result.stdout


def test_a_folder_given_to_inputs_still_runs_and_names_data(tmp_path, small_model_dir):
    write_pair(tmp_path / "data" / "s1", "s1", shape=SHAPE)
    result = cli("infer", "--inputs", tmp_path / "data", "--target", "t2", "-o", tmp_path / "out",
                 "--model", small_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "s1" / "s1_t2_synth.nii.gz").is_file()
    warned = [line for line in problem_lines(result.stderr) if "deprecated" in line]
    assert len(warned) == 1 and f"--data {tmp_path / 'data'}" in warned[0], result.stderr


def test_data_takes_a_folder_and_inputs_files(tmp_path):
    t1, flair = write_pair(tmp_path / "in", "p")
    assert_clean_error(cli("infer", "--data", t1, "--target", "t2"), "--data takes a folder", "--inputs")
    assert_clean_error(cli("infer", "--data", tmp_path / "in", "--inputs", t1, flair, "--target", "t2"),
                       "give one of them")
    assert_clean_error(cli("infer", "--data", tmp_path / "nope", "--target", "t2"), "no such folder")


def test_bench_old_spellings_say_the_new_ones_before_the_error(tmp_path, monkeypatch):
    """bench --backends auto: the deprecation line, then the one error, which names --backend; the old
    one-word --shape (slices x height x width) names its X Y Z spelling."""
    monkeypatch.chdir(tmp_path)
    result = cli("bench", "--backends", "auto", "--shape", "4x32x24")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 3, result.stderr
    assert "--backends is deprecated" in lines[0] and "use --backend" in lines[0]
    assert "--shape 4x32x24 (slices x height x width) is deprecated" in lines[1] and "--shape 24 32 4 (X Y Z" in lines[1]
    assert lines[2].startswith("error: --backend: 'auto'")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_engines_build_takes_a_device_as_infer_does():
    from tsf_trt.cli.engines import _gpu_index
    from tsf_trt.errors import TsfError

    assert _gpu_index("cuda") == 0 and _gpu_index("cuda:1") == 1
    console.start_command()
    with said() as lines:
        assert _gpu_index("2") == 2
        console.say_deprecations()
    assert lines == ["--device 2 is deprecated and will stop working in the next release: use --device cuda:2"]
    with pytest.raises(TsfError, match="use cuda or cuda:N"):
        _gpu_index("cpu")


#: Options whose values are a fixed set: (command path, option, every value a shell completes).
CHOICES = [
    (("infer",), "--backend", {"auto", "torch", "ort", "openvino", "ort-cuda", "ort-trt", "trt", "reference"}),
    (("infer",), "--precision", {"auto", "fp32", "bf16", "fp16", "best", "int8"}),
    (("infer",), "--target", {"t1", "t1n", "t1w", "t1gd", "t1ce", "t1c", "t2", "t2w", "flair", "t2f"}),
    (("infer",), "--combine", {"middle", "mean"}),
    (("infer",), "--log-format", {"text", "json"}),
    (("evaluate",), "--lpips-net", {"alex", "vgg"}),
    (("phantom",), "--layout", {"brats2021", "brats2023", "bids"}),
    (("bench", "suite"), "--config", {"paper", "small", "demo"}),
    (("engines", "build"), "--precision", {"fp32", "fp16", "best"}),
    (("export",), "--precision", {"fp32", "int8"}),
    (("table",), "--target", {"t1", "t1n", "t1w", "t1gd", "t1ce", "t1c", "t2", "t2w", "flair", "t2f"}),
    (("bids",), "--backend", {"auto", "torch", "ort", "openvino", "ort-cuda", "ort-trt", "trt", "reference"}),
]


@pytest.mark.parametrize("path, option, values", CHOICES)
def test_a_fixed_set_of_values_is_shown_and_completed(path, option, values):
    cmd = command(*path)
    param = next(p for p in cmd.params if option in p.opts)
    ctx = cmd.make_context(" ".join(path), [], resilient_parsing=True)
    assert {item.value for item in param.shell_complete(ctx, "")} == values
    shown = param.make_metavar(ctx) if hasattr(param, "make_metavar") else ""
    assert "str" not in shown


#: Commands whose options are grouped in help panels: every option but --help has one.
PANELLED = [("infer",), ("bids",), ("bench",), ("evaluate",), ("calibrate",), ("train", "seq2seq"),
            ("train", "tsf")]


@pytest.mark.parametrize("path", PANELLED)
def test_long_commands_group_their_options_in_panels(path):
    missing = [p.opts[0] for p in command(*path).params
               if p.opts[0].startswith("-") and p.opts[0] not in ("--help", "--version")
               and not getattr(p, "rich_help_panel", None)]
    assert missing == []


def test_infer_panels_are_the_five_and_the_log():
    panels = {p.rich_help_panel for p in command("infer").params if getattr(p, "rich_help_panel", None)}
    assert panels == {"Inputs", "Outputs", "Model and runtime", "Folder runs", "Checks", "Log"}


@pytest.mark.parametrize("command", [["infer"], ["bids"]])
def test_help_shows_bracketed_paths(command, monkeypatch):
    """rich reads `[ses-*/]` as a markup tag and drops it unless escaped: the BIDS path must show whole."""
    monkeypatch.setenv("COLUMNS", "250")  # one line per sentence: the path is not wrapped apart
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "sub-*/[ses-*/]anat/" in result.output, result.output
