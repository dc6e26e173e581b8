"""Model commands: import the authors' checkpoints into our model format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, out, user_errors


@app.command("import-reference", no_args_is_help=True)
@user_errors
def import_reference(
    seq2seq: Annotated[Path, typer.Option("--seq2seq", help="The authors' Seq2Seq Generator state_dict "
                                          "(.pth/.pt, e.g. seq2seq_brats_2d_missing.pth or ckpt_seq2seq_best.pth; "
                                          "an .npz of the same keys also works).", show_default=False)],
    config: Annotated[str, typer.Option("--config", help="Sizes the checkpoints were trained with: 'paper', "
                                        "'small', or a JSON file (ours or the authors' config keys).")],
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
    """
    from ..model import import_reference as do_import
    from ..model import resolve_config, save_model
    from ..model.checkpoint import read_model_meta

    cfg = resolve_config(config)
    if output.exists() and not overwrite:
        from ..errors import ModelError

        raise ModelError(output, "exists; use --overwrite to replace it")
    model = do_import(seq2seq, tsf, cfg)
    origin = {"imported_from": {"seq2seq": str(seq2seq), "tsf": str(tsf) if tsf else None},
              "config": config}
    save_model(model, output, overwrite=overwrite, origin=origin)
    meta = read_model_meta(output)
    kind = "TSF-Seq2Seq" if model.has_fusion else "Seq2Seq-only (one-to-one, no TSEM)"
    params = sum(p.numel() for p in model.parameters())
    out.print(f"wrote {output}: {kind}, {params:,} parameters, model id {meta['weights_sha256'][:16]}",
              highlight=False, soft_wrap=True)
