"""The `train` command group: `seq2seq` (stage 1), `tsf` (stage 2) and `bundle` (a run -> a shipped model).

Why here and not in :mod:`tsf_trt.cli`: torchrun launches a module
(``torchrun --nproc-per-node K -m tsf_trt.train seq2seq ...``), and that module must not
import the whole CLI (cli sits above train). So this group is defined once, here, over
:func:`.trainer.train` and :func:`.bundle.bundle`; :mod:`tsf_trt.cli.train` registers it
as `tsf-trt train` and :mod:`tsf_trt.train.__main__` runs it alone. Under torchrun only
rank 0 shows progress.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tsf_trt.console import LogFile, LogFormat, NoProgress, Quiet, Verbose, progress_bar, setup_logging
from tsf_trt.console import err as _err
from tsf_trt.console import log as _log
from tsf_trt.console import out as _out
from tsf_trt.console import user_errors as _user_errors

train_app = typer.Typer(
    name="train", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
    help="Train TSF-Seq2Seq as the paper: stage 1 [bold]seq2seq[/] (one-to-one), then stage 2 [bold]tsf[/] "
         "(fusion, encoder frozen); [bold]bundle[/] makes a finished run a model directory with its card. "
         "Multi-process: torchrun --nproc-per-node K -m tsf_trt.train ...",
)
#: The help panels of the two training commands (the runtime commands' panels: tsf_trt/cli/params.py).
DATA_PANEL, OUTPUT_PANEL, TRAINING_PANEL, RUNTIME_PANEL = "Inputs", "Outputs", "Training", "Runtime"
Data = Annotated[Path, typer.Option("--data", "-d", metavar="FOLDER", rich_help_panel=DATA_PANEL,
                                    help="Folder of subjects (one sub-folder per subject, BraTS "
                                    "names; missing sequences are allowed).", show_default=False)]
Output = Annotated[Path, typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL,
                                      help="Run folder: step_NNNNNN/ model directories, "
                                      "last/ (resume state), log.csv, log.json, train.log, split.json.",
                                      show_default=False)]
Steps = Annotated[int, typer.Option("--steps", min=1, rich_help_panel=TRAINING_PANEL,
                                    help="Optimizer steps in all (also the target of "
                                    "--resume).")]
Batch = Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=TRAINING_PANEL,
                                    help="Slices per step and process.")]
Crop = Annotated[int, typer.Option("--crop", min=4, rich_help_panel=TRAINING_PANEL,
                                   help="Random square crop of the training slices "
                                   "(centred for validation); a multiple of 4 for the published sizes.")]
Lr = Annotated[float, typer.Option("--lr", min=0.0, rich_help_panel=TRAINING_PANEL,
                                   help="Adam learning rate (betas 0.5, 0.999), constant.")]
Every = Annotated[int, typer.Option("--checkpoint-every", min=1, rich_help_panel=OUTPUT_PANEL,
                                    help="Write step_NNNNNN/ and last/ every K steps "
                                    "(and at the end).")]
ValEvery = Annotated[int, typer.Option("--val-every", min=0, rich_help_panel=TRAINING_PANEL,
                                       help="Validation PSNR/SSIM every K steps and at the "
                                       "end; 0: never.")]
ValSubjects = Annotated[int, typer.Option("--val-subjects", min=0, rich_help_panel=TRAINING_PANEL,
                                          help="At most this many held-out subjects "
                                          "are validated on.")]
Vgg = Annotated[Optional[Path], typer.Option("--vgg-weights", rich_help_panel=TRAINING_PANEL,
                                             help="torchvision VGG19 ImageNet weights "
                                             "(vgg19-*.pth) for the perceptual loss. Without it the perceptual "
                                             "term is off (said in the log): only SmoothL1 is used.")]
Workers = Annotated[int, typer.Option("--workers", min=0, rich_help_panel=RUNTIME_PANEL,
                                      help="DataLoader worker processes per process.")]
Block = Annotated[int, typer.Option("--block-subjects", min=1, rich_help_panel=RUNTIME_PANEL,
                                    help="Shuffle within blocks of this many subjects "
                                    "(each worker caches one block's volumes: BraTS ~140 MB per subject).")]
Seed = Annotated[int, typer.Option("--seed", min=0, rich_help_panel=TRAINING_PANEL,
                                   help="Fixes init, split, crops, order and tasks.")]
Device = Annotated[Optional[str], typer.Option("--device", rich_help_panel=RUNTIME_PANEL,
                                               help="cpu or cuda (default: cuda when available).")]
Amp = Annotated[bool, typer.Option("--amp/--no-amp", rich_help_panel=RUNTIME_PANEL,
                                   help="Mixed precision on CUDA (ignored on CPU).")]
Resume = Annotated[bool, typer.Option("--resume", rich_help_panel=OUTPUT_PANEL,
                                      help="Continue the run in --output from last/, "
                                      "bit-compatibly (same data order, tasks, optimizer state).")]
Split = Annotated[Optional[Path], typer.Option("--split", rich_help_panel=DATA_PANEL,
                                               help="Split file {\"train\": [...], \"val\": [...], "
                                               "\"test\": [...]}; default: a hash split by --seed "
                                               "(80/10/10), saved as split.json.")]


def _run(log: tuple[bool, bool, Path | None, bool, str], **kwargs: Any) -> None:
    from tsf_trt.train.trainer import TrainConfig, train

    quiet, no_progress, log_file, verbose, log_format = log
    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    cfg = TrainConfig(**kwargs)
    if int(os.environ.get("RANK", "0")) != 0:
        train(cfg)
        return
    with progress_bar() as bar:
        task = bar.add_task(cfg.stage, total=cfg.steps)

        def on_step(step: int, steps: int, losses: dict[str, float]) -> None:
            loss = losses.get("loss")
            bar.update(task, completed=step, description=f"{cfg.stage} loss {loss:.4f}" if loss else cfg.stage)

        final = train(cfg, on_step=on_step, echo=lambda text: _log.info("%s", text))
    _err.print(f"wrote {final}", highlight=False, soft_wrap=True)


@train_app.command("seq2seq", no_args_is_help=True)
@_user_errors
def seq2seq(
    data: Data, output: Output,
    config: Annotated[str, typer.Option("--config", rich_help_panel=DATA_PANEL,
                                        help="Model sizes: 'paper', 'small', 'demo' or a JSON/YAML "
                                        "file (ours or the authors' config).")] = "paper",
    steps: Steps = 10_000, batch_size: Batch = 8, crop: Crop = 192, lr: Lr = 1e-4, checkpoint_every: Every = 1000,
    val_every: ValEvery = 1000, val_subjects: ValSubjects = 8, vgg_weights: Vgg = None, workers: Workers = 4,
    block_subjects: Block = 4, seed: Seed = 0, device: Device = None, amp: Amp = True, resume: Resume = False,
    split: Split = None, verbose: Verbose = False, quiet: Quiet = False, no_progress: NoProgress = False,
    log_file: LogFile = None, log_format: LogFormat = "text",
) -> None:
    """Stage 1: one-to-one Seq2Seq (random source, random target per batch), loss 10·SmoothL1 + 0.01·VGG19.

    Example: tsf-trt train seq2seq --data phantoms -o runs/s1 --config small --steps 2000
    """
    _run(stage="seq2seq", data=data, out=output, model_config=config, steps=steps, batch_size=batch_size,
         crop=crop, lr=lr, checkpoint_every=checkpoint_every, val_every=val_every, val_subjects=val_subjects,
         vgg_weights=vgg_weights, workers=workers, block_subjects=block_subjects, seed=seed, device=device,
         amp=amp, resume=resume, split=split, log=(quiet, no_progress, log_file, verbose, log_format))


@train_app.command("tsf", no_args_is_help=True)
@_user_errors
def tsf(
    data: Data,
    init: Annotated[Path, typer.Option("--init", rich_help_panel=DATA_PANEL,
                                       help="Model directory of stage 1 (e.g. RUN/step_010000); "
                                       "its sizes are used.", show_default=False)],
    output: Output,
    steps: Steps = 10_000, batch_size: Batch = 8, crop: Crop = 192, lr: Lr = 1e-4, checkpoint_every: Every = 1000,
    val_every: ValEvery = 1000, val_subjects: ValSubjects = 8, vgg_weights: Vgg = None, workers: Workers = 4,
    block_subjects: Block = 4, seed: Seed = 0, device: Device = None, amp: Amp = True, resume: Resume = False,
    split: Split = None, verbose: Verbose = False, quiet: Quiet = False, no_progress: NoProgress = False,
    log_file: LogFile = None, log_format: LogFormat = "text",
) -> None:
    """Stage 2: task-specific fusion from random source subsets, encoder frozen; fusion and decoder trained on
    decoder(fused) and decoder(fused_avg) (paper Eq. 5).

    Example: tsf-trt train tsf --data phantoms --init runs/s1/step_002000 -o runs/s2 --steps 2000
    """
    _run(stage="tsf", data=data, out=output, init=init, steps=steps, batch_size=batch_size, crop=crop, lr=lr,
         checkpoint_every=checkpoint_every, val_every=val_every, val_subjects=val_subjects,
         vgg_weights=vgg_weights, workers=workers, block_subjects=block_subjects, seed=seed, device=device,
         amp=amp, resume=resume, split=split, log=(quiet, no_progress, log_file, verbose, log_format))


@train_app.command("bundle", no_args_is_help=True)
@_user_errors
def bundle(
    stage1: Annotated[Path, typer.Option("--stage1", help="Run folder of `tsf-trt train seq2seq` (its "
                                         "train_config.json, split.json and log.json are read).",
                                         show_default=False)],
    stage2: Annotated[Path, typer.Option("--stage2", help="Run folder of `tsf-trt train tsf`; its last step "
                                         "(step_<steps>) is the model shipped.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write (config.json, "
                                         "weights, MODEL_CARD.md), atomically.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="The model's name, in its card and origin.")] = "demo",
    quality: Annotated[Optional[Path], typer.Option("--quality", help="Markdown with the held-out quality "
                                                    "tables (e.g. a `tsf-trt evaluate` report.md); without "
                                                    "it the card says '(not measured)'.", show_default=False)] = None,
    notes: Annotated[Optional[Path], typer.Option("--notes", help="Markdown appended as the card's Notes "
                                                  "section.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """Turn a finished two-stage run into a shippable model directory whose MODEL_CARD.md says exactly how it was made: config, data, the training commands, steps, time, validation and held-out quality, all read from the run folders.

    Example: tsf-trt train bundle --stage1 runs/s1 --stage2 runs/s2 --quality report/report.md -o models/mine
    """
    from tsf_trt.train.bundle import bundle as make_bundle

    path = make_bundle(stage1, stage2, output, name=name, quality=quality, notes=notes, overwrite=overwrite)
    _out.print(str(path), highlight=False, soft_wrap=True)
