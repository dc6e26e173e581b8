"""Every command that writes keeps `infer`'s promises about a user's files.

* An input of a command is never written or removed, with or without --overwrite: an output
  that is, contains or is inside an input (through links too) is refused in one line.
* --overwrite replaces only what tsf-trt wrote: a folder only when it is tsf-trt's output of
  that kind holding nothing else, a file only when it carries tsf-trt's mark
  (tsf_trt.files.ownership); anything else is refused in one line naming it, and left as it was.
* Every option and output location is checked before the model loads (the `no_model_load`
  fixture makes loading a model fail the test).
* Leftovers of killed runs are swept by the next run, never a live process's (real
  processes, killed with SIGKILL or stopped with SIGSTOP while their temp file exists).
* A damaged entry of evaluate's resume cache is computed again, with one WARNING naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (DATA, FAST, SCRIPT, SHAPE, assert_clean_error, cli, files_under, make_head, problem_lines,
                           snapshot, write_nifti)

PHANTOM_SHAPE = ("32", "32", "16")
FAST_EXPORT = ("--targets", "none", "--no-verify")
FAST_EVALUATE = ("--tasks", "t1->t2", "--no-compare", "--slice-step", "4", *FAST)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from tsf_trt.phantoms import write_subjects

    folder = tmp_path_factory.mktemp("data") / "phantoms"
    write_subjects(folder, 1, seed=0, shape=tuple(int(n) for n in PHANTOM_SHAPE))
    return folder


@pytest.fixture
def model_copy(small_model_dir, tmp_path):
    """A model directory of our own (config.json + model.safetensors, no export/)."""
    return Path(shutil.copytree(small_model_dir, tmp_path / "M"))


@pytest.fixture
def project(tmp_path):
    """A user's folder: notes/thesis.txt."""
    folder = tmp_path / "PROJECT"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "thesis.txt").write_text("four years of work\n")
    return folder


def commands(model: Path, tmp_path: Path, phantoms: Path) -> dict[str, list]:
    """Each command that writes a folder, without its -o."""
    return {
        "export": ["export", "--model", model, *FAST_EXPORT],
        "import-reference": ["import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--tsf",
                             DATA / "small_tsf.pt", "--config", "small"],
        "train bundle": ["train", "bundle", "--stage1", tmp_path / "runs" / "s1", "--stage2", tmp_path / "runs" / "s2"],
        "evaluate": ["evaluate", "--data", phantoms, "--model", model, *FAST_EVALUATE],
        "demo": ["demo", "--model", model, *FAST, "--shape", *PHANTOM_SHAPE],
    }


# -- 1. an input is never written or removed ------------------------------------------------------
def test_export_into_its_model_directory_is_refused(model_copy, tmp_path, no_model_load):
    before = snapshot(model_copy)
    link = tmp_path / "link"
    link.symlink_to(model_copy)
    for target in (model_copy, link, model_copy.parent):
        result = cli("export", "--model", model_copy, "-o", target, "--overwrite", *FAST_EXPORT)
        assert_clean_error(result, str(target), "--model directory", "never written or removed")
    assert snapshot(model_copy) == before


def test_a_model_directory_may_receive_its_own_export(model_copy):
    result = cli("export", "--model", model_copy, "-o", model_copy / "export", *FAST_EXPORT)
    assert result.exit_code == 0, result.output
    assert (model_copy / "model.safetensors").is_file() and (model_copy / "export" / "manifest.json").is_file()


def test_outputs_that_are_in_or_hold_inputs_are_refused(model_copy, phantoms, tmp_path, no_model_load):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    shutil.copy(DATA / "small_seq2seq.pt", checkpoints)
    data = Path(shutil.copytree(phantoms, tmp_path / "data"))
    runs = tmp_path / "runs"
    (runs / "s2").mkdir(parents=True)
    seq2seq = ["import-reference", "--seq2seq", checkpoints / "small_seq2seq.pt", "--config", "small", "--overwrite"]
    evaluate = ["evaluate", "--data", data, "--model", model_copy, "--overwrite", *FAST_EVALUATE]
    cases = [
        ([*seq2seq, "-o", checkpoints], "contains the --seq2seq checkpoint"),
        ([*seq2seq, "-o", checkpoints / "small_seq2seq.pt"], "is the --seq2seq checkpoint"),
        ([*evaluate, "-o", data], "is the --data folder"),
        ([*evaluate, "-o", data / "report"], "is inside the --data folder"),
        (["train", "seq2seq", "--data", data, "-o", data / "run", "--config", "small", "--steps", "1", "--crop", "16",
          "--workers", "0", "--val-every", "0"], "is inside the --data folder"),
        (["train", "bundle", "--stage1", runs / "s1", "--stage2", runs / "s2", "-o", runs / "s2" / "model"],
         "is inside the --stage2 run folder"),
        (["bench", "--model", model_copy, "--json", model_copy / "bench.json", "--backend", "torch"],
         "is inside the --model directory"),
        (["demo", "--model", model_copy, "-o", model_copy, "--overwrite", "--backend", "torch"],
         "is the --model directory"),
    ]
    before = {folder: snapshot(folder) for folder in (checkpoints, data, model_copy, runs)}
    for args, needle in cases:
        assert_clean_error(cli(*args), needle, "never written or removed")
    assert {folder: snapshot(folder) for folder in before} == before


def test_train_run_folder_never_holds_its_init(model_copy, phantoms, tmp_path, no_model_load):
    run = tmp_path / "runs" / "s1"
    shutil.copytree(model_copy, run / "step_000001")
    before = snapshot(run)
    result = cli("train", "tsf", "--data", phantoms, "--init", run / "step_000001", "-o", run, "--steps", "1",
                 "--crop", "16", "--workers", "0")
    assert_clean_error(result, str(run), "contains the --init model directory")
    assert snapshot(run) == before


@pytest.mark.parametrize("mine", ["log.csv", "step_000001/notes.txt"])
def test_train_never_replaces_files_it_did_not_write(mine, phantoms, tmp_path, no_model_load):
    run = tmp_path / "run"
    (run / mine).parent.mkdir(parents=True, exist_ok=True)
    (run / mine).write_text("mine\n")
    before = snapshot(run)
    result = cli("train", "seq2seq", "--data", phantoms, "-o", run, "--config", "small", "--steps", "1", "--crop", "16",
                 "--workers", "0", "--val-every", "0")
    assert_clean_error(result, mine.split("/")[0], "not")
    assert snapshot(run) == before


# -- 2 and 3. --overwrite replaces only tsf-trt's own folders -----------------------------------------
@pytest.mark.parametrize("command", ["export", "import-reference", "train bundle", "evaluate", "demo"])
def test_overwrite_never_replaces_a_users_folder(command, model_copy, phantoms, project, tmp_path, no_model_load):
    args = commands(model_copy, tmp_path, phantoms)[command]
    target, named, entry = project, project, "notes/"
    if command == "demo":  # the demo replaces its phantom subject's folder
        target, named, entry = tmp_path / "demo", tmp_path / "demo" / "Phantom_900000", "thesis.txt"
        named.mkdir(parents=True)
        (named / "thesis.txt").write_text("mine\n")
    before = snapshot(target)
    assert_clean_error(cli(*args, "-o", target, "--overwrite"), str(named), entry, "replaces only")
    assert snapshot(target) == before


def test_evaluate_overwrite_never_clears_a_folder_that_is_not_a_report(phantoms, small_model_dir, tmp_path,
                                                                       no_model_load):
    out = tmp_path / "figs"
    (out / "figures").mkdir(parents=True)
    (out / "subjects").mkdir()
    (out / "figures" / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n my figure")
    (out / "subjects" / "s.json").write_text('{"mine": 1}\n')
    before = snapshot(out)
    result = cli("evaluate", "--data", phantoms, "--model", small_model_dir, "-o", out, "--overwrite", *FAST_EVALUATE)
    assert_clean_error(result, str(out), "not a tsf-trt evaluation report")
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["export", "model"])
def test_overwrite_refuses_our_folder_holding_a_users_file(kind, model_copy, small_export_dir, tmp_path,
                                                           no_model_load):
    folder = Path(shutil.copytree(small_export_dir if kind == "export" else model_copy, tmp_path / "ours"))
    (folder / "notes.md").write_text("my notes\n")
    args = (["export", "--model", model_copy, *FAST_EXPORT] if kind == "export" else
            ["import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--config", "small"])
    before = snapshot(folder)
    assert_clean_error(cli(*args, "-o", folder, "--overwrite"), str(folder), "notes.md", "tsf-trt did not write")
    assert snapshot(folder) == before


def test_overwrite_replaces_our_own_export_with_its_caches(model_copy, small_export_dir, tmp_path):
    folder = Path(shutil.copytree(small_export_dir, tmp_path / "exp"))
    (folder / ".ort-cache").mkdir(exist_ok=True)
    (folder / "engines").mkdir(exist_ok=True)
    (folder / "engines" / "x.engine").write_bytes(b"\0engine")
    result = cli("export", "--model", model_copy, "-o", folder, "--overwrite", *FAST_EXPORT)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", "fusion.onnx", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_evaluate_overwrite_clears_only_its_own_report(phantoms, small_model_dir, tmp_path):
    out = tmp_path / "report"
    base = ["evaluate", "--data", phantoms, "--model", small_model_dir, "-o", out, *FAST_EVALUATE]
    assert cli(*base).exit_code == 0
    (out / "notes.md").write_text("my notes\n")
    before = snapshot(out)
    assert_clean_error(cli(*base, "--overwrite"), str(out), "notes.md", "tsf-trt did not write")
    assert snapshot(out) == before
    resumed = cli(*base)  # resuming writes only the report's own files: the notes stay
    assert resumed.exit_code == 0 and "1 reused" in resumed.stdout, resumed.output
    assert (out / "notes.md").read_text() == "my notes\n"
    (out / "notes.md").unlink()
    again = cli(*base, "--overwrite")
    assert again.exit_code == 0 and "0 reused" in again.stdout, again.output


def test_phantom_overwrite_replaces_only_phantom_subjects(tmp_path):
    out = tmp_path / "phantoms"
    args = ["phantom", "-o", out, "--subjects", "1", "--shape", *PHANTOM_SHAPE]
    assert cli(*args).exit_code == 0
    assert cli(*args, "--overwrite").exit_code == 0  # its own subject: replaced
    (out / "Phantom_00000" / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    assert_clean_error(cli(*args, "--overwrite"), "Phantom_00000", "notes.txt", "tsf-trt did not write")
    assert snapshot(out) == before


# -- single files ----------------------------------------------------------------------------------
def test_infer_overwrite_never_replaces_a_users_file(small_model_dir, tmp_path):
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    out = tmp_path / "out"
    args = ["infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
            "--backend", "torch", "--overwrite"]
    mine = write_nifti(out / "sub_t2_synth.nii.gz", make_head(SHAPE, seed=5))  # the user's own T2, same name
    before = snapshot(out)
    assert_clean_error(cli(*args), "sub_t2_synth.nii.gz", "not written by tsf-trt")
    assert snapshot(out) == before
    mine.unlink()
    assert cli(*args).exit_code == 0
    assert cli(*args).exit_code == 0  # its own outputs: replaced


def test_bench_and_demo_overwrite_never_replace_a_users_file(model_copy, tmp_path, no_model_load):
    mine = {"report.json": '{"results": [1, 2]}\n', "report.md": "# My results\n", "plot.png": "not ours"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    for flag, name in (("--json", "report.json"), ("--markdown", "report.md"), ("--plot", "plot.png")):
        result = cli("bench", "--model", model_copy, flag, tmp_path / name, "--overwrite", "--backend", "torch")
        assert_clean_error(result, name, "not written by tsf-trt")
    suite = cli("bench", "suite", "--config", "small", "-o", tmp_path / "report.md", "--overwrite")
    assert_clean_error(suite, "report.md", "not written by tsf-trt")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo.json").write_text('{"mine": true}\n')
    result = cli("demo", "--model", model_copy, "-o", demo, "--overwrite", "--backend", "torch")
    assert_clean_error(result, "demo.json", "not written by tsf-trt")
    assert {n: (tmp_path / n).read_text() for n in mine} == mine
    assert (demo / "demo.json").read_text() == '{"mine": true}\n'


def test_own_files_are_recognised(tmp_path):
    """What --overwrite may replace, by content (the other side of the refusals above)."""
    from tsf_trt.files.ownership import PNG_METADATA, is_own_file

    ours = {"a.json": {"tsf_trt_version": "0"}, "b.json": {"format": "tsf-trt-evaluation"},
            "c.json": {"tool": "tsf-trt bench"}, "d.json": {"Description": "TSEM: |output with - ...|"}}
    theirs = {"e.json": {"format": "other"}, "f.json": [1, 2], "g.json": {"Description": "my T2"}}
    for name, data in {**ours, **theirs}.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "h.md").write_text("# tsf-trt bench\n")
    (tmp_path / "i.md").write_text("# my bench\n")
    write_nifti(tmp_path / "j.nii.gz", make_head(SHAPE, seed=0))
    (tmp_path / "k.json").write_text("{not json")
    from matplotlib.figure import Figure

    Figure().savefig(tmp_path / "l.png", format="png", metadata=PNG_METADATA)
    Figure().savefig(tmp_path / "m.png", format="png")
    assert sorted(p.name for p in tmp_path.iterdir() if is_own_file(p)) == ["a.json", "b.json", "c.json", "d.json",
                                                                              "h.md", "l.png"]


def test_caches_are_recognised_by_where_they_are(small_export_dir, tmp_path):
    """Engines and optimised graphs carry no mark: they are tsf-trt's by the folder they are in
    (an export directory's engines/ or .NAME-cache/, or the tsf-trt cache)."""
    from tsf_trt.files.ownership import is_own_file
    from tsf_trt.machine.cache_dir import cache_root

    export = Path(shutil.copytree(small_export_dir, tmp_path / "exp"))
    cached = cache_root() / "engines" / "x" / "a.engine"
    files = [export / "engines" / "a.engine", export / ".ort-cache" / "fp16" / "b.onnx", cached,
             tmp_path / "engines" / "c.engine"]  # the last: an engines/ folder that is not an export's
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0binary")
    assert [is_own_file(p) for p in files] == [True, True, True, False]


# -- 15. every option and output location before the model loads -----------------------------------
@pytest.mark.parametrize("command", ["export", "import-reference", "train bundle", "evaluate", "demo", "phantom",
                                     "bench"])
def test_output_location_is_checked_before_the_model_loads(command, model_copy, phantoms, tmp_path, no_model_load):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder\n")
    args = {**commands(model_copy, tmp_path, phantoms),
            "phantom": ["phantom", "--subjects", "1", "--shape", *PHANTOM_SHAPE],
            "bench": ["bench", "--model", model_copy, "--backend", "torch", "--json"]}[command]
    unwritable = blocker / "out" / "x.json" if command == "bench" else blocker / "out"
    result = cli(*args, *([] if command == "bench" else ["-o"]), unwritable)
    assert_clean_error(result, str(blocker), "cannot create" if command == "bench" else "not a folder")
    if command in ("phantom", "bench"):
        return  # no output folder of their own that can exist already
    existing = tmp_path / "exists"
    (existing / "Phantom_900000" if command == "demo" else existing).mkdir(parents=True)
    (existing / "report.md").write_text("mine\n")
    assert_clean_error(cli(*args, "-o", existing), "exists")
    assert (existing / "report.md").read_text() == "mine\n"


def test_evaluate_checks_its_report_folder_before_the_model_loads(phantoms, small_model_dir, tmp_path,
                                                                  no_model_load):
    report = tmp_path / "report.txt"
    report.write_text("a file\n")
    result = cli("evaluate", "--data", phantoms, "--model", small_model_dir, "-o", report, *FAST_EVALUATE)
    assert_clean_error(result, "report.txt", "is a file")


# -- 16. leftovers of killed runs ------------------------------------------------------------------
#: A real `tsf-trt` process that dies (SIGKILL) or stops (SIGSTOP) while its temporary file or
#: folder exists: argv[1] is the signal, argv[2] what to stop in ('savefig': matplotlib writing a
#: PNG; 'phantom': a phantom subject's files written, not yet renamed), the rest the command.
_DIE_MIDWAY = """
import os, signal, sys
sig, once = getattr(signal, sys.argv[1]), []
if sys.argv[2] == "savefig":
    from matplotlib.figure import Figure
    real = Figure.savefig
    def patched(self, fname, *args, **kwargs):
        if not once:
            once.append(1)
            with open(fname, "wb") as handle:
                handle.write(b"\\x89PNG\\r\\n")  # half a PNG...
            os.kill(os.getpid(), sig)  # ...when the writer dies (or stops)
        return real(self, fname, *args, **kwargs)
    Figure.savefig = patched
else:
    import tsf_trt.phantoms.generator as generator
    real = generator.write_subject
    def patched(*args, **kwargs):
        real(*args, **kwargs)  # the temp folder holds the subject, not yet renamed...
        if not once:
            once.append(1)
            os.kill(os.getpid(), sig)  # ...when the writer dies (or stops)
    generator.write_subject = patched
from tsf_trt.cli import main
sys.argv = ["tsf-trt", *sys.argv[3:]]
main()
"""


def _midway(sig: str, where: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _DIE_MIDWAY, sig, where, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stopped(proc: subprocess.Popen) -> None:
    """Wait until `proc` has stopped itself (it is alive: a stopped process writes later)."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


def _tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def _temps(folder: Path) -> list[str]:
    return sorted(p for p in files_under(folder) + [str(d.relative_to(folder)) for d in folder.rglob("*") if d.is_dir()]
                  if ".tmp-" in p)


def test_phantom_sweeps_killed_runs_leftovers_never_a_live_ones(tmp_path):
    out = tmp_path / "phantoms"
    shape = ("--shape", *PHANTOM_SHAPE)
    killed = _midway("SIGKILL", "phantom", "phantom", "-o", out, "--subjects", "1", *shape)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    dead = _temps(out)
    assert dead and all(p.startswith(".Phantom_00000.tmp-") for p in dead), dead
    live = _midway("SIGSTOP", "phantom", "phantom", "-o", out, "--subjects", "1", "--seed", "7", *shape)
    try:
        _stopped(live)
        alive = [p for p in _temps(out) if p.startswith(".Phantom_00007.tmp-")]
        assert alive
        rerun = _tool("phantom", "-o", out, "--subjects", "2", *shape)
        assert rerun.returncode == 0, rerun.stderr
        assert _temps(out) == alive  # the killed run's half subject is gone, the live one's kept
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["Phantom_00000",
                                                                                     "Phantom_00001"]
    finally:
        live.send_signal(signal.SIGCONT)
    live.communicate(timeout=300)
    assert live.returncode == 0
    assert _temps(out) == [] and len(list((out / "Phantom_00007").iterdir())) == 5


def test_evaluate_sweeps_killed_runs_leftovers_never_a_live_ones(phantoms, small_model_dir, tmp_path):
    out = tmp_path / "report"
    args = ("evaluate", "--data", phantoms, "--model", small_model_dir, "-o", out, *FAST_EVALUATE)
    killed = _midway("SIGKILL", "savefig", *args)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    dead = _temps(out)
    assert dead and all(p.startswith("figures/.") and ".png.tmp-" in p for p in dead), dead
    live = _midway("SIGSTOP", "savefig", *args)
    try:
        _stopped(live)
        alive = [p for p in _temps(out) if p not in dead]
        assert alive
        rerun = _tool(*args)
        assert rerun.returncode == 0, rerun.stderr
        assert _temps(out) == alive  # the killed run's half PNG is gone, the live one's kept
    finally:
        live.send_signal(signal.SIGCONT)
    live.communicate(timeout=300)
    assert live.returncode == 0 and _temps(out) == []
    assert (out / "figures" / "Phantom_00000_t1_to_t2.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- evaluate's resume cache ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["edited", "truncated"])
def test_a_damaged_resume_entry_is_computed_again_with_a_warning(damage, phantoms, small_model_dir, tmp_path):
    out = tmp_path / "report"
    args = ["evaluate", "--data", phantoms, "--model", small_model_dir, "-o", out, *FAST_EVALUATE]
    assert cli(*args).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    entry = out / "subjects" / "Phantom_00000.json"
    text = entry.read_text()
    if damage == "edited":
        data = json.loads(text)
        data["rows"][0]["psnr"] += 10.0  # still valid JSON, a wrong score
        entry.write_text(json.dumps(data, indent=1))
    else:
        entry.write_text(text[: len(text) // 2])
    again = cli(*args)
    assert again.exit_code == 0, again.output
    warnings = problem_lines(again.stderr)
    assert len(warnings) == 1 and "WARNING" in warnings[0] and str(entry) in warnings[0], again.stderr
    assert "0 reused" in again.stdout
    redone = json.loads((out / "summary.json").read_text())["table1_by_inputs"][0]["psnr"]["mean"]
    # recomputed, not the edited value: the same computation on the same machine and thread count
    # (a tolerance only for a kernel's reduction order; the edit above is 10 dB)
    assert redone == pytest.approx(summary["table1_by_inputs"][0]["psnr"]["mean"], abs=1e-6)
    third = cli(*args)
    assert "1 reused" in third.stdout and problem_lines(third.stderr) == []
