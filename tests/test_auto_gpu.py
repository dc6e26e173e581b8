"""`--backend auto` on a GPU: the GPU backends that pass their checks are timed on one probe batch
and offered fastest first; one that fails to build or to run is left out with its reason; the
verdict is kept per model, GPU, precision and candidate set. No GPU here: the candidates are
stand-in backends whose batches take a set time on a fake clock (tsf_trt/synthesis/auto.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tsf_trt.backends.base import Backend
from tsf_trt.errors import TsfError
from tsf_trt.synthesis import auto, precision_auto
from tsf_trt.synthesis.backend import create_backend
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.source import ModelSource


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class Timed(Backend):
    """A GPU backend whose batch of n slices takes `cost` * n seconds on `clock`, spent when the
    host reads the images (as a GPU's work is waited for there)."""

    on_gpu = True

    def __init__(self, name: str, config, cost: float, clock: Clock, fail: Exception | None = None):
        super().__init__(config, True, "stand-in", name=name)
        self.cost, self.clock, self.fail = cost, clock, fail

    def _encode(self, images):
        return images[:, :1]

    def _fuse(self, features, task_code):
        some = next(iter(features.values()))
        return some, some, np.full(4, 0.25, np.float32)

    def _decode(self, features, target, features_avg):
        self.queued = features  # the batch's work, waited for at its first read
        return features, features_avg

    def to_numpy(self, array, channel=None):
        if self.fail is not None:
            raise self.fail
        if array is getattr(self, "queued", None):  # reading TSEM's half after it waits for nothing more
            self.clock.now += self.cost * len(array)
            self.queued = None
        return np.asarray(array)[:, 0]


@pytest.fixture
def gpu(small_model_dir, tmp_path, monkeypatch):
    """A "GPU" machine: which candidates pass gpu_problem, what each costs or how it fails."""
    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "PROBE", (16, 16))
    monkeypatch.setattr(auto, "gpu_name", lambda index: "NVIDIA H200")
    clock = Clock()
    monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    source = ModelSource.resolve(small_model_dir)
    machine = SimpleNamespace(source=source, created=[], problems={"ort-cuda": "CUDAExecutionProvider is missing"},
                              costs={"trt": 3e-3, "torch": 1e-3}, build_errors={"ort-trt": "TensorRT EP failed"},
                              run_errors={})

    def gpu_problem(candidate, model, index=0):
        return machine.problems.get(candidate)

    def create(name, model, *, device, **kwargs):
        machine.created.append((name, device))
        if name in machine.build_errors:
            raise TsfError(machine.build_errors[name])
        if device == "cpu":
            return Timed("ort", source.config, 1.0, clock)
        return Timed(name, source.config, machine.costs.get(name, 2e-3), clock, machine.run_errors.get(name))

    monkeypatch.setattr(auto, "gpu_problem", gpu_problem)
    monkeypatch.setattr(precision_auto, "build_backend", create)  # every backend auto builds goes through it
    monkeypatch.setattr(auto, "choose_backend", lambda *a, **k: "ort")  # the CPU's own (measured) choice
    return machine


def records(machine) -> list[dict]:
    from tsf_trt.machine.cache_dir import cache_root

    return [json.loads(p.read_text()) for p in sorted((cache_root() / "auto").glob(f"{machine.source.model_id}-*"))]


def test_what_works_is_timed_and_offered_fastest_first(gpu):
    offered = list(auto.plan(gpu.source, device="auto"))
    assert offered == [("torch", "cuda:0"), ("trt", "cuda:0"), ("ort", "cpu")]
    assert gpu.created == [("trt", "cuda:0"), ("ort-trt", "cuda:0"), ("torch", "cuda:0")]  # ort-cuda: not usable
    (record,) = records(gpu)
    assert record["ranking"] == ["torch", "trt"] and record["gpu"] == "NVIDIA H200"
    assert record["seconds_per_slice"] == pytest.approx({"torch": 1e-3, "trt": 3e-3})
    assert record["failed"] == {"ort-trt": "TensorRT EP failed"}


def test_the_verdict_is_kept_and_a_new_candidate_is_timed(gpu):
    first = list(auto.plan(gpu.source, device="cuda"))
    gpu.created.clear()
    assert list(auto.plan(gpu.source, device="cuda")) == first == [("torch", "cuda:0"), ("trt", "cuda:0")]
    assert gpu.created == []  # from the record: nothing built, nothing timed
    gpu.problems.clear()  # ort-cuda installed since: another candidate set, timed once more
    gpu.costs["ort-cuda"] = 0.5e-3
    assert [n for n, _ in auto.plan(gpu.source, device="cuda")] == ["ort-cuda", "torch", "trt"]
    assert ("ort-cuda", "cuda:0") in gpu.created and len(records(gpu)) == 2


def test_one_that_fails_on_the_probe_batch_is_left_out(gpu):
    gpu.run_errors["torch"] = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert [n for n, _ in auto.plan(gpu.source, device="cuda")] == ["trt"]
    (record,) = records(gpu)
    assert record["failed"]["torch"] == "failed on the probe batch: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_create_backend_takes_the_fastest_and_falls_back_to_the_next(gpu):
    with create_backend(gpu.source, RunOptions(backend="auto", device="cuda:1", precision="fp32")) as backend:
        assert backend.name == "torch" and gpu.created[-1] == ("torch", "cuda:1")
    gpu.build_errors["torch"] = "out of GPU memory now"  # the fastest fails when created later: the next one
    with create_backend(gpu.source, RunOptions(backend="auto", device="cuda:1", precision="fp32")) as backend:
        assert backend.name == "trt"


def test_a_single_candidate_is_not_timed(gpu):
    gpu.problems.update({"trt": "tensorrt is not installed", "ort-trt": "no TensorRT provider"})
    assert list(auto.plan(gpu.source, device="cuda")) == [("torch", "cuda:0")]
    assert gpu.created == [] and records(gpu) == []
    with pytest.raises(TsfError, match="trt: tensorrt is not installed"):  # best: trt only
        list(auto.plan(gpu.source, device="cuda", precision="best"))


def test_nothing_that_works_on_the_gpu(gpu):
    gpu.build_errors.update(trt="engine build failed", torch="no memory")
    with pytest.raises(TsfError, match="found nothing that runs with --device cuda.*trt: engine build failed.*"
                                       "torch: no memory"):
        list(auto.plan(gpu.source, device="cuda"))
    assert list(auto.plan(gpu.source, device="auto")) == [("ort", "cpu")]
    assert records(gpu) == []  # not recorded: the next run tries the GPU again


@pytest.mark.parametrize("edit,problem", [
    (lambda r: r.update(ranking=["trt", "torch"]), "fastest first"),
    (lambda r: r.update(ranking=["reference"]), "ranks other backends"),
    (lambda r: r["seconds_per_slice"].update(torch=-1.0), "finite and positive"),
    (lambda r: r.update(failed={}), "once (timed or failed)"),
    (lambda r: r.update(precision="fp16"), "not 'fp32'"),
    (lambda r: r.update(ranking=42), "ranks other backends"),
])
def test_a_bad_ranking_record_is_measured_again(gpu, caplog, edit, problem):
    """Issue 22: a GPU ranking record that is not what tsf-trt writes is named in one WARNING,
    timed again and replaced."""
    import logging

    from tsf_trt.machine.cache_dir import cache_root

    first = list(auto.plan(gpu.source, device="cuda"))
    (path,) = (cache_root() / "auto").glob(f"{gpu.source.model_id}-*")
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    gpu.created.clear()
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        assert list(auto.plan(gpu.source, device="cuda")) == first
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(path) in warning and problem in warning, warning
    assert gpu.created  # timed again
    assert records(gpu)[0]["ranking"] == ["torch", "trt"]
