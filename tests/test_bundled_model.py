"""The bundled demo model: present, complete, the `demo` preset, within the size budget, documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tsf_trt.bundled import BUNDLED, resolve_model
from tsf_trt.model import PRESETS, load_model
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.source import ModelSource

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_model_loads_with_the_demo_config_and_both_stages():
    path = resolve_model(None)
    assert path == BUNDLED["demo"] == resolve_model("demo")
    model = load_model(path)  # checks the weights' SHA-256 against config.json
    assert model.config == PRESETS["demo"] and model.fusion is not None
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20


def test_model_card_states_how_it_was_made():
    card = (BUNDLED["demo"] / "MODEL_CARD.md").read_text()
    for needle in ("tsf-trt train seq2seq", "tsf-trt train tsf", "never seen a real MRI", "| tsf | 2500 |",
                   "Held-out quality", ModelSource.resolve("demo").model_id):
        assert needle in card, needle
    assert "(not measured)" not in card


def test_bundled_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["tsf_trt.bundled"]
    for f in BUNDLED["demo"].rglob("*"):
        if f.is_file():
            name = f.relative_to(BUNDLED["demo"].parent).as_posix()
            assert any(Path(name).match(p) for p in patterns), name


@pytest.fixture(scope="module")
def held_out_slab():
    """Nine central axial slices of a phantom no model was trained on, canonical (z, y, x)."""
    from tsf_trt.phantoms import make_subject

    ph = make_subject(123_456)
    return {k: np.ascontiguousarray(v.transpose(2, 1, 0)[73:82]) for k, v in ph.volumes.items()}


def test_bundled_model_synthesises_a_held_out_phantom(held_out_slab):
    """Trained, not a placeholder: T2 from T1 + T1Gd + FLAIR is far better than the same network
    untrained, and using all three inputs beats using T1 alone (the paper's first finding)."""
    from tsf_trt import metrics
    from tsf_trt.model import TSFSeq2Seq
    from tsf_trt.synthesis.pipeline import Synthesizer
    from tsf_trt.synthesis.preprocess import normalize

    truth = normalize(held_out_slab["t2"])
    trained = Synthesizer(BUNDLED["demo"], RunOptions(backend="torch"))
    untrained = Synthesizer(TSFSeq2Seq(PRESETS["demo"], with_fusion=True).eval(), RunOptions(backend="torch"))

    def score(synth, names):
        r = synth.run_canonical({n: held_out_slab[n] for n in names}, "t2", tsem=False)
        return metrics.psnr(r.image, truth, r.head_mask)

    three = score(trained, ("t1", "t1gd", "flair"))
    assert three > 20
    assert three > score(untrained, ("t1", "t1gd", "flair")) + 6
    assert three > score(trained, ("t1",))


def test_resolve_model_passes_paths_through(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(tmp_path)) == tmp_path


def test_synthesizer_takes_the_bundled_name():
    from tsf_trt.synthesis.pipeline import Synthesizer

    assert Synthesizer("demo", RunOptions(backend="torch")).backend.model_id == ModelSource.resolve("demo").model_id


def test_the_bundled_exports_caches_go_to_the_cache_root(tmp_path, monkeypatch):
    """The installed package is never written: a runtime's cache for the bundled export is under the
    cache root, an ordinary export's beside it (a module that finds the package from its own
    file must say where it sits: tsf_trt/machine/cache_dir.py)."""
    from tsf_trt.machine.cache_dir import cache_root, runtime_cache

    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path / "cache"))
    bundled = runtime_cache(BUNDLED["demo"] / "export", "ort")
    assert bundled is not None and cache_root() in bundled.parents
    assert runtime_cache(tmp_path / "export", "ort") == tmp_path / "export" / ".ort-cache"
