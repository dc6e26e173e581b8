"""Derive ``tsf_trt/phantoms/anatomy/mni152_2009_tissues.npz`` from the MNI152 2009 maps inside nilearn (run once).

The phantom generator (:mod:`tsf_trt.phantoms.generator`) needs real brain anatomy but must not
depend on nilearn at run time, so this script turns the templates nilearn ships into a
small package-data file. It is kept here so the file can be rebuilt and audited:

    python3 -m venv /tmp/nl && /tmp/nl/bin/pip install nilearn     # a throwaway venv
    /tmp/nl/bin/python tsf_trt/phantoms/make_anatomy.py    # writes tsf_trt/phantoms/anatomy/*.npz

(nilearn brings numpy, scipy and nibabel; the project's own venv needs none of it.)

What nilearn ships (checked with nilearn 0.14.1, ``nilearn/datasets/data/``):
``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` (skull-stripped T1 template) and the
grey- and white-matter probability maps ``..._gm_...`` and ``..._wm_...``, all 1 mm, 197x233x189,
uint8 0..255. The CSF map is NOT shipped, so it is derived here: CSF = brain mask - GM - WM,
the brain mask being the support of the skull-stripped T1 template (T1 > 0). The T1 template
has no scalp or skull, so there is no non-brain tissue to keep; the phantom is skull-stripped,
like BraTS data.

Output: fractions (3, X, Y, Z) uint8 (value/255 = tissue fraction; order WM, GM, CSF) on a
1.5 mm RAS grid cropped to the brain, its 4x4 affine (MNI mm), and provenance strings.
The template's licence notice is in ``tsf_trt/phantoms/anatomy/LICENSE-MNI152.txt``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

SPACING = 1.5  # mm; 1 mm would be ~4.5 MB compressed, over our 4 MB budget
MARGIN = 3  # voxels of 1 mm kept around the brain
OUT = Path(__file__).resolve().parent / "anatomy" / "mni152_2009_tissues.npz"
NAMES = ("wm", "gm", "csf")


def main() -> None:
    import nibabel as nib
    import nilearn
    from nilearn.datasets import struct
    from scipy import ndimage

    files = {"t1": Path(struct.MNI152_FILE_PATH), "gm": Path(struct.GM_MNI152_FILE_PATH),
             "wm": Path(struct.WM_MNI152_FILE_PATH)}
    imgs = {k: nib.load(p) for k, p in files.items()}
    affine = imgs["t1"].affine
    for k, img in imgs.items():
        if img.shape != imgs["t1"].shape or not np.allclose(img.affine, affine):
            sys.exit(f"{files[k].name}: grid differs from the T1 template")
    if not np.allclose(affine[:3, :3], np.eye(3)):
        sys.exit("expected a 1 mm RAS template grid")
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0

    mask = t1 > 0  # the template's own skull stripping
    gm, wm = gm * mask, wm * mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask  # derived: not shipped by nilearn
    raw = np.asarray(imgs["gm"].dataobj, dtype=np.float32) + np.asarray(imgs["wm"].dataobj, dtype=np.float32)
    print(f"brain mask {mask.sum()} voxels; mean fractions in it: WM {wm[mask].mean():.3f} "
          f"GM {gm[mask].mean():.3f} CSF {csf[mask].mean():.3f}; voxels outside the mask with "
          f"GM+WM > 0.1 (dropped): {int((raw > 25.5)[~mask].sum())}")

    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - MARGIN, 0)
    hi = np.minimum(idx.max(0) + MARGIN, np.array(mask.shape) - 1)
    n_out = np.floor((hi - lo) / SPACING).astype(int) + 1
    # Anti-alias before sampling at 1.5 mm: Gaussian of the extra width (FWHM^2 = 1.5^2 - 1^2).
    sigma = np.sqrt(SPACING**2 - 1.0) / 2.3548
    coords = np.meshgrid(*[lo[a] + SPACING * np.arange(n_out[a]) for a in range(3)], indexing="ij")
    out = []
    for frac in (wm, gm, csf):
        smooth = ndimage.gaussian_filter(frac, sigma, mode="constant")
        out.append(ndimage.map_coordinates(smooth, coords, order=1, mode="constant"))
    fractions = np.clip(np.rint(np.stack(out) * 255.0), 0, 255).astype(np.uint8)
    new_affine = affine.copy()
    new_affine[:3, :3] *= SPACING
    new_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    sources = "; ".join(f"{p.name} sha256 {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files.values())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT, fractions=fractions, affine=new_affine, names=np.array(NAMES),
        source=np.array(f"MNI ICBM152 2009a nonlinear symmetric, from nilearn {nilearn.__version__}: {sources}"),
        derivation=np.array("mask = T1 template > 0; GM, WM clipped to the mask; CSF = mask - GM - WM "
                            f"(no CSF map in nilearn); Gaussian anti-alias sigma {sigma:.3f} mm, trilinear "
                            f"to {SPACING} mm, x255 uint8; see tsf_trt/phantoms/make_anatomy.py"),
    )
    print(f"wrote {OUT}: fractions {fractions.shape} uint8, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
