"""Whole-volume synthesis: volumes -> batches of 2.5D stacks -> backend -> volume, TSEM, ω.

Usable from Python::

    from tsf_trt import Synthesizer
    synth = Synthesizer("models/small")  # RunOptions(...): how to run, the CLI's defaults
    result = synth.run({"t1": "sub_t1.nii.gz", "flair": nib.load("sub_flair.nii.gz")}, target="t2")
    result.image, result.tsem, result.weights   # network units, (z, y, x); ω by sequence name
    result.save("out/sub")                      # infer's files: out/sub_t2_synth.nii.gz, ..._tsem.nii.gz

Memory stays bounded by the batch (plus the volumes themselves): each batch of
slices is encoded once per source, fused, and decoded as one batch of 2N
(`fused` and `fused_avg`) to give TSEM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Union

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from tsf_trt import sequences
from tsf_trt.backends import Backend
from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.volume import (Volume, check_same_grid, load_volume, shape_text, volume_from_array,
                                  volume_from_image)
from tsf_trt.synthesis.backend import create_backend
from tsf_trt.synthesis.batches import MIDDLE, Decoded, encoded_batches, host_images, middle, run_task, timed
from tsf_trt.synthesis.frame import plan_frame
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.preprocess import BACKGROUND, SliceAccumulator, normalize
from tsf_trt.synthesis.result import Result
from tsf_trt.synthesis.source import ModelSource

Progress = Callable[[int, int], None]
_log = logging.getLogger(__name__)
MIN_INPLANE = 8  # reflection padding at 1/4 resolution needs at least 2 pixels


class Synthesizer:
    """Runs a model on whole volumes. `model` is a :class:`~tsf_trt.synthesis.source.ModelSource` or anything it
    resolves (a model or export directory, "demo" for the bundled model, a loaded TSFSeq2Seq), or a
    ready :class:`~tsf_trt.backends.Backend`."""

    def __init__(self, model, options: RunOptions | None = None):
        """`options`: how to run (default: ``RunOptions()``, the CLI's defaults), already checked."""
        self.options = RunOptions() if options is None else options
        self.frame = self.options.frame
        if isinstance(model, Backend):
            self.frame.check(model.config.downsample)
            self.backend, self.label = model, "this model"
        else:
            source = ModelSource.resolve(model)  # its config, read without loading weights
            self.frame.check(source.config.downsample)  # before the model loads
            self.backend = create_backend(source, self.options)
            self.label = source.label

    @property
    def has_fusion(self) -> bool:
        return self.backend.has_fusion

    def check_task(self, sources: list[int], target: int) -> None:
        """Refuse what this model cannot do, before any volume is read."""
        sequences.check_task(sources, target, has_fusion=self.has_fusion, model=self.label)

    def run(self, inputs: Mapping[int | str, Input], target: int | str, *, tsem: bool = True,
            progress: Progress | None = None, singles: bool = False) -> Result:
        """Synthesise `target` from `inputs`: sequence name (or index) -> a NIfTI file's path, a nibabel
        image, a :class:`~tsf_trt.files.volume.Volume`, or ``(array, affine)`` (:func:`as_volume`; a bare
        array is refused: its orientation would be a guess). Each is oriented by its affine as `infer`
        orients files; the result is in the network's (z, y, x) layout and remembers the first input's
        grid, on which ``result.to_nifti()`` and ``result.save(...)`` give `infer`'s images. With
        `singles`, also each source's one-to-one synthesis, decoded from the features already encoded
        (one more decoder pass per source and batch)."""
        t0 = time.perf_counter()
        target, keyed = self._task(inputs, target)
        volumes = {i: as_volume(v, sequences.NAMES[i]) for i, v in keyed.items()}
        first = volumes[next(iter(keyed))]  # the first given, as infer writes on its first input's grid
        return self._run(load_arrays(volumes), target, t0, tsem, progress, singles, first.grid_only(),
                         {sequences.NAMES[i]: v.path for i, v in volumes.items()})

    def run_canonical(self, arrays: Mapping[int | str, np.ndarray], target: int | str, *, tsem: bool = True,
                      progress: Progress | None = None, singles: bool = False) -> Result:
        """:meth:`run` on arrays already in the network's own (z, y, x) layout (axial slice ``a[k]``, nibabel
        axis codes L, P, S before the transpose; tsf_trt.files.volume), for code that computes in that
        layout (tests, benchmarks, phantom slabs). Nothing is reoriented, and the result has no grid:
        ``to_nifti(like=...)`` needs one."""
        t0 = time.perf_counter()
        target, keyed = self._task(arrays, target)
        named = {i: (Path(f"<{sequences.NAMES[i]} array>"), np.asarray(v, dtype=np.float32), None)
                 for i, v in keyed.items()}
        return self._run(checked_arrays(named), target, t0, tsem, progress, singles, None, {})

    def _task(self, inputs: Mapping[int | str, Any], target: int | str) -> tuple[int, dict[int, Any]]:
        """The target and the inputs by sequence index, in the order given; the task checked before any read."""
        target = sequences.parse(target) if isinstance(target, str) else int(target)
        keyed = {(sequences.parse(k) if isinstance(k, str) else int(k)): v for k, v in inputs.items()}
        self.check_task(sorted(keyed), target)
        return target, keyed

    def _run(self, arrays: dict[int, tuple[Path, np.ndarray]], target: int, t0: float, tsem: bool,
             progress: Progress | None, singles: bool, grid: Volume | None, read_from: dict[str, Path]) -> Result:
        sources = sorted(arrays)
        timings = {"read": time.perf_counter() - t0}  # file reading, when given paths
        t = time.perf_counter()
        head_mask = head_of(arrays)
        frame = plan_frame(self.frame, head_mask, self.backend.config.downsample)
        if frame.head_outside > 0:
            _log.warning("--frame %s leaves %.2f %% of the head's voxels outside the frame: they are background "
                         "in the output", frame.spec, 100 * frame.head_outside)
        framed = {i: frame.take(v) for i, v in normalize_inputs(arrays).items()}
        timings["preprocess"] = time.perf_counter() - t

        image, tsem_map, weights, batch, ones = self._synthesize(framed, frame.slices, sources, target, tsem,
                                                                 progress, timings, singles)
        t = time.perf_counter()
        image = frame.place(image, head_mask.shape, BACKGROUND)
        tsem_map = None if tsem_map is None else frame.place(tsem_map, head_mask.shape, 0.0)
        ones = None if ones is None else {i: frame.place(v, head_mask.shape, BACKGROUND) for i, v in ones.items()}
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Result(image, tsem_map, {sequences.NAMES[i]: float(weights[i]) for i in sources}, sources, target,
                      head_mask, timings, batch, frame.describe(), ones, grid, read_from)

    # -- steps ----------------------------------------------------------------------------
    def _synthesize(self, normed: dict[int, np.ndarray], slices: np.ndarray, sources: list[int], target: int,
                    tsem: bool, progress: Progress | None, timings: dict[str, float], singles: bool = False):
        """The batch loop (tsf_trt.synthesis.batches) over the frame's slices; each batch's images are brought
        to the host only after the next batch is queued, so a GPU computes while the host gathers. With
        `singles`, each source's features are also decoded one-to-one (`fuse=False`, as
        tsf_trt.evaluation.loop computes the Seq2Seq stage), combined by the same rule as the image."""
        be = self.backend
        depth, height, width = next(iter(normed.values())).shape
        want_tsem = sequences.makes_tsem(tsem, be.has_fusion)
        image = SliceAccumulator((depth, height, width), self.options.combine)
        tsem_map = SliceAccumulator((depth, height, width), "middle") if want_tsem else None
        weights = sequences.task_code(sources, target)[0, : sequences.N_SEQUENCES].copy()  # no batch: ω = 1 each
        total = len(slices)
        batch = max(1, min(self.options.batch_size or be.preferred_batch_size(height, width), total))  # what is really used
        channel = MIDDLE if self.options.combine == "middle" else None  # the middle rule keeps only channel 1 (TSEM always)
        # A Seq2Seq-only model's synthesis is its one source's one-to-one synthesis already.
        one_to_one = singles and be.has_fusion
        ones = {i: SliceAccumulator((depth, height, width), self.options.combine) for i in sources} if one_to_one \
            else {}

        def gather(centres, decoded: Decoded, own: dict[int, Decoded], done: int) -> None:
            with timed(timings, "decode"):  # waits for a GPU backend's batch
                out, out_avg = host_images(be, decoded, channel)
                own_out = {i: host_images(be, d, channel)[0] for i, d in own.items()}
            with timed(timings, "gather"):
                image.add(centres, out)
                if tsem_map is not None:
                    tsem_map.add(centres, np.abs(middle(out) - middle(out_avg)))
                for i, o in own_out.items():
                    ones[i].add(centres, o)
            if progress is not None:
                progress(done, total)

        pending = None  # the previous batch, decoded but not read: on a GPU still computing while the next is queued
        for positions, centres, features in encoded_batches(be, normed, sources, slices, batch, timings):
            decoded = run_task(be, features, sources, target, with_avg=want_tsem, timings=timings)
            own = {i: run_task(be, features, [i], target, with_avg=False, fuse=False, timings=timings)
                   for i in ones}
            weights = decoded.weights
            if pending is not None:
                gather(*pending)
            pending = (centres, decoded, own, positions.stop)
        if pending is not None:
            gather(*pending)
        synthesis = image.result()
        made = {i: a.result() for i, a in ones.items()} if one_to_one else \
            {sources[0]: synthesis} if singles else None
        return synthesis, None if tsem_map is None else tsem_map.result(), weights, batch, made


# -- reading shared with tsf_trt.evaluation (one code path for what goes into the network) ---
Input = Union[str, PathLike, Volume, nib.Nifti1Image, tuple[np.ndarray, np.ndarray]]


def as_volume(value: Input, name: str) -> Volume:
    """One input of :meth:`Synthesizer.run` as a Volume: a path is read (:func:`load_volume`), a nibabel
    image oriented as its file would be (:func:`volume_from_image`), ``(array, affine)`` placed by its
    affine (:func:`volume_from_array`). A bare array is refused: which axis is which is not guessed."""
    if isinstance(value, Volume):
        return value
    if isinstance(value, (str, PathLike)):
        return load_volume(value)
    if isinstance(value, SpatialImage):
        return volume_from_image(value, f"{name} image")
    if isinstance(value, tuple) and len(value) == 2:
        return volume_from_array(value[0], value[1], f"{name} array")
    if isinstance(value, np.ndarray):
        raise TsfError(f"{name}: a bare array has no orientation (none is guessed): pass nib.Nifti1Image(array, "
                       "affine), (array, affine) or the file's path")
    raise TsfError(f"{name}: expected a NIfTI file's path, a nibabel image, a tsf_trt Volume or (array, affine), "
                   f"got {type(value).__name__}")


def load_arrays(volumes: Mapping[int, Volume]) -> dict[int, tuple[Path, np.ndarray]]:
    """Sequence index -> (path for messages, (z, y, x) array), all of one shape and grid."""
    check_same_grid(list(volumes.values()))
    return checked_arrays({i: (v.path, v.data, v.native_shape) for i, v in volumes.items()})


def checked_arrays(named: Mapping[int, tuple[Path, np.ndarray, tuple[int, ...] | None]]
                   ) -> dict[int, tuple[Path, np.ndarray]]:
    """(path, (z, y, x) array, the file's own shape or None) by sequence index -> (path, array), once
    each is 3D, large enough in-plane for the network, and all have one shape."""
    arrays = {}
    for i, (path, data, native_shape) in named.items():
        if data.ndim != 3:
            raise InputError(path, f"expected a 3D (z, y, x) array, got shape {data.shape}")
        if min(data.shape[1:]) < MIN_INPLANE:
            whole = f"; file shape {shape_text(native_shape)}" if native_shape is not None else ""
            raise InputError(path, f"axial slices of {data.shape[2]}x{data.shape[1]} voxels (x, y{whole}) are too "
                                   f"small: the network needs at least {MIN_INPLANE}x{MIN_INPLANE}")
        arrays[i] = (path, data)
    shapes = {d.shape for _, d in arrays.values()}
    if len(shapes) > 1:
        first, *rest = arrays.values()
        other, shape = next((p, d.shape) for p, d in rest if d.shape != first[1].shape)
        raise InputError(other, f"shape differs from {first[0].name}: {shape_text(shape[::-1])} vs "
                                f"{shape_text(first[1].shape[::-1])} (x, y, z)")
    return arrays


def normalize_inputs(arrays: Mapping[int, tuple[Path, np.ndarray]]) -> dict[int, np.ndarray]:
    """Each volume normalised over the whole volume, whatever the frame (an unusable one is an
    InputError naming its file)."""
    normed = {}
    for index, (path, raw) in arrays.items():
        try:
            normed[index] = normalize(raw)
        except ValueError as exc:
            raise InputError(path, str(exc)) from None
    return normed


def head_of(arrays: Mapping[int, tuple[Path, np.ndarray]]) -> np.ndarray:
    """Voxels where any input is above 0 (skull-stripped inputs are 0 outside the head)."""
    return np.logical_or.reduce([raw > 0 for _, raw in arrays.values()])
