"""The authors' published YAML configs, read as published, map exactly to ModelConfig.

The three texts (tests/helpers.py, "the authors' published configs") are copied byte for byte
from github.com/fiy2W/mri_seq2seq at commit 0414c07, the commit tests/data was generated from.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import DATA, SEQ2SEQ_MISSING_YAML, TSF_YAML, VQ_YAML, paper_keys, small_yaml
from tsf_trt.cli import app
from tsf_trt.errors import InputError, TsfError
from tsf_trt.model import PRESETS, ModelConfig, TSFSeq2Seq, resolve_config
from tsf_trt.model.checkpoint import SEQ2SEQ_KEYS, TSF_KEYS, rename_keys
from tsf_trt.model.reference_config import read_config_file, training_crop

runner = CliRunner()


def write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_published_configs_are_the_paper_config(tmp_path):
    assert resolve_config(write(tmp_path, SEQ2SEQ_MISSING_YAML, "s.yaml")) == PRESETS["paper"]
    assert resolve_config(write(tmp_path, TSF_YAML, "t.yaml")) == PRESETS["paper"]
    assert resolve_config(write(tmp_path, TSF_YAML, "t.yml")) == PRESETS["paper"]


def test_published_yaml_builds_every_tensor_of_the_published_checkpoints(tmp_path):
    """Shapes of tests/data/checkpoint_keys_paper.txt (made with these two files by the authors' code)."""
    with torch.device("meta"):
        model = TSFSeq2Seq(resolve_config(write(tmp_path, TSF_YAML)))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    keys, mapped = paper_keys(), {}
    for kind, table in (("seq2seq", SEQ2SEQ_KEYS), ("tsf", TSF_KEYS)):
        renamed = rename_keys({k: torch.empty(0) for k in keys[kind]}, table, tmp_path)
        mapped.update(zip(renamed, keys[kind].values()))
    assert mapped == ours
    seq2seq_only = resolve_config(write(tmp_path, SEQ2SEQ_MISSING_YAML, "s.yaml"))
    with torch.device("meta"):
        s2s = TSFSeq2Seq(seq2seq_only, with_fusion=False)
    assert {k: tuple(v.shape) for k, v in s2s.state_dict().items()} == \
        {k: v for k, v in ours.items() if not k.startswith("fusion.")}


def test_small_yaml_and_small_json_agree(tmp_path):
    assert resolve_config(write(tmp_path, small_yaml())) == PRESETS["small"]
    assert resolve_config(DATA / "small_config.json") == PRESETS["small"]
    # JSON text is YAML too: the authors' keys in a .json or a .yaml file give the same config
    assert resolve_config(write(tmp_path, (DATA / "small_config.json").read_text(), "c.yaml")) == PRESETS["small"]


def test_pyyaml_reads_their_files_as_their_scripts_do(tmp_path):
    data = read_config_file(write(tmp_path, TSF_YAML))
    assert data["TSF_seq2seq"]["norm"] == "None"       # a string, which TSF_seq2seq compares with 'None'
    assert data["train"]["lr"] == "1e-4"                # YAML 1.1: no dot, no float (they np.float32() it)
    assert data["seq2seq"]["pretrain"].endswith("ckpt_best.pth")


def test_keys_that_do_not_size_the_network_are_ignored(tmp_path):
    text = (TSF_YAML.replace("/root/to/brats/image", "/elsewhere").replace("epochs: 500", "epochs: 3")
            .replace("pretrain: /path/to/pretrain/seq2seq/ckpt_best.pth", "pretrain: other.pth\n  extra: 7")
            .replace("crop_size: [1, 192, 192]", "crop_size: [1, 96, 96]") + "\nsomething_else: {a: 1}\n")
    assert resolve_config(write(tmp_path, text)) == PRESETS["paper"]
    no_train = TSF_YAML[: TSF_YAML.index("train:\n  epochs")]
    assert resolve_config(write(tmp_path, no_train, "n.yaml")) == PRESETS["paper"]


@pytest.mark.parametrize("old, new, field, value", [
    ("c_s: 64 ", "c_s: 32 ", "style_dim", 32),
    ("c_w: 16 ", "c_w: 12 ", "decoder_weight_dim", 12),
    ("c_enc: [64, 128, 256]", "c_enc: [64, 128, 512]", "enc_channels", (64, 128, 512)),
    ("k_enc: [7, 3, 3]", "k_enc: [5, 3, 3]", "enc_kernels", (5, 3, 3)),
    ("s_enc: [1, 2, 2]", "s_enc: [1, 2, 1]", "enc_strides", (1, 2, 1)),
    ("nres_enc: 6", "nres_enc: 4", "enc_res_blocks", 4),
    ("c_dec: [128, 64, 3]", "c_dec: [96, 64, 3]", "dec_channels", (96, 64, 3)),
    ("k_dec: [3, 3, 7]", "k_dec: [3, 5, 7]", "dec_kernels", (3, 5, 7)),
    ("nres_dec: 6", "nres_dec: 2", "dec_res_blocks", 2),
    ("norm: InstanceNorm", "norm: null", "norm", "none"),
    ("c_w: 4", "c_w: 6", "fusion_weight_dim", 6),
    ("k_enc: [3] ", "k_enc: [5] ", "fusion_kernels", (5,)),
    ("norm: None ", "norm: InstanceNorm ", "fusion_norm", "instance"),
])
def test_every_sizing_key_reaches_its_field(tmp_path, old, new, field, value):
    text = TSF_YAML.replace(old, new, 1)
    if field == "enc_channels":  # c_lstm and the TSF width follow the last encoder width
        text = text.replace("c_lstm: 256", "c_lstm: 512").replace("c_enc: [256]", "c_enc: [512]")
    assert text != TSF_YAML
    assert getattr(resolve_config(write(tmp_path, text)), field) == value


@pytest.mark.parametrize("old, new, needles", [
    ("norm: InstanceNorm", "norm: BatchNorm", ["seq2seq.norm", "BatchNorm"]),
    ("  norm: InstanceNorm      # normalization\n", "", ["missing key", "seq2seq.norm"]),
    ("  norm: None              # normalization\n", "", ["missing key", "TSF_seq2seq.norm"]),
    ("c_enc: [64, 128, 256]", "c_enc: 256", ["seq2seq.c_enc", "list of integers"]),
    ("nres_dec: 6", "nres_dec: six", ["seq2seq.nres_dec", "integer"]),
    ("nres_dec: 6", "nres_dec: 6.0", ["seq2seq.nres_dec", "integer"]),
    ("c_lstm: 256", "c_lstm: 128", ["c_lstm must equal c_enc[-1]"]),
    ("ndims: 2", "ndims: 3", ["ndims: 2"]),
    ("s_dec: [1, 1, 1]", "s_dec: [2, 1, 1]", ["seq2seq.s_dec"]),
    ("s_enc: [1] ", "s_enc: [2] ", ["TSF_seq2seq.s_enc"]),
    ("c_s_source: 4", "c_s_source: 3", ["c_s_source"]),
    ("  k_dec: [3, 3, 7]        # ksize for decoder\n", "", ["missing key", "seq2seq.k_dec"]),
    ("c_enc: [256] ", "c_enc: [128] ", ["last fusion layer"]),
])
def test_sizes_tsf_trt_cannot_build_are_one_line_errors(tmp_path, old, new, needles):
    path = write(tmp_path, TSF_YAML.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        resolve_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_the_vq_config_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match="VQ-Seq2Seq"):
        resolve_config(write(tmp_path, VQ_YAML))


@pytest.mark.parametrize("text, needle", [
    ("seq2seq:\n  c_enc: [1, 2\n", "line 3, column 1"),
    ("- a\n- b\n", "expected a mapping"),
    ("", "expected a mapping"),
    ("data: {}\ntrain: {}\n", "no 'seq2seq' section"),
    ("seq2seq: 3\n", "'seq2seq' must be a mapping"),
])
def test_unreadable_files_name_the_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        resolve_config(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_our_own_format_as_yaml_and_bad_values(tmp_path):
    cfg = PRESETS["demo"]
    lines = "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.to_dict().items())
    assert resolve_config(write(tmp_path, lines)) == cfg
    with pytest.raises(InputError, match="invalid model config"):
        resolve_config(write(tmp_path, "enc_channels: 5\n", "bad.yaml"))
    with pytest.raises(TsfError, match="not a preset"):
        resolve_config(tmp_path / "missing.yaml")
    assert ModelConfig.from_reference(read_config_file(write(tmp_path, TSF_YAML))) == PRESETS["paper"]


def test_training_crop_is_read_not_guessed(tmp_path):
    for text in (SEQ2SEQ_MISSING_YAML, TSF_YAML, VQ_YAML):
        assert training_crop(read_config_file(write(tmp_path, text))) == (192, 192)
    assert training_crop({"seq2seq": {}}) is None
    assert training_crop({"train": {"crop_size": [1, 96, 128]}}) == (96, 128)
    with pytest.raises(TsfError, match="crop_size"):
        training_crop({"train": {"crop_size": [96, 96]}})


def test_import_reference_takes_a_yaml(tmp_path):
    ok = runner.invoke(app, ["import-reference", "--seq2seq", str(DATA / "small_seq2seq.pt"), "--tsf",
                             str(DATA / "small_tsf.pt"), "--config", str(write(tmp_path, small_yaml())),
                             "-o", str(tmp_path / "m")])
    assert ok.exit_code == 0, ok.output
    assert "TSF-Seq2Seq" in ok.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"] == PRESETS["small"].to_dict()


def test_a_yaml_of_other_sizes_than_the_checkpoint_is_a_clear_error(tmp_path):
    paper = write(tmp_path, SEQ2SEQ_MISSING_YAML, "seq2seq_brats_2d_missing.yaml")
    result = runner.invoke(app, ["import-reference", "--seq2seq", str(DATA / "small_seq2seq.pt"),
                                 "--config", str(paper), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "small_seq2seq.pt" in lines[0] and "do not match the model config" in lines[0]
    assert not (tmp_path / "m").exists()
    bad = runner.invoke(app, ["import-reference", "--seq2seq", str(DATA / "small_seq2seq.pt"),
                              "--config", str(write(tmp_path, VQ_YAML, "vq.yaml")), "-o", str(tmp_path / "m")])
    assert bad.exit_code == 1 and "vq.yaml" in bad.stderr and "VQ-Seq2Seq" in bad.stderr
