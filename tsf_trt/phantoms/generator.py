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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tsf_trt.atomic import atomic_dir

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
# "Hard" subjects (to test a QC flag): the same draws, then larger tumours and stronger noise.
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
def _anatomy() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """WM, GM, CSF fractions (1, 3, X, Y, Z) on the atlas grid, its affine, deep-WM centres (MNI mm)."""
    with resources.as_file(resources.files(__package__) / "anatomy" / "mni152_2009_tissues.npz") as path:
        with np.load(path) as npz:
            frac, affine = npz["fractions"], npz["affine"].astype(np.float64)
    ijk = np.argwhere(frac[0] >= 230)  # nearly pure white matter
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    keep = (np.abs(xyz[:, 0]) > 12) & (xyz[:, 1] > -75) & (xyz[:, 2] > -25)  # cerebral hemispheres
    atlas = torch.from_numpy(frac.astype(np.float32) / 255.0)[None]
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


def _smooth(gen: torch.Generator, channels: int, grid: tuple[int, int, int], shape: tuple[int, ...]) -> torch.Tensor:
    """A smooth random field: N(0, 1) on a coarse grid, trilinear up to ``shape`` (same FOV)."""
    coarse = torch.randn((1, channels, *grid), generator=gen)
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]


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


def _argmax0(x: torch.Tensor) -> torch.Tensor:
    """argmax over the first axis as uint8; elementwise passes, several times faster than Tensor.argmax(0)."""
    best, index = x[0].clone(), torch.zeros(x.shape[1:], dtype=torch.uint8)
    for k in range(1, x.shape[0]):
        better = x[k] > best
        index.masked_fill_(better, k)
        best = torch.maximum(best, x[k])
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


def make_subject(seed: int, shape: tuple[int, int, int] = (240, 240, 155), hard: bool = False) -> Phantom:
    """Simulate one subject; the same seed gives the same subject, bit for bit. ``hard``: the same
    random draws, then tumour radii times HARD_TUMOUR and noise times HARD_NOISE."""
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    atlas, atlas_affine, centres = _anatomy()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    p = _draw_params(rng, centres)
    if hard:
        for name in ("tumour_radius_mm", "core_radius_mm", "oedema_radius_mm"):
            p[name] *= HARD_TUMOUR
        p.update(noise_sigma_wm=p["noise_sigma_wm"] * HARD_NOISE, hard=True)
    # Coarse fields first (shape-independent), per-voxel noise last.
    deform = _smooth(gen, 3, (6, 6, 5), shape) * p["deform_mm"]
    outline = torch.randn((1, 1, 20, 24, 20), generator=gen)  # tumour outline noise, atlas frame (~8 mm)
    log_gain = torch.tensor(p["bias"], dtype=torch.float32)[:, None, None, None]
    bias = torch.exp(_smooth(gen, 4, (4, 4, 3), shape) * log_gain)

    # Output voxel -> subject anatomy -> atlas (MNI) point: q = c + R S (x - c) + shift + d(x).
    affine = lps_affine(shape)
    c = np.array(FOV_CENTRE_MNI)
    m = _rotation(p["rotation_deg"]) @ np.diag(p["scale"])
    axes = [torch.from_numpy((affine[a, a] * np.arange(n) + affine[a, 3] - c[a]).astype(np.float32))
            for a, n in enumerate(shape)]
    views = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    q = torch.stack([sum(float(m[a, b]) * views[b] for b in range(3)) + float(c[a] + p["shift_mm"][a]) + deform[a]
                     for a in range(3)])
    del deform
    tc = torch.tensor(p["tumour_centre_mni"], dtype=torch.float32)[:, None, None, None]
    rel = q - tc
    dist = rel.square().sum(0).sqrt_()
    # Mass effect: tissue is pushed away from the tumour (monotone radial map, k < 1).
    s = p["oedema_radius_mm"]
    q = tc + rel * (1.0 - p["mass_effect"] * torch.exp(-(dist / s).square() / 2))
    del rel
    # Oedema stays in the tumour's hemisphere (the template is symmetric about x = 0).
    same_side = torch.sigmoid(q[0] * math.copysign(1.0, p["tumour_centre_mni"][0]) / 3.0)
    ijk = [(q[a] - float(atlas_affine[a, 3])) / float(atlas_affine[a, a]) for a in range(3)]
    n_at = atlas.shape[2:]
    grid = torch.stack([2 * ijk[a] / (n_at[a] - 1) - 1 for a in (2, 1, 0)], dim=-1)[None]
    del q, ijk
    wm, gm, csf = F.grid_sample(atlas, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    rough = F.grid_sample(outline, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    del grid

    # Tumour from the (irregular) distance; soft edges of about half a voxel are partial volume.
    rough = torch.tanh(rough)  # bounded: radii vary by at most +-irregularity
    rho = dist * (1 + p["irregularity"] * rough)
    width = 0.4 * float(np.mean(np.array(FOV_MM) / np.array(shape)))

    def inside(radius: float, r: torch.Tensor = rho) -> torch.Tensor:
        return torch.sigmoid((radius - r) / width)

    brain = wm + gm + csf
    solid, core = inside(p["tumour_radius_mm"]), inside(p["core_radius_mm"])
    rho_oedema = dist * (1 + 1.5 * p["irregularity"] * rough)  # oedema spreads more unevenly
    oedema = (inside(p["oedema_radius_mm"], rho_oedema) * same_side - solid).clamp_(min=0)
    wm, gm, csf = wm * (1 - solid), gm * (1 - solid), csf * (1 - solid)
    f_oed = oedema * (wm + 0.3 * gm)  # vasogenic oedema follows white matter, spares cortex
    wm, gm = wm * (1 - oedema), gm * (1 - 0.3 * oedema)
    fractions = torch.stack([csf, gm, wm, core * brain, (solid - core) * brain, f_oed])
    del wm, gm, csf, solid, core, oedema, f_oed, rho, rho_oedema, rough, dist, same_side
    head = brain >= 0.5

    # Signals: partial-volume mix of pure-tissue signals, bias, Rician noise, global scale.
    table = signal_table(p)
    clean = torch.einsum("sk,kxyz->sxyz", torch.from_numpy(table.astype(np.float32)), fractions) * bias
    del bias
    sigma = p["noise_sigma_wm"] * table[:, TISSUES.index("wm")]  # per sequence
    sigma = torch.from_numpy(sigma.astype(np.float32))[:, None, None, None]
    noisy = torch.hypot(clean + sigma * torch.randn(clean.shape, generator=gen),
                        sigma * torch.randn(clean.shape, generator=gen))
    del clean
    scale = torch.from_numpy((1000.0 * p["intensity_scale"]).astype(np.float32))[:, None, None, None]
    volumes = (noisy * scale * head).numpy()

    dominant = _argmax0(fractions)
    tissue = torch.where(head, dominant + 1, 0).to(torch.uint8).numpy()
    tumour_code = torch.tensor([0, 0, 0, LABELS_2021["necrosis"], LABELS_2021["rim"], LABELS_2021["oedema"]],
                               dtype=torch.uint8)
    label = torch.where(head, tumour_code[dominant.long()], 0).to(torch.uint8).numpy()
    p.update(seed=int(seed), shape=list(shape), voxel_mm=(np.array(FOV_MM) / np.array(shape)).tolist(),
             flair_ti_ms=FLAIR_TI, signal_table=table)
    return Phantom({name: np.ascontiguousarray(v) for name, v in zip(SEQUENCES, volumes)},
                   label, tissue, affine, int(seed), _plain(p))


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
              f"tsf-trt phantom seed {phantom.seed} {seq}")
    label = np.where(phantom.label == LABELS_2021["rim"], et, phantom.label).astype(np.uint8)
    _save(label, phantom.affine, folder / f"{name}{sep}{seg}.nii.gz", f"tsf-trt phantom seed {phantom.seed} labels")


def check_targets(out_dir: str | Path, n: int, layout: str, overwrite: bool, seed: int = 0,
                  hard_fraction: float = 0.0) -> list[Path]:
    """The subject folders to write; refuses a bad layout, a file as ``out_dir`` or existing folders."""
    from tsf_trt.errors import InputError, TsfError

    if layout not in LAYOUTS:
        raise TsfError(f"unknown layout '{layout}': use {' or '.join(LAYOUTS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; give a folder for the subjects")
    if not 0.0 <= hard_fraction <= 1.0:
        raise TsfError(f"hard fraction must be within 0..1, got {hard_fraction}")
    folders = [out / subject_name(seed + k, layout, is_hard(seed + k, hard_fraction)) for k in range(n)]
    taken = [f for f in folders if f.exists() or f.is_symlink()]
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise InputError(taken[0], f"exists{more}; use --overwrite to replace")
    return folders


def write_subjects(out_dir: str | Path, n: int, seed: int = 0, shape: tuple[int, int, int] = (240, 240, 155),
                   layout: str = "brats2021", overwrite: bool = False,
                   on_subject: Callable[[Path], None] | None = None, hard_fraction: float = 0.0) -> list[Path]:
    """Write subjects 0..n-1 (subject k from seed + k) as BraTS folders under ``out_dir``.

    Each folder is written under a hidden temp name and renamed when complete, so an
    interrupted run leaves no half subject. Existing folders are refused up front unless
    ``overwrite``. With ``hard_fraction`` > 0, subjects for which :func:`is_hard` holds are
    made hard and named PhantomHard_... (for testing a QC flag).
    """
    out = Path(out_dir)
    folders = check_targets(out, n, layout, overwrite, seed, hard_fraction)
    out.mkdir(parents=True, exist_ok=True)
    for k, folder in enumerate(folders):
        with atomic_dir(folder) as tmp:  # existing folders were refused above unless overwrite
            write_subject(make_subject(seed + k, shape, is_hard(seed + k, hard_fraction)), tmp, folder.name, layout)
        if on_subject is not None:
            on_subject(folder)
    return folders
