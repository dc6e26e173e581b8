"""Phantom BraTS-like subjects with ground truth: all four sequences of one simulated brain.

Why: a synthesis model can only be checked, and trained without patient data, on subjects
whose four sequences come from one known object. Here that object is real anatomy (MNI152
2009 tissue fractions, ``anatomy/``) plus a tumour, imaged with the textbook signal
equations, so every sequence differs for physical reasons: necrosis, enhancing rim and
oedema each look different in each sequence, so more inputs really carry more information.

Per subject (seed S + k for subject k): a random affine and smooth deformation of the
anatomy, a tumour (necrotic core, gadolinium-enhancing rim, white-matter oedema, irregular
outline, mass effect), per-tissue relaxation jitter, then per sequence a smooth bias field,
Rician noise and a random global intensity scale. Outside the brain mask everything is 0
(skull-stripped, like BraTS). All random fields are drawn on fixed low-resolution grids
before any per-voxel noise, so a subject's anatomy does not depend on ``shape``: the field
of view is always BraTS's 240 x 240 x 155 mm and ``shape`` only sets the voxel size.

Written with torch at first, it needs only numpy and scipy now and makes the same subjects (training
data and every measured figure depend on them): :mod:`.torch_random` draws torch's normals, :mod:`.resample`
resamples as torch did, float32 arithmetic keeps torch's order. Left: last-bit differences of float32 sqrt,
exp, sigmoid, tanh, log/sin/cos, <= 1.7e-5 of a volume's maximum on subjects 5000-5003 at 240 x 240 x 155
with identical label and tissue maps; torch itself moves ~8e-6 between its CPU kernels (DEFAULT vs AVX2,
measured at 60 x 60 x 40).
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.special import expit as _sigmoid  # float32 in, float32 out: the closest to torch.sigmoid (<= 4 ulp)

from tsf_trt.files.atomic import atomic_dir, check_folder_target, sweep
from tsf_trt.files.ownership import FolderKind, first_foreign, nifti_descrip

from tsf_trt.phantoms.resample import grid_sample_padded, upsample_trilinear, zero_border
from tsf_trt.phantoms.torch_random import TorchCompatibleRandom

SEQUENCES = ("t1", "t1gd", "t2", "flair")  # tsf_trt.sequences.NAMES order
TISSUES = ("csf", "gm", "wm", "necrosis", "rim", "oedema")  # tissue map codes 1..6
FOV_MM = (240.0, 240.0, 155.0)  # BraTS (SRI24) field of view at 1 mm
FOV_CENTRE_MNI = (0.0, -17.0, 8.0)  # MNI mm at the volume centre: the template brain's centre
LABELS_2021 = {"necrosis": 1, "oedema": 2, "rim": 4}  # BraTS 2021; 2023 writes 3 for ET

# Relaxation at 1.5-3 T, ballpark of the literature (PD relative to CSF = 1):
#   WM/GM: Wansapura et al., JMRI 9:531 (1999), WM T1 832 / GM 1331 ms, T2 80 / 110 ms at 3 T;
#     Stanisz et al., MRM 54:507 (2005), WM 1084 / GM 1820 ms, T2 69 / 99 ms at 3 T;
#     1.5 T T1 values are ~20 % shorter. PD: water content WM ~0.70, GM ~0.80.
#   CSF: near free water, 3 T measurements give T1 4.3-4.5 s, T2 1.9-2.4 s.
#   Tumour (3 T MR fingerprinting of gliomas, e.g. Badve et al., AJNR 38:492 (2017), and
#     classic relaxometry): solid tumour T1 ~1.6-2 s, T2 ~100-150 ms; vasogenic oedema raises
#     water content, T1 ~1.4-1.6 s, T2 ~150-250 ms; necrosis tends towards fluid (long T1, T2).
#   Gd relaxivity r1 ~3.5-5 /(mM s) at 1.5-3 T (Rohrer et al., Invest Radiol 40:715 (2005)).
TISSUE_T1 = {"csf": 4300.0, "gm": 1400.0, "wm": 900.0, "necrosis": 2600.0, "rim": 1700.0, "oedema": 1500.0}
TISSUE_T2 = {"csf": 2000.0, "gm": 95.0, "wm": 75.0, "necrosis": 400.0, "rim": 120.0, "oedema": 180.0}
TISSUE_PD = {"csf": 1.0, "gm": 0.82, "wm": 0.70, "necrosis": 0.92, "rim": 0.85, "oedema": 0.88}
CBV = {"csf": 0.0, "gm": 0.04, "wm": 0.02, "necrosis": 0.0, "rim": 0.06, "oedema": 0.02}  # blood volume
R1_GD = 4.0e-3  # /(mM ms)
SPIN_ECHO = {"t1": (500.0, 15.0), "t1gd": (500.0, 15.0), "t2": (4000.0, 100.0)}  # TR, TE in ms
FLAIR_TR, FLAIR_TE = 9000.0, 120.0
# CSF nulled: Mz(TI) = 0 for S ~ 1 - 2 exp(-TI/T1) + exp(-TR/T1); T1 ln 2 is its TR -> inf limit.
FLAIR_TI = TISSUE_T1["csf"] * math.log(2.0 / (1.0 + math.exp(-FLAIR_TR / TISSUE_T1["csf"])))
# "Hard" subjects (to test the intervals' subject flag): the same draws, then larger tumours and stronger noise.
HARD_TUMOUR = 1.6  # every tumour radius (core, rim, oedema) times this: about 4x the volume
HARD_NOISE = 3.0  # Rician noise sigma times this
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass
class Phantom:
    """One subject: volumes in nibabel (x, y, z) order of an L,P,S-stored grid, plus truth."""

    volumes: dict[str, np.ndarray]  # SEQUENCES -> float32, 0 outside the brain
    label: np.ndarray  # uint8 BraTS 2021 labels: 1 necrotic core, 2 oedema, 4 enhancing
    tissue: np.ndarray  # uint8 dominant tissue, 0 background, k+1 for TISSUES[k]
    affine: np.ndarray  # 4x4, L,P,S axes, voxel = FOV_MM / shape
    seed: int
    params: dict = field(default_factory=dict)  # everything drawn for this subject


@lru_cache(maxsize=1)
def _anatomy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WM, GM, CSF fractions (3, X, Y, Z) on the atlas grid with a zero border (:func:`.resample.zero_border`,
    for sampling), the atlas affine (no border), deep-WM centres (MNI mm)."""
    with resources.as_file(resources.files(__package__) / "anatomy" / "mni152_2009_tissues.npz") as path:
        with np.load(path) as npz:
            frac, affine = npz["fractions"], npz["affine"].astype(np.float64)
    ijk = np.argwhere(frac[0] >= 230)  # nearly pure white matter
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    keep = (np.abs(xyz[:, 0]) > 12) & (xyz[:, 1] > -75) & (xyz[:, 2] > -25)  # cerebral hemispheres
    atlas = zero_border(frac.astype(np.float32) / np.float32(255.0))
    atlas.flags.writeable = False  # cached: shared by every subject
    return atlas, affine, xyz[keep]


def lps_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Affine of the output grid: L,P,S axes (like BraTS), the FOV centred on the brain."""
    vox = np.array(FOV_MM) / np.array(shape)
    affine = np.diag([-vox[0], -vox[1], vox[2], 1.0])
    affine[:3, 3] = np.array(FOV_CENTRE_MNI) - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def _rotation(deg: np.ndarray) -> np.ndarray:
    a, b, c = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _f32(x: float) -> np.float32:
    """A Python scalar as the float32 that torch used for it (scalars meet float32 tensors as float32)."""
    return np.float32(x)


def _exp_(x: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """exp of a float32 array in place, correctly rounded like torch's kernel nearly always is (numpy's
    float32 exp is not): via float64, a chunk at a time."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        part[...] = np.exp(part, dtype=np.float64)
    return x


def _smooth(normal: TorchCompatibleRandom, channels: int, grid: tuple[int, int, int],
            shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random field: N(0, 1) on a coarse grid, trilinear up to ``shape`` (same FOV)."""
    return upsample_trilinear(normal.randn(channels, *grid), shape)


def _draw_params(rng: np.random.Generator, centres: np.ndarray) -> dict:
    """Every scalar that makes this subject different, drawn in a fixed order."""
    jitter = {k: rng.uniform(0.95, 1.05, size=2) for k in TISSUES}
    r_out = rng.uniform(12.0, 24.0)
    return {
        "rotation_deg": rng.uniform(-6, 6, size=3), "scale": rng.uniform(0.93, 1.05, size=3),
        "shift_mm": rng.uniform(-5, 5, size=3), "deform_mm": rng.uniform(1.5, 3.5),
        "t1": {k: TISSUE_T1[k] * jitter[k][0] for k in TISSUES},
        "t2": {k: TISSUE_T2[k] * jitter[k][1] for k in TISSUES},
        "tumour_centre_mni": centres[rng.integers(len(centres))] + rng.uniform(-1, 1, size=3),
        "tumour_radius_mm": r_out, "core_radius_mm": r_out * rng.uniform(0.5, 0.68),
        "oedema_radius_mm": r_out * rng.uniform(1.4, 2.2), "irregularity": rng.uniform(0.15, 0.3),
        "mass_effect": rng.uniform(0.15, 0.4),
        "gd_plasma_mM": rng.uniform(0.6, 1.0), "gd_leak_rim_mM": rng.uniform(0.25, 0.5),
        "gd_leak_oedema_mM": rng.uniform(0.0, 0.02),
        "bias": rng.uniform(0.06, 0.12, size=4),  # std of log-gain: about +-10-20 % over the brain
        "noise_sigma_wm": rng.uniform(0.02, 0.04, size=4), "intensity_scale": np.exp(rng.uniform(-0.7, 0.7, size=4)),
    }


def _argmax0(x: np.ndarray) -> np.ndarray:
    """argmax over the first axis as uint8 (the first on ties); elementwise passes, faster than argmax(0)."""
    best, index = x[0].copy(), np.zeros(x.shape[1:], dtype=np.uint8)
    for k in range(1, x.shape[0]):
        index[x[k] > best] = k
        np.maximum(best, x[k], out=best)
    return index


def signal_table(p: dict) -> np.ndarray:
    """Signal (4 sequences x 6 tissues) of pure tissue, from the textbook equations."""
    t1 = np.array([p["t1"][k] for k in TISSUES])
    t2 = np.array([p["t2"][k] for k in TISSUES])
    pd = np.array([TISSUE_PD[k] for k in TISSUES])
    gd = np.array([CBV[k] for k in TISSUES]) * p["gd_plasma_mM"]
    gd[TISSUES.index("rim")] += p["gd_leak_rim_mM"]  # broken blood-brain barrier
    gd[TISSUES.index("oedema")] += p["gd_leak_oedema_mM"]
    t1_gd = 1.0 / (1.0 / t1 + R1_GD * gd)

    def spin_echo(tr: float, te: float, t1_: np.ndarray) -> np.ndarray:
        return pd * (1 - np.exp(-tr / t1_)) * np.exp(-te / t2)

    flair = pd * np.abs(1 - 2 * np.exp(-FLAIR_TI / t1) + np.exp(-FLAIR_TR / t1)) * np.exp(-FLAIR_TE / t2)
    return np.stack([spin_echo(*SPIN_ECHO["t1"], t1), spin_echo(*SPIN_ECHO["t1gd"], t1_gd),
                     spin_echo(*SPIN_ECHO["t2"], t1), flair])


def is_hard(seed: int, fraction: float) -> bool:
    """Whether subject `seed` is hard in a data set with `fraction` hard subjects: a golden-ratio
    sequence, so about that fraction of any run of seeds is hard, independently of their number."""
    return fraction > 0 and (seed * _GOLDEN) % 1.0 < fraction


def _centred_axes(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Output voxel coordinates (mm, relative to the FOV centre) along each axis, float32."""
    affine = lps_affine(shape)
    c = np.array(FOV_CENTRE_MNI)
    return [(affine[a, a] * np.arange(n) + affine[a, 3] - c[a]).astype(np.float32) for a, n in enumerate(shape)]


def _atlas_points(p: dict, axes: list[np.ndarray], deform: np.ndarray) -> np.ndarray:
    """Output voxel -> subject anatomy -> atlas (MNI) point: q = c + R S (x - c) + shift + d(x), (3, X, Y, Z)
    for the voxels of ``axes`` (:func:`_centred_axes`); computed in ``deform``'s memory."""
    c = np.array(FOV_CENTRE_MNI)
    m = _rotation(p["rotation_deg"]) @ np.diag(p["scale"])
    views = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    q = deform
    for a in range(3):
        linear = _f32(m[a, 0]) * views[0] + _f32(m[a, 1]) * views[1] + _f32(m[a, 2]) * views[2]
        q[a] += linear + _f32(c[a] + p["shift_mm"][a])  # same order as (linear + offset) + deform
    return q


def _mass_effect(p: dict, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Push tissue away from the tumour (monotone radial map, k < 1): new points and the distance to its centre."""
    tc = np.asarray(p["tumour_centre_mni"], dtype=np.float32)[:, None, None, None]
    rel = np.subtract(q, tc, out=q)  # in place, here and below: q is not needed after this
    dist = np.sqrt((rel[0] * rel[0] + rel[1] * rel[1]) + rel[2] * rel[2])
    s = dist / _f32(p["oedema_radius_mm"])
    rel *= _f32(1.0) - _f32(p["mass_effect"]) * _exp_(-(s * s) / _f32(2.0))
    return np.add(rel, tc, out=rel), dist


def _atlas_grid(q: np.ndarray, atlas_affine: np.ndarray, n_at: tuple[int, ...]) -> list[np.ndarray]:
    """MNI points -> grid_sample's normalised coordinates of the atlas, x (W) = atlas axis 2 first (in place)."""
    for a in range(3):
        q[a] -= _f32(atlas_affine[a, 3])  # atlas voxel: (q - t) / step
        q[a] /= _f32(atlas_affine[a, a])
        q[a] *= _f32(2.0)  # normalised: 2 ijk / (n - 1) - 1
        q[a] /= _f32(n_at[a] - 1)
        q[a] -= _f32(1.0)
    return [q[2], q[1], q[0]]


def _fractions(p: dict, shape: tuple[int, int, int], deform: np.ndarray, outline: np.ndarray,
               voxels_per_slab: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(6, *shape) fractions of TISSUES and (*shape) the brain fraction. Given the coarse fields every voxel
    is independent, so this goes a slab of x planes at a time: small temporaries, the same numbers."""
    atlas, atlas_affine, _ = _anatomy()
    n_atlas = tuple(n - 2 for n in atlas.shape[1:])  # without its zero border
    outline = zero_border(outline)
    axes = _centred_axes(shape)
    fractions = np.empty((len(TISSUES), *shape), dtype=np.float32)
    brain = np.empty(shape, dtype=np.float32)
    step = max(1, voxels_per_slab // (shape[1] * shape[2]))
    for x0 in range(0, shape[0], step):
        part = slice(x0, x0 + step)
        q, dist = _mass_effect(p, _atlas_points(p, [axes[0][part], *axes[1:]], deform[:, part]))
        # Oedema stays in the tumour's hemisphere (the template is symmetric about x = 0).
        same_side = _sigmoid(q[0] * _f32(math.copysign(1.0, p["tumour_centre_mni"][0])) / _f32(3.0))
        grid = _atlas_grid(q, atlas_affine, n_atlas)
        sampled, rough = grid_sample_padded(atlas, grid), grid_sample_padded(outline, grid)[0]
        fractions[:, part], brain[part] = _tumour(p, sampled, rough, dist, same_side, shape)
    return fractions, brain


def _tumour(p: dict, sampled: np.ndarray, rough: np.ndarray, dist: np.ndarray, same_side: np.ndarray,
            shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of TISSUES and of brain at some voxels: the tumour from the (irregular) distance, soft
    edges of about half a voxel being partial volume. ``sampled``: atlas WM, GM, CSF there."""
    wm, gm, csf = sampled
    rough = np.tanh(rough, dtype=np.float64).astype(np.float32)  # bounded: radii vary by at most +-irregularity
    width = _f32(0.4 * float(np.mean(np.array(FOV_MM) / np.array(shape))))

    def inside(radius: float, r: np.ndarray) -> np.ndarray:
        return _sigmoid((_f32(radius) - r) / width)

    brain = wm + gm + csf
    rho = dist * (_f32(1.0) + _f32(p["irregularity"]) * rough)
    solid, core = inside(p["tumour_radius_mm"], rho), inside(p["core_radius_mm"], rho)
    rho = dist * (_f32(1.0) + _f32(1.5 * p["irregularity"]) * rough)  # oedema spreads more unevenly
    oedema = np.maximum(inside(p["oedema_radius_mm"], rho) * same_side - solid, _f32(0.0))
    kept = _f32(1.0) - solid
    wm, gm, csf = wm * kept, gm * kept, csf * kept
    f_oed = oedema * (wm + _f32(0.3) * gm)  # vasogenic oedema follows white matter, spares cortex
    wm, gm = wm * (_f32(1.0) - oedema), gm * (_f32(1.0) - _f32(0.3) * oedema)
    return np.stack([csf, gm, wm, core * brain, (solid - core) * brain, f_oed]), brain


def _images(p: dict, table: np.ndarray, fractions: np.ndarray, bias: np.ndarray, head: np.ndarray,
            normal: TorchCompatibleRandom) -> np.ndarray:
    """(4, *shape) images: partial-volume mix of pure-tissue signals, bias, Rician noise, global scale."""
    clean = (table.astype(np.float32) @ fractions.reshape(len(TISSUES), -1)).reshape(bias.shape)
    clean *= bias
    sigma = (p["noise_sigma_wm"] * table[:, TISSUES.index("wm")]).astype(np.float32)[:, None, None, None]
    noise = normal.randn(*clean.shape)
    clean += np.multiply(noise, sigma, out=noise)
    noise = normal.randn(*clean.shape, out=noise)  # the second draw reuses the first's memory
    noisy = np.hypot(clean, np.multiply(noise, sigma, out=noise), out=clean)
    noisy *= (1000.0 * p["intensity_scale"]).astype(np.float32)[:, None, None, None]
    noisy *= head
    return noisy


def make_subject(seed: int, shape: tuple[int, int, int] = (240, 240, 155), hard: bool = False) -> Phantom:
    """Simulate one subject; the same seed gives the same subject, bit for bit. ``hard``: the same
    random draws, then tumour radii times HARD_TUMOUR and noise times HARD_NOISE."""
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    centres = _anatomy()[2]
    rng = np.random.default_rng(seed)
    normal = TorchCompatibleRandom(seed)  # the stream torch.Generator().manual_seed(seed) gave
    p = _draw_params(rng, centres)
    if hard:
        for name in ("tumour_radius_mm", "core_radius_mm", "oedema_radius_mm"):
            p[name] *= HARD_TUMOUR
        p.update(noise_sigma_wm=p["noise_sigma_wm"] * HARD_NOISE, hard=True)
    # Coarse fields first (shape-independent), per-voxel noise last.
    deform = _smooth(normal, 3, (6, 6, 5), shape) * _f32(p["deform_mm"])
    outline = normal.randn(1, 20, 24, 20)  # tumour outline noise, atlas frame (~8 mm)
    bias = _exp_(_smooth(normal, 4, (4, 4, 3), shape) * p["bias"].astype(np.float32)[:, None, None, None])

    fractions, brain = _fractions(p, shape, deform, outline)
    del deform
    head = brain >= 0.5

    table = signal_table(p)
    volumes = _images(p, table, fractions, bias, head, normal)
    dominant = _argmax0(fractions)
    tissue = np.where(head, dominant + 1, 0).astype(np.uint8)
    tumour_code = np.array([0, 0, 0, LABELS_2021["necrosis"], LABELS_2021["rim"], LABELS_2021["oedema"]], np.uint8)
    label = np.where(head, tumour_code[dominant], 0).astype(np.uint8)
    p.update(seed=int(seed), shape=list(shape), voxel_mm=(np.array(FOV_MM) / np.array(shape)).tolist(),
             flair_ti_ms=FLAIR_TI, signal_table=table)
    return Phantom({name: np.ascontiguousarray(v) for name, v in zip(SEQUENCES, volumes)},
                   label, tissue, lps_affine(shape), int(seed), _plain(p))


def _plain(value):
    """Numpy scalars and arrays as plain Python, so params can go to JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


LAYOUTS = {  # file suffixes in SEQUENCES order + seg, separator, subject name, ET label
    "brats2021": (("t1", "t1ce", "t2", "flair"), "seg", "_", "Phantom_{:05d}", 4),
    "brats2023": (("t1n", "t1c", "t2w", "t2f"), "seg", "-", "Phantom-{:05d}-000", 3),
}


#: Start of the descrip of every NIfTI :func:`write_subject` writes: how a subject folder is
#: recognised as a phantom's (and so may be replaced with --overwrite).
DESCRIP = "tsf-trt phantom"


def subject_name(seed: int, layout: str, hard: bool = False) -> str:
    """Named by its seed, so data sets made with different --seed never share a name
    (held-out test subjects are then recognisable as such); hard ones are PhantomHard_..."""
    name = LAYOUTS[layout][3].format(seed)
    return name.replace("Phantom", "PhantomHard", 1) if hard else name


def _save(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = description.encode("ascii")[:79]
    img.to_filename(path)


def write_subject(phantom: Phantom, folder: Path, name: str, layout: str) -> None:
    """The subject's four sequences and tumour label map, named for ``layout``."""
    suffixes, seg, sep, _, et = LAYOUTS[layout]
    for seq, suffix in zip(SEQUENCES, suffixes):
        _save(phantom.volumes[seq].astype(np.float32), phantom.affine, folder / f"{name}{sep}{suffix}.nii.gz",
              f"{DESCRIP} seed {phantom.seed} {seq}")
    label = np.where(phantom.label == LABELS_2021["rim"], et, phantom.label).astype(np.uint8)
    _save(label, phantom.affine, folder / f"{name}{sep}{seg}.nii.gz", f"{DESCRIP} seed {phantom.seed} labels")


def _subject_files(name: str) -> set[str]:
    """The files a phantom subject folder called `name` holds, in either layout."""
    return {f"{name}{sep}{suffix}.nii.gz" for suffixes, seg, sep, _, _ in LAYOUTS.values()
            for suffix in (*suffixes, seg)}


def _phantom_foreign(folder: Path) -> str | None:
    files = _subject_files(folder.name)

    def allowed(name: str, path: Path) -> bool:
        if name not in files or path.is_symlink() or not path.is_file():
            return False
        try:
            return nifti_descrip(path).startswith(DESCRIP.encode())
        except (OSError, EOFError, ValueError, zlib.error, struct.error):
            return False

    return first_foreign(folder, allowed)


#: A subject folder written by :func:`write_subjects` (its five NIfTI files, marked by DESCRIP).
PHANTOM_SUBJECT = FolderKind("a tsf-trt phantom subject folder", _phantom_foreign)
_SUBJECT_NAME = re.compile(r"^(Phantom|PhantomHard)[_-]\d+(-000)?$")


def check_targets(out_dir: str | Path, n: int, layout: str, overwrite: bool, seed: int = 0,
                  hard_fraction: float = 0.0) -> list[Path]:
    """The subject folders to write; refuses a bad layout, a file as ``out_dir``, an unwritable
    one, and existing folders (with ``overwrite``, those that are not phantom subjects holding
    nothing else). Modifies nothing."""
    from tsf_trt.errors import InputError, TsfError

    if layout not in LAYOUTS:
        raise TsfError(f"unknown layout '{layout}': use {' or '.join(LAYOUTS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; give a folder for the subjects")
    if not 0.0 <= hard_fraction <= 1.0:
        raise TsfError(f"hard fraction must be within 0..1, got {hard_fraction}")
    folders = [out / subject_name(seed + k, layout, is_hard(seed + k, hard_fraction)) for k in range(n)]
    return free_folders(folders, overwrite, PHANTOM_SUBJECT)


def free_folders(folders: list[Path], overwrite: bool, kind: FolderKind) -> list[Path]:
    """`folders`, once none exists or, with `overwrite`, each existing one is a `kind` folder
    holding nothing else (and the first would be writable); every phantom layout's one rule."""
    from tsf_trt.errors import InputError

    taken = [f for f in folders if f.exists() or f.is_symlink()]
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise InputError(taken[0], f"exists{more}; use --overwrite to replace")
    for folder in taken or folders[:1]:
        check_folder_target(folder, overwrite, kind)
    return folders


def write_subjects(out_dir: str | Path, n: int, seed: int = 0, shape: tuple[int, int, int] = (240, 240, 155),
                   layout: str = "brats2021", overwrite: bool = False,
                   on_subject: Callable[[Path], None] | None = None, hard_fraction: float = 0.0) -> list[Path]:
    """Write subjects 0..n-1 (subject k from seed + k) as BraTS folders under ``out_dir``.

    Each folder is written under a hidden temp name and renamed when complete, so an
    interrupted run leaves no half subject. Existing folders are refused up front unless
    ``overwrite``. With ``hard_fraction`` > 0, subjects for which :func:`is_hard` holds are
    made hard and named PhantomHard_... (for testing the intervals' subject flag).
    """
    out = Path(out_dir)
    folders = check_targets(out, n, layout, overwrite, seed, hard_fraction)
    out.mkdir(parents=True, exist_ok=True)
    sweep(out, lambda name: bool(_SUBJECT_NAME.match(name)))  # killed runs' half subjects
    for k, folder in enumerate(folders):
        with atomic_dir(folder, PHANTOM_SUBJECT) as tmp:  # checked above, and again before the swap
            write_subject(make_subject(seed + k, shape, is_hard(seed + k, hard_fraction)), tmp, folder.name, layout)
        if on_subject is not None:
            on_subject(folder)
    return folders
