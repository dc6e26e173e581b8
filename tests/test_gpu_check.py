"""bench/gpu_check.py: its dry run (the whole plan on the CPU, tiny shapes) and its wheel list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (DRY RUN")
    return json.loads((out / "gpu_check.json").read_text())


def test_the_dry_run_runs_every_step(dry_report):
    status = {step["name"]: step["status"] for step in dry_report["steps"]}
    assert dry_report["schema"] == gpu_check.SCHEMA and dry_report["dry_run"] is True
    assert status == {
        "versions": "passed", "gpu-marked tests": "passed", "engines/cuda.py on the CUDA runtime": "passed",
        f"phantom {gpu_check.DRY_SHAPE_XYZ}": "passed", "torch backend on the GPU: demo": "passed",
        "torch backend on the GPU: paper": "passed", "trt rows": "skipped", gpu_check.NOT_BUILT: "skipped",
    }, [(s["name"], s["error"]) for s in dry_report["steps"] if s["status"] == "failed"]
    steps = {step["name"]: step for step in dry_report["steps"]}
    assert steps["trt rows"]["error"] == "tensorrt not importable"
    assert steps[gpu_check.NOT_BUILT]["error"].startswith("not built yet")
    cuda = steps["engines/cuda.py on the CUDA runtime"]["details"]
    assert cuda["runtime"].startswith("tests/fake_cuda.py") and all(cuda["checks"].values()) and len(cuda["checks"]) == 10
    assert "skipped" in steps["gpu-marked tests"]["details"]["summary"]


def test_the_dry_run_times_every_variant(dry_report):
    rows = {(r["model"], r["variant"]): r for r in dry_report["rows"]}
    assert set(rows) == {(m, v[0]) for m in ("demo", "paper") for v in gpu_check.VARIANTS}
    for (model, variant), row in rows.items():
        assert row["seconds_per_volume"] > 0 and row["vs_eager_fp32"] > 0, row
        if variant != "graphs fp32":  # the base of the comparison
            assert row["psnr_vs_fp32_db"] > 30, row  # fp16/bf16 close; fp32 variants near-identical
    assert rows[("paper", "eager fp32")]["psnr_vs_fp32_db"] > 90


def test_a_dry_run_imports_only_what_the_machine_has_or_the_wheels_bring(dry_report):
    allowed = set(gpu_check.closure(gpu_check.PREINSTALLED)) | set(gpu_check.closure(gpu_check.WHEELS)) | \
        set(gpu_check.closure(gpu_check.OPTIONAL)) | {"tsf-trt"}
    assert set(dry_report["imported_distributions"]) - allowed == set()


def test_list_wheels_names_what_a_bare_machine_lacks():
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--list-wheels"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    names = {line.split("==")[0] for line in done.stdout.split()}
    assert {"nibabel", "safetensors", "typer", "rich", "onnx", "pytest"} <= names
    assert not names & {"torch", "numpy", "onnxruntime", "sympy"}  # preinstalled, or brought by what is
    assert "pip download" in done.stderr
