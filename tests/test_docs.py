"""The documentation keeps its promises (docs/development.md, "The documentation"): the MkDocs site
builds with `mkdocs build --strict` (every link and anchor resolves; the CLI reference is generated
from the commands), and every shell block of README.md and docs/*.md is either run here or marked as
not runnable here with why. A block's marker is the line just before its fence:

* `<!-- run by tests/test_docs.py -->`: run below as written (at the smaller sizes SMALLER names);
* `<!-- run by FILE -->`: FILE (e.g. .ci/run) holds every command of the block word for word;
* `<!-- not run here: WHY -->`: then each `tsf-trt` / `tsf-trt-bids` command in it is parsed by the
  real commands (unknown options, bad values and counts fail) and each `python -m scripts.NAME`
  must name a script of the checkout.

Python blocks are run by tests/test_readme_snippets.py."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tsf_trt.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
RUN_HERE = "tests/test_docs.py"
_FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"^<!-- (?:run by (?P<file>\S+)|not run here: (?P<why>.+\S)) -->$")
_SEPARATORS = {"&&", "||", ";", "|", "&"}
_REDIRECTIONS = {"<", ">", ">>", ">&", "<&", "&>"}
_VENV = re.compile(r"^(python3? -m venv \S+|\. \S+/bin/activate)$")
#: What the blocks run here make smaller than they are written (each must occur in a block run here):
#: the same phantoms at 48x48x24 voxels, and the BIDS App's work folder inside the test's own folder.
SMALLER = (("tsf-trt phantom -o phantoms --subjects 3", "tsf-trt phantom -o phantoms --subjects 3 --shape 48 48 24"),
           ("--shape 96 96 64", "--shape 48 48 24"),
           ("-w /tmp/tsf-trt-work", "-w work"))


def blocks(text: str, page: str) -> list[tuple[str, int, str, str | None, str | None]]:
    """(page, line, code, marker file, marker why) of every shell block of a page's text."""
    found = []
    for match in _FENCE.finditer(text):
        if match.group(1) not in SHELL:
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.match(before.strip())
        found.append((page, line, match.group(2), marker and marker.group("file"), marker and marker.group("why")))
    return found


BLOCKS = [block for page in PAGES for block in blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))]


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at
    && || ; | &, redirections and leading VAR=value words dropped."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        redirected = False
        for word in [*lexer, ";"]:
            if word in _SEPARATORS:
                while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                    words.pop(0)
                if words:
                    found.append(words)
                words, redirected = [], False
            elif word in _REDIRECTIONS:
                if words and words[-1].isdigit():
                    words.pop()  # 2>&1: the descriptor
                redirected = True
            elif redirected:
                redirected = False  # the redirection's target
            else:
                words.append(word)
    return found


def parse(words: list[str]) -> None:
    """Parse a `tsf-trt` or `tsf-trt-bids` command as the CLI would, without running it."""
    args = words[1:] if words[0] == "tsf-trt" else ["bids", *words[1:]]
    command, name = typer.main.get_command(app), []
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, name, args = command.commands[args[0]], [*name, args[0]], args[1:]
    command.make_context(" ".join(name), list(args))  # raises on an unknown option or a bad value


def _id(block) -> str:
    return f"{block[0]}:{block[1]}"


def test_the_block_reader_finds_shell_blocks_markers_and_commands():
    text = ("<!-- not run here: needs a GPU -->\n```bash\ntsf-trt doctor  # a comment\n```\n"
            "```python\nx = 1\n```\n<!-- run by .ci/run -->\n"
            "```sh\nA=1 tsf-trt infer \\\n  --target t2 > log && ls\n```\n")
    found = blocks(text, "x.md")
    assert [(b[1], b[3], b[4]) for b in found] == [(2, None, "needs a GPU"), (9, ".ci/run", None)]
    assert commands(found[1][2]) == [["tsf-trt", "infer", "--target", "t2"], ["ls"]]
    assert commands("a; b | c # d\n#SBATCH x\n") == [["a"], ["b"], ["c"]]
    assert commands("x 2>&1 | tee y\necho '{}' > f.json") == [["x"], ["tee", "y"], ["echo", "{}"]]
    assert BLOCKS, "no shell block found: nothing would be checked"


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_every_shell_block_is_run_or_says_why_not(block):
    page, line, _code, file, why = block
    assert file or why, (f"{page}:{line}: mark the block: <!-- run by tests/test_docs.py --> (and run it here), "
                         "<!-- run by FILE --> or <!-- not run here: WHY -->")
    if file:
        assert (ROOT / file).is_file(), f"{page}:{line}: {file} does not exist"


PARSED = [(block, words) for block in BLOCKS if block[3] != RUN_HERE
          for words in commands(block[2]) if words[0] in ("tsf-trt", "tsf-trt-bids")]


@pytest.mark.parametrize("block, words", PARSED, ids=[f"{_id(b)}:{w[1] if len(w) > 1 else w[0]}" for b, w in PARSED])
def test_commands_not_run_here_parse(block, words):
    try:
        parse(words)
    except Exception as error:  # click's UsageError, BadParameter...: name the command and the reason
        pytest.fail(f"{_id(block)}: `{shlex.join(words)}` does not parse: {error}")


def test_scripts_named_in_the_docs_exist():
    for block in BLOCKS:
        for words in commands(block[2]):
            if words[:2] in (["python", "-m"], ["python3", "-m"]) and words[2].startswith("scripts."):
                assert (ROOT / "scripts" / f"{words[2].split('.', 1)[1]}.py").is_file(), (_id(block), words)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[3] not in (None, RUN_HERE)], ids=_id)
def test_a_file_that_runs_a_block_holds_its_commands(block):
    """Word for word, each &&-step; a venv's creation and activation only as that FILE makes its own."""
    held = (ROOT / block[3]).read_text(encoding="utf-8")
    for line in block[2].replace("\\\n", " ").splitlines():
        for step in (s.strip() for s in line.split("&&")):
            if _VENV.match(step):
                assert "-m venv" in held and "/bin/activate" in held, (_id(block), step)
            else:
                assert step in held, f"{_id(block)}: {block[3]} does not run `{step}`"


def test_the_gpu_pages_device_command_is_the_scripts():
    from scripts.gpu_check_plan import DEVICE_COMMAND

    assert any(block[0] == "docs/gpu.md" and block[2].strip() == DEVICE_COMMAND for block in BLOCKS)


RUN = [block for block in BLOCKS if block[3] == RUN_HERE]
#: Each distinct block run once (README's first commands are also docs/getting-started.md's).
RUN_ONCE = {block[2]: block for block in reversed(RUN)}


def test_every_smaller_size_is_in_a_block_run_here():
    for old, _ in SMALLER:
        assert any(old in block[2] for block in RUN), old


@pytest.mark.parametrize("block", RUN_ONCE.values(),
                         ids=[" ".join(_id(b) for b in RUN if b[2] == code) for code in RUN_ONCE])
def test_blocks_run_here_run(block, tmp_path):
    """As written, with SMALLER's sizes, by bash in an empty folder, with this interpreter's
    console scripts (tsf-trt, tsf-trt-bids) first on PATH."""
    code = block[2]
    for old, new in SMALLER:
        code = code.replace(old, new)
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "tsf-trt").exists() and (bin_dir / "tsf-trt-bids").exists(), "pip install -e . first"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{_id(block)}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict` into a temporary folder; [dev] installs MkDocs ([docs]), so CI runs it."""
    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # its package is missing
            return True

    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python") if absent(m)]
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its successor: not a warning
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    for name in ["infer", "bids", *(f"{group} {sub}" for group in ("bench", "engines", "train")
                                    for sub in root.commands[group].commands)]:
        assert f"tsf-trt {name}</code>" in cli, f"the CLI reference lacks tsf-trt {name}"
    assert "cli-reference: generated" not in cli  # the hook replaced its marker
    assert (tmp_path / "site" / "python-api" / "index.html").read_text(encoding="utf-8").count("doc-heading") > 5


_CITATION = re.compile(r"docs/([a-z][\w-]*\.md)(?:,\s*(?:#:?\s*)?\\?([\"'])(.+?)\\?\2)?")


def test_every_citation_of_a_docs_page_names_a_page_and_a_section_it_has():
    """Code, tests and files cite the site as `docs/PAGE.md, "Section"`: the page exists and one of
    its headings begins with the section's words, so a renamed heading fails here, not in a reader's hands."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    cited = 0
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".sbatch", ".def", ".yml", "") or not path.is_file():
            continue
        for match in _CITATION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            page = ROOT / "docs" / match.group(1)
            assert page.is_file(), f"{name} cites {match.group(0)}: no such page"
            if match.group(3):
                headings = [line.lstrip("#").strip().replace("`", "") for line in page.read_text().splitlines()
                            if line.startswith("#")]
                assert any(h.startswith(match.group(3)) for h in headings), f"{name} cites {match.group(0)}"
                cited += 1
    assert cited > 20  # the citations were found


def test_the_cli_reference_shows_help_text_as_the_terminal_means_it():
    """Typer's style tags go, rich's escapes become brackets, and any other bracket stays (rich would
    swallow `tsf-trt[int8]`'s); the Markdown shows every character literally (no HTML, no emphasis)."""
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.plain("[bold]seq2seq[/] \\[gpu-cu12] pip install 'tsf-trt[int8]' [default: auto]") == \
        "seq2seq [gpu-cu12] pip install 'tsf-trt[int8]' [default: auto]"
    assert hook.text("<subject>_t2 *x* `a_b` [c]") == "&lt;subject&gt;\\_t2 \\*x\\* `a_b` \\[c\\]"
    assert hook.MARKER in (ROOT / "docs" / "cli.md").read_text()
