"""Two-stage trainer: stage 1 and 2 on phantoms with a tiny model, resume, losses, metrics, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tsf_trt.cli import app
from tsf_trt.model import ModelConfig, load_model
from tsf_trt.model.checkpoint import read_model_meta
from tsf_trt.phantoms import write_subjects
from tsf_trt.train.losses import SynthesisLoss, VGG19Features, load_vgg19, psnr, ssim
from tsf_trt.train.trainer import TrainConfig, train

TINY = ModelConfig(enc_channels=(4, 8, 16), dec_channels=(8, 4, 3), enc_res_blocks=1, dec_res_blocks=1,
                   lstm_layers=1, fusion_channels=(16,), decoder_weight_dim=2, attention_reduction=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_subjects(root / "data", 4, seed=0, shape=(32, 32, 16))
    (root / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    return root


def config(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(stage="seq2seq", data=root / "data", out=out, model_config=str(root / "tiny.json"), steps=20,
                batch_size=2, crop=32, workers=0, lr=1e-3, checkpoint_every=100, val_every=0, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def stage1(data) -> Path:
    torch.set_num_threads(2)
    out = data / "s1"
    final = train(config(data, out, val_every=10))
    assert final == out / "step_000020"
    return out


def records(out: Path, kind: str) -> list[dict]:
    return [r for r in json.loads((out / "log.json").read_text())["records"] if r["kind"] == kind]


def test_stage1_writes_a_loadable_model_and_learns(stage1):
    model = load_model(stage1 / "step_000020")
    assert not model.has_fusion and model.config == TINY
    assert read_model_meta(stage1 / "step_000020")["origin"]["trained"]["stage"] == "seq2seq"
    losses = [r["loss"] for r in records(stage1, "train")]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    val = records(stage1, "val")
    assert [r["step"] for r in val] == [10, 20] and all(np.isfinite(r["psnr"]) for r in val)
    assert (stage1 / "log.csv").read_text().startswith("step,epoch,kind,loss")
    assert sorted(json.loads((stage1 / "split.json").read_text())["val"])  # a held-out subject


def test_perceptual_off_is_said_in_the_log(stage1):
    expected = "perceptual loss off: no --vgg-weights given"
    assert expected in (stage1 / "train.log").read_text()
    assert any(expected in m for m in json.loads((stage1 / "log.json").read_text())["messages"])
    assert all("per" not in r for r in records(stage1, "train"))


def test_stage2_freezes_the_encoder_and_trains_fusion_and_decoder(data, stage1):
    init = load_model(stage1 / "step_000020")
    final = train(config(data, data / "s2", stage="tsf", init=stage1 / "step_000020", steps=3,
                         model_config="paper"))  # stage 2 takes its sizes from --init
    tuned = load_model(final)
    assert tuned.has_fusion
    before, after = init.state_dict(), tuned.state_dict()
    for key, value in before.items():
        if key.startswith("encoder."):
            assert torch.equal(value, after[key]), key
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("decoder."))
    assert all(np.isfinite(r["loss"]) for r in records(data / "s2", "train"))


def test_resume_is_bit_compatible(data):
    one = train(config(data, data / "r1", steps=6, lr=1e-3))
    first = config(data, data / "r2", steps=4, lr=1e-3)
    train(first)
    resumed = train(config(data, data / "r2", steps=6, lr=1e-3, resume=True))
    a, b = load_model(one).state_dict(), load_model(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in records(data / "r2", "train")] == list(range(1, 7))


def test_refuses_to_overwrite_or_resume_nothing(data, stage1):
    from tsf_trt.errors import TsfError

    with pytest.raises(TsfError, match="--resume"):
        train(config(data, stage1))
    with pytest.raises(TsfError, match="nothing to resume"):
        train(config(data, data / "empty", resume=True))
    with pytest.raises(TsfError, match="--init"):
        config(data, data / "x", stage="tsf")


def test_vgg19_loads_torchvision_layout_and_gives_a_finite_loss(tmp_path, data):
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry it: ignored
    torch.save(state, tmp_path / "vgg19.pth")
    vgg = load_vgg19(tmp_path / "vgg19.pth")
    assert torch.equal(vgg.features[0].weight, state["features.0.weight"])
    x, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    loss, parts = SynthesisLoss(vgg)(x, y)
    assert torch.isfinite(loss) and parts["per"] > 0
    assert float(SynthesisLoss(vgg)(x, x)[0]) == 0.0
    train(config(data, tmp_path / "run", steps=2, vgg_weights=tmp_path / "vgg19.pth"))
    assert all(np.isfinite(r["per"]) for r in records(tmp_path / "run", "train"))
    assert "perceptual loss on" in (tmp_path / "run" / "train.log").read_text()
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    from tsf_trt.errors import InputError
    with pytest.raises(InputError, match="VGG19"):
        load_vgg19(tmp_path / "bad.pth")


def test_training_ssim_agrees_with_scikit_image():
    """The validation SSIM (torch, on the training device) is tsf_trt.metrics.ssim's map (scikit-image's,
    the maintained one) without its padded border: the same numbers there (train/losses.py)."""
    from tsf_trt import metrics

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 40, 48, generator=gen) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    ours = ssim(x, y)
    inside = np.zeros((40, 48), bool)
    inside[5:-5, 5:-5] = True  # the "valid" part of an 11-tap window's map
    for k in range(2):
        theirs = metrics.ssim(x[k].numpy(), y[k].numpy(), inside)
        # float32 against float64: within 1.1e-7 on 10 such images here; 1e-6 leaves 10x for other CPUs'
        # summation orders and still tells apart sample covariance (2e-6 off), a 9-tap window or σ 1
        # (5e-3) and the padded border (2e-2)
        assert float(ours[k]) == pytest.approx(theirs, abs=1e-6)


def test_ssim_and_psnr():
    torch.manual_seed(0)
    x = torch.rand(2, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (ssim(x, x + 0.3 * torch.randn_like(x)) < 0.9).all()
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 10 * np.log10(4 / 0.01), dtype=torch.float32))
    assert torch.isinf(psnr(x, x)).all()


def test_cli_help_and_user_errors(tmp_path):
    runner = CliRunner()
    for cmd in ("seq2seq", "tsf"):
        result = runner.invoke(app, ["train", cmd, "--help"])
        assert result.exit_code == 0 and "--vgg-weights" in result.output
    result = runner.invoke(app, ["train", "seq2seq", "--data", str(tmp_path / "none"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1


def test_bundle_command_ships_the_last_step_with_its_card(data, stage1, tmp_path):
    from tsf_trt.synthesis.source import ModelSource

    stage2 = train(config(data, data / "b2", stage="tsf", init=stage1 / "step_000020", steps=2)).parent
    (tmp_path / "quality.md").write_text("| task | PSNR |\n|---|---|\n| ->t2 | 20.0 |\n")
    args = ["train", "bundle", "--stage1", str(stage1), "--stage2", str(stage2), "--quality",
            str(tmp_path / "quality.md"), "--name", "tiny", "-o", str(tmp_path / "m")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bundled = ModelSource.resolve(tmp_path / "m")
    assert bundled.model_id == ModelSource.resolve(stage2 / "step_000002").model_id
    assert bundled.export_dir() == tmp_path / "m" / "export"  # its own export: runs without torch
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "tsf-trt train bundle --stage1 runs/s1 --stage2 runs/b2" in card and "| ->t2 | 20.0 |" in card
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.stderr and "Traceback" not in again.output


@pytest.mark.slow
def test_torchrun_two_cpu_processes(data):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = data / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "tsf_trt.train", "seq2seq",
                           "--data", str(data / "data"), "-o", str(out), "--config", str(data / "tiny.json"),
                           "--steps", "3", "--batch-size", "2", "--crop", "32", "--workers", "0",
                           "--val-every", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_000003"]
    assert load_model(out / "step_000003").config == TINY
    assert "2 process(es)" in (out / "train.log").read_text()
