"""Model directories (our format) and import of the authors' checkpoints.

A model directory holds ``config.json`` (format tag, :class:`ModelConfig`, stages,
weight hash) and ``model.safetensors``: no pickle anywhere. The authors' ``.pth``
files are bare state_dicts; they are read with ``weights_only=True`` and renamed
by the table below (layout: ``docs/architecture.md``, "The authors' implementation").
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tsf_trt.errors import ModelError
from tsf_trt.files.atomic import atomic_dir, check_folder_target
from tsf_trt.files.fileformat import file_sha256
from tsf_trt.files.ownership import MODEL_DIR
from tsf_trt.model.config import ModelConfig
from tsf_trt.model.meta import (CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, check_weights, meta_config,
                                read_model_meta)
from tsf_trt.model.tsf import TSFSeq2Seq


# reference key (regex) -> our key; one table per checkpoint file.
SEQ2SEQ_KEYS: list[tuple[str, str]] = [
    (r"^encoder\.conv\.(\d+)\.0\.", r"encoder.convs.\1.conv."),
    (r"^encoder\.res\.(\d+)\.conv_block\.1\.", r"encoder.res.\1.conv1."),
    (r"^encoder\.res\.(\d+)\.conv_block\.5\.", r"encoder.res.\1.conv2."),
    (r"^enc_convlstm\.cell_list\.(\d+)\.conv\.", r"encoder.lstm.cells.\1.conv."),
    (r"^dec_convlstm\.cell_list\.(\d+)\.conv\.", r"decoder.lstm.cells.\1.conv."),
    (r"^style_fc\.0\.", r"decoder.style_fc."),
    (r"^decoder\.res\.(\d+)\.conv([12])\.", r"decoder.res.\1.conv\2."),
    (r"^decoder\.convs\.(\d+)\.", r"decoder.ups.\1.conv."),
    (r"^decoder\.conv_last\.", r"decoder.head."),
]
TSF_KEYS: list[tuple[str, str]] = [
    (r"^fc_p\.0\.", r"fusion.weight_fc."),
    (r"^convs\.(\d+)\.", r"fusion.attention.\1.conv."),
    (r"^cas\.(\d+)\.fc1\.", r"fusion.attention.\1.channel.fc1."),
    (r"^cas\.(\d+)\.fc3\.", r"fusion.attention.\1.channel.fc2."),
    (r"^sas\.(\d+)\.conv1\.", r"fusion.attention.\1.spatial.conv."),
]


# -- our format ---------------------------------------------------------------------
def save_model(model: TSFSeq2Seq, directory: str | Path, *, overwrite: bool = False,
               origin: dict[str, Any] | None = None, training_crop: tuple[int, int] | None = None) -> Path:
    """Write a model directory atomically (a complete directory or none). `training_crop` (H, W):
    the in-plane size it was trained on, kept because the frame it runs on matters
    (tsf_trt.synthesis.frame; `--frame HxW`). With `overwrite`, only a model directory (holding nothing
    else) is replaced (:data:`tsf_trt.files.ownership.MODEL_DIR`)."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ModelError(directory, "exists; use --overwrite to replace it")
    check_folder_target(directory, overwrite, MODEL_DIR)
    umask = os.umask(0)
    os.umask(umask)
    with atomic_dir(directory, MODEL_DIR) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "stages": ["seq2seq", "tsf"] if model.has_fusion else ["seq2seq"],
            "config": model.config.to_dict(),
            "weights": WEIGHTS_FILE,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            "origin": origin or {},
            "training_crop": list(training_crop) if training_crop else None,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / WEIGHTS_FILE).chmod(0o666 & ~umask)  # safetensors makes it private
    return directory


def weights_id(model: TSFSeq2Seq) -> str:
    """The id of a model built in Python: a hash of its weights (a model directory's id is
    its weights file's, from config.json: see :class:`tsf_trt.synthesis.source.ModelSource`)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model(directory: str | Path, *, device: str | torch.device = "cpu",
               verify: bool = True) -> TSFSeq2Seq:
    """Load a model directory, in eval mode. Every mismatch is a ModelError naming the file."""
    directory = Path(directory)
    meta = read_model_meta(directory)
    config = meta_config(directory, meta)
    weights = check_weights(directory, meta, verify)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(weights, f"unreadable safetensors file ({exc})") from None
    model = _empty_model(config, with_fusion="tsf" in meta.get("stages", ["seq2seq", "tsf"]))
    _load_state(model, state, weights)
    return model.to(device).eval()


def _load_state(model: TSFSeq2Seq, state: dict[str, torch.Tensor], source: Path, hint: str = "") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:2])}, file vs config)")
    if hint and (wrong or missing):
        problems.append(hint)
    if problems:
        raise ModelError(source, "weights do not match the model config: " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)


def _empty_model(config: ModelConfig, with_fusion: bool) -> TSFSeq2Seq:
    """A model without storage (meta device): loading then assigns the checkpoint's
    tensors, so no time or memory goes into an initialisation that is overwritten."""
    with torch.device("meta"):
        return TSFSeq2Seq(config, with_fusion=with_fusion)


# -- the authors' checkpoints ------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A bare state_dict from a .pth/.pt (weights_only) or an .npz of the same keys."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "checkpoint file does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path) as npz:
                return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(path, "not a plain state_dict checkpoint: it is not a PyTorch file, or it holds "
                               "objects other than tensors (not loaded, for safety)") from None
    except Exception as exc:  # noqa: BLE001 - torch/numpy raise many types for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(path, f"not a readable checkpoint ({type(exc).__name__}: {first_line})") from None
    for wrapper in ("state_dict", "model", "generator"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(path, "not a state_dict (expected a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def rename_keys(state: dict[str, torch.Tensor], table: list[tuple[str, str]], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, repl in table:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(path, f"unexpected keys for this checkpoint kind: {', '.join(unknown[:4])}"
                               + (" …" if len(unknown) > 4 else ""))
    return out


def import_reference(seq2seq: str | Path, tsf: str | Path | None, config: ModelConfig) -> TSFSeq2Seq:
    """Build our model from the authors' Seq2Seq (Generator) and optional TSF state_dicts."""
    seq2seq = Path(seq2seq)
    s2s_state = read_state_dict(seq2seq)
    if any(k.startswith("fc_p.") for k in s2s_state):
        raise ModelError(seq2seq, "this is a TSF checkpoint; pass it with --tsf and the Generator with --seq2seq")
    state = rename_keys(s2s_state, SEQ2SEQ_KEYS, seq2seq)
    if tsf is not None:
        tsf = Path(tsf)
        tsf_state = read_state_dict(tsf)
        if any(k.startswith("encoder.") for k in tsf_state):
            raise ModelError(tsf, "this is a Seq2Seq (Generator) checkpoint; pass it with --seq2seq")
        state.update(rename_keys(tsf_state, TSF_KEYS, tsf))
    model = _empty_model(config, with_fusion=tsf is not None)
    _load_state(model, state, tsf if tsf is not None and not _has_all(model, state, "fusion.") else seq2seq,
                hint="were these weights trained with another config (--config paper, small, or the authors' YAML/JSON config)?")
    return model.eval()


def _has_all(model: TSFSeq2Seq, state: dict[str, torch.Tensor], prefix: str) -> bool:
    want = {k for k in model.state_dict() if k.startswith(prefix)}
    return want <= set(state)
