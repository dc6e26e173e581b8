"""The one backend interface: checks made once in the base, for every runtime."""

from __future__ import annotations

import numpy as np
import pytest

from tsf_trt.errors import TsfError
from tsf_trt.synthesis.options import RunOptions


@pytest.fixture(params=["torch", "ort", "openvino"])
def backend(request, small_model_dir):
    from tsf_trt.synthesis.backend import create_backend

    return create_backend(small_model_dir, RunOptions(backend=request.param, threads=1, precision="fp32"))


def test_decode_takes_the_target_index(backend):
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    features = backend.encode(images)
    image, none = backend.decode(features, 2)
    assert backend.to_numpy(image).shape == (2, 3, 16, 16) and none is None
    assert np.array_equal(backend.to_numpy(image, 1), backend.to_numpy(image)[:, 1])  # the middle channel alone
    with pytest.raises(TsfError, match="not a sequence index"):
        backend.decode(features, 4)


def test_a_backend_is_a_context_manager_closed_once(backend):
    calls = []
    backend._release = lambda: calls.append(1)
    with backend as same:
        assert same is backend
    backend.close()
    assert calls == [1]
    with pytest.raises(TsfError, match="was closed"):
        backend.encode(np.zeros((1, 3, 16, 16), np.float32))


def test_a_seq2seq_only_model_cannot_fuse():
    from tests.helpers import DATA
    from tsf_trt.model import PRESETS, import_reference
    from tsf_trt.synthesis.backend import create_backend

    seq2seq_only = import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"])
    with create_backend(seq2seq_only, RunOptions(backend="torch", precision="fp32")) as backend:
        features = backend.encode(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(TsfError, match="no fusion stage"):
            backend.fuse({0: features}, np.zeros((1, 8), np.float32))
