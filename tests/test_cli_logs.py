"""What a run logs (tsf_trt/console.py): a piped folder run says one line per subject besides a short
header and summary, the input checks' findings once per run, and --log-format json writes one
JSON object per record, on stderr and in --log-file."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, cli, problem_lines
from tsf_trt.cli import app
from tsf_trt.cli.params import LOG_PANEL

SUBJECTS = ("Phantom_00000", "Phantom_00001", "Phantom_00002")
#: Lines of a 3-subject folder run that are about no one subject: the model's loading (start, end), the
#: backend, the files not used (one per reason), the input checks' summary (one per kind). (--backend auto
#: and --precision auto add their own lines, at most a few, and one once their verdict is cached:
#: tsf_trt/synthesis/auto.py, precision_auto.py; these runs name both.)
HEADER_AND_SUMMARY = 5


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """3 phantom subjects at 5 mm voxels (voxel-size findings for every input) with their label maps
    (files a run does not use), as `tsf-trt phantom` writes them."""
    root = tmp_path_factory.mktemp("logs") / "ph"
    result = cli("phantom", "-o", root, "--subjects", 3, "--shape", 48, 48, 24, "-q")
    assert result.exit_code == 0, result.output
    return root


def _run(phantoms, out, *extra):
    result = cli("infer", "--data", phantoms, "--target", "t2", "--sources", "t1,flair", "-o", out, *FAST,
                 "--precision", "fp32", *extra)
    assert result.exit_code == 0, result.output
    return result


def test_a_piped_folder_run_logs_a_line_per_subject_and_a_short_header(phantoms, small_model_dir, tmp_path):
    result = _run(phantoms, tmp_path / "out", "--model", small_model_dir)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for name in SUBJECTS:
        (line,) = [line for line in lines if f" {name}: " in line]  # its outcome, its findings in short
        assert "wrote" in line and line.endswith("; input checks: voxel-size (2 inputs)"), line
    rest = [line for line in lines if not any(f" {name}: " in line for name in SUBJECTS)]
    assert len(rest) <= HEADER_AND_SUMMARY, "\n".join(rest)
    assert sum("not used: 3 file(s) (a segmentation) in 3 subject(s)" in line for line in rest) == 1
    (summary,) = problem_lines(result.stderr)  # the findings, once, as the only warning
    assert "WARNING" in summary and "input checks: voxel-size in 6 input(s) of 3 subject(s), e.g. " in summary


def test_quiet_keeps_the_findings_summary_only(phantoms, small_model_dir, tmp_path):
    result = _run(phantoms, tmp_path / "out", "--model", small_model_dir, "--quiet")
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "input checks: voxel-size in 6 input(s)" in line
    assert result.stdout.startswith("3 done, 0 skipped")


def test_log_format_json_is_one_object_per_record(phantoms, small_model_dir, tmp_path):
    log_file = tmp_path / "run.jsonl"
    result = _run(phantoms, tmp_path / "out", "--model", small_model_dir, "--log-format", "json", "--log-file",
                  log_file)
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    about = {r["subject"]: r for r in records if "subject" in r}
    assert set(about) == set(SUBJECTS) and all(r["level"] == "INFO" for r in about.values())
    assert about[SUBJECTS[0]]["message"].startswith(f"{SUBJECTS[0]}: T1,FLAIR->T2")
    assert [json.loads(line) for line in log_file.read_text().splitlines()] == records
    assert not any(line.startswith("{") for line in result.stdout.splitlines())  # results stay text


def test_an_error_is_a_json_record_too(tmp_path):
    result = cli("infer", "--data", tmp_path / "missing", "--target", "t2", "--log-format", "json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (record,) = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert record["level"] == "ERROR" and "no such folder" in record["message"]


def test_every_command_with_a_log_takes_the_log_options():
    """--log-format and --verbose wherever --log-file is: one set of log options (tsf_trt/console.py)."""
    import typer

    def commands(group, path=()):
        yield path, group
        for name, sub in getattr(group, "commands", {}).items():
            yield from commands(sub, (*path, name))

    with_log = {path: {p.opts[0] for p in cmd.params if p.opts}
                for path, cmd in commands(typer.main.get_command(app))
                if any("--log-file" in p.opts for p in cmd.params)}
    assert {("infer",), ("bench",), ("bench", "suite"), ("engines", "build"), ("train", "seq2seq")} <= set(with_log)
    for path, options in with_log.items():
        assert {"--log-format", "--verbose", "--quiet"} <= options, path
    panels = {p.rich_help_panel for p in typer.main.get_command(app).commands["infer"].params
              if p.opts[0] in ("--log-format", "--log-file", "--verbose", "--quiet", "--no-progress")}
    assert panels == {LOG_PANEL}
