"""The authors' config files (github.com/fiy2W/mri_seq2seq, ``publications/config``) -> ModelConfig.

Their scripts read a YAML file with ``yaml.safe_load`` (``publications/src/seq2seq/train/
train_brats_seq2seq_2d.py`` and ``publications/src/tsf/train/train_brats_tsf_seq2seq_2d.py``,
``__main__``) and hand the whole dict to ``Generator(config)`` and ``TSF_seq2seq(config)``.
Those classes read only the keys in :data:`SEQ2SEQ_KEYS` and :data:`TSF_KEYS`; everything
else (the ``data`` and ``train`` sections, ``seq2seq.pretrain``, any key their models do not
read) cannot change a checkpoint's tensors and is ignored here on purpose, as their code
ignores it. Sizes they can express but tsf-trt's network does not are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tsf_trt.errors import InputError, TsfError


# Keys read by Generator / Encoder / hyperDecoder (src/seq2seq/models/{seq2seq,encoder,decoder}.py).
SEQ2SEQ_KEYS = ("ndims", "c_s", "c_w", "c_in", "c_enc", "k_enc", "s_enc", "nres_enc", "norm", "c_lstm",
                "c_dec", "k_dec", "s_dec", "nres_dec")
# Keys read by TSF_seq2seq (src/tsf/models/tsf_seq2seq.py).
TSF_KEYS = ("c_s_source", "c_s_target", "c_w", "c_enc", "k_enc", "s_enc", "norm")
# publications/config/vq/*.yaml: VQ-Seq2Seq, another network (vector-quantised latent).
_VQ_KEYS = ("embed_dim", "n_embed", "beta")
_N_SEQUENCES = 4  # T1, T1Gd, T2, FLAIR: the BraTS sequences tsf-trt's codes are built for


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict: ``.json`` by json, anything else as YAML (``yaml.safe_load``,
    the authors' reader: so ``norm: None`` is the string 'None', ``lr: 2e-4`` a string)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the config ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(path, f"not a readable JSON config ({exc})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise InputError(path, "reading YAML configs needs PyYAML (pip install 'pyyaml>=6')") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise InputError(path, f"not a readable YAML config ({problem}{where})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a config: expected a mapping of keys (e.g. seq2seq: ..., TSF_seq2seq: ...)")
    return data


def _int(section: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TsfError(f"invalid reference config: {section}.{key} must be an integer (got {value!r})")
    return value


def _ints(section: str, key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise TsfError(f"invalid reference config: {section}.{key} must be a non-empty list of integers "
                       f"(got {value!r})")
    return [_int(section, f"{key}[{i}]", v) for i, v in enumerate(value)]


def _section(ref: Mapping[str, Any], name: str, keys: tuple[str, ...], required: bool) -> dict[str, Any] | None:
    if name not in ref:
        if required:
            raise TsfError(f"invalid reference config: no '{name}' section (the authors' configs have "
                           f"seq2seq: and, for TSF, TSF_seq2seq:)")
        return None
    sec = ref[name]
    if not isinstance(sec, Mapping):
        raise TsfError(f"invalid reference config: '{name}' must be a mapping of keys")
    # ndims and c_lstm have one possible value here (2, c_enc[-1]); every other key is required,
    # norm too: InstanceNorm has no tensors, so a wrong norm would load and then compute wrongly.
    missing = [k for k in keys if k not in sec and k not in ("ndims", "c_lstm")]
    if missing:
        raise TsfError(f"invalid reference config: missing key{'s' if len(missing) > 1 else ''} "
                       + ", ".join(f"{name}.{k}" for k in missing))
    return dict(sec)


def _norm(section: str, value: Any) -> str:
    """seq2seq: ``getattr(nn, norm + '2d') if norm is not None``; TSF: the same unless
    ``norm == 'None'``, a string (docs/architecture.md, "The authors' implementation", 5).
    Both spellings of "none" are accepted in both sections."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "none"
    if value == "InstanceNorm":
        return "instance"
    raise TsfError(f"invalid reference config: {section}.norm {value!r}: tsf-trt's network has InstanceNorm "
                   f"or none (seq2seq: null, TSF_seq2seq: None)")


def config_fields(ref: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' keys as :class:`~.config.ModelConfig` fields (ModelConfig.from_reference builds
    it); a size tsf-trt cannot build is a TsfError."""
    s = _section(ref, "seq2seq", SEQ2SEQ_KEYS, required=True)
    assert s is not None
    vq = [k for k in _VQ_KEYS if k in s]
    if vq:
        raise TsfError(f"invalid reference config: seq2seq.{vq[0]} is a VQ-Seq2Seq setting "
                       "(publications/config/vq); tsf-trt runs Seq2Seq and TSF-Seq2Seq only")
    sec = "seq2seq"
    if _int(sec, "ndims", s.get("ndims", 2)) != 2:
        raise TsfError("invalid reference config: only the 2D (ndims: 2) model is supported")
    c_enc = _ints(sec, "c_enc", s["c_enc"])
    if _int(sec, "c_lstm", s.get("c_lstm", c_enc[-1])) != c_enc[-1]:
        raise TsfError("invalid reference config: c_lstm must equal c_enc[-1]")
    c_dec, k_dec = _ints(sec, "c_dec", s["c_dec"]), _ints(sec, "k_dec", s["k_dec"])
    # hyperDecoder: s_dec[i] strides intermediate layer i (each after a x2 upsampling); the last
    # entry is never read (conv_last has stride 1). Our decoder has no strides: all must be 1.
    if any(v != 1 for v in _ints(sec, "s_dec", s["s_dec"])[: len(c_dec) - 1]):
        raise TsfError("invalid reference config: seq2seq.s_dec must be 1 for every layer but the last "
                       "(tsf-trt's decoder has no strided layers)")
    fields: dict[str, Any] = dict(
        in_channels=_int(sec, "c_in", s["c_in"]), style_dim=_int(sec, "c_s", s["c_s"]),
        decoder_weight_dim=_int(sec, "c_w", s["c_w"]), enc_channels=c_enc,
        enc_kernels=_ints(sec, "k_enc", s["k_enc"]), enc_strides=_ints(sec, "s_enc", s["s_enc"]),
        enc_res_blocks=_int(sec, "nres_enc", s["nres_enc"]), dec_channels=c_dec, dec_kernels=k_dec,
        dec_res_blocks=_int(sec, "nres_dec", s["nres_dec"]), norm=_norm(sec, s["norm"]),
    )
    t = _section(ref, "TSF_seq2seq", TSF_KEYS, required=False)
    if t is not None:  # without it (a Seq2Seq config): ModelConfig's fusion defaults = tsf_seq2seq_brats_2d.yaml's
        sec = "TSF_seq2seq"
        if (_int(sec, "c_s_source", t["c_s_source"]), _int(sec, "c_s_target", t["c_s_target"])) \
                != (_N_SEQUENCES, _N_SEQUENCES):
            raise TsfError("invalid reference config: TSF_seq2seq.c_s_source and c_s_target must be 4 "
                           "(the sequences T1, T1Gd, T2, FLAIR)")
        if any(v != 1 for v in _ints(sec, "s_enc", t["s_enc"])):
            raise TsfError("invalid reference config: TSF_seq2seq.s_enc must be all 1 (the attention "
                           "branch is added to the weighted average at feature resolution)")
        fields.update(fusion_weight_dim=_int(sec, "c_w", t["c_w"]), fusion_channels=_ints(sec, "c_enc", t["c_enc"]),
                      fusion_kernels=_ints(sec, "k_enc", t["k_enc"]), fusion_norm=_norm(sec, t["norm"]))
    else:
        fields.update(fusion_channels=[c_enc[-1]])
    return fields


def training_crop(ref: Mapping[str, Any]) -> tuple[int, int] | None:
    """The in-plane training crop (H, W) of an authors' config, or None if it has none.

    ``train.crop_size`` is ``[nd, nw, nh]``: nd 2.5D samples (slice triplets) and an nw x nh
    random crop per step; the published configs say ``[1, 192, 192]``, and their train scripts
    take ``rw = random.randint(0, w-nw-1) if w>nw else 0`` (likewise rh) from it
    (``train_brats_seq2seq_2d.py`` and ``train_brats_tsf_seq2seq_2d.py``, ``for _ in
    range(rep_step)``). Validation centre-crops ``train.valid_size`` ``[16, 192, 192]``.
    tsf-trt's equivalent is ``tsf-trt train --crop`` (square, default 192); ModelConfig holds
    network sizes only, so this is not part of it.
    """
    train = ref.get("train")
    crop = train.get("crop_size") if isinstance(train, Mapping) else None
    if crop is None:
        return None
    values = _ints("train", "crop_size", crop)
    if len(values) != 3:
        raise TsfError(f"invalid reference config: train.crop_size must be [slices, H, W] (got {crop!r})")
    return values[1], values[2]
