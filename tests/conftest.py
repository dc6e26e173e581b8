"""Shared fixtures: the golden tensors and the small reference model, from tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tsf_trt.model import PRESETS, TSFSeq2Seq, import_reference

DATA = Path(__file__).parent / "data"


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly on machines without an NVIDIA GPU (seen by cuda-python or torch:
    the pinned torch is a CPU build, so torch alone never sees one)."""
    from tsf_trt.engines.gpu import device_count

    if device_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
