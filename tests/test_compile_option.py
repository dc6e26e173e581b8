"""`--compile` (torch.compile, the torch backend): checked before any work, recorded in the report,
and a bench row of its own. torch.compile's default backend (inductor) took 89 s to compile the
small config at 16x16 on one CPU thread here, so the runs below trace the real stages with
TorchDynamo and run the traced graphs eagerly (backend="eager", ~2 s); the inductor run is opt-in
(TSF_TRT_INDUCTOR=1)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import assert_clean_error, cli, files_under, run_stages
from tsf_trt.backends.torch_backend import TorchBackend
from tsf_trt.bench import variants
from tsf_trt.bench.variants import Variant, check_compile, create_variant, expand
from tsf_trt.errors import TsfError
from tsf_trt.synthesis.options import RunOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dynamo_eager(monkeypatch):
    """torch.compile as TorchDynamo tracing with the eager backend: the real graph capture, no codegen."""
    real = torch.compile
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real(fn, backend="eager", **kw))
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["auto", "ort", "openvino", "trt", "reference"])
def test_compile_is_for_the_torch_backend_only(backend):
    with pytest.raises(TsfError, match=f"--compile .* is for --backend torch, not --backend {backend}") as caught:
        RunOptions(backend, compile=True)
    assert "\n" not in str(caught.value)
    assert ("name --backend torch" in str(caught.value)) == (backend == "auto")
    assert RunOptions("torch", compile=True).compile and not RunOptions("torch").compile


def test_infer_refuses_compile_before_any_work(case, small_model_dir):
    inp, out, t1, flair = case
    for inputs, extra, needle in (([t1, flair], ["--backend", "ort"], "not --backend ort"),
                                  ([t1, flair], [], "not --backend auto")):
        result = cli("infer", "--inputs", *inputs, "--target", "t2", "--model", small_model_dir, "-o", out,
                     "--compile", *extra)
        assert_clean_error(result, "--compile", needle)
    assert files_under(out) == []
    result = cli("evaluate", "--data", inp, "--model", small_model_dir, "-o", out / "report", "--compile",
                 "--backend", "ort")
    assert_clean_error(result, "--compile", "not --backend ort")


def test_infer_compiled_runs_and_says_so(case, small_model_dir, dynamo_eager):
    inp, out, t1, flair = case
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--backend", "torch", "--device", "cpu", "--precision", "fp32", "--compile")
    assert result.exit_code == 0, result.output
    assert len(dynamo_eager) == 3  # encoder, decoder, fusion
    report = json.loads((out / "sub_t2.json").read_text())
    assert "torch.compile" in json.dumps(report)
    plain = out / "plain"
    assert cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", plain,
               "--backend", "torch", "--device", "cpu", "--precision", "fp32").exit_code == 0
    assert "torch.compile" not in (plain / "sub_t2.json").read_text()


def test_synthesizer_builds_the_compiled_backend(small_model_dir, monkeypatch):
    from tsf_trt.synthesis.pipeline import Synthesizer

    assert not Synthesizer(small_model_dir, RunOptions("torch", "cpu", "fp32")).backend.compiled
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    backend = Synthesizer(small_model_dir, RunOptions("torch", "cpu", "fp32", compile=True)).backend
    assert isinstance(backend, TorchBackend) and backend.compiled and backend.precision == "fp32"


def test_dynamo_traces_every_stage_and_matches_eager(small_model, dynamo_eager):
    """The stages as torch.compile sees them: traced without error, the same numbers."""
    plain = run_stages(TorchBackend(small_model), n=2)
    compiled = TorchBackend(small_model, compile=True)
    got = run_stages(compiled, n=2)
    assert len(dynamo_eager) == 3
    for a, b in zip(got[:2], plain[:2]):
        assert torch.allclose(a, b, atol=1e-5)
    assert (got[2] == plain[2]).all()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TSF_TRT_INDUCTOR") != "1", reason="inductor compiles for ~90 s on a CPU: "
                    "set TSF_TRT_INDUCTOR=1")
def test_inductor_compiled_stages_match_eager(small_model):
    torch._dynamo.reset()
    plain, got = run_stages(TorchBackend(small_model), n=2), run_stages(TorchBackend(small_model, compile=True), n=2)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got[:2], plain[:2]))


# -- bench ------------------------------------------------------------------------------------------
def test_bench_variants_get_a_compiled_twin_of_each_torch_row():
    rows, skipped = expand(["torch", "ort", "openvino"], ["fp32", "bf16"], ["baked"], compile=True)
    names = [v.name for v in rows]
    assert names == ["torch", "torch-compile", "torch-bf16", "torch-bf16-compile", "ort", "openvino",
                     "openvino-bf16"]
    assert [v.name for v in expand(["torch"], ["fp32"], ["baked"])[0]] == ["torch"]  # off by default
    assert Variant("torch").is_baseline and not Variant("torch", compile=True).is_baseline
    assert skipped == []  # ort takes fp32: only a backend that takes none of the precisions is skipped
    check_compile(["ort", "torch"])
    with pytest.raises(TsfError, match="add torch to --backend "):
        check_compile(["ort", "openvino"])


def test_create_variant_passes_compile(monkeypatch):
    seen = {}
    monkeypatch.setattr(variants, "create_backend", lambda model, options, **k: seen.update(options=options) or "backend")
    assert create_variant(Variant("torch", compile=True), "model", device="cpu", threads=1) == "backend"
    assert seen["options"].compile is True
    create_variant(Variant("ort"), "model", device="cpu", threads=1)
    assert seen["options"].compile is False
