"""An export directory's graphs are checked for the role manifest.json gives them.

Hash checks prove that each graph file is unmodified, not that it is the graph of its
role: swapped manifest entries (hashes move with them), an edited model_config or
model_id, a forged role, and exports from before graph metadata must each end in one
clean error line that names the file and says "export again" (tests/test_cli_errors.py's
contract), and the export cache must export such a directory again by itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from tests.helpers import SHAPE, assert_clean_error, cli, files_under, make_head, write_nifti
from tsf_trt.errors import ModelError
from tsf_trt.export.manifest import sha256
from tsf_trt.export.roles import CONFIG_KEY, MODEL_ID_KEY, OLD_EXPORT, ROLE_KEY, TARGET_KEY


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def subject(tmp_path) -> tuple[Path, Path]:
    """A T1 input and an empty output folder."""
    out = tmp_path / "out"
    out.mkdir()
    return write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0)), out


def copy_export(source: Path, dest: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A private copy of an export (no engines or ORT cache), its manifest edited by `edit`."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("engines", ".ort-cache"))
    if edit is not None:
        path = dest / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest, indent=2))
    return dest


def swap(a: str, b: str) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        graphs = manifest["graphs"]
        graphs[a], graphs[b] = graphs[b], graphs[a]
    return edit


def rewrite_graph(export: Path, role: str, change: Callable[[onnx.ModelProto], None], source: str | None = None) -> None:
    """Replace the graph of `role` by `source`'s graph (default: its own) changed by
    `change`, and update manifest.json to match, so that only the graph's content is wrong."""
    manifest_path = export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["graphs"][role]
    model = onnx.load(str(export / manifest["graphs"][source or role]["file"]))
    change(model)
    onnx.save(model, str(export / entry["file"]))
    if source:
        entry["inputs"], entry["outputs"] = manifest["graphs"][source]["inputs"], manifest["graphs"][source]["outputs"]
    entry["sha256"] = sha256(export / entry["file"])
    manifest_path.write_text(json.dumps(manifest, indent=2))


def strip_metadata(model: onnx.ModelProto) -> None:
    del model.metadata_props[:]


def infer(model: Path, subject, target: str = "t2"):
    t1, out = subject
    return cli("infer", "--inputs", t1, "--target", target, "--model", model, "-o", out)


# --- what the export writes ---------------------------------------------------------------


def test_every_graph_records_its_role(small_export_dir):
    from tsf_trt.export.roles import config_sha256
    from tsf_trt.model.config import ModelConfig

    manifest = json.loads((small_export_dir / "manifest.json").read_text())
    canonical = json.dumps(ModelConfig.from_dict(manifest["model_config"]).to_dict(), sort_keys=True,
                           separators=(",", ":"))
    for role, entry in manifest["graphs"].items():
        meta = {p.key: p.value for p in onnx.load(str(small_export_dir / entry["file"])).metadata_props}
        assert meta[ROLE_KEY] == role
        assert meta[MODEL_ID_KEY] == manifest["model_id"] == "small-reference"
        assert meta[CONFIG_KEY] == config_sha256(ModelConfig.from_dict(manifest["model_config"]))
        assert meta[CONFIG_KEY] == hashlib.sha256(canonical.encode()).hexdigest()
        assert meta.get(TARGET_KEY) == entry["target"] == (role[len("decoder_"):] if "_" in role else None)


# --- defect 7: encoder and decoder swapped --------------------------------------------------


def test_swapped_encoder_and_decoder_names_the_role_the_graph_has(small_export_dir, tmp_path, subject):
    export = copy_export(small_export_dir, tmp_path / "exp", swap("encoder", "decoder"))
    message = assert_clean_error(infer(export, subject), str(export / "manifest.json"),
                                 "decoder.onnx as the 'encoder' graph", "is the 'decoder' graph", "export again")
    assert "Required inputs" not in message
    assert files_under(subject[1]) == []


# --- defect 10: two baked decoders swapped -----------------------------------------------------


def test_swapped_baked_decoders_are_refused(small_export_dir, tmp_path, subject):
    export = copy_export(small_export_dir, tmp_path / "exp", swap("decoder_t2", "decoder_flair"))
    assert_clean_error(infer(export, subject, "t2"), str(export / "manifest.json"),
                       "decoder_flair.onnx as the 'decoder_t2' graph", "'decoder_flair' graph", "export again")
    assert files_under(subject[1]) == []


def test_baked_decoder_with_another_target_is_refused(small_export_dir, tmp_path, subject):
    """The target inside the graph is checked too, not only its role name."""
    export = copy_export(small_export_dir, tmp_path / "exp")

    def retarget(model: onnx.ModelProto) -> None:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, TARGET_KEY: "flair"})

    rewrite_graph(export, "decoder_t2", retarget)
    assert_clean_error(infer(export, subject), str(export / "decoder_t2.onnx"), "'flair'", "export again")


def test_signature_is_checked_by_the_role_name(small_export_dir, tmp_path, subject):
    """A decoder graph whose metadata was forged to say 'encoder' (manifest made to agree):
    its inputs and outputs are those of a decoder, which the encoder role does not allow."""
    export = copy_export(small_export_dir, tmp_path / "exp")

    def forge(model: onnx.ModelProto) -> None:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, ROLE_KEY: "encoder"})

    rewrite_graph(export, "encoder", forge, source="decoder")
    assert_clean_error(infer(export, subject), str(export / "encoder.onnx"), "is not a 'encoder' graph",
                       "looks like the decoder graph", "export again")


def test_declared_inputs_must_match_the_graph(small_export_dir, tmp_path, subject):
    def edit(manifest: dict) -> None:
        manifest["graphs"]["encoder"]["inputs"] = {"image": ["N", 1, "H", "W"]}

    export = copy_export(small_export_dir, tmp_path / "exp", edit)
    assert_clean_error(infer(export, subject), str(export / "manifest.json"), "declares other inputs",
                       "encoder.onnx", "export again")


# --- defect 14: edited model_config, and the model id -------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"features": 64}, "unknown keys features"),
    ({"enc_channels": [4, 8, 32]}, "model_config differs"),  # valid, but not the graphs' config
    ({"enc_res_blocks": 3, "dec_res_blocks": 3}, "model_config differs"),
])
def test_edited_model_config_names_the_manifest(small_export_dir, tmp_path, subject, change, words):
    export = copy_export(small_export_dir, tmp_path / "exp", lambda m: m["model_config"].update(change))
    assert_clean_error(infer(export, subject), str(export / "manifest.json"), words, "export again")


def test_edited_model_id_is_refused(small_export_dir, tmp_path, subject):
    export = copy_export(small_export_dir, tmp_path / "exp", lambda m: m.update(model_id="another-model"))
    assert_clean_error(infer(export, subject), str(export / "manifest.json"), "another-model", "small-reference",
                       "export again")


# --- exports from an older tsf-trt ---------------------------------------------------------------


def test_export_without_graph_metadata_is_refused(small_export_dir, tmp_path, subject):
    export = copy_export(small_export_dir, tmp_path / "exp")
    for role in json.loads((export / "manifest.json").read_text())["graphs"]:
        rewrite_graph(export, role, strip_metadata)
    assert_clean_error(infer(export, subject), str(export / "encoder.onnx"), OLD_EXPORT)


def test_export_cache_exports_an_old_export_again(small_model, small_export_dir, tmp_path, monkeypatch):
    """A cached export without graph metadata (or with a wrong role) is exported again,
    an intact one is reused: ensure_export never fails on what it wrote earlier."""
    from tsf_trt.export import cached_exports as export_cache
    from tsf_trt.machine.cache_dir import cache_root

    monkeypatch.setenv("TSF_TRT_CACHE", str(tmp_path / "cache"))
    exported: list[Path] = []

    def fake_export(model, directory, **kwargs):  # what export_model writes, without the 10 s
        exported.append(Path(directory))
        shutil.rmtree(directory, ignore_errors=True)
        copy_export(small_export_dir, Path(directory))

    monkeypatch.setattr(export_cache, "export_model", fake_export)
    directory = cache_root() / "exports" / "small-reference-opset17"
    copy_export(small_export_dir, directory)
    rewrite_graph(directory, "fusion", strip_metadata)
    assert export_cache.ensure_export(small_model, model_id="small-reference") == directory and exported == [directory]
    assert export_cache.ensure_export(small_model, model_id="small-reference") == directory and len(exported) == 1
    swap("decoder_t2", "decoder_flair")(manifest := json.loads((directory / "manifest.json").read_text()))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert export_cache.ensure_export(small_model, model_id="small-reference") == directory and len(exported) == 2


def test_ort_backend_checks_each_session(small_export_dir, tmp_path):
    """The check runs when a session is created, cached optimised sessions included."""
    from tsf_trt.backends.ort_backend import OrtBackend

    export = copy_export(small_export_dir, tmp_path / "exp")
    OrtBackend(export).session("decoder_t2")  # writes the optimised graph into .ort-cache
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["model_id"] = "edited"
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="model_id 'edited' differs"):
        OrtBackend(export).session("decoder_t2")
