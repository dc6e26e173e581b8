"""What a benchmark runs on: one subject as real gzip NIfTI files, its task, and its cost in FLOPs.

Why files on disk even for a phantom: the per-stage figures include reading and
writing NIfTI, and folder-mode throughput goes through the real folder path, so the
phantom is written exactly as `tsf-trt phantom` writes subjects.

Shapes: ``--shape X Y Z`` is given in the file's (x, y, z) order, as for `tsf-trt phantom`
and `demo` ("240 240 155"); the old one word ``--shape SxHxW`` (slices x height x width,
"40x240x240": 40 slices of 240x240) still parses for one release (tsf_trt/cli/vocabulary.py). The
network sees (z, y, x) of the L,P,S grid, which is what the report's ``shape_zyx`` holds.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.subjects import Subject, find_subjects
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import MIN_INPLANE, Result

#: Sources taken by default (the first three that are not the target): T1 + FLAIR is the
#: README's main job; T1 + T1Gd + FLAIR -> T2 is the task of docs/performance.md.
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


#: The two spellings of `bench --shape`, for its help and its errors.
SHAPE_FORMS = ("X Y Z (three numbers, the file's order, e.g. 240 240 155; the one word SxHxW, slices x height "
               "x width, e.g. 155x240x240, still works for one release)")


def check_shape(shape_xyz: tuple[int, int, int], given: str | None = None) -> tuple[int, int, int]:
    """`--shape X Y Z` -> (z, y, x), checked against what the network accepts; `given`: the
    option's words as typed, for the error."""
    x, y, z = shape_xyz
    if not 1 <= z <= MAX_AXIS or not all(MIN_INPLANE <= n <= MAX_AXIS for n in (y, x)):
        raise TsfError(f"--shape {given or f'{x} {y} {z}'}: a slice's height and width (Y, X) must be "
                       f"{MIN_INPLANE}..{MAX_AXIS} voxels and the slices (Z) 1..{MAX_AXIS}")
    return z, y, x


def parse_shape(text: str) -> tuple[int, int, int]:
    """`bench --shape` as typed -> (z, y, x), checked: one word SxHxW (40x240x240 is 40 slices of
    240x240: X=240, Y=240, Z=40), or three numbers X Y Z (the CLI joins them with spaces)."""
    words = text.split()
    numbers = words[0].lower().split("x") if len(words) == 1 else words
    if len(numbers) != 3 or not all(n.isascii() and n.isdigit() for n in numbers):
        raise TsfError(f"--shape '{text}': expected {SHAPE_FORMS}")
    first, second, third = map(int, numbers)
    xyz = (third, second, first) if len(words) == 1 else (first, second, third)
    return check_shape(xyz, f"'{text}'")


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
    from tsf_trt.files.volume import load_volume

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


def truth_psnr(workload: Workload, result: Result) -> float | None:
    """PSNR of the synthesis against the subject's real target inside its head (network units, as
    `evaluate`), when the subject has one: what a frame or a precision costs in quality."""
    from tsf_trt.files.volume import load_volume
    from tsf_trt.metrics import psnr
    from tsf_trt.synthesis.preprocess import normalize

    if workload.truth is None:
        return None
    truth = load_volume(workload.truth).data
    return round(psnr(result.image, normalize(truth), truth > 0), 3)


def rates(slices: int, seconds: float) -> dict[str, float]:
    return {"slices_per_s": slices / seconds, "volumes_per_min": 60.0 / seconds}


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


#: Row precisions measured against the GPU's fp16 peak: TensorRT's `best` runs the convolutions in fp16.
GPU_FP16 = ("fp16", "best")
NETWORK_STAGES = ("encoder", "fusion", "decoder")  # the report's stages that run the graphs


def peak_kind(row: dict[str, Any]) -> str:
    """The `gemm.peaks` entry a row is measured against: its device and the precision that ran."""
    precision = row.get("precision_ran") or row.get("precision") or "fp32"
    if row["on_gpu"]:
        return "gpu fp16" if precision in GPU_FP16 else f"gpu {precision}"
    return f"cpu {precision}"


def efficiency(row: dict[str, Any], flops: dict[str, Any], gemm: dict[str, Any]) -> dict[str, Any] | None:
    """GFLOP/s of the row's network stages, as a fraction of the GEMM peak of the precision that ran;
    `fraction_of_gemm` null, with `no_peak_reason`, where that precision has no measured peak."""
    if "per_volume" not in flops:
        return None
    executed = executed_flops(row, flops)
    network = sum(row["stages"][s]["mean"] for s in NETWORK_STAGES)
    kind = peak_kind(row)
    found = gemm["peaks"].get(kind)
    peak = found["gflops"] if found else None
    reason = None if peak else (found["reason"] if found else f"not measured (peaks: {', '.join(gemm['peaks'])})")
    rate = executed / network / 1e9 if network > 0 else None
    return {"flops_per_volume": executed, "network_seconds": network, "gflops_per_s": rate,
            "end_to_end_gflops_per_s": executed / row["end_to_end"]["mean"] / 1e9,
            "gemm_kind": kind, "gemm_gflops": peak, "gemm_library": found["library"] if found else None,
            "fraction_of_gemm": rate / peak if rate and peak else None, "no_peak_reason": reason}


def executed_flops(row: dict[str, Any], flops: dict[str, Any]) -> int:
    """FLOPs of one volume as the row ran it: the count at the padded full slice, scaled to the
    row's frame and to the slices it computed (every graph's cost is proportional to the slice's
    area at sides that are multiples of the network's downsampling, which frames are)."""
    whole = flops["reference_per_volume"] if row["backend"] == "reference" else flops["per_volume"]
    box = row.get("frame_box")
    if not box:
        return whole
    (height, width), (full_h, full_w) = box["size"], flops["padded_inplane"]
    return round(whole * (height * width) / (full_h * full_w) * box["slices_computed"] / box["slices"])


def io_overlap(rows: list[dict[str, Any]], model: Any, settings: Any, workload: Workload, tmp: Path,  # BenchSettings
               tick: Callable[..., None]) -> dict[str, Any]:
    """Folder-mode throughput over copies of the subject against compute-only throughput, for the
    fastest row: the fraction of compute throughput that survives reading and writing NIfTI.

    Compute-only is timed with the same backend just before the folder runs (the faster of two
    in-memory runs after a warm-up), so that both see the same machine load; the row's own figure
    is kept beside it. `surviving_fraction` is over the whole run, whose first read and last write
    overlap nothing; `steady_fraction` from what each further subject costs: the folder run of all
    the copies less a folder run of one, over the copies less one."""
    from tsf_trt.files.volume import load_volume
    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer

    from tsf_trt.bench.variants import REFERENCE, Variant, create_variant

    candidates = [r for r in rows if r["backend"] != REFERENCE] or rows
    if settings.io_subjects < 1 or not candidates:
        return {"skipped": "no subjects asked for (--io-subjects 0)" if candidates else "no backend ran"}
    best = min(candidates, key=lambda r: r["end_to_end"]["mean"])
    count = settings.io_subjects
    subjects = copy_subjects(workload, count, tmp / "io_in")
    fastest = Variant(best["backend"], best["precision"], best["decoder"], best["frame"], best.get("compile", False))
    with create_variant(fastest, model,
                        device=settings.device, threads=settings.threads) as backend:
        synth = Synthesizer(backend, RunOptions(batch_size=best["batch_size"], frame=best["frame"]))
        tick(f"folder mode: warming up {best['variant']}")
        volumes = {i: load_volume(p) for i, p in workload.subject.inputs.items()}
        compute = [synth.run(volumes, workload.target, tsem=settings.tsem).timings["total"] for _ in range(3)]

        def folder(chosen: list[Subject], out: Path) -> float:
            start = time.perf_counter()
            summary = infer_folder(synth, chosen, InferRequest(workload.target, output=out, tsem=settings.tsem),
                                   on_end=lambda o: tick(f"folder mode: {o.subject}", 1),
                                   backend_name=best["backend"])
            if summary.failed:
                raise TsfError(f"folder mode failed on {summary.failed[0].subject}: {summary.failed[0].error}")
            return time.perf_counter() - start

        one = folder(subjects[:1], tmp / "io_one") if count > 1 else None
        seconds = folder(subjects, tmp / "io_out")
    total = rates(workload.depth, seconds / count)
    alone = rates(workload.depth, min(compute[1:]))  # the first is the warm-up
    steady = rates(workload.depth, (seconds - one) / (count - 1)) if one is not None and seconds > one else None
    return {"backend": best["backend"], "variant": best["variant"], "batch_size": best["batch_size"],
            "subjects": count,
            "folder_seconds": seconds, "one_subject_seconds": one, "folder_throughput": total,
            "steady_throughput": steady, "compute_throughput": alone,
            "row_compute_throughput": best["compute_throughput"],
            "surviving_fraction": total["slices_per_s"] / alone["slices_per_s"],
            "steady_fraction": steady["slices_per_s"] / alone["slices_per_s"] if steady else None}
