"""`tsf-trt doctor`: every backend named with its status, on this CPU machine; a missing or
broken package and a provider that is listed but does not attach are reported, not raised."""

from __future__ import annotations

import importlib.abc
import json
import os
import sys

import pytest
from typer.testing import CliRunner

import tsf_trt.backends
from tsf_trt import doctor
from tsf_trt.backends.ort_backend import provider_problem
from tsf_trt.cli import app
from tsf_trt.machine.extras import install_command

runner = CliRunner()
STATUSES = {"works", "missing", "fails", "unknown"}


@pytest.fixture(autouse=True)
def fresh_provider_probe():
    """provider_problem caches per process: what a test fakes must not leak into other tests."""
    yield
    provider_problem.cache_clear()


def test_every_backend_has_a_status_and_the_cpu_ones_work():
    report = doctor.collect()
    assert [b.name for b in report.backends] == list(tsf_trt.backends.AVAILABLE)
    by_name = {b.name: b for b in report.backends}
    assert by_name["torch"].status == by_name["ort"].status == "works"  # this machine's base install
    for b in report.backends:
        assert b.status in STATUSES
        assert (b.status == "works") == (b.missing is None), b
    assert report.onnxruntime_providers["CPUExecutionProvider"] == "attaches"
    assert isinstance(report.cpu["flags"]["avx2"], bool) and report.cache["writable"] is True


def test_cli_tables_name_each_backend():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 5}
    for name in tsf_trt.backends.AVAILABLE:
        assert any(s in rows[name] for s in STATUSES), (name, rows)
    assert "backends work here:" in result.stdout


def test_json_parses_and_has_every_backend():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["backends"]) == set(tsf_trt.backends.AVAILABLE)
    assert data["backends"]["ort"] == {"status": "works", "missing": None, "install": None, "note": "CPU"}
    assert {"system", "cpu", "gpus", "cuda", "packages", "onnxruntime_providers", "torch", "openvino",
            "cache"} <= set(data)


def test_a_missing_package_is_missing_with_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    report = doctor.collect()
    by_name = {b.name: b for b in report.backends}
    for name in ("torch", "reference"):
        assert by_name[name].status == "missing"
        assert by_name[name].missing == "the Python package torch is not installed"
        assert by_name[name].install == doctor.torch_install(bool(report.gpus))
    assert report.torch == {"error": "not installed"}
    if "openvino" in by_name:
        assert (by_name["openvino"].status, by_name["openvino"].install) == ("missing", "pip install openvino")
    assert by_name["ort"].status == "works"


class _BrokenLoader(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime":
            raise OSError("libonnxruntime.so.1: cannot open shared object file")
        return None


def test_a_broken_package_fails_with_its_error(monkeypatch):
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenLoader(), *sys.meta_path])
    report = doctor.collect()
    ort = next(b for b in report.backends if b.name == "ort")
    assert ort.status == "fails"
    assert "libonnxruntime.so.1" in ort.missing and ort.install == "pip install onnxruntime --force-reinstall"
    assert report.onnxruntime_providers["error"].startswith("error: OSError")


def test_a_listed_provider_that_does_not_attach(monkeypatch):
    """ONNX Runtime lists CUDA but cannot start it: the one-node probe session falls back to the
    CPU, which must be reported as not attaching (this CPU build really falls back)."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    one_gpu = ([{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 139.8,
                 "seen_by": "nvidia-smi"}], None)
    monkeypatch.setattr(doctor, "_gpus", lambda: one_gpu)
    monkeypatch.setattr(doctor, "_driver_version", lambda: "550.54.15")
    report = doctor.collect()
    assert "could not start" in report.onnxruntime_providers["CUDAExecutionProvider"]
    by_name = {b.name: b for b in report.backends}
    assert by_name["ort-cuda"].status == "fails" and "fell back to the CPU" in by_name["ort-cuda"].missing
    assert by_name["ort-cuda"].install == install_command("gpu-cu12")  # driver 550: CUDA 12
    assert by_name["ort-trt"].status == "missing" and "TensorrtExecutionProvider" in by_name["ort-trt"].missing
    assert by_name["ort-trt"].install.startswith("pip uninstall -y onnxruntime")


def test_no_working_backend_exits_3_and_an_unknown_one_is_named(monkeypatch):
    monkeypatch.setattr(tsf_trt.backends, "AVAILABLE", ("torch", "some-new-backend"))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(doctor, "cpu_flags", lambda: 1 / 0)  # a probe that itself fails
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == doctor.EXIT_NO_BACKEND == 3, result.output
    data = json.loads(result.stdout)
    assert data["backends"]["some-new-backend"]["status"] == "unknown"
    assert data["cpu"] == {"error": "error: ZeroDivisionError: division by zero"}
    assert "exit status 3" in runner.invoke(app, ["doctor"]).stdout


@pytest.mark.parametrize("driver, backend, extra", [("580.65.06", "trt", "gpu-cu13"), ("550.54.15", "trt", "gpu-cu12"),
                                                    ("580.65.06", "ort-trt", "gpu-cu12")])
def test_gpu_extra_follows_the_driver(driver, backend, extra):
    assert doctor.gpu_install(driver, backend) == install_command(extra)
    assert doctor.gpu_install(None) == install_command("gpu-cu12")  # unknown driver: CUDA 12 runs on newer ones


FAKE_SMI = """#!/bin/sh
# nvidia-smi's CSV query as a 580 driver answers it (memory in MiB with nounits); anything else: its usage error
case "$1 $2" in
  "--query-gpu=index,name,compute_cap,memory.total --format=csv,noheader,nounits") echo "0, NVIDIA H200, 9.0, 143771";;
  "--query-gpu=driver_version --format=csv,noheader,nounits") echo "580.65.06";;
  *) echo "Invalid combination of input arguments" >&2; exit 2;;
esac
"""


def test_a_gpu_seen_by_nvidia_smi_names_the_packages_and_the_driver_s_extra(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr("tsf_trt.engines.gpu.has_cuda_python", lambda: False)  # as here: no cuda-bindings
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    report = doctor.collect()
    assert report.gpus == [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 140.4,
                            "seen_by": "nvidia-smi"}]
    assert report.cuda["driver"] == "580.65.06"
    trt = next(b for b in report.backends if b.name == "trt")
    assert trt.status == "missing" and trt.install == install_command("gpu-cu13")
    assert trt.missing == "the Python packages tensorrt and cuda-python are not installed"
