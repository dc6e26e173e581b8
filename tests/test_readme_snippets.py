"""Every ```python block of README.md and of the documentation site (docs/*.md) runs as written, on
the README's first install: in a fresh interpreter that cannot import torch
(tests/test_lean_install.py's stand-in for `pip install -e .`), in a folder holding what the prose
makes first (`tsf-trt phantom -o phantoms`, one subject at a smaller --shape: the same file names, a
faster run). A snippet that fails fails the suite.

TSF_TRT_README=FILE checks another copy of the README (a proposed section, before it lands).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.test_lean_install import BLOCKER

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("TSF_TRT_README", ROOT / "README.md"))
#: README.md and every page of the site (docs/development.md, "The documentation").
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of every ```python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


BLOCKS = [(page.name if page == README else f"docs/{page.name}", line, code) for page in PAGES
          for line, code in python_blocks(page.read_text(encoding="utf-8"))]


def test_the_block_reader_finds_every_block_and_only_those():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (9, "b = 2\nc = 3\n")]
    assert any(page == README.name for page, _, _ in BLOCKS), \
        f"{README} has no ```python block: nothing would be checked"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """The phantom the README's prose makes, and a site folder that refuses torch."""
    folder = tmp_path_factory.mktemp("readme")
    made = cli("phantom", "-o", folder / "phantoms", "--subjects", "1", "--shape", "48", "48", "16")
    assert made.exit_code == 0, made.output
    site = tmp_path_factory.mktemp("notorch")
    (site / "sitecustomize.py").write_text(BLOCKER)
    return folder, site


@pytest.mark.parametrize("page, line, code", BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS])
def test_every_python_snippet_runs_as_written(page, line, code, workspace, tmp_path):
    folder, site = workspace
    env = {**os.environ, "PYTHONPATH": str(site)}  # read now: TSF_TRT_CACHE is the tests' own (conftest)
    shutil.copytree(folder / "phantoms", tmp_path / "phantoms")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{page} line {line}, the block:\n{code}\nfailed:\n{done.stderr}"
