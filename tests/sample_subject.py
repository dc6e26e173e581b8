"""A small synthetic subject (smooth ellipsoid 'heads', one per sequence) for tests and
the README's first run: `python tests/sample_subject.py OUT_DIR [--shape X Y Z]`.

It is test data, not anatomy: the intensities only have to look like an MRI volume to
the preprocessing (zero background, a skewed foreground distribution).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEQUENCES = ("t1", "t1ce", "t2", "flair")  # BraTS 2021 file suffixes
AFFINE_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE_LPS[:3, 3] = [60.0, 50.0, -10.0]


def make_head(shape=(40, 36, 12), seed=0, scale=100.0) -> np.ndarray:
    """A float32 'head': an ellipsoid of gamma-distributed intensities on zero background."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return np.where(inside, rng.gamma(3.0, scale, size=shape), 0).astype(np.float32)


def write_subject(folder: Path, name: str, shape=(64, 64, 24), seqs=SEQUENCES) -> dict[str, Path]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, seq in enumerate(seqs):
        path = folder / f"{name}_{seq}.nii.gz"
        nib.save(nib.Nifti1Image(make_head(shape, seed=k), AFFINE_LPS), path)
        paths[seq] = path
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default=None, help="subject name (default: the folder name)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 24), metavar=("X", "Y", "Z"))
    args = parser.parse_args()
    for path in write_subject(args.out_dir, args.name or args.out_dir.name, tuple(args.shape)).values():
        print(path)
