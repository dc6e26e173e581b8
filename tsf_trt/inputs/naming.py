"""Which sequence a file name describes, and whose it is: the one rule, for every folder layout
outside BIDS (BIDS names are read by :mod:`tsf_trt.inputs.bids`).

The rule, applied to the file stem (the name without `.nii` / `.nii.gz`):

1. Split it into words at `_`, `-`, `.` and spaces.
2. The *description* is the longest run of words at the end that are all sequence words
   (:data:`BASE`, :data:`CONTRAST`, :data:`PRE`, :data:`MODIFIERS`); the *subject* is
   what comes before it (`patient1_axial_T2_FLAIR` -> subject `patient1`, description
   `axial T2 FLAIR`). A stem that is a description alone (`flair.nii.gz`) has no subject.
3. The description names exactly one sequence or none:
   FLAIR if it holds `flair` or `t2f`; else T2 if it holds `t2`/`t2w`; else a T1 if it holds
   a T1 word (`t1`, `t1w`, `t1n`, `mprage`, `spgr`, `bravo`, `tfe`, `vibe`, …), which is T1Gd
   when it also holds a contrast word (`gd`, `gad`, `gado`, `gadolinium`, `ce`, `post`,
   `contrast`, `enhanced`, or the spellings `t1c`, `t1ce`, `t1gd`) and no `pre`; else none.
   A description with both a T2 and a T1 word (`t1_t2`) is refused as ambiguous (None).
4. Anything else (`seg`, `mask`, `t2star`, `dwi`, our own `_synth`/`_tsem` outputs) is
   not an input: folder mode lists it as unused, with :func:`why_not`.

Everything a rule cannot tell is given explicitly with `--map` (subject, sequence, path)
or as `t1=PATH` on the command line.
"""

from __future__ import annotations

import re

from tsf_trt.sequences import ALIASES, nifti_stem

_SPLIT = re.compile(r"([_\-. ]+)")

#: Words that name a sequence family on their own (lower case).
BASE = {
    "t1": 0, "t1w": 0, "t1n": 0, "mprage": 0, "mp2rage": 0, "spgr": 0, "fspgr": 0, "bravo": 0, "tfe": 0,
    "tfl": 0, "vibe": 0, "t1c": 1, "t1ce": 1, "t1gd": 1,
    "t2": 2, "t2w": 2,
    "flair": 3, "t2f": 3,
}
#: Words that make a T1 a contrast-enhanced T1 (T1Gd).
CONTRAST = {"gd", "gad", "gado", "gadolinium", "ce", "post", "postcontrast", "contrast", "enhanced"}
#: Words that say a T1 was taken before contrast.
PRE = {"pre", "precontrast", "native", "nc"}
#: Acquisition words that say nothing about the sequence.
MODIFIERS = {"ax", "axial", "tra", "sag", "sagittal", "cor", "coronal", "2d", "3d", "iso", "fs", "fatsat", "tse",
             "fse", "space", "cube", "vista", "se", "ir", "weighted", "mri", "mr", "brain", "stripped", "n4",
             "bias", "corrected", "reg", "registered", "w"}
_WORDS = set(BASE) | CONTRAST | PRE | MODIFIERS
assert set(ALIASES) <= set(BASE), "every --target spelling is also read in file names"
#: Names that are not inputs, with what they are (for the "not used" lines).
KNOWN_OTHER = {"seg": "a segmentation", "mask": "a mask", "label": "labels", "labels": "labels",
               "synth": "a tsf-trt output", "tsem": "a tsf-trt output", "t2star": "T2* (not an input of the "
               "network)", "t2starw": "T2* (not an input of the network)", "swi": "SWI (not an input of the "
               "network)", "dwi": "diffusion (not an input of the network)", "adc": "ADC (not an input of the "
               "network)", "pd": "proton density (not an input of the network)", "pdw": "proton density (not "
               "an input of the network)"}


def read_name(filename: str) -> tuple[str, int] | None:
    """(subject, sequence index) from a NIfTI file name by the rule above, or None.

    `BraTS2021_00000_t1ce.nii.gz` -> ("BraTS2021_00000", 1); `patient1_T1_MPRAGE.nii.gz`
    -> ("patient1", 0); `patient1_axial_T2_FLAIR.nii.gz` -> ("patient1", 3); `flair.nii` -> ("", 3).
    """
    parts = _SPLIT.split(nifti_stem(filename))  # words at even positions, separators between
    words = parts[0::2]
    start = len(words)
    while start > 0 and words[start - 1].lower() in _WORDS:
        start -= 1
    index = _sequence([w.lower() for w in words[start:]])
    if index is None:
        return None
    subject = "".join(parts[: max(0, 2 * start - 1)])
    return subject, index


def _sequence(description: list[str]) -> int | None:
    bases = {BASE[w] for w in description if w in BASE}
    if 3 in bases:
        return 3
    if 2 in bases:
        return None if bases & {0, 1} else 2
    if not bases:
        return None
    contrast = 1 in bases or any(w in CONTRAST for w in description)
    if contrast and any(w in PRE for w in description):
        return None  # "pre" and "post" in one name: let the user say which
    return 1 if contrast else 0


def why_not(filename: str) -> str:
    """Why a NIfTI file is not read as an input, for the folder's "not used" line."""
    words = [w.lower() for w in _SPLIT.split(nifti_stem(filename))[0::2] if w]
    for word in reversed(words):
        if word in KNOWN_OTHER:
            return KNOWN_OTHER[word]
    bases = {BASE[w] for w in words[-3:] if w in BASE}
    if 2 in bases and bases & {0, 1}:
        return "names both a T1 and a T2: give it with --map"
    return "the name says no sequence tsf-trt reads: give it with --map, or as t1=PATH"
