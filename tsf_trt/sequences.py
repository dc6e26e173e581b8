"""The four MRI sequences, their spellings, and the codes the network is driven by.

Index order is fixed by the authors' checkpoints: T1=0, T1Gd=1, T2=2, FLAIR=3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tsf_trt.errors import TsfError

#: Canonical short names, in index order.
NAMES: tuple[str, ...] = ("t1", "t1gd", "t2", "flair")
#: How the sequences are shown to people.
DISPLAY: tuple[str, ...] = ("T1", "T1Gd", "T2", "FLAIR")
N_SEQUENCES = len(NAMES)

#: Every accepted spelling (lower case) -> index. BraTS 2021 uses t1/t1ce/t2/flair,
#: BraTS 2023+ uses t1n/t1c/t2w/t2f.
ALIASES: dict[str, int] = {
    "t1": 0, "t1n": 0, "t1w": 0,
    "t1gd": 1, "t1ce": 1, "t1c": 1,
    "t2": 2, "t2w": 2,
    "flair": 3, "t2f": 3,
}

_NIFTI_EXT = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
def parse(name: str) -> int:
    """Sequence index of a user-given name (any accepted spelling, any case)."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise TsfError(
            f"unknown sequence '{name}': use one of {', '.join(NAMES)} "
            f"(also accepted: {', '.join(a for a in ALIASES if a not in NAMES)})"
        )
    return ALIASES[key]


def parse_list(names: str | Iterable[str]) -> list[int]:
    """Indices of a comma-separated list (or iterable) of names, in the given order."""
    items = names.split(",") if isinstance(names, str) else list(names)
    return [parse(n) for n in items if n.strip()]


def nifti_stem(filename: str) -> str:
    """File name without directory and without `.nii` / `.nii.gz`."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _NIFTI_EXT.sub("", base)


def task_code(sources: Sequence[int], target: int) -> np.ndarray:
    """The fusion's task code, shape (1, 8): [source mask | target one-hot]."""
    check_task(sources, target)
    code = np.zeros((1, 2 * N_SEQUENCES), dtype=np.float32)
    code[0, list(sources)] = 1.0
    code[0, N_SEQUENCES + target] = 1.0
    return code


def target_code(target: int, style_dim: int = 64) -> np.ndarray:
    """The decoder's style code, shape (1, style_dim): one-hot at the target index."""
    if not 0 <= target < N_SEQUENCES:
        raise TsfError(f"target index {target} is not one of 0..{N_SEQUENCES - 1}")
    code = np.zeros((1, style_dim), dtype=np.float32)
    code[0, target] = 1.0
    return code


class TargetIsInput(TsfError):
    """The target is among the inputs: raised by :func:`check_task`, so that a caller can say
    which file or flag named it (intake, --sources) without deciding the rule again."""

    def __init__(self, target: int):
        super().__init__(f"the target {DISPLAY[target]} is among the inputs: nothing to synthesise")
        self.target = target


def check_task(sources: Sequence[int], target: int, *, has_fusion: bool = True, model: str = "this model") -> None:
    """The one rule of which task a model can do: at least one source, none repeated, the target
    not among them; a model without the TSF stage (`has_fusion` False, named `model`) takes
    exactly one source. Every entry point asks it, before any model loads."""
    if not sources:
        raise TsfError("no input sequence given")
    if len(set(sources)) != len(sources):
        dup = sorted({DISPLAY[s] for s in sources if list(sources).count(s) > 1})
        raise TsfError(f"sequence given more than once: {', '.join(dup)}")
    for s in (*sources, target):
        if not 0 <= s < N_SEQUENCES:
            raise TsfError(f"sequence index {s} is not one of 0..{N_SEQUENCES - 1}")
    if target in sources:
        raise TargetIsInput(target)
    if not has_fusion and len(sources) != 1:
        raise TsfError(f"{model} is Seq2Seq-only (no TSF stage): it synthesises from exactly one "
                       f"input, got {len(sources)} ({describe(sources, target)})")


def task_key(sources: Sequence[int], target: int) -> str:
    """A task as the command line takes it and as files store it: 't1,flair->t2' (sources sorted)."""
    return ",".join(NAMES[s] for s in sorted(sources)) + "->" + NAMES[target]


def parse_task_key(text: str) -> tuple[list[int], int]:
    """'t1,flair->t2' (any accepted spelling, any case) -> (sorted sources, target), checked by
    :func:`check_task`; what is wrong is said about `text` (callers add which option gave it)."""
    left, arrow, right = text.partition("->")
    if not arrow:
        raise TsfError(f"'{text}' is not a task; write it as SOURCES->TARGET, e.g. t1,flair->t2")
    try:
        sources = sorted(parse_list(left))
        target = parse(right) if right.strip() else None
    except TsfError as exc:
        raise TsfError(f"'{text}': {exc}") from None
    if target is None:
        raise TsfError(f"'{text}' names no target after '->'")
    try:
        check_task(sources, target)
    except TsfError as exc:
        raise TsfError(f"'{text}': {exc}") from None
    return sources, target


def makes_tsem(asked: bool, has_fusion: bool) -> bool:
    """Whether a TSEM map is made: when asked for and the model has the TSF stage (TSEM is the
    difference its attention makes, paper Eq. 6; a Seq2Seq-only model has none)."""
    return asked and has_fusion


def describe(sources: Sequence[int], target: int) -> str:
    """A task as people write it: 'T1,FLAIR->T2'."""
    return ",".join(DISPLAY[s] for s in sources) + "->" + DISPLAY[target]


def stack_by_index(features: Mapping[int, Any], n_sequences: int = N_SEQUENCES) -> Any:
    """Per-sequence feature batches (N, C, h, w) -> (N, n_sequences, C, h, w), each at its
    sequence's index and zeros where a sequence is missing: the fusion's input. Works on
    numpy arrays and torch tensors alike (the result is of the features' kind)."""
    some = next(iter(features.values()))
    shape = (some.shape[0], n_sequences, *some.shape[1:])
    stacked = some.new_zeros(shape) if hasattr(some, "new_zeros") else np.zeros(shape, some.dtype)
    for index, feats in features.items():
        stacked[:, index] = feats
    return stacked
