"""What :meth:`~tsf_trt.synthesis.pipeline.Synthesizer.run` returns, and the files `infer` makes of it.

The mapping of a result to what is written (the synthesis as (y + 1) / 2 · 1000, TSEM as it is,
each with its NIfTI description) is :meth:`Result.output_arrays`, the one place of it: `infer`
writes those arrays (tsf_trt.runs.outputs.write_outputs, through
:func:`tsf_trt.files.volume_write.write_volume`) and :meth:`Result.to_nifti` / :meth:`Result.save`
build the same images (:func:`tsf_trt.files.volume_write.output_image`), so a notebook's files equal
the command's, byte for byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from tsf_trt import sequences
from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import atomic_group, make_folder, remove_empty_folders
from tsf_trt.files.ownership import refuse_input_overlap
from tsf_trt.files.volume import Volume
from tsf_trt.files.volume_write import output_image, write_image
from tsf_trt.synthesis.preprocess import to_output_intensity

#: The file names `infer` gives a subject's images, after `<subject>_<target>` (tsf_trt.runs.outputs.
#: OutputPaths.for_subject, above this layer; tests/test_python_api.py holds the two to the same names).
SUFFIXES = {"synth": "_synth.nii.gz", "tsem": "_tsem.nii.gz"}


class OutputImages(NamedTuple):
    """The images `infer` writes: the synthesis (0-1000) and TSEM (None without it)."""

    synth: nib.Nifti1Image
    tsem: nib.Nifti1Image | None


@dataclass
class Result:
    """A synthesised volume in network units [-1, 1], canonical (z, y, x) layout.

    ``weights`` is ω keyed by sequence name ({"t1": 0.48, "flair": 0.52}, the order of
    ``sources``), as the report and the CLI print it; ``sources`` and ``target`` stay indices
    (tsf_trt.sequences). ``grid`` is the first input's grid (its affine and header, no voxels),
    on which :meth:`to_nifti` and :meth:`save` write; None for arrays given in the network's own
    layout (:meth:`~tsf_trt.synthesis.pipeline.Synthesizer.run_canonical`). ``inputs``: where each
    input came from (its file, or ``<t1 image>`` for one held in memory); :meth:`save` never writes them.
    """

    image: np.ndarray
    tsem: np.ndarray | None            # |G(fused) - G(fused_avg)|, middle channel; None without TSF
    weights: dict[str, float]          # ω per source sequence name (sums to 1)
    sources: list[int]
    target: int
    head_mask: np.ndarray              # voxels where any input is above its background
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0                # slices per network batch that were used
    frame: dict[str, Any] = field(default_factory=dict)  # where the network ran (Frame.describe)
    #: Each source's own one-to-one synthesis (the Seq2Seq stage, network units), only when asked
    #: for (``run(singles=True)``: the 'spread' feature of an interval, tsf_trt.uncertainty.heuristic).
    singles: dict[int, np.ndarray] | None = None
    grid: Volume | None = field(default=None, repr=False)
    inputs: dict[str, Path] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return sequences.describe(self.sources, self.target)

    def weights_by_name(self) -> dict[str, float]:
        """The same as ``weights`` (kept for callers written when ``weights`` was keyed by index)."""
        return dict(self.weights)

    def tsem_summary(self) -> dict[str, float] | None:
        """Mean and p99 of TSEM in the head, and the fraction of head voxels above the
        volume's p99 (the paper's top-1 % threshold): a summary of TSEM, not a trust statement (that is
        the calibrated interval, tsf_trt.uncertainty)."""
        if self.tsem is None:
            return None
        head = self.tsem[self.head_mask] if self.head_mask.any() else self.tsem.ravel()
        threshold = float(np.percentile(self.tsem, 99))
        return {
            "mean_head": float(head.mean()),
            "p99_head": float(np.percentile(head, 99)),
            "max": float(self.tsem.max()),
            "p99_volume": threshold,
            "head_fraction_above_p99_volume": float((head > threshold).mean()),
        }

    # -- what is written ----------------------------------------------------------------------
    def output_arrays(self) -> dict[str, tuple[np.ndarray, str]]:
        """What `infer` writes, by output ("synth", and "tsem" when there is one): the canonical
        (z, y, x) float32 array and its NIfTI description. The one mapping of network units to
        written values (tsf_trt.runs.outputs.write_outputs writes these)."""
        out = {"synth": (to_output_intensity(self.image), f"tsf-trt {self.task} synthesis")}
        if self.tsem is not None:
            out["tsem"] = (np.ascontiguousarray(self.tsem, dtype=np.float32), f"tsf-trt {self.task} TSEM")
        return out

    def to_nifti(self, like: Volume | None = None) -> OutputImages:
        """The images `tsf-trt infer` writes for this result: the synthesis in 0-1000 and TSEM,
        on the first input's grid, in its own axis order, affine and header (or `like`'s).
        ``synth, tsem = result.to_nifti()``; ``nib.save(synth, ...)`` gives an equal image."""
        like = self._like(like)
        images = {kind: output_image(like, array, description=text) for kind, (array, text) in
                  self.output_arrays().items()}
        return OutputImages(images["synth"], images.get("tsem"))

    def save(self, where: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write the images `infer` writes, named as it names them, and return their paths.

        `where` is a stem or a folder: ``"out/sub01"`` writes ``out/sub01_t2_synth.nii.gz`` and
        ``out/sub01_t2_tsem.nii.gz`` (what ``infer --subject-name sub01 -o out`` writes), an existing
        folder (or a path ending in "/") ``t2_synth.nii.gz`` ... inside it. A missing folder is
        created. As the CLI: every file appears complete or not at all, an input is never written,
        and `overwrite` replaces only tsf-trt's own files (tsf_trt.files.atomic). The JSON report is
        `infer`'s (it names the model and the run); this result's numbers are its attributes.
        """
        images = self.to_nifti()
        text = os.fspath(where)
        folder_given = text.endswith(("/", os.sep)) or Path(text).is_dir()
        folder = Path(text) if folder_given else Path(text).parent
        stem = sequences.NAMES[self.target] if folder_given else f"{Path(text).name}_{sequences.NAMES[self.target]}"
        written = {kind: img for kind, img in images._asdict().items() if img is not None}
        paths = [folder / f"{stem}{SUFFIXES[kind]}" for kind in written]
        for path in paths:
            refuse_input_overlap(path, [(f"{name} input", p) for name, p in self.inputs.items()])
        top = make_folder(folder)
        try:
            with atomic_group(paths, overwrite) as tmps:
                for img, tmp in zip(written.values(), tmps):
                    write_image(img, tmp)
        except BaseException:
            remove_empty_folders(top, folder)
            raise
        return paths

    def _like(self, like: Volume | None) -> Volume:
        if like is not None:
            return like
        if self.grid is None:
            raise TsfError("this result has no input grid (its inputs were arrays in the network's layout): "
                           "pass like=<a Volume on that grid>, e.g. tsf_trt.files.volume.load_volume(path)")
        return self.grid
