"""Model directories and the import of the authors' checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import DATA, paper_keys
from tsf_trt.errors import ModelError, TsfError
from tsf_trt.model import PRESETS, ModelConfig, TSFSeq2Seq, import_reference, load_model, resolve_config, save_model
from tsf_trt.model.checkpoint import SEQ2SEQ_KEYS, TSF_KEYS, read_model_meta, rename_keys


def test_paper_config_has_every_reference_tensor_with_its_shape():
    keys = paper_keys()
    assert len(keys["seq2seq"]) == 134 and len(keys["tsf"]) == 23
    with torch.device("meta"):
        model = TSFSeq2Seq(PRESETS["paper"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {}
    for kind, table in (("seq2seq", SEQ2SEQ_KEYS), ("tsf", TSF_KEYS)):
        fake = {k: torch.empty(0) for k in keys[kind]}
        for ref_key, our_key in zip(keys[kind], rename_keys(fake, table, DATA)):
            mapped[our_key] = keys[kind][ref_key]
    assert mapped == ours
    n_s2s = sum(np.prod(s) for s in keys["seq2seq"].values())
    n_tsf = sum(np.prod(s) for s in keys["tsf"].values())
    assert (n_s2s, n_tsf) == (155_159_760, 9_472_744)


def test_small_preset_is_the_reference_small_config():
    assert resolve_config(DATA / "small_config.json") == PRESETS["small"]
    assert resolve_config("small") == PRESETS["small"]


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = PRESETS["paper"]
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(path) == cfg
    with pytest.raises(TsfError, match="unknown keys"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(TsfError, match="in_channels"):
        ModelConfig(dec_channels=(128, 64, 1))
    with pytest.raises(TsfError, match="not a preset"):
        resolve_config(tmp_path / "missing.json")


def test_npz_and_pt_imports_agree(small_model):
    from_npz = import_reference(DATA / "small_seq2seq.pt", DATA / "small_tsf.npz", PRESETS["small"])
    for (k, a), (k2, b) in zip(small_model.state_dict().items(), from_npz.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_save_and_load_round_trip(small_model, tmp_path):
    from tsf_trt.synthesis.source import ModelSource

    directory = save_model(small_model, tmp_path / "m", origin={"note": "test"})
    meta = read_model_meta(directory)
    assert meta["stages"] == ["seq2seq", "tsf"] and meta["config"] == PRESETS["small"].to_dict()
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(directory)
    assert ModelSource.resolve(directory).model_id == meta["weights_sha256"][:16] and not loaded.training
    for (k, a), (k2, b) in zip(small_model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(ModelError, match="exists"):
        save_model(small_model, directory)
    save_model(small_model, directory, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left


def test_seq2seq_only_model(tmp_path):
    model = import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"])
    assert not model.has_fusion
    loaded = load_model(save_model(model, tmp_path / "s2s"))
    assert loaded.fusion is None
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        result = loaded.synthesize({0: image}, 2)
        assert result.tsem is None and result.weights.tolist() == [1, 0, 0, 0]
        with pytest.raises(ValueError, match="exactly one"):
            loaded.synthesize({0: image, 1: image}, 2)


def test_import_errors(tmp_path):
    with pytest.raises(ModelError, match="TSF checkpoint"):
        import_reference(DATA / "small_tsf.pt", None, PRESETS["small"])
    with pytest.raises(ModelError, match="Seq2Seq"):
        import_reference(DATA / "small_seq2seq.pt", DATA / "small_seq2seq.pt", PRESETS["small"])
    with pytest.raises(ModelError, match="another shape"):
        import_reference(DATA / "small_seq2seq.pt", DATA / "small_tsf.pt", PRESETS["paper"])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth: not a plain state_dict checkpoint"):
        import_reference(junk, None, PRESETS["small"])
    with pytest.raises(ModelError, match="does not exist"):
        import_reference(tmp_path / "nope.pth", None, PRESETS["small"])


def test_load_errors(small_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small_model_dir, broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["format"] = "something-else"
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="format tag"):
        load_model(broken)
    meta["format"] = "tsf-trt-model"
    meta["config"]["dec_res_blocks"] = 3
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="missing tensors"):
        load_model(broken)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nothing")
