"""tsf-trt's outputs named as a BIDS derivative: file names, the dataset description, the
`.bidsignore` and where each run's record goes. Names only; no BIDS library is needed.

Output naming rule (docs/outputs.md, "BIDS derivatives"), from "BIDS Derivatives",
"File naming conventions" and "Common principles", "Unspecified data":

* The synthesis is an image of the target's kind: `..._desc-tsfsynth_<T1w|T2w|FLAIR>`, "the
  suffix ... the same as the source file if that suffix is still appropriate", a name of the
  schema's derivative rule for non-parametric anat images (never a raw name: `desc-`).
* The TSEM and the interval half-width map are not T1w/T2w/FLAIR images, and the controlled
  list has no suffix for an error map (mask, dseg and probseg are labels; T2map and the other
  parametric suffixes are physical quantities). Such files are "not yet standardized", for which
  "it is RECOMMENDED to use names consistent with BIDS conventions"; "Non-standard suffixes
  SHOULD reflect the nature of the data, and existing entities SHOULD be used": suffixes `tsem`
  and `halfwidth` (MAP_SUFFIXES), the synthesis's entities, and `desc-<T1w|T2w|FLAIR>` naming
  the image they describe, as the spec's own "`_desc-T1w` and `_desc-T2w` to distinguish brain
  mask files derived from T1w and T2w images". A query for T2w images (`suffix="T2w"`, a
  `*_T2w.nii.gz` glob) returns the synthesis only.
* "Validation and parsing tools MAY treat the presence of non-standard files ... as an error, so
  consult the details of these tools for mechanisms to suppress warnings": the derivative's
  `.bidsignore` (BIDSIGNORE) lists the maps and RECORD_FOLDER, as fMRIPrep's lists its
  unspecified outputs and its `logs/`. Each run's record (everything about the run) is
  `RECORD_FOLDER/<sub>[_<ses>]_<target>.json` (record_path); sidecars keep BIDS fields and one
  `tsf-trt` block.
* Earlier tsf-trt versions named the maps `desc-tsem`/`desc-halfwidth` with the target's suffix
  (legacy_map_paths): never inputs, and replaced when a run redoes the subject.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.bids import (BIDS_VERSION, HALFWIDTH_SUFFIX, LEGACY_DESCS, MAP_SUFFIXES, PIPELINE_NAME,
                                 SYNTH_DESC, TSEM_SUFFIX, BidsCase, format_name, label_of)

#: The derivative's folder of run records (fMRIPrep's `logs/`), which .bidsignore lists.
RECORD_FOLDER = "logs"
#: The cohort tables at the derivative's top (tsf_trt.runs.table.TABLE_NAME, `tsf-trt_<target>.tsv`).
TABLES = "tsf-trt_*.tsv"
#: The derivative's .bidsignore: its first line marks it as tsf-trt's own (tsf_trt.files.ownership);
#: then what the specification does not define (gitignore patterns, as the BIDS validator reads them):
#: the maps, the records' folder and the cohort tables.
BIDSIGNORE = ("# tsf-trt: files the BIDS specification does not define (docs/outputs.md, \"BIDS derivatives\")",
              *(f"*_{suffix}.*" for suffix in MAP_SUFFIXES), f"{RECORD_FOLDER}/", TABLES)


def target_entities(target: int) -> tuple[dict[str, str], str]:
    """The entities and suffix that say which sequence a derivative image is: the one place
    this is decided. A synthetic T1Gd is `ce-gadolinium_..._T1w`: the Entities appendix makes
    `ce-<label>` the agent's name (T1Gd: the gadolinium-enhanced T1), it keeps the image apart
    from a synthetic T1 ("Uniqueness of data files"), and readers of BIDS, find_cases too, take
    it as contrast-enhanced. `desc-tsfsynth` and the sidecar say no agent was given."""
    if not 0 <= target < sequences.N_SEQUENCES:
        raise TsfError(f"target index {target} is not one of 0..{sequences.N_SEQUENCES - 1}")
    return ({"ce": "gadolinium"} if target == 1 else {}), ("T1w", "T1w", "T2w", "FLAIR")[target]


class DerivativePaths(NamedTuple):
    synth: Path
    synth_sidecar: Path
    tsem: Path
    tsem_sidecar: Path


def derivative_paths(deriv_root: str | Path, subject: str, session: str | None, target: int) -> DerivativePaths:
    """`sub-<s>/[ses-<x>/]anat/sub-<s>[_ses-<x>][_ce-gadolinium]_desc-tsfsynth_<T1w|T2w|FLAIR>` and
    `..._desc-<T1w|T2w|FLAIR>_tsem`, .nii.gz and .json (the rule: module docstring, "Output naming
    rule"). Derivatives, "File naming conventions": the source entities are the whole source
    name only for an output of a single raw input, and ours has several, so only sub and ses are
    kept; a derivative must not be a permissible raw name, which `desc-` and the map suffix see to."""
    return DerivativePaths(*_derivative(deriv_root, subject, session, target, SYNTH_DESC),
                           *_map(deriv_root, subject, session, target, TSEM_SUFFIX))


def halfwidth_paths(deriv_root: str | Path, subject: str, session: str | None, target: int) -> tuple[Path, Path]:
    """The interval half-width map and its sidecar: named as :func:`derivative_paths` names the
    TSEM, with the suffix `halfwidth`."""
    return _map(deriv_root, subject, session, target, HALFWIDTH_SUFFIX)


def legacy_map_paths(deriv_root: str | Path, subject: str, session: str | None, target: int) -> list[Path]:
    """The maps' names of earlier versions (`..._desc-tsem_T2w`, `..._desc-halfwidth_T2w`, .nii.gz and
    .json): a run that redoes the subject removes them (if tsf-trt's own), so that no error map is
    left under an image's suffix."""
    return [path for desc in LEGACY_DESCS for path in _derivative(deriv_root, subject, session, target, desc)]


def record_path(deriv_root: str | Path, subject: str, session: str | None, target: int) -> Path:
    """`RECORD_FOLDER/sub-<s>[_ses-<x>]_<target>.json`: the run's record of one case and target
    (everything about the run; its presence marks the case finished), outside the BIDS tree, as
    fMRIPrep keeps its run records in `logs/`. The target's name (t1gd, t2, ...) keeps T1 and T1Gd apart."""
    sub, ses = _labels_of(subject, session)
    return Path(deriv_root, RECORD_FOLDER, BidsCase(sub, ses, {}).name + f"_{sequences.NAMES[target]}.json")


def _labels_of(subject: str, session: str | None) -> tuple[str, str | None]:
    return label_of(subject, "sub", "subject"), label_of(session, "ses", "session") if session is not None else None


def _derivative(deriv_root: str | Path, subject: str, session: str | None, target: int, desc: str
                ) -> tuple[Path, Path]:
    """One image's .nii.gz and .json, named with the target's suffix (see :func:`derivative_paths`)."""
    extra, suffix = target_entities(target)
    return _named(deriv_root, subject, session, {**extra, "desc": desc}, suffix)


def _map(deriv_root: str | Path, subject: str, session: str | None, target: int, suffix: str) -> tuple[Path, Path]:
    """One map's .nii.gz and .json: the target's entities, `desc-<its suffix>` and the map's suffix."""
    extra, of = target_entities(target)
    return _named(deriv_root, subject, session, {**extra, "desc": of}, suffix)


def _named(deriv_root: str | Path, subject: str, session: str | None, entities: dict[str, str], suffix: str
           ) -> tuple[Path, Path]:
    sub, ses = _labels_of(subject, session)
    entities = {"sub": sub, **({"ses": ses} if ses is not None else {}), **entities}
    folder = Path(deriv_root, f"sub-{sub}", *([f"ses-{ses}"] if ses is not None else []), "anat")
    return folder / format_name(entities, suffix, ".nii.gz"), folder / format_name(entities, suffix, ".json")


def dataset_description(name: str, version: str, model_id: str, source: str | Path | None = None,
                        deriv_root: str | Path | None = None) -> dict:
    """The derivative's dataset_description.json ("Derived dataset and pipeline description":
    DatasetType derivative, GeneratedBy REQUIRED). With the raw dataset `source`: SourceDatasets
    (its URL, and its DatasetDOI if it has one) and DatasetLinks "raw", which the sidecars'
    `bids:raw:` URIs (bids_uri) resolve against: relative to `deriv_root` where given, as
    "Specification of paths" recommends ("../.." for `<dataset>/derivatives/tsf-trt`). In
    `<dataset>/derivatives/`, the folder name must contain GeneratedBy's first Name, PIPELINE_NAME."""
    described: dict = {
        "Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [{"Name": PIPELINE_NAME, "Version": version,
                         "Description": f"{_DESCRIBED}{model_id}"}]}
    if source is not None:
        url = Path(source).absolute().as_uri()
        origin = {"URL": url}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none: the URL still says where
            origin["DOI"] = str(json.loads((Path(source) / "dataset_description.json").read_text())["DatasetDOI"])
        link = url if deriv_root is None else Path(os.path.relpath(source, deriv_root)).as_posix()
        described.update(SourceDatasets=[origin], DatasetLinks={"raw": link})
    return described


#: GeneratedBy's description, which ends with the model id (read back by model_described).
_DESCRIBED = "missing MRI sequence synthesised by TSF-Seq2Seq with its task-specific error map (TSEM); model "


def model_described(described: object) -> str | None:
    """The model id a tsf-trt derivative's dataset_description names, None where it names none."""
    try:
        text = next(e["Description"] for e in described["GeneratedBy"] if e.get("Name") == PIPELINE_NAME)
    except (TypeError, KeyError, AttributeError, StopIteration):
        return None
    return text[len(_DESCRIBED):] if isinstance(text, str) and text.startswith(_DESCRIBED) else None


def described_model(path: Path) -> str | None:
    """The model a derivative's dataset_description.json at `path` names; None if none is there."""
    try:
        return model_described(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def bids_uri(path: str | Path, root: str | Path, dataset: str = "raw") -> str:
    """`bids:<dataset>:<path in the dataset>`, the form of a sidecar's "Sources" ("BIDS URI"); a
    dataset that uses them needs DatasetLinks for <dataset> (dataset_description with `source`)."""
    try:
        inside = Path(path).absolute().relative_to(Path(root).absolute())
    except ValueError:
        raise InputError(path, f"is not inside the BIDS dataset {root}") from None
    return f"bids:{dataset}:{inside.as_posix()}"
