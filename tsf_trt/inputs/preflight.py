"""Cheap checks that one subject's inputs look like what the network was trained on.

The weights expect BraTS-like inputs: skull-stripped (exactly empty background outside the
brain), co-registered on one grid, about 1 mm voxels. None of this can be verified from a
header alone, and a violation does not fail: the synthesis just gets worse, silently. These
checks look at the loaded voxels (subsampled, a few tens of milliseconds per volume) and
return :class:`Finding` s; whether a finding is a warning or an error is the caller's choice.
Thresholds and how they were measured: docs/your-data.md, "Preparing your data".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage

from tsf_trt import sequences
from tsf_trt.errors import InputError
from tsf_trt.files.volume import CANONICAL_AXCODES, Volume, check_same_grid

_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)
KINDS = ("voxel-size", "not-skull-stripped", "different-grid", "misaligned", "identical-inputs")

#: Voxel sizes accepted as "about 1 mm", per axis (docs/your-data.md, "Preparing your data").
VOXEL_MM_RANGE = (0.8, 1.25)
#: Outside the head (farther than BACKGROUND_MARGIN_MM from it), a skull-stripped volume is
#: exactly its background value; a raw scan holds noise there. Fraction of such voxels allowed
#: to differ from the background value.
MAX_NONEMPTY_OUTSIDE = 0.05
BACKGROUND_MARGIN_MM = 6.0
#: Foreground larger than any brain mask: skull and scalp were kept (zero-background heads).
MAX_BRAIN_ML = 3000.0
#: The head is what stands out from the background by more than 5 % of the image's bright end,
#: and by more than NOISE_FLOOR_FACTOR times the noise floor: the median deviation from the
#: background value in the field of view's 8 corner blocks (CORNER_FRACTION of each axis),
#: which hold no head even in a field of view cut to an ellipsoidal head's box. On a
#: skull-stripped volume the corners are empty and the floor is 0; under a noise floor (a raw
#: scan) it keeps the noise out of the head, which would otherwise fill the field of view
#: (docs/your-data.md, "Preparing your data", gives the measured rates: scripts/skullstrip_check.py).
NOISE_FLOOR_FACTOR = 4.0
CORNER_FRACTION = 0.125
#: Inputs whose NMI peaks this many voxels (or more) away from their stored alignment are
#: reported as misaligned; the peak is searched within +-MAX_SHIFT voxels along each axis.
MISALIGNED_VOXELS = 2.5
MAX_SHIFT = 8
#: ... and only when the peak beats the stored alignment by this much NMI: measured on a 96x96x40
#: phantom, a 3-6 voxel shift gains 0.11-0.14, while inputs that share only an outline (pure
#: noise inside one mask) gain 0.004-0.008 at a spurious offset.
MIN_NMI_GAIN = 0.02
_SAMPLES = 100_000  # lattice points for the alignment statistic, before keeping those in the heads
_BINS = 32
_STRIDE_MM = 3.0  # coarse grid of the background check


@dataclass(frozen=True)
class Finding:
    """One problem with one input file: ``kind`` is one of :data:`KINDS`, ``message`` one line
    that names the problem and what to do; ``value`` is the statistic that triggered it."""

    path: Path
    kind: str
    message: str
    value: float = float("nan")

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def error(self) -> InputError:
        """The finding as the error a strict caller raises."""
        return InputError(self.path, self.message)


# -- voxel size ------------------------------------------------------------------------------

def voxel_size_mm(volume: Volume) -> tuple[float, float, float]:
    """Voxel size in the file's own (x, y, z) order, from the affine (what resamplers use)."""
    return tuple(float(v) for v in np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def _mm(sizes: Sequence[float]) -> str:
    return " x ".join(f"{s:.3g}" for s in sizes)


def check_voxel_size(volume: Volume, accepted: tuple[float, float] = VOXEL_MM_RANGE) -> Finding | None:
    """A finding when any voxel axis is outside ``accepted`` mm: the convolutions see anatomy
    at the scale of the 1 mm BraTS training data only."""
    sizes = voxel_size_mm(volume)
    lo, hi = accepted
    worst = max(sizes, key=lambda s: max(s / 1.0, 1.0 / s) if s > 0 else np.inf)
    if all(lo <= s <= hi for s in sizes):
        return None
    return Finding(volume.path, "voxel-size",
                   f"voxel size {_mm(sizes)} mm, far from the 1 mm the network was trained on "
                   f"(accepted {lo:g}-{hi:g} mm): resample (--resample) or expect worse results", worst)


# -- skull stripping -------------------------------------------------------------------------

@dataclass(frozen=True)
class BackgroundStats:
    """What the skull-stripping check measured on one volume."""

    background: float  # the value of the empty background (the FOV faces' most common value)
    nonempty_outside: float  # fraction of voxels far outside the head that differ from it (nan: none)
    foreground_ml: float  # volume of the head/brain region (holes filled), millilitres
    noise_floor: float = 0.0  # median |value - background| in the FOV's corners (0: an empty background)


def _corners(coarse: np.ndarray) -> np.ndarray:
    """The values of the 8 corner blocks of a (z, y, x) array, CORNER_FRACTION of each axis."""
    n = [max(1, int(round(CORNER_FRACTION * size))) for size in coarse.shape]
    ends = [(slice(0, k), slice(size - k, size)) for k, size in zip(n, coarse.shape)]
    return np.concatenate([coarse[block].ravel() for block in itertools.product(*ends)])


def background_stats(volume: Volume) -> BackgroundStats:
    """Measure the background on a ~3 mm lattice of the volume: cheap, and enough for masks."""
    zooms = voxel_size_mm(volume)[::-1]  # (z, y, x) like the data
    steps = tuple(max(1, int(round(_STRIDE_MM / z))) for z in zooms)
    coarse = volume.data[::steps[0], ::steps[1], ::steps[2]]
    faces = np.concatenate([coarse[i].ravel() for i in (0, -1)] + [coarse[:, i].ravel() for i in (0, -1)]
                           + [coarse[:, :, i].ravel() for i in (0, -1)])
    values, counts = np.unique(faces, return_counts=True)
    bg = float(values[np.argmax(counts)])
    dev = np.abs(coarse - np.float32(bg))
    nonempty = dev != 0
    if not nonempty.any():
        return BackgroundStats(bg, float("nan"), 0.0)
    floor = float(np.median(_corners(dev)))
    level = max(0.05 * float(np.percentile(dev[nonempty], 99)), NOISE_FLOOR_FACTOR * floor)
    head = ndimage.binary_fill_holes(dev > level)
    cell_mm = np.array(steps) * np.array(zooms)
    grow = int(np.ceil(BACKGROUND_MARGIN_MM / float(cell_mm.min())))
    near = ndimage.binary_dilation(head, iterations=grow) if grow else head
    outside = ~near
    frac = float(nonempty[outside].mean()) if outside.sum() >= 0.02 * outside.size else float("nan")
    return BackgroundStats(bg, frac, float(head.sum() * cell_mm.prod() / 1000.0), floor)


def check_skull_stripped(volume: Volume) -> Finding | None:
    """A finding when the background is not empty, or the non-empty region is larger than a brain."""
    st = background_stats(volume)
    advice = "skull-strip it (HD-BET, SynthStrip, FSL BET; see 'Preparing your data') or expect worse results"
    if st.nonempty_outside > MAX_NONEMPTY_OUTSIDE:
        return Finding(volume.path, "not-skull-stripped",
                       f"not skull-stripped? {100 * st.nonempty_outside:.0f}% of the voxels more than "
                       f"{BACKGROUND_MARGIN_MM:g} mm outside the head are non-empty (the network was trained on "
                       f"skull-stripped images with an empty background): {advice}", st.nonempty_outside)
    if st.foreground_ml > MAX_BRAIN_ML:
        return Finding(volume.path, "not-skull-stripped",
                       f"not skull-stripped? the non-empty region is {st.foreground_ml / 1000:.1f} L, larger "
                       f"than a brain ({MAX_BRAIN_ML / 1000:g} L at most): {advice}", st.foreground_ml)
    return None


# -- alignment -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alignment:
    """How two inputs on one grid agree: head-mask Dice, NMI as stored, and where NMI peaks."""

    dice: float  # of the head masks (voxels > 0, the pipeline's head rule)
    nmi: float  # (H(A) + H(B)) / H(A, B) at the stored alignment, 1..2
    nmi_best: float  # at the peak
    offset: tuple[int, int, int]  # voxel shift (z, y, x) of the second volume at the peak

    @property
    def offset_voxels(self) -> float:
        return float(np.linalg.norm(self.offset))


def _lattice(shape: tuple[int, int, int], margin: int) -> np.ndarray:
    """Flat indices of a regular lattice at least ``margin`` voxels inside every face."""
    inner = [max(1, n - 2 * margin) for n in shape]
    step = max(1, int(np.ceil((np.prod(inner) / _SAMPLES) ** (1 / 3))))
    axes = [np.arange(margin, max(margin + 1, n - margin), step) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return ((z * shape[1] + y) * shape[2] + x).ravel()


def _bins(values: np.ndarray, top: float) -> np.ndarray:
    """Bin 0 for the empty background (<= 0), 1.._BINS-1 linear up to ``top``."""
    out = np.clip(values * ((_BINS - 1) / top), 0, _BINS - 2).astype(np.int64) + 1
    out[values <= 0] = 0
    return out


def _nmi(a_bins: np.ndarray, b_bins: np.ndarray) -> float:
    joint = np.bincount(a_bins * _BINS + b_bins, minlength=_BINS * _BINS).astype(np.float64)
    joint /= joint.sum()
    pa, pb = joint.reshape(_BINS, _BINS).sum(1), joint.reshape(_BINS, _BINS).sum(0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(pa) + entropy(pb)) / entropy(joint)


def alignment(a: Volume, b: Volume, max_shift: int = MAX_SHIFT) -> Alignment:
    """Dice and NMI of ``b`` against ``a`` (same grid), and the integer shift of ``b`` (within
    +-``max_shift`` voxels per axis) that maximises NMI.

    Voxels are a lattice of ~_SAMPLES points inside the union of the head masks, so a shift
    is one constant offset of flat indices. The NMI peak is sharp (most of its drop happens
    within 2 voxels), so the search starts twice, from no shift and from the shift between
    the head masks' centroids; from each, the three axis lines through the start over the
    whole range, then axis-by-axis ascent within +-2 voxels. The better peak is kept."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    shape = a.shape
    reach = min(max_shift, min(shape) // 4)
    idx = _lattice(shape, reach)
    fa, fb = a.data.ravel(), b.data.ravel()
    va, vb = fa[idx], fb[idx]
    keep = (va > 0) | (vb > 0)
    idx, va, vb = idx[keep], va[keep], vb[keep]
    in_a, in_b = va > 0, vb > 0
    if np.count_nonzero(in_a) < 50 or np.count_nonzero(in_b) < 50:
        return Alignment(float("nan"), float("nan"), float("nan"), (0, 0, 0))
    dice = float(2 * np.count_nonzero(in_a & in_b) / (np.count_nonzero(in_a) + np.count_nonzero(in_b)))
    a_bins = _bins(va, float(np.percentile(va[in_a], 99)))
    top_b = float(np.percentile(vb[in_b], 99))
    strides = np.array((shape[1] * shape[2], shape[2], 1))
    cache: dict[tuple[int, int, int], float] = {}

    def score(shift: tuple[int, int, int]) -> float:
        if shift not in cache:
            cache[shift] = _nmi(a_bins, _bins(fb[idx + int(np.dot(shift, strides))], top_b))
        return cache[shift]

    def climb(start: tuple[int, int, int]) -> tuple[int, int, int]:
        # First the three lines through the start, each over the whole range, then axis by
        # axis within +-2 voxels until nothing moves.
        lines = [(*start[:axis], d, *start[axis + 1:]) for axis in range(3) for d in range(-reach, reach + 1)]
        best = list(max(lines, key=lambda p: (score(p), -float(np.linalg.norm(p)))))
        for _ in range(4):
            before = tuple(best)
            for axis in range(3):
                lo, hi = max(-reach, best[axis] - 2), min(reach, best[axis] + 2)
                trials = [(score((*best[:axis], d, *best[axis + 1:])), -abs(d), d) for d in range(lo, hi + 1)]
                best[axis] = max(trials)[2]  # ties: the smaller shift
            if tuple(best) == before:
                break
        return tuple(best)  # type: ignore[return-value]

    coords = np.stack(np.unravel_index(idx, shape), axis=1)
    centroid = coords[in_b].mean(axis=0) - coords[in_a].mean(axis=0)
    start = tuple(int(v) for v in np.clip(np.round(centroid), -reach, reach))
    peaks = {climb((0, 0, 0)), climb(start)}  # type: ignore[arg-type]
    best = max(peaks, key=lambda p: (score(p), -float(np.linalg.norm(p))))
    return Alignment(dice, score((0, 0, 0)), score(best), best)


def sequence_name(index: int) -> str:
    """How messages name the input of one sequence index (T1, T1Gd, T2, FLAIR)."""
    return sequences.DISPLAY[index] if 0 <= index < len(sequences.DISPLAY) else f"input {index}"


def _offset_text(vol: Volume, offset: tuple[int, int, int]) -> str:
    """A canonical (z, y, x) voxel shift in the file's own voxel axes (i, j, k), and in mm."""
    xyz = np.array(offset[::-1], dtype=float)  # canonical (x, y, z): the L,P,S-reoriented axes
    native = np.zeros(3)
    for axis, (target, flip) in enumerate(ornt_transform(vol._native_ornt, _CANONICAL_ORNT)):
        native[axis] = flip * xyz[int(target)]
    mm = float(np.linalg.norm(native * np.array(voxel_size_mm(vol))))
    return ", ".join(f"{int(v):+d}" if v else "0" for v in native) + f" voxels ({mm:.1f} mm)"


# -- identical inputs ------------------------------------------------------------------------

_PROBE = 4099  # stride of the sampled comparison that rules most pairs out before the full one


def _same_voxels(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit the same array: shapes first, a strided sample, then one whole comparison (of
    the float32 bits, so no float arithmetic, and NaN equals NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    fa, fb = a.reshape(-1).view(np.uint32), b.reshape(-1).view(np.uint32)
    return bool(np.array_equal(fa[::_PROBE], fb[::_PROBE]) and np.array_equal(fa, fb))


def check_identical(volumes: Mapping[int, Volume]) -> list[Finding]:
    """A finding for each input whose voxels are exactly those of an earlier one: most likely one
    scan given (or copied) as two sequences, so the network gets one contrast twice. The same
    file given twice is an error before anything is read (tsf_trt.inputs.prefetch)."""
    order = sorted(volumes)
    findings = []
    for k, j in enumerate(order[1:], 1):
        first = next((i for i in order[:k] if _same_voxels(volumes[i].data, volumes[j].data)), None)
        if first is not None:
            findings.append(Finding(volumes[j].path, "identical-inputs",
                                    f"{sequence_name(j)} holds exactly the voxels of {sequence_name(first)} "
                                    f"({volumes[first].path}): one scan given as two sequences? check the inputs"))
    return findings


Pairs = dict[tuple[int, int], Alignment]


def _on_one_grid(volumes: Mapping[int, Volume]) -> tuple[list[int], list[Finding]]:
    """The inputs on the first input's grid, and a finding for each of the others."""
    order = sorted(volumes)
    findings: list[Finding] = []
    ref = volumes[order[0]]
    same = [order[0]]
    for i in order[1:]:
        try:
            check_same_grid([ref, volumes[i]])
        except InputError as exc:
            findings.append(Finding(volumes[i].path, "different-grid",
                                    f"{exc.problem}: resample the inputs onto one grid (--resample) "
                                    "or co-register them (see 'Preparing your data')"))
        else:
            same.append(i)
    return same, findings


def align_pairs(volumes: Mapping[int, Volume]) -> Pairs:
    """The :func:`alignment` of every pair of inputs on the first input's grid (sequence indices, lower first)."""
    same, _ = _on_one_grid(volumes)
    return {(i, j): alignment(volumes[i], volumes[j]) for i, j in itertools.combinations(same, 2)}


def shift_voxels(al: Alignment) -> float:
    """How far (voxels) the pair looks shifted: the NMI peak's distance where it gains MIN_NMI_GAIN, else 0."""
    return al.offset_voxels if al.nmi_best - al.nmi >= MIN_NMI_GAIN else 0.0


def check_alignment(volumes: Mapping[int, Volume], threshold: float = MISALIGNED_VOXELS,
                    pairs: Pairs | None = None) -> list[Finding]:
    """Findings for inputs on different grids, and for inputs on one grid whose NMI peaks
    ``threshold`` voxels or more away from the stored alignment. Every pair is compared (`pairs`,
    when :func:`align_pairs` already measured them); with 3 or more inputs, one that disagrees
    with all the others is named alone."""
    same, findings = _on_one_grid(volumes)
    pairs = align_pairs(volumes) if pairs is None else pairs
    bad = {pair: al for pair, al in pairs.items() if shift_voxels(al) >= threshold}
    alone = [k for k in same if len(same) >= 3 and all((min(k, o), max(k, o)) in bad for o in same if o != k)]
    for k in alone:
        other = next(o for o in same if o not in alone)
        al = bad[(min(k, other), max(k, other))]
        off = al.offset if other < k else tuple(-v for v in al.offset)
        findings.append(_misaligned(volumes[k], k, other, off, al, len(same) - 1))
    for (i, j), al in bad.items():
        if i not in alone and j not in alone:
            findings.append(_misaligned(volumes[j], j, i, al.offset, al, 1))
    return findings


def _misaligned(vol: Volume, k: int, other: int, off: tuple[int, ...], al: Alignment, n_others: int) -> Finding:
    against = f"the {n_others} other inputs" if n_others > 1 else sequence_name(other)
    return Finding(vol.path, "misaligned",
                   f"{sequence_name(k)} is not aligned with {against}: it looks shifted by "
                   f"{_offset_text(vol, off)} along its voxel axes i, j, k (mutual information {al.nmi:.3f} as "
                   f"stored, {al.nmi_best:.3f} there): "
                   "co-register the inputs (see 'Preparing your data')", al.offset_voxels)


def check_across(volumes: Mapping[int, Volume], pairs: Pairs | None = None) -> list[Finding]:
    """The checks that compare one subject's inputs with each other (`pairs`: see check_alignment)."""
    return check_identical(volumes) + check_alignment(volumes, pairs=pairs)


def check_subject(volumes: Mapping[int, Volume]) -> list[Finding]:
    """Every check over one subject's inputs (sequence index -> Volume), in index order."""
    findings: list[Finding] = []
    for i in sorted(volumes):
        for check in (check_voxel_size, check_skull_stripped):
            found = check(volumes[i])
            if found is not None:
                findings.append(found)
    return findings + check_across(volumes)
