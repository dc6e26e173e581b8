"""ModelSource: what a model argument is, decided once."""

from __future__ import annotations

import pickle

import pytest

from tsf_trt.errors import ModelError, TsfError
from tsf_trt.model import PRESETS
from tsf_trt.synthesis.source import ModelSource


def test_model_directory(small_model_dir):
    source = ModelSource.resolve(small_model_dir)
    assert (source.kind, source.path, source.has_fusion) == ("model", small_model_dir, True)
    assert source.config == PRESETS["small"] and len(source.model_id) == 16
    assert source.module() is source.module()  # loaded once
    assert ModelSource.resolve(source) is source


def test_export_directory(small_export_dir, small_model_dir):
    source = ModelSource.resolve(small_export_dir)
    assert (source.kind, source.export_dir(), source.config) == ("export", small_export_dir, PRESETS["small"])
    with pytest.raises(ModelError, match="export directory"):
        source.module()


def test_bundled_model_by_default():
    for spec in (None, "demo"):
        source = ModelSource.resolve(spec)
        assert source.kind == "model" and source.path.name == "demo" and source.model_id


def test_live_module_stays_in_process(small_model):
    source = ModelSource.resolve(small_model)
    assert source.kind == "module" and source.module() is small_model and source.path is None
    with pytest.raises(TsfError, match="worker processes"):
        pickle.dumps(source)


def test_crosses_to_workers_without_its_weights(small_model_dir):
    source = ModelSource.resolve(small_model_dir)
    source.module()
    again = pickle.loads(pickle.dumps(source))
    assert again == source and again._loaded == {}


def test_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ModelSource.resolve(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        ModelSource.resolve(tmp_path / "empty")
