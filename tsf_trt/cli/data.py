"""Data commands: phantom subjects with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import app, log, out, progress_bar, setup_logging, user_errors



@app.command("phantom", no_args_is_help=True)
@user_errors
def phantom(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the subjects into (created if "
                                         "missing); one sub-folder per subject.", show_default=False)],
    subjects: Annotated[int, typer.Option("--subjects", "-n", min=1, help="How many subjects to write.",
                                          show_default=False)],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Subject k is made from seed + k, so it is the same "
                                      "whatever --subjects is.")] = 0,
    shape: params.Shape = (240, 240, 155),
    layout: Annotated[Literal["brats2021", "brats2023", "bids"], typer.Option(
        "--layout", case_sensitive=False, help="File naming: brats2021 (<subj>/<subj>_t1.nii.gz, _t1ce, "
                                        "_t2, _flair, _seg; labels 1 NCR, 2 ED, 4 ET) or brats2023 "
                                        "(<subj>/<subj>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg; labels 1 NCR, 2 ED, "
                                        "3 ET), or bids (a raw BIDS dataset: dataset_description.json and "
                                        "sub-Phantom<seed>/anat/sub-Phantom<seed>_T1w.nii.gz, _ce-gadolinium_T1w, "
                                        "_T2w, _FLAIR; no label map), for `tsf-trt bids`.")] = "brats2021",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing subject folders.")] = False,
    hard_fraction: Annotated[float, typer.Option("--hard-fraction", min=0.0, max=1.0, help="Make about this "
                                                 "fraction of the subjects hard, to test the subject flag: tumour radii "
                                                 "x1.6 and noise x3, named PhantomHard_... Which seeds are hard "
                                                 "depends on the seed only (a golden-ratio sequence).")] = 0.0,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Write phantom subjects with ground truth: T1, T1Gd, T2 and FLAIR of one simulated brain, plus its tumour labels.

    Anatomy is the MNI152 2009 template's tissue maps, deformed per subject; a tumour (necrotic core, enhancing rim, oedema) is added and the four sequences are computed with the spin-echo and inversion-recovery signal equations (gadolinium shortens T1 in the rim only), then a bias field, Rician noise and a random intensity scale per sequence. Same seed, same subject, bit for bit. Each subject folder appears only when complete.

    Example: tsf-trt phantom -o phantoms --subjects 4 --shape 96 96 64

    Example: tsf-trt phantom -o calibration-set --subjects 20 --seed 30000 --hard-fraction 0.25 --shape 96 96 64

    Example: tsf-trt phantom -o bids-phantoms --subjects 2 --layout bids --shape 96 96 64
    """
    from tsf_trt.errors import TsfError

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    if not all(16 <= n <= 512 for n in shape):
        raise TsfError(f"--shape {' '.join(map(str, shape))}: each axis must be 16..512 voxels")
    from functools import partial

    from tsf_trt.phantoms import check_targets, write_subjects

    if layout == "bids":
        from tsf_trt.inputs.bids import BIDS_VERSION
        from tsf_trt.phantoms.bids_layout import check_bids_targets, write_bids_subjects

        check_bids_targets(output, subjects, overwrite, seed, hard_fraction)  # before any work
        write = partial(write_bids_subjects, bids_version=BIDS_VERSION)
    else:
        check_targets(output, subjects, layout, overwrite, seed, hard_fraction)  # before any work
        write = partial(write_subjects, layout=layout)
    with progress_bar() as bar:
        task = bar.add_task("phantom", total=subjects)
        folders = write(output, subjects, seed=seed, shape=shape, overwrite=overwrite,
                        on_subject=lambda folder: (log.info("wrote %s", folder), bar.update(task, advance=1, description=folder.name)),
                        hard_fraction=hard_fraction)
    voxel = "x".join(f"{mm / n:.3g}" for mm, n in zip((240, 240, 155), shape))
    out.print(f"wrote {len(folders)} subject(s) to {output} ({layout}, {'x'.join(map(str, shape))} voxels of "
              f"{voxel} mm, seeds {seed}..{seed + subjects - 1})", highlight=False, soft_wrap=True)
