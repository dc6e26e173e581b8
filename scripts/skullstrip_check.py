"""How often the skull-stripping check warns, on phantoms with and without skull and background
noise: the table in docs/your-data.md, "Preparing your data".

The phantom generator (tsf_trt.phantoms) makes skull-stripped heads with an exactly empty
background, which the check must leave alone. Each is also dressed here as what the check must
catch: a skull and scalp around the brain, background noise (Rician, as magnitude images carry,
at several levels; or uniform 50-200, a noise floor), a head-masked scan (skull kept, background
zeroed), zero-filled corners (a raw scan resampled into a larger grid), fields of view cut to
the head or to a 40 mm slab (less than a brain's volume in all, so the size rule cannot help).
Every sequence of every subject is checked with :func:`tsf_trt.inputs.preflight.check_skull_stripped`
exactly as `infer` runs it; the figure is how many volumes warned. Subjects are drawn at the
generator's 2.5 mm (96x96x62: the BraTS field of view) and at 1 mm (240x240x155), where the
check's time per volume is measured too.

    python -m scripts.skullstrip_check                     # 8 + 2 subjects, about a minute
    python -m scripts.skullstrip_check --seeds 2 --full 0  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

COARSE_SHAPE = (96, 96, 62)  # 2.5 mm voxels over the BraTS field of view
FULL_SHAPE = (240, 240, 155)  # 1 mm
FIRST_SEED = 5000  # held-out phantoms (tsf_trt.phantoms: training draws other seeds)
SLAB_MM = 40.0
UNIFORM = (50.0, 200.0)


@dataclass
class Head:
    """One phantom subject, with what dressing it needs: the brain, its distance map in mm."""

    volumes: dict[str, np.ndarray]  # (x, y, z), skull-stripped: exactly 0 outside the brain
    brain: np.ndarray
    dist_mm: np.ndarray  # distance from the brain, mm (0 inside)
    voxel_mm: float
    affine: np.ndarray

    @property
    def head(self) -> np.ndarray:
        return self.dist_mm <= 15.0


def make_head(seed: int, shape: tuple[int, int, int]) -> Head:
    from scipy import ndimage

    from tsf_trt.phantoms.generator import make_subject

    ph = make_subject(seed, shape)
    brain = ph.volumes["t1"] > 0
    voxel = float(abs(ph.affine[0, 0]))
    return Head(ph.volumes, brain, ndimage.distance_transform_edt(~brain, sampling=voxel), voxel, ph.affine)


def with_skull(h: Head, data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A raw head around the brain: CSF and dura 0-3 mm, a dark skull 3-9 mm, a bright scalp 9-15 mm,
    each with a 10 % texture (no tissue of a scan is one exact value)."""
    level = float(np.median(data[h.brain]))
    out = data.astype(np.float32).copy()
    d = h.dist_mm
    for shell, value in (((d > 0) & (d <= 3), 0.3 * level), ((d > 3) & (d <= 9), 0.05 * level),
                         ((d > 9) & (d <= 15), 1.2 * float(np.percentile(data[h.brain], 90)))):
        out[shell] = value * (1 + 0.1 * rng.standard_normal(int(shell.sum()), np.float32))
    return out


def rician(data: np.ndarray, brain: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-image noise everywhere, sigma = `fraction` of the brain's median."""
    sigma = fraction * float(np.median(data[brain]))
    return np.hypot(data + sigma * rng.standard_normal(data.shape, np.float32),
                    sigma * rng.standard_normal(data.shape, np.float32)).astype(np.float32)


def uniform_outside(data: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = data.copy()
    out[~inside] = rng.uniform(*UNIFORM, size=int((~inside).sum())).astype(np.float32)
    return out


def crop(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The field of view cut to `mask`'s bounding box."""
    idx = np.nonzero(mask)
    return np.ascontiguousarray(data[tuple(slice(i.min(), i.max() + 1) for i in idx)])


def slab(data: np.ndarray, h: Head) -> np.ndarray:
    """An axial slab of SLAB_MM through the middle of the brain: a partial-coverage scan."""
    z = np.nonzero(h.brain.any(axis=(0, 1)))[0]
    mid, half = (z.min() + z.max()) // 2, int(round(SLAB_MM / h.voxel_mm / 2))
    return np.ascontiguousarray(data[:, :, mid - half:mid + half])


def zero_corners(data: np.ndarray) -> np.ndarray:
    """Zero outside the largest axial ellipse: a scan resampled into a grid larger than its own."""
    nx, ny = data.shape[:2]
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    return np.where((x**2 + y**2 <= 1.0)[:, :, None], data, 0).astype(np.float32)


Dress = Callable[[Head, np.ndarray, np.random.Generator], np.ndarray]

#: name -> (should warn, how the skull-stripped volume is dressed)
CASES: dict[str, tuple[bool, Dress]] = {
    "skull-stripped, empty background (as generated)": (False, lambda h, v, r: v),
    "skull-stripped, constant background -1 (z-scored)": (False, lambda h, v, r: v / np.float32(100) - 1),
    "skull-stripped, field of view cut to the brain": (False, lambda h, v, r: crop(v, h.brain)),
    f"skull-stripped, {SLAB_MM:g} mm slab": (False, lambda h, v, r: slab(v, h)),
    "skull kept, background zeroed (head mask)": (True, lambda h, v, r: np.where(h.head, with_skull(h, v, r), 0)),
    "skull kept, Rician noise 1%": (True, lambda h, v, r: rician(with_skull(h, v, r), h.brain, 0.01, r)),
    "skull kept, Rician noise 3%": (True, lambda h, v, r: rician(with_skull(h, v, r), h.brain, 0.03, r)),
    "skull kept, Rician noise 10%": (True, lambda h, v, r: rician(with_skull(h, v, r), h.brain, 0.10, r)),
    "skull kept, uniform 50-200 outside the head": (True, lambda h, v, r: uniform_outside(
        with_skull(h, v, r), h.head, r)),
    "skull kept, Rician 3%, zero-filled corners": (True, lambda h, v, r: zero_corners(
        rician(with_skull(h, v, r), h.brain, 0.03, r))),
    "skull kept, Rician 3%, field of view cut to the head": (True, lambda h, v, r: crop(
        rician(with_skull(h, v, r), h.brain, 0.03, r), h.head)),
    f"skull kept, uniform 50-200, {SLAB_MM:g} mm slab": (True, lambda h, v, r: slab(
        uniform_outside(with_skull(h, v, r), h.head, r), h)),
    "brain only, Rician noise 3%": (True, lambda h, v, r: rician(v, h.brain, 0.03, r)),
    "brain only, uniform 50-200 outside it": (True, lambda h, v, r: uniform_outside(v, h.brain, r)),
}


def volume(data_xyz: np.ndarray, voxel_mm: float, name: str):
    import nibabel as nib

    from tsf_trt.files.volume import volume_standing_for

    affine = np.diag([-voxel_mm, -voxel_mm, voxel_mm, 1.0])
    return volume_standing_for(nib.Nifti1Image(data_xyz, affine), f"/phantom/{name}.nii.gz")


def measure(seeds: int, full: int, timing_rounds: int = 5) -> tuple[dict[str, dict[str, list[int]]], dict[str, float]]:
    """Per case and resolution, [warned, checked]; and the check's median ms per 1 mm volume."""
    from tsf_trt.inputs.preflight import check_skull_stripped

    counts: dict[str, dict[str, list[int]]] = {case: {} for case in CASES}
    times: dict[str, list[float]] = {}
    plan = [(FIRST_SEED + k, COARSE_SHAPE, "2.5 mm") for k in range(seeds)]
    plan += [(FIRST_SEED + k, FULL_SHAPE, "1 mm") for k in range(full)]
    for seed, shape, res in plan:
        h = make_head(seed, shape)
        rng = np.random.default_rng(seed)
        for case, (_, dress) in CASES.items():
            tally = counts[case].setdefault(res, [0, 0])
            for seq, data in h.volumes.items():
                vol = volume(dress(h, data, rng), h.voxel_mm, f"{seed}_{seq}")
                start = time.perf_counter()
                found = check_skull_stripped(vol)
                took = time.perf_counter() - start
                tally[0] += found is not None
                tally[1] += 1
                if res == "1 mm" and seq == "t1" and case in (TIMED_CLEAN, TIMED_NOISY):
                    times.setdefault(case, []).append(took)
                    for _ in range(timing_rounds - 1):
                        start = time.perf_counter()
                        check_skull_stripped(vol)
                        times[case].append(time.perf_counter() - start)
    return counts, {case: 1000 * float(np.median(t)) for case, t in times.items()}


TIMED_CLEAN = "skull-stripped, empty background (as generated)"
TIMED_NOISY = "skull kept, Rician noise 3%"


def table(counts: dict[str, dict[str, list[int]]]) -> list[str]:
    resolutions = list(dict.fromkeys(res for per in counts.values() for res in per))
    lines = ["| input (phantom dressed as) | should warn | " + " | ".join(f"warned, {r} voxels" for r in resolutions)
             + " |", "|---|---|" + "---|" * len(resolutions)]
    for case, per in counts.items():
        cells = [f"{per[r][0]}/{per[r][1]}" if r in per else "-" for r in resolutions]
        lines.append(f"| {case} | {'yes' if CASES[case][0] else 'no'} | " + " | ".join(cells) + " |")
    return lines


def rates(counts: dict[str, dict[str, list[int]]]) -> tuple[str, str]:
    tp = [0, 0]
    fp = [0, 0]
    for case, per in counts.items():
        into = tp if CASES[case][0] else fp
        for warned, checked in per.values():
            into[0] += warned
            into[1] += checked
    return tuple(f"{k}/{n} = {100 * k / max(n, 1):.1f} %" for k, n in (tp, fp))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="subjects at 2.5 mm (4 sequences each; default 8)")
    parser.add_argument("--full", type=int, default=2, help="subjects at 1 mm, also timed (default 2)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts, ms = measure(args.seeds, args.full)
    print("\n".join(table(counts)))
    tpr, fpr = rates(counts)
    print(f"\ntrue positive rate (warned where it should) {tpr}; false positive rate (warned on a "
          f"skull-stripped input) {fpr}")
    if ms:
        print("check time per 1 mm 240x240x155 volume (median): "
              + ", ".join(f"{case}: {t:.1f} ms" for case, t in ms.items()))
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
