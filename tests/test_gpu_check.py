"""scripts/gpu_check.py: its dry run (the whole plan on the CPU, tiny shapes); scripts/gpu_check_plan.py: the
wheels to carry, the device command, the time plan, the versions step (the command itself:
tests/test_device_command.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import gpu_check
from scripts import gpu_check_plan as plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (DRY RUN")
    return json.loads((out / "gpu_check.json").read_text())


def test_the_dry_run_runs_every_step(dry_report):
    status = {step["name"]: step["status"] for step in dry_report["steps"]}
    assert dry_report["schema"] == gpu_check.SCHEMA and dry_report["dry_run"] is True
    assert status == {
        "versions": "passed", "versions the project needs": "passed", "gpu-marked tests": "passed",
        "engines/cuda.py on the CUDA runtime": "passed",
        f"phantom {gpu_check.DRY_SHAPE_XYZ}": "passed", "torch backend on the GPU: demo": "passed",
        "torch backend on the GPU: paper": "passed", gpu_check.DATAFLOW: "passed",
        "trt backend on the GPU: demo": "skipped", "trt backend on the GPU: paper": "skipped",
        "ratios and PSNR of the rows": "passed",
    }, [(s["name"], s["error"]) for s in dry_report["steps"] if s["status"] == "failed"]
    steps = {step["name"]: step for step in dry_report["steps"]}
    assert steps["trt backend on the GPU: demo"]["error"] == "tensorrt not importable"
    cuda = steps["engines/cuda.py on the CUDA runtime"]["details"]
    assert cuda["runtime"].startswith("tests/fake_cuda.py") and all(cuda["checks"].values()) and len(cuda["checks"]) == 10
    assert "skipped" in steps["gpu-marked tests"]["details"]["summary"]


def test_the_dry_run_checks_the_trt_data_flow_on_stand_in_engines(dry_report):
    """Every engine of the trt backend a torch module on the fake runtime, against ONNX Runtime CPU:
    both layouts of the fusion outputs, every graph run, within the tolerance."""
    flow = next(s for s in dry_report["steps"] if s["name"] == gpu_check.DATAFLOW)["details"]
    from scripts import gpu_check_trt

    assert flow["runtime"].startswith("tests/fake_cuda.py") and flow["max_abs"] <= gpu_check_trt.TOLERANCE
    assert len(flow["cases"]) == len(gpu_check_trt.DRY_CASES)
    first = flow["cases"][0]  # 20x20, batches 2, 2, 1: the last one's fused_avg would start unaligned
    assert first["fusion_outputs"] == {"one 2N buffer": 2, "two buffers + one copy": 1}
    assert first["engine_runs"] == {"encoder": 9, "fusion": 3, "decoder_t2": 3}  # 3 sources x 3 batches


def test_the_dry_run_times_every_variant(dry_report):
    rows = {(r["model"], r["variant"]): r for r in dry_report["rows"]}
    assert set(rows) == {(m, v[0]) for m in ("demo", "paper") for v in gpu_check.VARIANTS}
    for (model, variant), row in rows.items():
        assert row["seconds_per_volume"] > 0 and row["vs_eager_fp32"] > 0 and row["vs_reference"] > 0, row
        assert row["first_run_s"] > 0 and row["batch"] >= 1, row
        if variant != "graphs fp32":  # the base of the comparison
            assert row["psnr_vs_fp32_db"] > 30, row  # fp16/bf16 close; fp32 variants near-identical
    assert rows[("paper", "eager fp32")]["psnr_vs_fp32_db"] > 90
    assert rows[("paper", "eager fp32")]["vs_eager_fp32"] == rows[("demo", "reference fp32")]["vs_reference"] == 1.0
    goals = {g["goal"]: g for g in dry_report["goals"]}
    assert len(goals) == len(gpu_check.GOALS) and all(g["met"] is None for g in goals.values())  # a dry run meets none
    fp16 = rows[("paper", "graphs fp16")]["seconds_per_volume"]
    assert goals["graphs fp16 seconds_per_volume <= 0.5"]["measured"] == fp16


def test_goals_and_ratios_from_rows():
    """compare_rows and goals on hand-made rows: ratios within a model, a goal met, missed, or not measured."""
    check = gpu_check.Check(Path("."), dry_run=False, budget_s=1)
    check.rows = [{"model": "paper", "variant": v, "seconds_per_volume": t} for v, t in
                  (("eager fp32", 2.0), ("graphs fp16", 0.4), ("reference fp32", 8.0))] + \
        [{"model": "demo", "variant": "eager fp32", "seconds_per_volume": 1.0}]
    gpu_check.compare_rows(check)
    fp16 = check.rows[1]
    assert (fp16["vs_eager_fp32"], fp16["vs_reference"]) == (5.0, 20.0) and check.rows[3]["vs_reference"] is None
    met = {g["goal"]: g["met"] for g in gpu_check.goals(check.rows, dry_run=False)}
    assert met == {"graphs fp16 seconds_per_volume <= 0.5": True, "graphs fp16 vs_eager_fp32 >= 3": True,
                   "graphs fp16 psnr_vs_fp32_db >= 45": None, "trt fp16 seconds_per_volume <= 0.25": None}
    check.rows[1]["seconds_per_volume"] = 0.6
    assert gpu_check.goals(check.rows, dry_run=False)[0]["met"] is False


def test_the_dry_run_reports_its_time_plan(dry_report):
    """(Whether a dry run needs more than the GPU machine has and the wheels bring is
    tests/test_device_command.py's: a list of what was imported here would also name what torch
    imports only because it is installed here, e.g. pydot.)"""
    assert dry_report["plan"]["call_s"] > 0 and "device time" in dry_report["plan"]["text"]


def test_the_wheels_to_carry_are_what_the_gpu_machine_lacks():
    """nibabel and onnxslim alone for its Python 3.12 (nibabel's importlib-resources is for < 3.12;
    typer, rich, onnx, scipy... are there; openvino and isal are optional): a new dependency the
    machine lacks fails here until it is carried or made optional."""
    assert set(plan.carried()) == {"nibabel", "onnxslim"}
    done = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--list-wheels"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == [f"{n}=={v}" for n, v in plan.carried().items()]


def test_the_device_command_is_the_one_printed_and_fits_the_tool():
    done = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--device-command"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == plan.DEVICE_COMMAND and len(plan.DEVICE_COMMAND) <= 2000
    for part in ("pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e .",
                 f"--no-index --no-deps --no-cache-dir {plan.CARRY_DIR}/*.whl", "scripts.gpu_check --out \"$OUT\""):
        assert part in plan.DEVICE_COMMAND


def test_the_planned_call_fits_the_device_limits():
    """The budget keeps the call (install + check) under the tool's 600 s and the session's 900 s
    with the machine's start; without TensorRT (the machine's case) the estimates fit the budget."""
    timing = gpu_check.plan.time_plan(list(gpu_check.PLAN), gpu_check.BUDGET_S)
    assert timing["call_max_s"] <= plan.CALL_LIMIT_S and plan.START_S + timing["call_max_s"] <= plan.SESSION_S
    assert timing["check_s"] <= gpu_check.BUDGET_S < timing["check_with_trt_s"]
    assert timing["check_s"] == sum(s for _, s, trt in gpu_check.PLAN if not trt)


def test_versions_the_project_needs_reports_rather_than_crashes(monkeypatch):
    """A missing or too old requirement fails the step with both named; an optional one is noted."""
    reqs = [("tsf-trt", Requirement("typer>=9999")), ("tsf-trt", Requirement("no-such-distribution-tsf>=1")),
            ("tsf-trt", Requirement("packaging>=1")), ("tsf-trt", Requirement("isal>=99999"))]
    monkeypatch.setattr(plan, "walk", lambda env: reqs)
    step = plan.check_requirements()
    assert step["failed"] and "typer>=9999 (by tsf-trt): " in step["error"]
    assert "no-such-distribution-tsf>=1 (by tsf-trt): missing" in step["error"] and "isal" not in step["error"]
    ok = {r["requirement"]: (r["ok"], r["note"]) for r in step["requirements"]}
    assert ok["packaging>=1"] == (True, None) and ok["isal>=99999"] == (False, plan.OPTIONAL["isal"])


@pytest.fixture
def one_case(monkeypatch, one_torch_thread):
    from scripts import gpu_check_trt

    monkeypatch.setattr(gpu_check_trt, "DRY_CASES", gpu_check_trt.DRY_CASES[:1])  # 20x20: both fusion layouts
    return gpu_check_trt


def test_the_data_flow_check_sees_a_missing_wait(one_case, monkeypatch):
    """A download that does not wait for its copy reads the pinned slot before the deferred stream
    wrote it: the check must fail, not pass on stale data."""
    from tsf_trt.engines.cuda import GpuContext

    def no_wait(self, array):
        slot = self._slot("down", array.nbytes)
        self._copy(slot.ptr, array.ptr, array.nbytes, "cudaMemcpyDeviceToHost")
        self._mark(slot)
        return slot.host[: array.nbytes].view(array.dtype).reshape(array.shape).copy()

    monkeypatch.setattr(GpuContext, "download", no_wait)  # (the dry run above passes without it)
    flow = one_case.dataflow_check(True, gpu_check.phantom)
    assert flow["failed"] and flow["max_abs"] > one_case.TOLERANCE


def test_the_stand_in_context_refuses_unaligned_addresses(one_case, monkeypatch):
    """fused_avg bound at 3200 bytes into a buffer (defect 2 of issue 16) is refused as TensorRT would."""
    from tsf_trt.backends.trt_backend import TrtBackend
    from tsf_trt.errors import TsfError

    def halves(self, shape, dtype):
        both = self.gpu.empty((2 * shape[0], *shape[1:]), dtype)
        return both.rows(0, shape[0]), both.rows(shape[0], shape[0])

    monkeypatch.setattr(TrtBackend, "_output_pair", halves)
    with pytest.raises(TsfError, match="refused the address of 'fused_avg'"):
        one_case.dataflow_check(True, gpu_check.phantom)
