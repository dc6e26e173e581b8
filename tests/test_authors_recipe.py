"""docs/models.md, "The authors' weights, end to end", run as written: the authors' Seq2Seq weights -> one-to-one
synthesis -> `train tsf --init` on a BraTS-style folder -> TSEM and ω.

The authors publish Seq2Seq (Generator) weights only; tests/data/small_seq2seq.pt is a
Generator state_dict in exactly their layout (tests/data, README: generated with their
code), and the config is given as they write it, in YAML. Every step is a CLI run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers import DATA, small_yaml
from tsf_trt.cli import app
from tsf_trt.model import PRESETS, import_reference, save_model

runner = CliRunner()
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def test_authors_seq2seq_weights_to_tsem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name], clock = time.perf_counter() - clock, time.perf_counter()

    # (a) import the Seq2Seq weights with the config in the authors' YAML
    Path("seq2seq_small.yaml").write_text(small_yaml())
    text = cli("import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--config", "seq2seq_small.yaml",
               "-o", "seq2seq_model")
    assert "Seq2Seq-only" in text
    meta = json.loads(Path("seq2seq_model/config.json").read_text())
    assert meta["stages"] == ["seq2seq"]
    assert meta["training_crop"] == [192, 192]  # the YAML's train.crop_size, what --frame 192x192 matches
    same = save_model(import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"]), tmp_path / "check")
    assert meta["weights_sha256"] == json.loads((same / "config.json").read_text())["weights_sha256"]
    lap("import")

    # (c) a tiny BraTS-style folder (made before (b), which needs an input volume)
    cli("phantom", "-o", "brats", "--subjects", "3", "--shape", "32", "32", "16")
    subject = sorted(Path("brats").iterdir())[-1]
    t1, flair = subject / f"{subject.name}_t1.nii.gz", subject / f"{subject.name}_flair.nii.gz"
    lap("phantom")

    # (b) one-to-one synthesis with the Seq2Seq-only model: no TSEM, ω = 1 for the one input
    text = cli("infer", "--inputs", t1, "--target", "t2", "--model", "seq2seq_model", "--backend", "torch",
               "--output", "out_seq2seq")
    assert "no tsem" in text.lower()
    report = json.loads(Path(f"out_seq2seq/{subject.name}_t2.json").read_text())
    assert report["weights"] == {"t1": 1.0} and report["outputs"]["tsem"] is None
    assert not Path(f"out_seq2seq/{subject.name}_t2_tsem.nii.gz").exists()
    synth = np.asarray(nib.load(f"out_seq2seq/{subject.name}_t2_synth.nii.gz").dataobj)
    assert synth.shape == (32, 32, 16) and np.isfinite(synth).all() and synth.std() > 0
    lap("infer seq2seq")

    # (d) stage 2 from the imported model: a few steps on 16x16 crops
    cli("train", "tsf", "--init", "seq2seq_model", "--data", "brats", "-o", "tsf_run", "--steps", "2",
        "--batch-size", "2", "--crop", "16", "--checkpoint-every", "2", "--val-every", "0", "--workers", "0",
        "--device", "cpu")
    trained = Path("tsf_run/step_000002")
    trained_meta = json.loads((trained / "config.json").read_text())
    assert trained_meta["stages"] == ["seq2seq", "tsf"] and trained_meta["training_crop"] == [16, 16]
    before, after = weights(Path("seq2seq_model")), weights(trained)
    assert all(k in after and (after[k] == v).all() for k, v in before.items() if k.startswith("encoder."))
    changed = [k for k, v in before.items() if k.startswith("decoder.") and not (after[k] == v).all()]
    assert changed, "the decoder side is fine-tuned in stage 2"
    assert any(k.startswith("fusion.") for k in after)
    lap("train tsf")

    # (e) multi-input synthesis with the trained TSF model: TSEM and ω
    cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", trained, "--backend", "torch",
        "--output", "out_tsf")
    report = json.loads(Path(f"out_tsf/{subject.name}_t2.json").read_text())
    assert set(report["weights"]) == {"t1", "flair"}
    assert abs(sum(report["weights"].values()) - 1) < 1e-5 and min(report["weights"].values()) > 0
    tsem = np.asarray(nib.load(f"out_tsf/{subject.name}_t2_tsem.nii.gz").dataobj)
    assert tsem.shape == (32, 32, 16) and np.isfinite(tsem).all() and tsem.max() > 0
    lap("infer tsf")
    print("recipe timings (s):", {k: round(v, 2) for k, v in timings.items()})
