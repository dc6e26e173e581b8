"""Model commands: import the authors' checkpoints into our model format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import app, log, out, setup_logging, user_errors


@app.command("import-reference", no_args_is_help=True)
@user_errors
def import_reference(
    seq2seq: Annotated[Path, typer.Option("--seq2seq", help="The authors' Seq2Seq Generator state_dict "
                                          "(.pth/.pt, e.g. seq2seq_brats_2d_missing.pth or ckpt_seq2seq_best.pth; "
                                          "an .npz of the same keys also works).", show_default=False)],
    config: Annotated[str, typer.Option("--config", help="Sizes the checkpoints were trained with: 'paper', "
                                        "'small', 'demo', or a config file: the authors' YAML as published (e.g. "
                                        "seq2seq_brats_2d_missing.yaml, tsf_seq2seq_brats_2d.yaml) or JSON with their "
                                        "keys, or ModelConfig fields in JSON/YAML. Training settings and paths in it "
                                        "are ignored.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to create "
                                         "(config.json + model.safetensors).", show_default=False)],
    tsf: Annotated[Optional[Path], typer.Option("--tsf", help="The authors' TSF_seq2seq state_dict "
                                                "(ckpt_best.pth of TSF training). Without it the model is "
                                                "Seq2Seq-only: one-to-one synthesis, no TSEM.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model directory.")] = False,
) -> None:
    """Import the authors' checkpoints (github.com/fiy2W/mri_seq2seq) as a tsf-trt model directory.

    The .pth files are read with torch.load(weights_only=True): no code from them runs.
    Every tensor is checked against the config, so a wrong --config is a clear error.
    docs/models.md, "The authors' weights, end to end", goes from their Seq2Seq weights to TSEM.

    Example (from the repository root, with its small reference checkpoints): tsf-trt import-reference --seq2seq tests/data/small_seq2seq.pt --tsf tests/data/small_tsf.pt --config small -o models/small
    """
    from tsf_trt.files.atomic import check_folder_target
    from tsf_trt.files.ownership import MODEL_DIR, refuse_input_overlap
    from tsf_trt.model import import_reference as do_import
    from tsf_trt.model import resolve_config, save_model
    from tsf_trt.model.meta import read_model_meta

    cfg = resolve_config(config)
    # the output, before any checkpoint is read: never an input, replaced only if a model directory
    refuse_input_overlap(output, [("--seq2seq checkpoint", seq2seq), ("--tsf checkpoint", tsf),
                                  ("--config file", Path(config) if Path(config).is_file() else None)])
    check_folder_target(output, overwrite, MODEL_DIR)
    model = do_import(seq2seq, tsf, cfg)
    origin = {"imported_from": {"seq2seq": str(seq2seq), "tsf": str(tsf) if tsf else None},
              "config": config}
    save_model(model, output, overwrite=overwrite, origin=origin, training_crop=_training_crop(config))
    meta = read_model_meta(output)
    kind = "TSF-Seq2Seq" if model.has_fusion else "Seq2Seq-only (one-to-one, no TSEM)"
    params = sum(p.numel() for p in model.parameters())
    out.print(f"wrote {output}: {kind}, {params:,} parameters, model id {meta['weights_sha256'][:16]}",
              highlight=False, soft_wrap=True)


@app.command("export", no_args_is_help=True)
@user_errors
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Export directory to create: encoder.onnx, "
                                         "fusion.onnx, decoder.onnx, decoder_<target>.onnx, manifest.json.",
                                         show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory (config.json + "
                                                  "model.safetensors). Default: the bundled demo model.",
                                                  show_default=False)] = None,
    opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset of the graphs.")] = 17,
    targets: Annotated[str, typer.Option("--targets", help="Targets that get a decoder with baked kernels "
                                         "(decoder_<target>.onnx): a comma list of t1,t1gd,t2,flair, or all, "
                                         "or none. The code-input decoder.onnx is always written.")] = "all",
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every graph and the whole chain "
                                         "against PyTorch on ONNX Runtime (max abs difference <= 1e-4) before "
                                         "anything is written.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export directory.")] = False,
    precision: Annotated[str, typer.Option("--precision", metavar="fp32|int8",
                                           autocompletion=lambda: ["fp32", "int8"],  # checked: _int8_options
                                           help="fp32: the ONNX graphs. int8: also int8 graphs of "
                                           "the encoder and the per-target decoders, for --backend openvino "
                                           "--precision int8, quantised by NNCF (the int8 extra) on "
                                           "calibration slices (--int8-data); the fusion stays fp32.")] = "fp32",
    int8_data: Annotated[Optional[Path], typer.Option("--int8-data", help="With --precision int8: a folder of "
                                                      "subjects like yours to calibrate on (as evaluate --data "
                                                      "takes; never subjects you evaluate on). Default: 4 phantoms "
                                                      "made in memory, seeds 6000-6003, which no evaluation uses.",
                                                      show_default=False)] = None,
    int8_samples: Annotated[Optional[int], typer.Option("--int8-samples", help="With --precision int8: "
                                                        "calibration samples per graph (NNCF's subset_size; "
                                                        "default 300), drawn from every 4th slice of the head "
                                                        "frame.", show_default=False)] = None,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Export a model to three ONNX graphs (encoder, fusion with the task code as input, decoder) + manifest.

    The ConvLSTMs are folded exactly for t = 1; per-target decoders have their HyperConv kernels folded into constants. Graphs are simplified with onnxslim, checked with onnx.checker and verified against PyTorch; a failing export leaves nothing behind. Each graph records its role in its ONNX metadata, which every runtime checks.

    With --precision int8 the export also holds OpenVINO int8 graphs of the encoder and the per-target decoders, calibrated on slices that are never evaluation data and recorded in manifest.json (docs/backends.md, "int8").

    Example: tsf-trt export -o exports/demo --targets t2,flair
    """
    from tsf_trt import sequences
    from tsf_trt.cli.app import progress_bar
    from tsf_trt.files.atomic import check_folder_target
    from tsf_trt.files.ownership import EXPORT_DIR, refuse_input_overlap
    from tsf_trt.model.meta import EXPORT_SUBDIR
    from tsf_trt.synthesis.source import ModelSource

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    int8 = _int8_options(precision, int8_data, int8_samples)  # before the model loads: NNCF missing is one line
    source = ModelSource.resolve(model)
    chosen = {"all": list(range(sequences.N_SEQUENCES)), "none": []}.get(targets.strip().lower())
    if chosen is None:
        chosen = sequences.parse_list(targets)
    # the output, before the model loads: never the model (its own export/ is the one place inside
    # it meant for an export), replaced only if it is an export directory holding nothing else
    own_export = [source.path / EXPORT_SUBDIR] if source.kind == "model" else []
    refuse_input_overlap(output, [("--model directory", source.path), ("--int8-data folder", int8_data)],
                         allowed=own_export)
    check_folder_target(output, overwrite, EXPORT_DIR)
    from tsf_trt.export.onnx_export import export_model  # needs torch: without it, one line names the extra
    loaded = source.module()  # an export directory has no weights to export: one line
    steps = (2 + (loaded.fusion is not None) + len(chosen)) + 1 + int(verify)  # graphs, FLOPs, verification
    steps += (2 + len(chosen)) if int8 else 0  # int8: the samples, the encoder, each per-target decoder
    with progress_bar() as bar:
        task = bar.add_task("export", total=steps)
        done = iter(range(steps + 1))

        def step(message: str) -> None:  # called as each step starts
            log.info("export: %s", message)
            bar.update(task, completed=next(done), description=message)

        options = dict(targets=chosen, opset=opset, verify=verify, step=step, origin={"model_dir": str(source.path)},
                       model_id=source.model_id)
        if int8:
            manifest = _export_int8(output, overwrite, lambda folder: export_model(loaded, folder, own_location=True,
                                                                                   **options), *int8, step)
        else:
            manifest = export_model(loaded, output, overwrite=overwrite, **options)
        bar.update(task, completed=steps, description="done")
    flops = manifest["flops_per_slice"]
    out.print(f"wrote {output}: {', '.join(g['file'] for g in manifest['graphs'].values())}", highlight=False,
              soft_wrap=True)
    for name in ("encoder", "decoder"):
        f = flops[name]
        out.print(f"  {name}: {f['folded'] / 1e9:.2f} GFLOP per 240x240 slice (ConvLSTM folding saved "
                  f"{f['saved']:.0%} of {f['unfolded'] / 1e9:.2f})", highlight=False)
    if manifest["verification"]:
        worst = max(manifest["verification"]["max_abs_diff"].values())
        out.print(f"  verified against PyTorch on ONNX Runtime: max abs difference {worst:.2e}", highlight=False)
    if int8:
        block = manifest["int8"]
        data = block["calibration"]["data"]
        where = f"phantom seeds {data['seeds'][0]}-{data['seeds'][-1]}" if data["kind"] == "phantoms" else \
            f"{len(data['subjects'])} subjects of {data['folder']}"
        files = ", ".join(g["file"] for g in block["graphs"].values())
        calibration = block["calibration"]
        out.print(f"  int8 (--backend openvino --precision int8): {files}; NNCF {calibration['nncf']} "
                  f"{calibration['preset']} preset, up to {max(calibration['samples'].values())} samples per graph "
                  f"from {where}", highlight=False, soft_wrap=True)


def _int8_options(precision: str, data: Optional[Path], samples: Optional[int]) -> tuple | None:
    """(--int8-data, --int8-samples) for --precision int8, else None; checked before any model loads."""
    from tsf_trt.errors import InputError, TsfError

    if precision not in ("fp32", "int8"):
        raise TsfError(f"--precision must be fp32 or int8, got '{precision}'")
    if precision == "fp32":
        if data is not None or samples is not None:
            raise TsfError("--int8-data and --int8-samples calibrate int8 graphs: give them with --precision int8")
        return None
    from tsf_trt.export.quantize import DEFAULT_SAMPLES, import_nncf

    import_nncf()  # one line naming the extra when it is missing
    if data is not None:
        from tsf_trt.inputs.subjects import find_subjects

        if not data.is_dir():
            raise InputError(data, "no such folder (--int8-data: the subjects to calibrate the int8 graphs on)")
        if not any(s.problem is None for s in find_subjects(data)):  # before minutes of exporting
            raise InputError(data, "holds no subject to calibrate the int8 graphs on (--int8-data)")
    if samples is not None and samples < 1:
        raise TsfError(f"--int8-samples must be at least 1, got {samples}")
    return data, samples or DEFAULT_SAMPLES


def _export_int8(output: Path, overwrite: bool, export, data: Optional[Path], samples: int, step) -> dict:
    """The fp32 export and its int8 graphs in `output`, all or nothing (tsf_trt.export.quantize)."""
    from tsf_trt.export.quantize import export_with_int8
    from tsf_trt.runs.int8_samples import int8_data

    opened = []

    def calibration(folder: Path):
        step("preparing the int8 calibration slices")
        found, record = int8_data(folder, data, samples=samples)
        opened.append(found)
        return found, record

    try:
        return export_with_int8(output, overwrite, export, calibration, step)
    finally:
        for found in opened:
            found.close()


#: The authors' published configs crop 192x192 for training (train.crop_size [1, 192, 192]).
AUTHORS_CROP = (192, 192)


def _training_crop(config: str) -> tuple[int, int]:
    """The config file's own train.crop_size when it has one, else the authors' 192x192."""
    from tsf_trt.model.reference_config import read_config_file, training_crop

    path = Path(config)
    if path.is_file():
        found = training_crop(read_config_file(path))
        if found:
            return found
    return AUTHORS_CROP
