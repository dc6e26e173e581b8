"""`tsf-trt infer`: whole-volume synthesis with TSEM for one subject or a folder of them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..claims import DEFAULT_LEASE_S
from ..errors import InputError
from .app import EXIT_ERROR, app, err, out, progress_bar, user_errors

HELP_INPUTS = ("Input volumes (.nii/.nii.gz). The sequence is read from the file name (BraTS _t1/_t1ce/_t2/_flair, "
               "-t1n/-t1c/-t2w/-t2f, or t1/t1gd/t2/flair) or given as t1=PATH. Several files may follow one "
               "--inputs. A single folder runs folder mode: one sub-folder per subject, or flat files "
               "(BraTS names, or nnU-Net CASE_XXXX.nii.gz with --channels).")


@app.command("infer", no_args_is_help=True)
@user_errors
def infer(
    target: Annotated[str, typer.Option("--target", "-t", help="Sequence to synthesise: t1, t1gd, t2 or flair "
                                        "(aliases t1n, t1ce, t1c, t2w, t2f).", show_default=False)],
    inputs: Annotated[Optional[list[str]], typer.Option("--inputs", "-i", help=HELP_INPUTS, show_default=False)] = None,
    more_inputs: Annotated[Optional[list[str]], typer.Argument(help="More input files (same forms as --inputs).",
                                                                 show_default=False, metavar="FILE")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (created if missing). "
                                                   "Default: the first input's folder; in folder mode each "
                                                   "subject's own folder, or OUTPUT/<subject>/ when given.",
                                                   show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory (from `tsf-trt "
                                                  "import-reference` or `tsf-trt train`) or export directory (from `tsf-trt "
                                                  "export`). Default: the bundled demo model (trained on phantoms; "
                                                  "see tsf_trt/bundled/demo/MODEL_CARD.md).",
                                                  show_default=False)] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="Runtime: auto (the fastest here, measured once "
                                         "and cached), torch, ort (ONNX Runtime CPU; a model directory is exported "
                                         "into the cache once), ort-cuda, ort-trt (need onnxruntime-gpu), "
                                         "trt (TensorRT engines, built once and cached beside the export; needs "
                                         "the gpu extra), reference (torch run the authors' way, for "
                                         "measurements). On a GPU auto tries trt, ort-trt, ort-cuda, torch in "
                                         "that order.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices per network batch "
                                                      "(default: on CPU as many as keep a batch's activations within "
                                                      "32 MiB (ort) or 16 MiB (torch), e.g. 2 or 1 for the paper config at "
                                                      "240x240; 16 on GPU). "
                                                      "Memory grows with it, not with the volume.",
                                                      show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (a GPU when one is usable, else the CPU), cpu, "
                                        "cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32; bf16 (torch: autocast; faster on CPUs with "
                                           "bf16 instructions, less exact: README, Performance); fp16 (trt, ort-trt, "
                                           "ort-cuda: FP16 graphs, InstanceNorm and ω in FP32); best (trt: fp16 "
                                           "except the fusion graph).")] = "fp32",
    tsem: Annotated[bool, typer.Option("--tsem/--no-tsem", help="Also write the TSEM map (costs a second "
                                       "decoder pass, run in the same batch).")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs; in folder mode, "
                                            "redo finished subjects too.")] = False,
    subject: Annotated[Optional[str], typer.Option("--subject", help="Subject name used in output file names "
                                                   "(default: the inputs' common name without the sequence "
                                                   "suffix). Single-subject mode only.", show_default=False)] = None,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Folder mode, nnU-Net naming: the "
                                                    "sequence of each channel _0000, _0001, ... e.g. "
                                                    "t1,t1gd,t2,flair.", show_default=False)] = None,
    sources: Annotated[Optional[str], typer.Option("--sources", help="Folder mode: the input sequences to use, "
                                                   "e.g. t1,flair (default: every sequence a subject has "
                                                   "except the target).", show_default=False)] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Folder mode: process only shard i of n "
                                                 "(i/n, round-robin over sorted subjects), to split a data set "
                                                 "across processes or machines.", show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Folder mode on several GPUs: one worker "
                                                   "process per GPU index (e.g. 0,1), each over a disjoint share of "
                                                   "the subjects, file reading and writing overlapping GPU work.",
                                                   show_default=False)] = None,
    combine: Annotated[str, typer.Option("--combine", help="How the 3 output channels of neighbouring 2.5D "
                                         "samples make a slice: middle (the reference) or mean (of every "
                                         "prediction of the slice).")] = "middle",
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for the network "
                                                   "(default: the runtime's choice).", show_default=False)] = None,
    qc: Annotated[Optional[Path], typer.Option("--qc", help="QC calibration (qc.json from `tsf-trt evaluate "
                                               "--calibrate-qc` on held-out data with ground truth, same model): "
                                               "its TSEM threshold scores the report's \"qc\" block and its cut "
                                               "sets \"flagged\". Default: threshold 0.1, no flag.",
                                               show_default=False)] = None,
    claim_lease: Annotated[float, typer.Option("--claim-lease", help="Folder mode: seconds after which a claim "
                                               "of a run on another machine that stopped refreshing it counts as "
                                               "dead and is taken over (claims of this machine's runs are checked "
                                               "by pid). Longer than the longest pause a machine may have; clocks "
                                               "of machines sharing a folder must agree to within a fraction of "
                                               "it.")] = DEFAULT_LEASE_S,
    wait: Annotated[bool, typer.Option("--wait", help="Folder mode: when other runs hold subjects, wait for them "
                                       "to finish those (or take them over if they die) instead of leaving them: "
                                       "when this run ends, every subject is done or failed.")] = False,
) -> None:
    """Synthesise a missing sequence for whole volumes, with TSEM and contribution weights.

    Writes three files per subject, in the input's own grid, orientation and header, each only when complete: <subject>_<target>_synth.nii.gz (the network's [-1, 1] output mapped to 0..1000), <subject>_<target>_tsem.nii.gz (|output with - without attention|, paper Eq. 6, network units) and <subject>_<target>.json (ω per input, TSEM summary, QC score, model id, backend, timings).

    Folder mode is safe to run in many processes at once, on one machine or many sharing the folders: each subject is claimed before work, finished ones are skipped, claims of dead runs are taken over (README, "Many processes, many machines").

    Example: tsf-trt infer --inputs sub_t1.nii.gz sub_flair.nii.gz --target t2 --model models/small
    """
    from .. import sequences
    from ..errors import TsfError
    from ..options import InferRequest, RunOptions
    from ..qc import check_model
    from ..subjects import gather

    options = RunOptions(backend, device, precision, batch_size, threads, combine)  # every value, before any work
    items = [*(inputs or []), *(more_inputs or [])]
    folder_mode = len(items) == 1 and Path(items[0]).is_dir()
    flags = {"--channels": channels, "--sources": sources, "--shard": shard, "--devices": devices, "--wait": wait,
             "--claim-lease": claim_lease != DEFAULT_LEASE_S}
    if not folder_mode:
        for flag in (f for f, value in flags.items() if value):
            raise TsfError(f"{flag} is for folder mode (--inputs FOLDER)")
    elif subject:
        raise TsfError("--subject names one subject; folder mode takes names from the folder")
    try:
        target_index = sequences.parse(target)
    except TsfError as exc:
        raise TsfError(f"--target: {exc}") from None
    request = InferRequest(target_index, sequences.parse_list(sources) if sources else None, output, tsem,
                           overwrite, qc, claim_lease, wait)
    if devices:
        from ..multigpu import parse_devices

        parse_devices(devices)  # fails at once without GPUs, before any folder is scanned
    subjects = gather(items, target_index, subject=subject,
                      channels=sequences.parse_list(channels) if channels else None, shard_spec=shard)
    created = _make_folder(output) if output is not None else None
    try:
        if devices:
            from .devices import run_devices

            return run_devices(devices, model, options, request, subjects)
        synth = _synthesizer(model, options)
        if request.qc is not None:
            check_model(request.qc, synth.backend.model_id)
        if folder_mode:
            _run_folder(synth, subjects, request)
        else:
            _run_one(synth, subjects[0], request)
    except BaseException:
        _remove_if_empty(created, output)
        raise


def _make_folder(path: Path) -> Path | None:
    """Create the output folder; return the topmost folder this created (None if it existed)."""
    if path.exists() and not path.is_dir():
        raise InputError(path, "output folder is a file")
    top = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create the output folder ({exc.strerror})") from None
    return top


def _remove_if_empty(top: Path | None, leaf: Path | None) -> None:
    """A failed run leaves no folders it created, as long as they are still empty."""
    if top is None or leaf is None:
        return
    for folder in [leaf, *leaf.parents]:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def _synthesizer(model: Path | None, options):
    from ..pipeline import Synthesizer
    from ..source import ModelSource

    source = ModelSource.resolve(model)
    note = " (auto: the first run on a model exports it to ONNX and times torch against ONNX Runtime, once)" \
        if options.backend == "auto" else ""
    with err.status(f"loading model {source.path}{note} ..."):
        return Synthesizer(source, options.backend, batch_size=options.batch_size, device=options.device,
                           combine=options.combine, threads=options.threads, precision=options.precision)


def _run_one(synth, subject, request) -> None:
    from .. import sequences
    from ..jobs import infer_subject

    task = sequences.describe(list(subject.inputs), request.target)
    bar = progress_bar()
    slices = []  # the bar appears with the first batch, after every check has passed

    def progress(done: int, total: int) -> None:
        if not slices:
            bar.start()
            slices.append(bar.add_task(f"{subject.name} {task}", total=total))
        bar.update(slices[0], completed=done)

    try:
        outcome = infer_subject(synth, subject, request, progress=progress, backend_name=synth.backend.describe())
    finally:
        if slices:
            bar.stop()
    _print_outcome(outcome, request.tsem and not synth.has_fusion)


def _print_outcome(outcome, tsem_unavailable: bool) -> None:
    result, paths = outcome.result, outcome.paths
    weights = ", ".join(f"{k}={v:.3f}" for k, v in result.weights_by_name().items())
    out.print(f"{outcome.subject}: {result.task} in {result.timings['total']:.1f} s; ω: {weights}",
              highlight=False, soft_wrap=True)
    for path in paths.all():
        out.print(f"  wrote {path}", highlight=False, soft_wrap=True)
    for path in outcome.removed:
        out.print(f"  removed {path} (left by a killed run)", highlight=False, soft_wrap=True)
    if tsem_unavailable:
        out.print("  no TSEM: this model has no TSF stage (Seq2Seq only)", highlight=False)


def _run_folder(synth, subjects, request) -> None:
    from ..jobs import infer_folder

    start = time.perf_counter()
    with progress_bar() as bar:
        overall = bar.add_task("subjects", total=len(subjects))
        slices = bar.add_task("", total=None, visible=False)

        def on_start(subject):
            bar.reset(slices, description=f"  {subject.name}", total=None, visible=True)
            return lambda done, total: bar.update(slices, completed=done, total=total)

        def on_end(outcome):
            bar.advance(overall)
            bar.update(slices, visible=False)
            if outcome.status == "failed":
                bar.console.print(f"[red]failed[/] {escape(outcome.subject)}: {escape(str(outcome.error))}",
                                  highlight=False, soft_wrap=True)
            elif outcome.status == "busy":
                bar.console.print(f"busy {escape(outcome.subject)}: {escape(str(outcome.error))}", highlight=False,
                                  soft_wrap=True)

        waited = []

        def on_wait(busy) -> None:
            if len(busy) != (waited[-1] if waited else None):
                bar.console.print(f"waiting for {len(busy)} subject(s) that other runs hold", highlight=False)
            waited.append(len(busy))

        summary = infer_folder(synth, subjects, request, on_start=on_start, on_end=on_end, on_wait=on_wait,
                               backend_name=synth.backend.describe())
    out.print(summary.line(time.perf_counter() - start), highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_ERROR)
