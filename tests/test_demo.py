"""`tsf-trt demo`: a held-out phantom, two syntheses, honest scores, figures, all-or-nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import assert_clean_error
from tsf_trt import metrics
from tsf_trt.cli import app
from tsf_trt.files.volume import load_volume
from tsf_trt.runs.demo import DEMO_SEED, TASKS
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE, normalize

runner = CliRunner()
SHAPE = ("48", "48", "24")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, small_model_dir):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = runner.invoke(app, ["demo", "-o", str(out), "--model", str(small_model_dir), "--backend", "torch",
                                 "--shape", *SHAPE])
    assert result.exit_code == 0, result.output
    return out, result


def test_demo_writes_subject_syntheses_figures_and_scores(demo_run):
    out, result = demo_run
    report = json.loads((out / "demo.json").read_text())
    assert report["seed"] == DEMO_SEED and len(report["tasks"]) == len(TASKS)
    subject = out / report["subject"]
    assert sorted(p.name.split("_")[-1] for p in subject.iterdir()) == [
        "flair.nii.gz", "seg.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]
    for task in report["tasks"]:
        for rel in task["outputs"]:
            assert (out / rel).is_file()
        png = (out / task["figure"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert abs(sum(task["weights"].values()) - 1) < 1e-5
        assert task["task"] in result.stdout
    assert [len(t["weights"]) for t in report["tasks"]] == [len(s) for s in TASKS]


def test_demo_scores_agree_with_an_independent_recomputation(demo_run):
    out, _ = demo_run
    report = json.loads((out / "demo.json").read_text())
    subject = out / report["subject"]
    truth = normalize(load_volume(next(subject.glob("*_t2.nii.gz"))).data)
    for task in report["tasks"]:
        synth_file = next(out / rel for rel in task["outputs"] if rel.endswith("_synth.nii.gz"))
        image = load_volume(synth_file).data / (OUTPUT_SCALE / 2) - 1
        names = {"t1": "t1", "t1gd": "t1ce", "flair": "flair"}
        head = np.logical_or.reduce([load_volume(next(subject.glob(f"*_{names[s]}.nii.gz"))).data > 0
                                     for s in task["weights"]])
        assert metrics.psnr(image, truth, head) == pytest.approx(task["psnr"], abs=1e-3)
        assert metrics.ssim(image, truth, head) == pytest.approx(task["ssim"], abs=1e-4)


def test_demo_refuses_to_overwrite_then_overwrites(demo_run, small_model_dir):
    out, _ = demo_run
    before = (out / "demo.json").stat().st_mtime_ns
    first = json.loads((out / "demo.json").read_text())["tasks"]
    args = ["demo", "-o", str(out), "--model", str(small_model_dir), "--backend", "torch", "--shape", *SHAPE]
    assert_clean_error(runner.invoke(app, args), "exists", "--overwrite")
    assert (out / "demo.json").stat().st_mtime_ns == before
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    second = json.loads((out / "demo.json").read_text())["tasks"]
    assert [t["psnr"] for t in second] == [t["psnr"] for t in first]  # same seed, same subject, same scores
