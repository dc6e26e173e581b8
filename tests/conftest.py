"""Shared fixtures: the golden tensors and the small reference model, from tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tsf_trt.model import PRESETS, TSFSeq2Seq, import_reference

DATA = Path(__file__).parent / "data"


#: Order that avoided a measured crash of the pytest process (SIGSEGV in a non-Python thread):
#: after tests/test_openvino_backend.py and the DataLoader-worker test of test_train_data, the
#: process died when a later child process exited (test_trainer's torchrun; test_doctor's
#: stand-in nvidia-smi). Cause not found (a plain OpenVINO + worker DataLoader + subprocess
#: script does not crash); so the worker tests run last and the trainer's first. On 3 Dec 2026
#: the process crashed in the worker test itself, after 720 tests: it now runs its DataLoader
#: workers in a fresh interpreter (test_train_data.py), and the full suite passes.
FIRST, LAST = ("test_trainer.py",), ("test_train_data.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: (item.path.name not in FIRST) + (item.path.name in LAST))  # stable otherwise
    """GPU tests skip cleanly unless the runtime each one uses sees a GPU: `gpu("trt")` tests
    need cuda-python to see one (TensorRT runs through it); other `gpu` tests run torch on
    CUDA and need torch.cuda.is_available() (the pinned torch is a CPU build, so a machine
    with a GPU and cuda-python may still have no torch CUDA)."""
    reasons: dict[str, str | None] = {}

    def reason(need: str) -> str | None:
        if need not in reasons:
            if need == "trt":
                from tsf_trt.engines.gpu import cuda_devices, has_cuda_python

                count, why = cuda_devices() if has_cuda_python() else (0, "cuda-python is not installed")
                reasons[need] = None if count > 0 else f"needs an NVIDIA GPU seen by cuda-python ({why})"
            else:
                reasons[need] = None if torch.cuda.is_available() else "needs a CUDA build of torch that sees a GPU"
        return reasons[need]

    for item in items:
        marker = item.get_closest_marker("gpu")
        why = reason(marker.args[0] if marker.args else "torch") if marker is not None else None
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def one_torch_thread():
    """One torch thread for tiny volumes: on a busy machine OpenMP's spinning threads make
    them up to 100x slower. Restored afterwards for the other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "small_cases.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def small_model() -> TSFSeq2Seq:
    torch.set_num_threads(2)
    return import_reference(DATA / "small_seq2seq.pt", DATA / "small_tsf.pt", PRESETS["small"])


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, small_model) -> Path:
    from tsf_trt.model import save_model

    return save_model(small_model, tmp_path_factory.mktemp("models") / "small")


from tests.sample_subject import AFFINE_LPS, make_head  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's ~/.cache/tsf-trt."""
    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def small_export_dir(tmp_path_factory, small_model) -> Path:
    from tsf_trt.export.onnx_export import export_model

    directory = tmp_path_factory.mktemp("exports") / "small"
    export_model(small_model, directory, model_id="small-reference")
    return directory


def problem_lines(stderr: str) -> list[str]:
    """stderr without the INFO lines of the log (tsf_trt.console: one timestamped line per step
    when stderr is not a terminal): what is left is every warning and error."""
    import re

    info = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO ")
    return [line for line in stderr.splitlines() if line.strip() and not info.match(line)]
