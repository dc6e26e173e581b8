"""`--backend auto` on the CPU (tsf_trt/synthesis/auto.py: probe_cpu): decided by rule where the
measurements never disagreed, otherwise one warm-up and one timed call per candidate, built lazily,
stopping early when a warm-up alone is clearly ahead; its record is trusted only when it is what
the current rules write. The candidates are stand-in backends whose batches take a set time on a
fake clock, so these tests check the decisions, not the speed."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from tests.test_auto_gpu import Clock, Timed
from tsf_trt.errors import TsfError
from tsf_trt.synthesis import auto, precision_auto, records
from tsf_trt.synthesis.source import ModelSource


class CpuTimed(Timed):
    """A CPU stand-in: each batch of n slices costs `cost` * n seconds, its first call `first` more
    (what compiling and first touch add); it counts its batches."""

    on_gpu = False

    def __init__(self, name, config, cost, clock, precision, first=0.0, fail=None):
        super().__init__(name, config, cost, clock, fail)
        self.precision = self.runtime_precision = precision
        self.first, self.batches = first, 0

    def to_numpy(self, array, channel=None):
        if array is getattr(self, "queued", None):
            self.batches += 1
            self.clock.now += self.first if self.batches == 1 else 0.0
        return super().to_numpy(array, channel)


@pytest.fixture
def cpu(small_model_dir, tmp_path, monkeypatch):
    """A CPU machine: native bf16 or not, what the bf16 check finds, what each candidate costs or
    why it does not build; `built` lists (name, precision) in the order they were built."""
    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "CPU_PROBE", (16, 16))
    clock = Clock()
    monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    machine = SimpleNamespace(source=ModelSource.resolve(small_model_dir), built=[], backends={},
                              costs={"openvino": 2e-3, "ort": 1e-3, "torch": 3e-3},
                              first={"openvino": 5e-3, "ort": 0.2e-3, "torch": 0.1e-3},
                              build_errors={}, run_errors={}, bf16=True, check="bf16")
    monkeypatch.setattr(precision_auto, "native_bf16", lambda: machine.bf16)
    monkeypatch.setattr(auto, "has_torch", lambda: True)  # the stand-in torch needs no PyTorch

    def check(name, source, threads):
        good = machine.check == "bf16"
        return precision_auto.Verdict(machine.check, "the stand-in check", 50.0 if good else 30.0, 0.0)

    def build(name, source, *, device, precision, **kwargs):
        machine.built.append((name, precision))
        if name in machine.build_errors:
            raise TsfError(machine.build_errors[name])
        backend = CpuTimed(name, source.config, machine.costs[name], clock, precision, machine.first[name],
                           machine.run_errors.get(name))
        machine.backends[name] = backend
        return backend

    monkeypatch.setattr(precision_auto, "check_bf16", check)
    monkeypatch.setattr(precision_auto, "build_backend", build)
    return machine


def record_of(machine) -> tuple:
    from tsf_trt.machine.cache_dir import cache_root

    (path,) = (cache_root() / "auto").glob(f"{machine.source.model_id}-*.json")
    return path, json.loads(path.read_text())


def test_openvino_bf16_is_chosen_by_rule_without_timing(cpu, caplog):
    """Native bf16 and a passed check: OpenVINO bf16 is taken untimed; ONNX Runtime and torch are
    never built. The log says how to skip the probe; the second run reads the record."""
    with caplog.at_level(logging.INFO, logger="tsf_trt"):
        assert auto.choose_backend(cpu.source, precision="auto") == "openvino"
    assert cpu.built == [("openvino", "bf16")] and cpu.backends["openvino"].batches == 0
    assert any("--backend openvino or --backend ort skips it" in r.getMessage() for r in caplog.records)
    _, record = record_of(cpu)
    assert record["rule"] == "openvino-bf16" and record["seconds_per_slice"] == {}
    assert set(record["skipped"]) == {"ort", "torch"} and record["ran"] == {"openvino": "bf16"}
    cpu.built.clear()
    assert auto.choose_backend(cpu.source, precision="auto") == "openvino" and cpu.built == []


def test_a_failed_check_times_the_fp32_onnx_backends(cpu):
    """OpenVINO's check keeps fp32: OpenVINO and ONNX Runtime are timed (one warm-up, one timed call
    each), and torch too, which may run bf16 (its own check decides) and then beat fp32 ones."""
    cpu.check = "fp32"
    cpu.costs["openvino"] = 1.2e-3  # within CLEAR_LEAD of ONNX Runtime's
    assert auto.choose_backend(cpu.source, precision="auto") == "ort"
    assert cpu.built == [("openvino", "fp32"), ("ort", "fp32"), ("torch", "fp32")]
    assert [cpu.backends[n].batches for n in ("openvino", "ort", "torch")] == [2, 2, 2]
    _, record = record_of(cpu)
    assert record["rule"] == "timed" and record["skipped"] == {}
    assert record["seconds_per_slice"] == pytest.approx({"openvino": 1.2e-3, "ort": 1e-3, "torch": 3e-3})



def test_without_native_bf16_auto_times_at_fp32(cpu):
    """auto is fp32 for every backend here: torch, slower than both ONNX backends at fp32, is not built."""
    cpu.bf16 = False
    cpu.costs["openvino"] = 0.9e-3
    assert auto.choose_backend(cpu.source, precision="auto") == "openvino"
    assert cpu.built == [("openvino", "fp32"), ("ort", "fp32")]
    path, record = record_of(cpu)
    assert "-fp32-" in path.name and set(record["skipped"]) == {"torch"}  # the same record as --precision fp32


def test_a_warm_up_clearly_ahead_is_not_timed_again(cpu):
    """ONNX Runtime's warm-up alone (first call included) beats OpenVINO's timed call by more than
    CLEAR_LEAD: it is taken at its warm-up time; a lead within CLEAR_LEAD gets its timed call."""
    cpu.bf16 = False
    cpu.costs.update(openvino=4e-3, ort=1e-3)
    assert auto.choose_backend(cpu.source, precision="fp32") == "ort"
    assert cpu.backends["ort"].batches == 1 and cpu.backends["openvino"].batches == 2
    warm_up = 1e-3 + 0.2e-3 / auto.PROBE_BATCH  # seconds per slice of its first call
    assert record_of(cpu)[1]["seconds_per_slice"]["ort"] == pytest.approx(warm_up)


def test_a_near_tie_gets_its_timed_call(cpu):
    cpu.bf16 = False
    cpu.costs.update(openvino=1.1e-3, ort=1e-3)
    assert auto.choose_backend(cpu.source, precision="fp32") == "ort"
    assert cpu.backends["ort"].batches == 2


def test_torch_is_timed_only_where_no_rule_covers_it(cpu):
    """No OpenVINO: at fp32 ONNX Runtime is taken untimed (torch fp32 lost everywhere measured),
    but where torch may run bf16 (native bf16, --precision auto) torch is timed against it."""
    cpu.build_errors["openvino"] = "openvino is not installed: pip install openvino"
    assert auto.choose_backend(cpu.source, precision="fp32") == "ort"
    assert cpu.built == [("openvino", "fp32"), ("ort", "fp32")] and cpu.backends["ort"].batches == 0
    _, record = record_of(cpu)
    assert record["rule"] == "only" and set(record["failed"]) == {"openvino"} and set(record["skipped"]) == {"torch"}
    cpu.built.clear()
    cpu.costs["torch"] = 0.5e-3
    assert auto.choose_backend(cpu.source, precision="auto") == "torch"
    assert cpu.built == [("openvino", "bf16"), ("ort", "fp32"), ("torch", "bf16")]


def test_torch_not_installed_is_skipped_with_the_extra_named(cpu, monkeypatch):
    cpu.check = "fp32"  # where torch would be timed
    monkeypatch.setattr(auto, "has_torch", lambda: False)
    auto.choose_backend(cpu.source, precision="auto")
    assert "torch" not in dict(cpu.built)
    from tsf_trt.machine.extras import install_command

    assert install_command("torch") in record_of(cpu)[1]["skipped"]["torch"]


def test_one_that_fails_on_the_probe_batch_decides_nothing(cpu):
    """OpenVINO builds but fails on the probe batch: it is out, and no rule leans on it (torch,
    which may run bf16 here, is timed against ONNX Runtime)."""
    cpu.check = "fp32"
    cpu.run_errors["openvino"] = RuntimeError("out of memory")
    assert auto.choose_backend(cpu.source, precision="auto") == "ort"
    _, record = record_of(cpu)
    assert record["failed"] == {"openvino": "failed on the probe batch: out of memory"}
    assert set(record["seconds_per_slice"]) == {"ort", "torch"} and "openvino" not in record["ran"]


def test_nothing_runs(cpu):
    cpu.build_errors.update(openvino="broken weights", ort="broken weights", torch="broken weights")
    with pytest.raises(TsfError, match="none of torch, ort, openvino could run this model on the CPU here: broken"):
        auto.choose_backend(cpu.source, precision="fp32")


def test_a_change_of_rules_is_measured_again(cpu, monkeypatch):
    """Records are per rules version: one made under other rules is never read."""
    cpu.bf16 = False
    auto.choose_backend(cpu.source, precision="fp32")
    monkeypatch.setattr(auto, "CPU_RULES", "p-next")
    cpu.built.clear()
    auto.choose_backend(cpu.source, precision="fp32")
    assert cpu.built  # measured again under the new rules


def _edit(**fields):
    return lambda r: r.update(fields)


@pytest.mark.parametrize("edit,problem", [
    (_edit(rules="p3"), "rules 'p3'"),
    (_edit(probe_batch=9), "probe_batch 9"),
    (_edit(choice="openvino"), "not the fastest"),
    (_edit(rule="only"), "yet timed"),
    (_edit(rule="openvino-bf16"), "without OpenVINO having run at that precision"),
    (_edit(rule="openvino-fp16"), "unknown rule"),
    (_edit(skipped={}), "once (timed, failed or skipped)"),
    (_edit(failed={"ort": "x"}), "once (timed, failed or skipped)"),
    (_edit(skipped={"reference": "x", "torch": "y"}), "not among this key's candidates"),
    (_edit(ran=[]), "has no 'ran'"),
])
def test_a_bad_cpu_record_is_measured_again(cpu, caplog, edit, problem):
    """A record the current rules would not write is named in one WARNING, measured again, replaced."""
    cpu.bf16 = False
    auto.choose_backend(cpu.source, precision="fp32")
    path, record = record_of(cpu)
    edit(record)
    path.write_text(json.dumps(record))
    cpu.built.clear()
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        assert auto.choose_backend(cpu.source, precision="fp32") == "ort"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(path) in warning and problem in warning, warning
    assert cpu.built and record_of(cpu)[1]["rule"] == "timed"


def test_the_bf16_rule_is_only_valid_for_auto():
    setup = {**auto.cpu_setup("fp32")}
    record = {**setup, "choice": "openvino", "rule": "openvino-bf16", "why": "x", "seconds_per_slice": {},
              "failed": {}, "skipped": {"ort": "x"}, "ran": {"openvino": "bf16"}}
    problem = records.cpu_choice_problem(record, ["ort", "openvino"], setup, auto.RULE_PRECISIONS)
    assert problem is not None and "--precision auto" in problem
    setup = auto.cpu_setup("auto", ["bf16"])
    record = {**record, **setup}
    assert records.cpu_choice_problem(record, ["ort", "openvino"], setup, auto.RULE_PRECISIONS) is None
    # the export gained int8 graphs since: OpenVINO's check now considers int8 too, so it is chosen for again
    problem = records.cpu_choice_problem(record, ["ort", "openvino"], auto.cpu_setup("auto", ["int8", "bf16"]),
                                         auto.RULE_PRECISIONS)
    assert problem is not None and "checks" in problem


def test_why_no_gpu_is_one_short_line():
    """A CPU run says in a few words why no GPU backend runs (every reason at --verbose and in doctor)."""
    reasons = ["trt: tensorrt is not installed", "ort-trt: no TensorrtExecutionProvider",
               "ort-cuda: no CUDAExecutionProvider", "torch-cuda: an export directory has no PyTorch weights"]
    said = auto._gpu_summary(reasons)
    assert len(said) < 120 and "trt, ort-trt, ort-cuda, torch-cuda" in said and "doctor" in said
    assert auto._gpu_summary([*reasons[:3], "torch-cuda: this PyTorch has no CUDA GPU"]).startswith(
        "no GPU backend usable here: this PyTorch has no CUDA GPU")
