"""What a benchmark runs on: one subject as real gzip NIfTI files, its task, and its cost in FLOPs.

Why files on disk even for a phantom: the per-stage figures include reading and
writing NIfTI, and folder-mode throughput goes through the real folder path, so the
phantom is written exactly as `tsf-trt phantom` writes subjects.

Shapes: ``--shape X Y Z`` is given in the file's (x, y, z) order, as for `tsf-trt phantom`
and `demo` ("240 240 155"); the network sees the reverse, (z, y, x) of the L,P,S grid,
which is what the report's ``shape_zyx`` holds.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.pipeline import MIN_INPLANE
from tsf_trt.subjects import Subject, find_subjects

#: Sources taken by default (the first three that are not the target): T1 + FLAIR is the
#: README's main job; T1 + T1Gd + FLAIR -> T2 is its performance task.
SOURCE_ORDER = (0, 3, 1, 2)  # t1, flair, t1gd, t2
MAX_AXIS = 512
PHANTOM_SEED = 5000  # held out: the bundled model was trained on seeds 0-47 (its MODEL_CARD.md)


@dataclass
class Workload:
    """One subject's chosen inputs (files), the target, and the canonical shape (z, y, x)."""

    subject: Subject
    target: int
    shape_zyx: tuple[int, int, int]
    origin: dict[str, Any] = field(default_factory=dict)
    truth: Path | None = None  # the subject's real target, when it has one (rows then give PSNR against it)

    @property
    def sources(self) -> list[int]:
        return sorted(self.subject.inputs)

    @property
    def task(self) -> str:
        return sequences.describe(self.sources, self.target)

    @property
    def depth(self) -> int:
        return self.shape_zyx[0]


def check_shape(shape_xyz: tuple[int, int, int]) -> tuple[int, int, int]:
    """`--shape X Y Z` -> (z, y, x), checked against what the network accepts."""
    x, y, z = shape_xyz
    if not 1 <= z <= MAX_AXIS or not all(MIN_INPLANE <= n <= MAX_AXIS for n in (y, x)):
        raise TsfError(f"--shape {x} {y} {z}: X and Y must be {MIN_INPLANE}..{MAX_AXIS} and Z 1..{MAX_AXIS}")
    return z, y, x


def check_sources(wanted: Sequence[int], target: int) -> None:
    """`--sources` may not hold the target: the one rule, which the CLI applies before any model
    loads and choose_sources for every caller."""
    if target in wanted:
        raise TsfError(f"--sources: {sequences.DISPLAY[target]} is the target itself")


def choose_sources(available: Iterable[int], target: int, wanted: Sequence[int] | None, has_fusion: bool) -> list[int]:
    """The `wanted` sources (`--sources`), each available and not the target; None: the first
    three of SOURCE_ORDER that are (one for a Seq2Seq-only model)."""
    have = set(available)
    if wanted is not None:
        check_sources(wanted, target)
        missing = [i for i in wanted if i not in have]
        if missing:
            raise TsfError(f"--sources: the subject has no {', '.join(sequences.DISPLAY[i] for i in missing)}")
        if len(wanted) > 1 and not has_fusion:
            raise TsfError(f"--sources {','.join(sequences.NAMES[i] for i in wanted)}: this model is Seq2Seq-only "
                           "(no TSF stage): it takes exactly 1 input")
        return sorted(wanted)
    ordered = [i for i in SOURCE_ORDER if i in have and i != target]
    if not ordered:
        raise TsfError(f"no input sequence besides the target {sequences.DISPLAY[target]} is available")
    return sorted(ordered[:3 if has_fusion else 1])


def phantom_workload(shape_zyx: tuple[int, int, int], sources: Sequence[int] | None, target: int, has_fusion: bool,
                     folder: Path) -> Workload:
    """Make the phantom subject of this shape and write it as gzip NIfTI under `folder`."""
    from tsf_trt.phantoms import make_subject, subject_name, write_subject

    z, y, x = shape_zyx
    name = subject_name(PHANTOM_SEED, "brats2021")
    (folder / name).mkdir(parents=True)
    write_subject(make_subject(PHANTOM_SEED, (x, y, z)), folder / name, name, "brats2021")
    subject = find_subjects(folder)[0]
    chosen = choose_sources(subject.inputs, target, sources, has_fusion)
    return Workload(Subject(name, {i: subject.inputs[i] for i in chosen}), target, shape_zyx,
                    {"kind": "phantom", "seed": PHANTOM_SEED, "phantom_shape_xyz": [x, y, z]},
                    subject.inputs.get(target))


def subject_workload(folder: Path, sources: Sequence[int] | None, target: int, has_fusion: bool) -> Workload:
    """One real subject's folder (any layout `tsf-trt infer` reads in folder mode)."""
    from tsf_trt.volume import load_volume

    found = find_subjects(folder)
    if len(found) != 1:
        raise InputError(folder, f"holds {len(found)} subjects ({', '.join(s.name for s in found[:3])}"
                                 f"{', ...' if len(found) > 3 else ''}); give the folder of one subject")
    subject = found[0]
    chosen = choose_sources(subject.inputs, target, sources, has_fusion)
    shape = load_volume(subject.inputs[chosen[0]]).shape
    return Workload(Subject(subject.name, {i: subject.inputs[i] for i in chosen}), target, shape,
                    {"kind": "subject", "folder": str(folder), "name": subject.name}, subject.inputs.get(target))


def copy_subjects(workload: Workload, count: int, folder: Path) -> list[Subject]:
    """`count` copies of the workload's input files, one sub-folder each: a folder-mode data set."""
    subjects = []
    for k in range(count):
        name = f"BenchIO_{k:03d}"
        (folder / name).mkdir(parents=True)
        inputs = {}
        for index, path in workload.subject.inputs.items():
            inputs[index] = folder / name / f"{name}_{sequences.NAMES[index]}.nii.gz"
            shutil.copyfile(path, inputs[index])
        subjects.append(Subject(name, inputs))
    return subjects


def padded(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def flops_per_volume(export_dir: Path, workload: Workload, tsem: bool) -> dict[str, Any]:
    """FLOPs of one volume of this workload, counted on the export's graphs at its padded size.

    Per slice: the encoder once per source, the fusion graph once (TSF models), the
    decoder once, or twice with TSEM (the 2N batch). The decoder counted is the one the
    ONNX runtime runs: baked for the target when the export has it. The reference way
    (unfolded ConvLSTMs) executes more; its figure scales encoder and decoder by the
    manifest's unfolded/folded ratio at 240x240 (approximate elsewhere).
    """
    import onnx

    from tsf_trt.export.flops import count_flops
    from tsf_trt.export.manifest import graph_path, read_manifest
    from tsf_trt.model.config import ModelConfig

    manifest = read_manifest(export_dir, check_hashes=False)
    graphs = manifest["graphs"]
    multiple = ModelConfig.from_dict(manifest["model_config"]).downsample
    height, width = (padded(n, multiple) for n in workload.shape_zyx[1:])
    fill = {"N": 1, "H": height, "W": width, "h": height // multiple, "w": width // multiple}

    def count(graph: str) -> int:
        shapes = {name: [fill[d] if isinstance(d, str) else d for d in dims]
                  for name, dims in graphs[graph]["inputs"].items()}
        return count_flops(onnx.load(str(graph_path(export_dir, manifest, graph))), shapes)["total"]

    has_fusion = "fusion" in graphs
    decoder = f"decoder_{sequences.NAMES[workload.target]}"
    decoder = decoder if decoder in graphs else "decoder"
    passes = 2 if tsem and has_fusion else 1
    per_slice = {"encoder": count("encoder") * len(workload.sources),
                 "fusion": count("fusion") if has_fusion else 0,
                 "decoder": count(decoder) * passes}
    folding = manifest.get("flops_per_slice", {})
    unfolded = {name: folding[name]["unfolded"] / folding[name]["folded"] if name in folding else 1.0
                for name in ("encoder", "decoder")}
    reference_slice = per_slice["encoder"] * unfolded["encoder"] + per_slice["fusion"] + \
        per_slice["decoder"] * unfolded["decoder"]
    return {
        "source": f"ONNX graphs of {export_dir} counted at (1, *, {height}, {width}) with tsf_trt.export.flops",
        "padded_inplane": [height, width],
        "decoder_graph": decoder,
        "decoder_passes": passes,
        "per_slice": per_slice,
        "per_volume": int(sum(per_slice.values()) * workload.depth),
        "reference_per_volume": int(reference_slice * workload.depth),
        "unfolded_over_folded": unfolded,
    }
