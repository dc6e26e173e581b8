"""The runtime install (no PyTorch): the bundled demo and exports run, everything that needs
torch says which extra installs it, and the demo's shipped export is its model's.

A real torch-less environment is stood in for by a `sitecustomize` that refuses to import
torch (so `import torch` raises ModuleNotFoundError, as it does where torch is not installed);
docs/getting-started.md, "Set up", records a check in a fresh virtual environment as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tsf_trt.bundled import resolve_model
from tsf_trt.export.cached_exports import find_export, is_export_of
from tsf_trt.machine.extras import install_command
from tsf_trt.model.meta import EXPORT_SUBDIR, model_id, read_model_meta
from tsf_trt.synthesis.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = '''
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTorch())
'''
EXTRA = install_command("torch")  # the command for this checkout (tsf_trt.machine.extras)


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """Environment variables of a process that cannot import torch."""
    site = tmp_path_factory.mktemp("notorch")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "TSF_TRT_CACHE": str(site / "cache"), "COLUMNS": "200"}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr  # the stand-in works
    return env


def tsf(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsf_trt", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def subject(tmp_path_factory, no_torch) -> Path:
    """A small phantom, made without torch (the generator is numpy)."""
    out = tmp_path_factory.mktemp("phantom")
    result = tsf(no_torch, "phantom", "-o", "ph", "--subjects", "1", "--shape", "64", "64", "16", cwd=out)
    assert result.returncode == 0, result.stderr
    return next((out / "ph").iterdir())


@pytest.mark.parametrize("model", [[], ["--model", str(ROOT / "tsf_trt" / "bundled" / "demo" / EXPORT_SUBDIR)]],
                         ids=["bundled", "export-dir"])
def test_infer_runs_the_bundled_demo_from_its_shipped_export(no_torch, subject, tmp_path, model):
    inputs = [str(next(subject.glob(f"*_{s}.nii.gz"))) for s in ("t1", "flair")]
    result = tsf(no_torch, "infer", "--inputs", *inputs, "--target", "t2", "-o", "out", "--backend", "ort",
                 *model, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert report["backend"].startswith("onnxruntime") and report["precision"]["ran"] == "fp32"
    assert not list((ROOT / "tsf_trt" / "bundled").rglob(".*-cache"))  # the package is never written


def test_demo_runs_without_torch(no_torch, tmp_path):
    result = tsf(no_torch, "demo", "-o", "demo", "--shape", "64", "64", "16", "--backend", "ort", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert len(scores["tasks"]) == 2 and "onnxruntime" in result.stdout


def test_auto_skips_torch_with_the_extra_named(no_torch, subject, tmp_path):
    inputs = [str(next(subject.glob(f"*_{s}.nii.gz"))) for s in ("t1", "flair")]
    result = tsf(no_torch, "infer", "--inputs", *inputs, "--target", "t2", "-o", "out", "--device", "cpu",
                 "--verbose", cwd=tmp_path)  # each candidate's reason is a debug line
    assert result.returncode == 0, result.stderr
    assert "auto: torch not timed" in result.stderr  # not imported: tsf_trt.synthesis.auto.torch_skipped
    assert f"(--backend torch needs torch, which is not installed: {EXTRA})" in result.stderr
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert report["backend"].startswith(("onnxruntime", "openvino")), report["backend"]


@pytest.mark.parametrize("args, command", [
    (["infer", "--inputs", "t1.nii.gz", "--target", "t2", "--backend", "torch"], None),
    (["export", "-o", "exp"], "tsf-trt export"),
    (["train", "seq2seq", "--data", "ph", "-o", "run"], "tsf-trt train seq2seq"),
    (["import-reference", "--seq2seq", "g.pth", "--config", "paper", "-o", "m"], "tsf-trt import-reference"),
])
def test_what_needs_torch_says_which_extra(no_torch, subject, tmp_path, args, command):
    (tmp_path / "ph").symlink_to(subject.parent)
    (tmp_path / "t1.nii.gz").symlink_to(next(subject.glob("*_t1.nii.gz")))
    (tmp_path / "g.pth").write_bytes(b"not read")
    result = tsf(no_torch, *args, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and EXTRA in last and "torch" in last
    if command:  # named as the user typed it (here `python -m tsf_trt ...`)
        assert f"{command.removeprefix('tsf-trt')} needs torch" in last
    assert not (tmp_path / "exp").exists() and not (tmp_path / "run").exists() and not (tmp_path / "m").exists()


def test_the_tests_shared_code_imports_without_torch(no_torch):
    """tests/conftest.py and tests/helpers.py import torch only inside what needs it: the fixtures
    and helpers of the torch-less tests must not need it."""
    done = subprocess.run([sys.executable, "-c", "import tests.conftest, tests.helpers"], env=no_torch, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_shipped_export_is_the_bundled_model_s():
    """Same id, intact, complete, packaged, and numerically the model's graphs."""
    demo = resolve_model(None)
    identity = model_id(read_model_meta(demo))
    export = demo / EXPORT_SUBDIR
    assert is_export_of(export, identity) and find_export(identity, demo) == export
    manifest = json.loads((export / "manifest.json").read_text())
    assert {f"decoder_{t}" for t in ("t1", "t1gd", "t2", "flair")} <= set(manifest["graphs"])
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.relative_to(demo.parent).as_posix() for p in export.iterdir()}
    patterns = package_data["tsf_trt.bundled"]
    assert all(any(Path(f).match(p) for p in patterns) for f in shipped), (shipped, patterns)

    torch = pytest.importorskip("torch")
    from tsf_trt.model import load_model
    from tsf_trt.synthesis.backend import create_backend

    model = load_model(demo)
    images = np.random.default_rng(0).uniform(-1, 1, (2, model.config.in_channels, 32, 32)).astype(np.float32)
    with create_backend(export, RunOptions(backend="ort", threads=1, precision="fp32")) as ort:
        got = ort.to_numpy(ort.encode(images))
    with torch.no_grad():
        want = model.encoder(torch.from_numpy(images))
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_an_export_a_model_directory_carries_is_used_only_when_it_is_its_own(tmp_path):
    """A stale `export/` (another model's id) is ignored, never run in the model's name."""
    demo = resolve_model(None)
    identity = model_id(read_model_meta(demo))
    assert find_export("0123456789abcdef", demo) is None
    assert not is_export_of(tmp_path / "missing", identity)


def test_a_model_directory_whose_config_changed_does_not_run_from_its_export():
    """Same weights id, another config: the directory's own export is not its export any more."""
    from tsf_trt.model.config import ModelConfig

    demo = resolve_model(None)
    meta = read_model_meta(demo)
    config = ModelConfig.from_dict({**meta["config"], "enc_res_blocks": meta["config"]["enc_res_blocks"] + 1})
    assert find_export(model_id(meta), demo, config=config) is None
    assert find_export(model_id(meta), demo, config=ModelConfig.from_dict(meta["config"])) == demo / EXPORT_SUBDIR
