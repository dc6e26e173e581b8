"""The GPU runtimes' settings that no CPU run shows (issue 26, defects 3-7), checked on fakes, on
the settings objects themselves and, for IOBinding, on ONNX Runtime's CPU device. No GPU here:
what these settings do on one is for scripts/gpu_check.py.

* fp32 means fp32: torch's TF32 switches are IEEE inside a run and the caller's after; ONNX
  Runtime's CUDA EP gets use_tf32 0; TensorRT EP sessions are created with NVIDIA_TF32_OVERRIDE=0.
* GPU sessions load onnxruntime-gpu's CUDA and cuDNN libraries first (preload_dlls), once; CPU
  sessions never.
* ort-trt fp16 on ONNX Runtime >= 1.27 with TensorRT 10 (microsoft/onnxruntime PR #29779): `auto`
  leaves it out when trt runs fp16, and says why.
* ORT GPU stages keep their outputs on the device (IOBinding): the same volume as the plain path.
* The torch CUDA runner runs with cuDNN's autotuner on, the caller's setting restored after.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import run_stages
from tsf_trt.backends import ort_backend, ort_gpu
from tsf_trt.backends.ort_device import DeviceStages
from tsf_trt.backends.torch_backend import TorchBackend
from tsf_trt.backends.torch_staged import PlainIO, StagedRunner, eager_capture, prepared
from tsf_trt.synthesis import auto
from tsf_trt.synthesis.source import ModelSource

CPU = torch.device("cpu")
NEW_API = hasattr(torch.backends.cudnn, "conv")  # PyTorch >= 2.9: per-operator fp32_precision


def tf32_state() -> tuple:
    """torch's switches that decide whether CUDA fp32 may run as TF32 (matmul, convolution)."""
    if NEW_API:
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


IEEE = ("ieee", "ieee") if NEW_API else (False, False)


def _tf32_switches() -> list[tuple[object, str]]:
    backends = torch.backends
    if NEW_API:
        return [(backends.cuda.matmul, "fp32_precision"), (backends.cudnn.conv, "fp32_precision")]
    return [(backends.cuda.matmul, "allow_tf32"), (backends.cudnn, "allow_tf32")]


@pytest.fixture
def user_allows_tf32():
    """A host program that allowed TF32 and turned cuDNN's autotuner off, its own way (given back
    after the test: monkeypatch cannot undo torch's per-operator settings)."""
    switches = [*_tf32_switches(), (torch.backends.cudnn, "benchmark")]
    saved = [getattr(obj, name) for obj, name in switches]
    for (obj, name), value in zip(switches, ["tf32", "tf32", False] if NEW_API else [True, True, False]):
        setattr(obj, name, value)
    try:
        yield tf32_state()
    finally:
        for (obj, name), value in zip(switches, saved):
            setattr(obj, name, value)


@pytest.fixture
def export(small_export_dir, tmp_path) -> Path:
    """A private copy of the small export: ort-trt's engine folder and FP16 variants stay with the test."""
    return Path(shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns("engines")))


@pytest.fixture
def any_provider(monkeypatch):
    """Every ONNX Runtime provider passes its check (none would start here: no GPU)."""
    monkeypatch.setattr(ort_backend, "require_provider", lambda name, device=0: None)


# -- defect 3: fp32 means fp32 -----------------------------------------------------------------------
def test_torch_runs_fp32_as_ieee_and_gives_the_callers_settings_back(small_model, user_allows_tf32,
                                                                     one_torch_thread):
    backend, seen = TorchBackend(small_model), []
    encoder = backend._encoder
    backend._encoder = lambda x: seen.append(tf32_state()) or encoder(x)
    run_stages(backend, n=1)
    assert seen == [IEEE] * 3  # inside each encode: no TF32 for cuBLAS matmuls or cuDNN convolutions
    assert tf32_state() == user_allows_tf32  # after: the host program's own settings


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_onnx_runtime_cuda_provider_is_fp32(export, any_provider, name):
    """use_tf32 is the CUDA EP's option (read from the 1.26.0 and 1.31.1 provider libraries); its
    default, 1, lets cuBLAS and cuDNN round fp32 inputs to TF32."""
    backend = ort_backend.OrtBackend(export, name=name)
    cuda = {p[0]: p[1] for p in backend._providers("encoder") if isinstance(p, tuple)}["CUDAExecutionProvider"]
    assert cuda["use_tf32"] == "0"
    assert dict(backend.binding.providers[:1])["CUDAExecutionProvider"]["use_tf32"] == "0"  # the device copies too


def test_tensorrt_ep_sessions_are_created_without_tf32(export, any_provider, monkeypatch):
    """ONNX Runtime's TensorRT EP has no TF32 option: NVIDIA_TF32_OVERRIDE=0 is set while its
    sessions are created and removed after; a value the user set stays as it is."""
    import onnxruntime

    seen = []
    monkeypatch.delenv(ort_gpu.TF32_OVERRIDE, raising=False)
    monkeypatch.setattr(ort_gpu, "_preloaded", True)
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda *a, **k: seen.append(os.environ.get(ort_gpu.TF32_OVERRIDE)) or object())
    ort_backend.OrtBackend(export, name="ort-trt")._open("encoder")
    ort_backend.OrtBackend(export, name="ort-cuda")._open("encoder")
    assert seen == ["0", None] and ort_gpu.TF32_OVERRIDE not in os.environ
    monkeypatch.setenv(ort_gpu.TF32_OVERRIDE, "1")
    ort_backend.OrtBackend(export, name="ort-trt")._open("encoder")
    assert seen[-1] == "1" and os.environ[ort_gpu.TF32_OVERRIDE] == "1"


# -- defect 4: onnxruntime-gpu's CUDA and cuDNN libraries ------------------------------------------
class FakeOrt:
    """onnxruntime-gpu as far as provider_problem uses it, recording what it is asked, in order."""

    __version__ = "1.26.0"

    def __init__(self, preload: bool = True) -> None:
        self.calls: list[str] = []
        if preload:
            self.preload_dlls = self._preload

    def _preload(self, cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory=None) -> None:
        self.calls.append("preload_dlls")
        print("Failed to load libcudnn.so.9: libcudnn.so.9: cannot open shared object file")  # as ORT does

    def get_available_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def SessionOptions(self):  # noqa: N802 - onnxruntime's name
        return SimpleNamespace()

    def InferenceSession(self, model, options, providers):  # noqa: N802
        self.calls.append(f"session {providers[0][0]}")
        return SimpleNamespace(get_providers=lambda: [providers[0][0], "CPUExecutionProvider"])


@pytest.fixture
def fresh_probe(monkeypatch):
    """provider_problem and the preload start afresh, and leave no fake behind (both are per process)."""
    monkeypatch.setattr(ort_gpu, "_preloaded", False)
    ort_backend.provider_problem.cache_clear()
    yield
    ort_backend.provider_problem.cache_clear()


def test_gpu_sessions_preload_cuda_and_cudnn_once(fresh_probe, monkeypatch, capsys, caplog):
    fake = FakeOrt()
    monkeypatch.setattr(ort_backend, "import_ort", lambda: fake)
    with caplog.at_level(logging.INFO, logger="tsf_trt"):
        assert ort_backend.provider_problem("CUDAExecutionProvider", 0) is None
        assert ort_backend.provider_problem("CUDAExecutionProvider", 1) is None
    assert fake.calls == ["preload_dlls", "session CUDAExecutionProvider", "session CUDAExecutionProvider"]
    assert capsys.readouterr().out == ""  # what preload_dlls prints goes to the log: stdout holds results
    assert any("libcudnn.so.9" in r.getMessage() for r in caplog.records)


def test_onnxruntime_without_preload_dlls_still_starts(fresh_probe, monkeypatch):
    """onnxruntime-gpu < 1.21 has no preload_dlls: its providers use the system's libraries."""
    fake = FakeOrt(preload=False)
    monkeypatch.setattr(ort_backend, "import_ort", lambda: fake)
    assert ort_backend.provider_problem("CUDAExecutionProvider", 0) is None
    assert fake.calls == ["session CUDAExecutionProvider"]


def test_cpu_sessions_never_preload(export, fresh_probe, monkeypatch):
    import onnxruntime

    calls = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *a, **k: calls.append(1), raising=False)
    run_stages(ort_backend.OrtBackend(export, threads=1), n=1)
    assert calls == []


# -- defect 5: ort-trt fp16 weakly typed on ONNX Runtime >= 1.27 with TensorRT 10 -------------------
def test_which_versions_build_fp16_weakly_typed(monkeypatch):
    weak = ort_gpu.weak_fp16_problem
    assert weak("1.26.0", "10.16.1.11") is None  # before the regression
    assert "PR #29779" in weak("1.27.0", "10.16.1.11") and "1.31.1" in weak("1.31.1", None)  # None: libnvinfer.so.10
    assert weak("1.31.1", "11.4.0.106") is None  # TensorRT 11: every network strongly typed
    monkeypatch.setattr(ort_gpu, "WEAK_FP16_FIXED", (1, 40))  # once the PR ships in a release
    assert weak("1.40.0", "10.16.1.11") is None and weak("1.39.2", "10.16.1.11") is not None


@pytest.fixture
def gpu_candidates(small_export_dir, monkeypatch):
    """trt, ort-trt and ort-cuda pass their checks (torch cannot run an export); what auto would time."""
    timed = []
    monkeypatch.setattr(auto, "gpu_problem", lambda c, s, i=0: "no weights" if c == "torch-cuda" else None)
    monkeypatch.setattr(auto, "gpu_ranking", lambda s, usable, *a: (timed.append(list(usable)) or list(usable), {}))
    return ModelSource.resolve(small_export_dir), timed


@pytest.mark.parametrize("versions,precision,left_out", [
    (("1.31.1", "10.16.1.11"), "fp16", True),
    (("1.26.0", "10.16.1.11"), "fp16", False),
    (("1.31.1", "10.16.1.11"), "fp32", False),  # the FP32 graph has no FP16 types to lose
])
def test_auto_leaves_weakly_typed_ort_trt_fp16_to_trt(gpu_candidates, monkeypatch, caplog, versions, precision,
                                                      left_out):
    source, timed = gpu_candidates
    monkeypatch.setattr(ort_gpu, "ort_trt_versions", lambda ort: versions)
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        offered = [name for name, _ in auto.plan(source, device="cuda", precision=precision)]
    assert ("ort-trt" not in offered) == left_out and "trt" in offered and timed == [offered]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (warnings == [f"auto: ort-trt left out, trt runs fp16 instead: {ort_gpu.weak_fp16_problem(*versions)}"]
            if left_out else warnings == [])


def test_ort_trt_fp16_says_it_may_run_weakly_typed(export, any_provider, monkeypatch, caplog):
    monkeypatch.setattr(ort_gpu, "ort_trt_versions", lambda ort: ("1.31.1", "10.16.1.11"))
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        ort_backend.OrtBackend(export, name="ort-trt", precision="fp16")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "PR #29779" in warning and "--backend trt" in warning


# -- defect 6: ORT GPU stages keep their outputs on the device ----------------------------------------
def test_bound_stages_keep_features_on_the_device_and_give_the_plain_result(export):
    """The IOBinding path, forced onto ONNX Runtime's CPU device: the same sessions and kernels as
    the plain path, and the rearranging graphs only copy, so the results are expected identical;
    1e-6 allows for a kernel choosing another order for differently aligned buffers."""
    import onnxruntime

    plain = ort_backend.OrtBackend(export, threads=1)
    bound = ort_backend.OrtBackend(export, threads=1)
    bound.binding = DeviceStages(bound.ort, "cpu", 0, ["CPUExecutionProvider"])
    features = bound.encode(np.zeros((2, 3, 16, 16), np.float32))
    assert isinstance(features, onnxruntime.OrtValue)  # kept where the stage ran, not copied to numpy
    want, got = run_stages(plain, n=2), run_stages(bound, n=2)  # sources 0, 1, 3: zeros at index 2
    assert all(isinstance(image, np.ndarray) for image in got[:2])  # decoded images come to the host
    for have, expect in zip(got[:2], want[:2]):
        assert have.shape == expect.shape and np.abs(have - expect).max() <= 1e-6
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-6)  # ω
    one_to_one = bound.decode(features, 2)[0]  # a Seq2Seq pass decodes the encoder's value as it is
    assert np.abs(one_to_one - plain.decode(plain.encode(np.zeros((2, 3, 16, 16), np.float32)), 2)[0]).max() <= 1e-6
    assert np.array_equal(bound.to_numpy(features), features.numpy())


# -- defect 7: cuDNN's autotuner for the CUDA runner's static shapes ---------------------------------
def test_staged_runner_runs_with_cudnns_autotuner_and_restores_it(small_model, user_allows_tf32, one_torch_thread):
    runner = StagedRunner(prepared(small_model, CPU, False), CPU, precision="fp32", capture=eager_capture,
                          io=PlainIO(), channels_last=False)
    seen, encode = [], runner._enc
    runner._enc = lambda x: seen.append((torch.backends.cudnn.benchmark, tf32_state())) or encode(x)
    runner.encode(np.zeros((1, 3, 16, 16), np.float32))  # first call: the warm-up / capture, then a run
    runner.encode(np.zeros((1, 3, 16, 16), np.float32))  # a replay
    assert len(seen) >= 2 and set(seen) == {(True, IEEE)}
    assert torch.backends.cudnn.benchmark is False and tf32_state() == user_allows_tf32
