"""Phantom subjects as a raw BIDS dataset (`tsf-trt phantom --layout bids`): a dataset to try the
BIDS App (`tsf-trt bids`) and a Slurm array on without real data.

Layout (BIDS "Non-parametric structural MR images"; `ce-` names the contrast agent):
OUT/dataset_description.json (written when absent; one that is there is left as it is) and
OUT/sub-<label>/anat/sub-<label>_T1w.nii.gz, _ce-gadolinium_T1w (T1Gd), _T2w, _FLAIR, where the
label is Phantom<seed> (PhantomHard<seed> for hard ones): BIDS labels are letters and digits
only, so not the BraTS layouts' Phantom_<seed>. The tumour label map is not written: a raw BIDS
dataset has no place for a segmentation (the BraTS layouts carry it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_dir, atomic_path, sweep
from tsf_trt.files.ownership import FolderKind, first_foreign, nifti_descrip
from tsf_trt.phantoms.generator import DESCRIP, SEQUENCES, _save, free_folders, is_hard, make_subject
from tsf_trt.version import __version__

#: The BIDS suffix (with the ce- entity for T1Gd) of each sequence, in SEQUENCES order.
SUFFIXES = ("T1w", "ce-gadolinium_T1w", "T2w", "FLAIR")


def subject_label(seed: int, hard: bool = False) -> str:
    """The participant label of subject `seed` (named by its seed, as the BraTS layouts' folders)."""
    return f"{'PhantomHard' if hard else 'Phantom'}{seed:05d}"


def _files(folder: Path) -> set[str]:
    return {f"{folder.name}_{suffix}.nii.gz" for suffix in SUFFIXES}


def _foreign(folder: Path) -> str | None:
    names = _files(folder)

    def ours(name: str, path: Path) -> bool:
        try:
            return (name in names and path.is_file() and not path.is_symlink()
                    and nifti_descrip(path).startswith(DESCRIP.encode()))
        except (OSError, EOFError, ValueError):
            return False

    def anat(name: str, path: Path) -> bool:
        return name == "anat" and path.is_dir() and not path.is_symlink() and first_foreign(path, ours) is None

    return first_foreign(folder, anat)


#: A subject folder written by :func:`write_bids_subjects` (anat/ with its four images, marked by DESCRIP).
BIDS_PHANTOM_SUBJECT = FolderKind("a tsf-trt phantom BIDS subject folder", _foreign)


def check_bids_targets(out_dir: str | Path, n: int, overwrite: bool, seed: int = 0,
                       hard_fraction: float = 0.0) -> list[Path]:
    """The subject folders to write; refuses a file as `out_dir` and existing folders (with
    `overwrite`, those that are not phantom subjects holding nothing else). Modifies nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; give a folder for the dataset")
    folders = [out / f"sub-{subject_label(seed + k, is_hard(seed + k, hard_fraction))}" for k in range(n)]
    return free_folders(folders, overwrite, BIDS_PHANTOM_SUBJECT)


def write_bids_subjects(out_dir: str | Path, n: int, bids_version: str, seed: int = 0,
                        shape: tuple[int, int, int] = (240, 240, 155), overwrite: bool = False,
                        on_subject: Callable[[Path], None] | None = None, hard_fraction: float = 0.0) -> list[Path]:
    """Write subjects 0..n-1 (subject k from seed + k) as a raw BIDS dataset under `out_dir`, each
    subject folder complete or not at all (as :func:`tsf_trt.phantoms.generator.write_subjects`)."""
    out = Path(out_dir)
    folders = check_bids_targets(out, n, overwrite, seed, hard_fraction)
    out.mkdir(parents=True, exist_ok=True)
    _describe(out, bids_version)
    sweep(out, lambda name: name.startswith("sub-Phantom"))  # killed runs' half subjects
    for k, folder in enumerate(folders):
        phantom = make_subject(seed + k, shape, is_hard(seed + k, hard_fraction))
        with atomic_dir(folder, BIDS_PHANTOM_SUBJECT) as tmp:
            (tmp / "anat").mkdir()
            for seq, suffix in zip(SEQUENCES, SUFFIXES):
                _save(phantom.volumes[seq].astype(np.float32), phantom.affine,
                      tmp / "anat" / f"{folder.name}_{suffix}.nii.gz", f"{DESCRIP} seed {phantom.seed} {seq}")
        if on_subject is not None:
            on_subject(folder)
    return folders


def _describe(out: Path, bids_version: str) -> None:
    """The dataset's dataset_description.json (REQUIRED: Name, BIDSVersion), when it has none."""
    path = out / "dataset_description.json"
    if path.exists() or path.is_symlink():
        return
    text = json.dumps({"Name": "tsf-trt phantoms", "BIDSVersion": bids_version, "DatasetType": "raw",
                       "GeneratedBy": [{"Name": "tsf-trt phantom", "Version": __version__}]}, indent=2) + "\n"
    try:
        with atomic_path(path, overwrite=False) as tmp:
            tmp.write_text(text)
    except InputError:
        if not path.exists():  # not another run's, written meanwhile
            raise
