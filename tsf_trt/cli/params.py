"""The options several commands share, declared once: one name, one meaning and one help text
per concept (`--target` is always the sequence to synthesise, `--sources` always a list of
input sequences, `--shape` always X Y Z, `--device` always auto|cpu|cuda|cuda:N); the words
themselves, and the old spellings still read, are tsf_trt/cli/vocabulary.py's.

Each is an `Annotated` type for a command parameter; a command whose use differs gives
its own help with :func:`typer.Option` instead of reusing a misleading one. Options with a fixed
set of values are `Literal` choices, so that --help lists them and shells complete them. Each
belongs to a help panel (the *_PANEL names), the same in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from tsf_trt import console
from tsf_trt.backends.names import NAMES as BACKENDS
from tsf_trt.backends.names import PRECISIONS
from tsf_trt.sequences import ALIASES

#: Help panels: every command groups its options under these names (--help last, under Options).
INPUTS_PANEL, OUTPUTS_PANEL, RUNTIME_PANEL = "Inputs", "Outputs", "Model and runtime"
FOLDER_PANEL, CHECKS_PANEL, LOG_PANEL = "Folder runs", "Checks", console.LOG_PANEL

#: Every --precision a runtime command takes (which backend takes which: backends/names.py).
PRECISION_NAMES = ("auto", *dict.fromkeys(p for taken in PRECISIONS.values() for p in taken))
#: --target's values: every accepted spelling (tsf_trt.sequences.ALIASES), shown as the four names.
TARGET_METAVAR = "t1|t1gd|t2|flair"
TargetName = Literal[tuple(ALIASES)]  # type: ignore[valid-type]
BackendName = Literal[BACKENDS]  # type: ignore[valid-type]
PrecisionName = Literal[PRECISION_NAMES]  # type: ignore[valid-type]

Model = Annotated[Optional[Path], typer.Option(
    "--model", "-m", show_default=False, rich_help_panel=RUNTIME_PANEL,
    help="Model directory (from `tsf-trt import-reference` or `tsf-trt train`) or export directory (from "
         "`tsf-trt export`). Default: the bundled demo model (trained on phantoms; see "
         "tsf_trt/bundled/demo/MODEL_CARD.md).")]

Backend = Annotated[BackendName, typer.Option(
    "--backend", "-b", case_sensitive=False, rich_help_panel=RUNTIME_PANEL,
    help="Runtime: auto (the fastest here, measured once and cached), torch, ort (ONNX Runtime CPU; a model "
         "directory is exported into the cache once), ort-cuda, ort-trt (need onnxruntime-gpu), trt (TensorRT "
         "engines, built once and cached beside the export; needs the gpu extra), reference (torch run the "
         "authors' way, for measurements). On a GPU auto times the GPU backends that work there (trt, ort-trt, "
         "ort-cuda, torch) once per model and GPU, and picks the fastest, as on the CPU.")]

Compile = Annotated[bool, typer.Option(
    "--compile", rich_help_panel=RUNTIME_PANEL,
    help="--backend torch only: torch.compile each stage, compiled at the first batch of each slice size "
         "(measured: 89 s for the small config at 16x16 on one CPU thread; not yet measured on a GPU). "
         "Whether it is faster afterwards depends on the machine (python -m scripts.gpu_check --compile times it on a "
         "GPU). The report's backend says torch.compile when it ran.")]

Device = Annotated[str, typer.Option(
    "--device", metavar="auto|cpu|cuda|cuda:N", rich_help_panel=RUNTIME_PANEL,
    help="auto (a GPU when one is usable, else the CPU), cpu, cuda or cuda:N.")]

Precision = Annotated[PrecisionName, typer.Option(
    "--precision", case_sensitive=False, rich_help_panel=RUNTIME_PANEL,
    help="auto: bf16 on the CPU backends that take it (torch, openvino) where the CPU has bf16 instructions and "
         "this model's bf16 synthesis is within 45 dB of fp32 (checked once per model and machine), else fp32; "
         "fp32 (exact); bf16 (faster only with native bf16: docs/performance.md); fp16 (torch on CUDA, trt, "
         "ort-trt, ort-cuda: InstanceNorm and ω in FP32); best (trt: fp16 except the fusion graph). The report "
         "says which ran and why.")]

BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", min=1, show_default=False, rich_help_panel=RUNTIME_PANEL,
    help="Slices per network batch (default: on CPU as many as keep a batch's activations within 32 MiB (ort), "
         "16 MiB (torch) or 10 MiB (openvino), e.g. 2, 1 and 1 for the paper config at 240x240; 16 on GPU). "
         "Memory grows with it, not with the volume.")]

Threads = Annotated[Optional[int], typer.Option(
    "--threads", min=1, show_default=False, rich_help_panel=RUNTIME_PANEL,
    help="CPU threads for the network, at most the cores this process may use (default: the runtime's "
         "choice).")]

Frame = Annotated[str, typer.Option(
    "--frame", metavar="head|full|HxW", rich_help_panel=RUNTIME_PANEL,
    help="In-plane frame the network runs on: head (the head's box over the whole volume plus 8 pixels, one "
         "frame for every slice; slices with no head voxel are not computed), full (the whole slice, every "
         "slice), or HxW rows x columns centred on the head (e.g. the model's training crop, 192x192 for the "
         "authors' weights). Outputs stay on the input's full grid, background outside the frame. head is "
         "faster and, on the models measured, better (docs/backends.md, \"The frame\").")]

Target = Annotated[TargetName, typer.Option(
    "--target", "-t", show_default=False, case_sensitive=False, metavar=TARGET_METAVAR,
    rich_help_panel=INPUTS_PANEL,
    help="Sequence to synthesise: t1, t1gd, t2 or flair (aliases t1n, t1w, t1ce, t1c, t2w, t2f).")]

Shape = Annotated[tuple[int, int, int], typer.Option(
    "--shape", metavar="X Y Z",
    help="Voxels of the phantom per axis, in the file's (x, y, z) order; the field of view is BraTS's "
         "240x240x155 mm.")]

# The log options live with the log (tsf_trt.console), for the `train` group too.
Quiet, NoProgress, LogFile = console.Quiet, console.NoProgress, console.LogFile
Verbose, LogFormat = console.Verbose, console.LogFormat
