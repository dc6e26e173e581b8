"""One subject, every task: each sequence encoded once per slice batch, then fused and decoded per task.

Why not call :class:`~tsf_trt.synthesis.pipeline.Synthesizer` once per task: the encoder is the same
for every task, so with the four sequences and 28 tasks the Synthesizer would encode each
slice 64 times instead of 4. Here a batch of 2.5D stacks is encoded once per sequence and
every task reuses the features: fuse, then decode `fused` and `fused_avg` as one batch of
2N, exactly as the pipeline does (its helpers are used, so a slice's output is the same).
The comparisons of Table 1 come from the same features: each source's own features decoded
one-to-one are the Seq2Seq stage, and `fused_avg` decoded is TSF without attention.

Only what is scored is computed and kept: axial slices that hold head voxels (every
`slice_step`-th of them), and in-plane the head's bounding box plus a margin. With the
middle-channel rule an output slice depends only on its own stack of 3, so skipping slices
changes nothing in those computed; the margin exceeds SSIM's window radius, so cropping
changes no score inside the head.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsf_trt.backends import Backend
from tsf_trt.evaluation.tasks import Task
from tsf_trt.files.volume import load_volume
from tsf_trt.sequences import NAMES
from tsf_trt.synthesis.batches import encoded_batches, host_images, run_task, timed
from tsf_trt.synthesis.frame import Frame, FrameSpec, cut, plan_frame
from tsf_trt.synthesis.pipeline import head_of, load_arrays, normalize_inputs
from tsf_trt.synthesis.preprocess import BACKGROUND, SliceAccumulator
from tsf_trt.uncertainty.profile import InputProfile, measure

#: In-plane margin around the head (pixels): more than the 5-pixel radius of SSIM's Gaussian
#: window (σ 1.5, truncated at 3.5 σ), so every head voxel's SSIM sees the same neighbourhood.
MARGIN = 8

SliceProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Region:
    """The voxels a subject is scored on: some axial slices, and one in-plane box."""

    slices: np.ndarray  # selected z, increasing
    y: slice
    x: slice

    @classmethod
    def of(cls, head: np.ndarray, step: int = 1, margin: int = MARGIN) -> "Region":
        """Every `step`-th slice holding head voxels; the head's in-plane box plus `margin`."""
        if step < 1:
            raise ValueError(f"slice step must be at least 1, got {step}")
        occupied = np.flatnonzero(head.any(axis=(1, 2)))
        chosen = occupied[occupied % step == 0] if step > 1 else occupied
        if len(occupied) and not len(chosen):  # a head thinner than the step: score its middle slice
            chosen = occupied[len(occupied) // 2: len(occupied) // 2 + 1]
        box = []
        for axis, size in ((2, head.shape[1]), (1, head.shape[2])):
            seen = np.flatnonzero(head.any(axis=(0, axis)))
            lo, hi = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, size)
            box.append(slice(max(0, lo - margin), min(size, hi + margin)))
        return cls(chosen.astype(np.int64), box[0], box[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.slices), self.y.stop - self.y.start, self.x.stop - self.x.start

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The region of a (z, y, x) volume of the original size."""
        return np.ascontiguousarray(volume[self.slices][:, self.y, self.x])


@dataclass
class TaskImages:
    """What one task produced over the region, network units."""

    image: np.ndarray                 # TSF-Seq2Seq (decoded `fused`)
    image_avg: np.ndarray | None      # TSF without attention (decoded `fused_avg`); None without fusion
    tsem: np.ndarray | None           # |image - image_avg| of the middle channel (paper Eq. 6)
    weights: dict[int, float]         # ω per source


@dataclass
class SubjectImages:
    """Everything scored for one subject: truths, head mask and outputs, all over `region`."""

    region: Region
    head: np.ndarray
    truth: dict[int, np.ndarray]
    tasks: dict[Task, TaskImages]
    one_to_one: dict[tuple[int, int], np.ndarray]   # (source, target) -> Seq2Seq stage output
    batch_size: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    voxel_mm: tuple[float, ...] = ()                  # every side of every input's voxels, as read
    profile: InputProfile | None = None               # every sequence read, truths too (tsf_trt.uncertainty.profile)


def load_subject(inputs: Mapping[int, Path]) -> tuple[dict[int, np.ndarray], np.ndarray, tuple[float, ...],
                                                       InputProfile]:
    """Normalised volumes of every sequence, the head mask (voxels where any of the subject's
    sequences is above 0: one mask, and so one frame, for all of its tasks), the voxel sizes and
    the inputs' profile (what a calibration's ranges are held against), each file read once."""
    from tsf_trt.inputs.prefetch import check_distinct_files
    from tsf_trt.inputs.preflight import align_pairs, shift_voxels, voxel_size_mm

    check_distinct_files(inputs)  # one file given as two sequences: infer's rule
    volumes = {i: load_volume(p) for i, p in inputs.items()}
    arrays = load_arrays(volumes)
    voxel_mm = tuple(v for volume in volumes.values() for v in voxel_size_mm(volume))
    profile = InputProfile({NAMES[i]: measure(volumes[i].data) for i in sorted(volumes)},
                           max((shift_voxels(al) for al in align_pairs(volumes).values()), default=0.0))
    return normalize_inputs(arrays), head_of(arrays), voxel_mm, profile


def evaluate_images(backend: Backend, inputs: Mapping[int, Path], tasks: Sequence[Task], *, slice_step: int = 1,
                    batch_size: int | None = None, compare: bool = True, frame: FrameSpec | str = "head",
                    progress: SliceProgress | None = None) -> SubjectImages:
    """Run every task on one subject, the network on `frame` (as infer's --frame); see the module
    docstring for what is shared."""
    t0 = time.perf_counter()
    normed, head, voxel_mm, profile = load_subject(inputs)
    region = Region.of(head, slice_step)
    window = plan_frame(frame, head, backend.config.downsample)
    timings = {"load": time.perf_counter() - t0}
    truth = {i: region.take(v) for i, v in normed.items()}
    framed = {i: window.take(v) for i, v in normed.items()}
    batch = batch_size or backend.preferred_batch_size(*window.shape)
    images, one_to_one = _run_network(backend, framed, window, region, tasks, batch, compare and backend.has_fusion,
                                      progress, timings)
    timings["network"] = time.perf_counter() - t0 - timings["load"]
    return SubjectImages(region, region.take(head), truth, images, one_to_one, batch, timings, voxel_mm, profile)


def _run_network(be: Backend, normed: Mapping[int, np.ndarray], window: Frame, region: Region,
                 tasks: Sequence[Task], batch: int, compare: bool, progress: SliceProgress | None,
                 timings: dict[str, float]) -> tuple[dict[Task, TaskImages], dict[tuple[int, int], np.ndarray]]:
    box = (region.y.start - window.y0, region.y.stop - window.y0, region.x.start - window.x0,
           region.x.stop - window.x0)  # the region in the frame's coordinates (background past its edge)

    def scored(out: np.ndarray) -> np.ndarray:
        return cut(out, *box, BACKGROUND)

    shape = region.shape
    needed = sorted({s for t in tasks for s in t.sources})
    singles = {(t.sources[0], t.target) for t in tasks if t.n_inputs == 1}
    # One-to-one outputs a one-input task already gives (its fused_avg is the source's own
    # features, ω = 1) are taken from it; only the others need a decoder pass of their own.
    pairs = sorted({(s, t.target) for t in tasks for s in t.sources}) if compare else []
    direct = [p for p in pairs if p not in singles]
    with_avg = be.has_fusion
    acc = {t: [SliceAccumulator(shape) for _ in range(3 if with_avg else 1)] for t in tasks}
    acc_direct = {p: SliceAccumulator(shape) for p in direct}
    weights: dict[Task, dict[int, float]] = {}
    total = len(region.slices)
    for positions, _, features in encoded_batches(be, normed, needed, region.slices, batch, timings):
        for task in tasks:  # every task from the one encoding of this batch
            decoded = run_task(be, features, task.sources, task.target, with_avg=with_avg, timings=timings)
            weights[task] = {i: float(decoded.weights[i]) for i in task.sources}
            with timed(timings, "decode"):
                out, out_avg = host_images(be, decoded)
            if with_avg:
                assert out_avg is not None
                out, out_avg = scored(out), scored(out_avg)
                image, avg, tsem = acc[task]
                image.add(positions, out)
                avg.add(positions, out_avg)
                tsem.add(positions, np.abs(out - out_avg))
            else:  # Seq2Seq only: one-input tasks, the source's features decoded directly
                acc[task][0].add(positions, scored(out))
        for (source, target), accumulator in acc_direct.items():  # the Seq2Seq stage, one-to-one
            decoded = run_task(be, features, [source], target, with_avg=False, fuse=False, timings=timings)
            with timed(timings, "decode"):
                out, _ = host_images(be, decoded)
            accumulator.add(positions, scored(out))
        if progress is not None:
            progress(positions.stop, total)
    images = {}
    for task in tasks:
        parts = [a.result() for a in acc[task]]
        images[task] = TaskImages(parts[0], parts[1] if with_avg else None, parts[2] if with_avg else None,
                                  weights.get(task, {}))
    one_to_one = {p: a.result() for p, a in acc_direct.items()}
    for source, target in pairs:
        if (source, target) in singles:
            single = images[Task((source,), target)]
            one_to_one[(source, target)] = single.image_avg if single.image_avg is not None else single.image
    return images, one_to_one
