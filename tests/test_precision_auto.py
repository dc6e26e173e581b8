"""--precision auto: bf16 only where the CPU has it natively and this model passes the check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tsf_trt.synthesis import precision_auto
from tsf_trt.synthesis.backend import create_backend
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.source import ModelSource


@pytest.fixture
def small_check(monkeypatch):
    """The check on a few small slices (the real one: 8 slices at 240x240)."""
    monkeypatch.setattr(precision_auto, "CHECK_SHAPE", (48, 48, 8))
    monkeypatch.setattr(precision_auto, "CHECK_SLICES", 2)


def test_without_native_bf16_auto_is_fp32_and_says_why(small_model, monkeypatch):
    monkeypatch.setattr(precision_auto, "native_bf16", lambda: False)
    monkeypatch.setattr(precision_auto, "check_bf16", lambda *a: pytest.fail("no check without native bf16"))
    with create_backend(small_model, RunOptions(backend="torch", precision="auto")) as backend:
        assert backend.precision == "fp32" and "no bf16 instructions" in backend.precision_reason
    assert precision_auto.resolve("ort", ModelSource.resolve(small_model), device="cpu", threads=1).precision == "fp32"


def test_the_rule_needs_both_bounds():
    fp32 = np.linspace(-1, 1, 4000, dtype=np.float32).reshape(10, 20, 20)
    head = np.ones_like(fp32, bool)
    close, far = fp32 + 1e-4, fp32 + 2e-2  # 80 dB and 34 dB from fp32 (data range 2)
    w = {0: 0.5, 3: 0.5}
    assert precision_auto.judge(fp32, close, head, w, w).precision == "bf16"
    assert precision_auto.judge(fp32, far, head, w, w).precision == "fp32"
    assert precision_auto.judge(fp32, close, head, w, {0: 0.502, 3: 0.498}).precision == "fp32"


def test_native_bf16_runs_the_check_once_and_caches_the_verdict(small_model, small_check, monkeypatch):
    monkeypatch.setattr(precision_auto, "native_bf16", lambda: True)
    source = ModelSource.resolve(small_model)
    first = precision_auto.resolve("torch", source, device="cpu", threads=1)
    assert first.psnr_db is not None and first.omega_diff is not None
    assert first.precision == ("bf16" if first.psnr_db >= 45 and first.omega_diff <= 1e-3 else "fp32")
    monkeypatch.setattr(precision_auto, "check_bf16", lambda *a: pytest.fail("checked twice"))
    assert precision_auto.resolve("torch", source, device="cpu", threads=1) == first
    (record,) = (precision_auto.cache_root() / "precision").glob(f"{source.model_id}-torch-*.json")  # its own
    assert json.loads(record.read_text())["precision"] == first.precision


def test_auto_on_a_gpu_backend_is_fp32(small_model):
    verdict = precision_auto.resolve("torch", ModelSource.resolve(small_model), device="cuda", threads=None)
    assert verdict.precision == "fp32" and "GPU" in verdict.why
