"""One dataclass holds every size of the network; presets name the published ones.

Field names are ours; :meth:`ModelConfig.from_reference` reads the authors' YAML/JSON
keys (``seq2seq.c_enc`` …, as in ``tests/data/small_config.json``; the mapping lives in
:mod:`.reference_config`) so that their checkpoints are imported with the sizes they
were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tsf_trt.errors import InputError, TsfError
from tsf_trt.model.reference_config import config_fields, read_config_file


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of TSF-Seq2Seq. Defaults are the paper's configuration."""

    in_channels: int = 3                       # 2.5D: adjacent axial slices as channels
    style_dim: int = 64                        # decoder style/target code length
    decoder_weight_dim: int = 16               # HyperConv table depth in the decoder
    enc_channels: tuple[int, ...] = (64, 128, 256)
    enc_kernels: tuple[int, ...] = (7, 3, 3)
    enc_strides: tuple[int, ...] = (1, 2, 2)
    enc_res_blocks: int = 6
    lstm_layers: int = 3                       # both ConvLSTMs; hidden width = enc_channels[-1]
    dec_channels: tuple[int, ...] = (128, 64, 3)
    dec_kernels: tuple[int, ...] = (3, 3, 7)
    dec_res_blocks: int = 6
    norm: str = "instance"                     # "instance" or "none" (encoder and decoder)
    n_sequences: int = 4
    fusion_weight_dim: int = 4                 # HyperConv table depth in the fusion
    fusion_channels: tuple[int, ...] = (256,)  # one attention layer per entry
    fusion_kernels: tuple[int, ...] = (3,)
    fusion_norm: str = "none"                  # the reference's TSF uses no norm
    attention_reduction: int = 16              # channel-attention hidden width = C // 16

    def __post_init__(self) -> None:
        for name in ("enc_channels", "enc_kernels", "enc_strides", "dec_channels",
                     "dec_kernels", "fusion_channels", "fusion_kernels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not (len(self.enc_channels) == len(self.enc_kernels) == len(self.enc_strides)):
            problems.append("enc_channels, enc_kernels and enc_strides differ in length")
        if len(self.dec_channels) != len(self.dec_kernels):
            problems.append("dec_channels and dec_kernels differ in length")
        if len(self.fusion_channels) != len(self.fusion_kernels):
            problems.append("fusion_channels and fusion_kernels differ in length")
        if self.dec_channels and self.dec_channels[-1] != self.in_channels:
            problems.append("the decoder must end with in_channels channels (dec_channels[-1])")
        if any(c != self.features for c in self.fusion_channels[-1:]):
            problems.append("the last fusion layer must output enc_channels[-1] channels")
        if self.style_dim < self.n_sequences:
            problems.append("style_dim must hold a one-hot of the sequences")
        for name in ("norm", "fusion_norm"):
            if getattr(self, name) not in ("instance", "none"):
                problems.append(f"{name} must be 'instance' or 'none'")
        if problems:
            raise TsfError("invalid model config: " + "; ".join(problems))

    @property
    def features(self) -> int:
        """Channels of the encoded features (= ConvLSTM hidden width)."""
        return self.enc_channels[-1]

    @property
    def downsample(self) -> int:
        """Image size / feature size: H and W must be multiples of this."""
        factor = 1
        for s in self.enc_strides:
            factor *= s
        return factor

    @property
    def task_dim(self) -> int:
        return 2 * self.n_sequences

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TsfError(f"invalid model config: unknown keys {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_reference(cls, ref: dict[str, Any]) -> "ModelConfig":
        """Read the authors' config keys (``{"seq2seq": {...}, "TSF_seq2seq": {...}}``, as their
        YAML files and ``tests/data/small_config.json``): :mod:`.reference_config`."""
        return cls(**config_fields(ref))


PRESETS: dict[str, ModelConfig] = {
    # seq2seq_brats_2d_missing.yaml + tsf_seq2seq_brats_2d.yaml
    "paper": ModelConfig(),
    # tests/data/small_config.json: the golden-tensor configuration
    "small": ModelConfig(
        decoder_weight_dim=8, enc_channels=(8, 16, 32), enc_res_blocks=2,
        dec_channels=(16, 8, 3), dec_res_blocks=2, fusion_channels=(32,),
    ),
    # The bundled demo model (tsf_trt/bundled/demo): 16-32-64 wide, 3+3 residual blocks, a 4-deep
    # decoder table (one entry per target). 4.1 M parameters; ~50 ms per 240x240 slice on 2 cores.
    "demo": ModelConfig(
        decoder_weight_dim=4, enc_channels=(16, 32, 64), enc_res_blocks=3,
        dec_channels=(32, 16, 3), dec_res_blocks=3, fusion_channels=(64,),
    ),
}


def resolve_config(spec: str | Path) -> ModelConfig:
    """A preset name, or a JSON or YAML file in our format or the authors' (their published
    ``publications/config/{seq2seq,tsf}/*.yaml`` as they are: :mod:`.reference_config`)."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise TsfError(f"config '{spec}': not a preset ({', '.join(PRESETS)}) nor an existing JSON or YAML file")
    data = read_config_file(path)
    try:
        if {"seq2seq", "TSF_seq2seq", "data", "train"} & set(data):  # the authors' sections
            return ModelConfig.from_reference(data)
        return ModelConfig.from_dict(data)
    except TsfError as exc:
        raise InputError(path, str(exc)) from None
    except (TypeError, ValueError) as exc:  # a value of the wrong kind in our own format
        raise InputError(path, f"invalid model config ({exc})") from None
