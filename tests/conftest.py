"""Shared fixtures: the golden tensors, the small reference model, its directory and export.

Helpers that are not fixtures are in tests/helpers.py. torch is imported inside the fixtures
that need it, never at import: the lean-install tests (tests/test_lean_install.py) stand for an
install without torch, and `python -c "import tests.conftest"` must not load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.helpers import DATA, write_pair

if TYPE_CHECKING:
    from tsf_trt.model import TSFSeq2Seq


#: Order that avoided a measured crash of the pytest process (SIGSEGV in a non-Python thread):
#: after tests/test_openvino_backend.py and the DataLoader-worker test of test_train_data, the
#: process died when a later child process exited (test_trainer's torchrun; test_doctor's
#: stand-in nvidia-smi). Cause not found (a plain OpenVINO + worker DataLoader + subprocess
#: script does not crash); so the worker tests run last and the trainer's first. On 3 Dec 2026
#: the process crashed in the worker test itself, after 720 tests: it now runs its DataLoader
#: workers in a fresh interpreter (test_train_data.py), and the full suite passes.
FIRST, LAST = ("test_trainer.py",), ("test_train_data.py",)


def pytest_collection_modifyitems(config, items):
    """Order the files (FIRST, LAST above), and skip GPU tests cleanly unless the runtime each
    one uses sees a GPU: `gpu("trt")` tests need cuda-python to see one (TensorRT runs through
    it); other `gpu` tests run torch on CUDA and need torch.cuda.is_available() (the pinned
    torch is a CPU build, so a machine with a GPU and cuda-python may still have no torch CUDA)."""
    items.sort(key=lambda item: (item.path.name not in FIRST) + (item.path.name in LAST))  # stable otherwise
    reasons: dict[str, str | None] = {}

    def reason(need: str) -> str | None:
        if need not in reasons:
            if need == "trt":
                from tsf_trt.engines.gpu import cuda_devices, has_cuda_python

                count, why = cuda_devices() if has_cuda_python() else (0, "cuda-python is not installed")
                reasons[need] = None if count > 0 else f"needs an NVIDIA GPU seen by cuda-python ({why})"
            else:
                import torch

                reasons[need] = None if torch.cuda.is_available() else "needs a CUDA build of torch that sees a GPU"
        return reasons[need]

    for item in items:
        marker = item.get_closest_marker("gpu")
        why = reason(marker.args[0] if marker.args else "torch") if marker is not None else None
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's ~/.cache/tsf-trt."""
    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_torch_thread():
    """One torch thread for tiny volumes: on a busy machine OpenMP's spinning threads make
    them up to 100x slower. Restored afterwards for the other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """The authors' golden tensors (tests/data/small_cases.npz)."""
    with np.load(DATA / "small_cases.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def small_model() -> TSFSeq2Seq:
    """The authors' small checkpoints, imported once for the session (tests must not change it)."""
    import torch

    from tsf_trt.model import PRESETS, import_reference

    torch.set_num_threads(2)
    return import_reference(DATA / "small_seq2seq.pt", DATA / "small_tsf.pt", PRESETS["small"])


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, small_model) -> Path:
    """small_model saved as a model directory, once for the session (tests copy it to change it)."""
    from tsf_trt.model import save_model

    return save_model(small_model, tmp_path_factory.mktemp("models") / "small")


@pytest.fixture(scope="session")
def small_export_dir(tmp_path_factory, small_model) -> Path:
    """small_model exported to ONNX, once for the session (tests copy it to change it)."""
    from tsf_trt.export.onnx_export import export_model

    directory = tmp_path_factory.mktemp("exports") / "small"
    export_model(small_model, directory, model_id="small-reference")
    return directory


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model (or doing a command's heavy work) fails the test: what is checked before
    it is checked before any model loads."""
    import tsf_trt.bench.runner
    import tsf_trt.bench.suite
    import tsf_trt.model
    import tsf_trt.phantoms.generator
    import tsf_trt.synthesis.pipeline
    import tsf_trt.synthesis.source
    import tsf_trt.train.bundle
    import tsf_trt.train.trainer

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded (or the heavy work started) before the checks")

    monkeypatch.setattr(tsf_trt.synthesis.source.ModelSource, "module", loaded)
    monkeypatch.setattr(tsf_trt.synthesis.pipeline, "create_backend", loaded)  # what Synthesizer loads with
    monkeypatch.setattr(tsf_trt.model, "import_reference", loaded)
    monkeypatch.setattr(tsf_trt.train.bundle, "load_model", loaded)
    monkeypatch.setattr(tsf_trt.train.trainer, "_build_model", loaded)
    monkeypatch.setattr(tsf_trt.bench.runner.BenchRun, "__init__", loaded)
    monkeypatch.setattr(tsf_trt.bench.suite, "run_suite", loaded)
    monkeypatch.setattr(tsf_trt.phantoms.generator, "make_subject", loaded)


@pytest.fixture
def case(tmp_path) -> tuple[Path, Path, Path, Path]:
    """(tmp/in, tmp/out, T1, FLAIR): two good inputs (sub_t1, sub_flair) in tmp/in and an empty
    output folder tmp/out."""
    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    t1, flair = write_pair(inp)
    return inp, out, t1, flair
