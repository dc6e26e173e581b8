"""`tsf-trt engines build`: TensorRT engines for an export, ahead of time.

Thin over :class:`tsf_trt.engines.manager.EngineManager` (the same code `--backend trt`
uses to build missing engines on demand). Without TensorRT, cuda-python or a GPU it
ends with one line naming what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from tsf_trt.cli import params
from tsf_trt.cli.app import app, out, progress_bar, setup_logging, user_errors
from tsf_trt.engines.profiles import DEFAULT_PROFILE

_D = DEFAULT_PROFILE

engines_app = typer.Typer(
    name="engines", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
    help="TensorRT engines of an export: build them ahead of time (infer --backend trt builds missing ones "
         "on demand). Needs the \\[gpu-cu12] or \\[gpu-cu13] extra and an NVIDIA GPU.",
)
app.add_typer(engines_app, name="engines")


class _PhaseDisplay:
    """TensorRT build phases as rows of a rich progress display (called from TensorRT's threads)."""

    def __init__(self, bar, label: str):
        self.bar, self.label, self.tasks = bar, label, {}

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None:
        depth = 0 if parent is None else 1 + (self.tasks[parent][1] if parent in self.tasks else 0)
        indent = "  " * depth
        task = self.bar.add_task(f"{indent}{self.label}: {phase}" if depth == 0 else f"{indent}{phase}", total=steps)
        self.tasks[phase] = (task, depth)

    def step(self, phase: str, step: int) -> None:
        if phase in self.tasks:
            self.bar.update(self.tasks[phase][0], completed=step + 1)

    def phase_finish(self, phase: str) -> None:
        task = self.tasks.pop(phase, None)
        if task is not None:
            self.bar.remove_task(task[0])


@engines_app.command("build")
@user_errors
def build(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Export directory (from `tsf-trt export`) "
                                                  "or model directory (exported into the cache first). Default: "
                                                  "the bundled demo model.", show_default=False)] = None,
    precision: Annotated[Literal["fp32", "fp16", "best"], typer.Option(
                         "--precision", case_sensitive=False, help="fp32 (TF32 off), fp16 (FP16 graph variants with "
                                           "InstanceNorm, reductions and ω in FP32), or best (fp16 for encoder "
                                           "and decoders, fp32 for the fusion graph).")] = "fp32",
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", min=1, help="Most slices per batch (the "
                                                     "decoders take twice as many: TSEM's two passes run as one "
                                                     f"batch). Default {_D.batch[2]}.", show_default=False)] = None,
    min_size: Annotated[Optional[str], typer.Option("--min-size", metavar="HxW", help="Smallest padded slice size HxW. Default "
                                                    f"{_D.min_size[0]}x{_D.min_size[1]}.", show_default=False)] = None,
    opt_size: Annotated[Optional[str], typer.Option("--opt-size", metavar="HxW", help="Slice size the engines are tuned for. "
                                                    f"Default {_D.opt_size[0]}x{_D.opt_size[1]} (BraTS).",
                                                    show_default=False)] = None,
    max_size: Annotated[Optional[str], typer.Option("--max-size", metavar="HxW", help="Largest padded slice size HxW. Default "
                                                    f"{_D.max_size[0]}x{_D.max_size[1]}.", show_default=False)] = None,
    workspace: Annotated[float, typer.Option("--workspace", min=0.1, help="TensorRT builder workspace, GiB.")] = 8.0,
    device: Annotated[str, typer.Option("--device", metavar="cuda|cuda:N", help="The GPU to build on, as infer's "
                                        "--device (engines are specific to the GPU model); cuda is GPU 0.")
                      ] = "cuda",
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when a matching engine is cached.")] = False,
    verbose: params.Verbose = False,
    quiet: params.Quiet = False,
    no_progress: params.NoProgress = False,
    log_file: params.LogFile = None,
    log_format: params.LogFormat = "text",
) -> None:
    """Build the encoder, fusion and per-target decoder engines of an export, and cache them beside it.

    Engines are keyed by graph hash, TensorRT version, GPU name and compute capability, precision and
    profile: a cached engine that matches is kept, any other is rebuilt, never loaded.
    Example: tsf-trt engines build --model exports/demo --precision fp16 --opt-size 240x240
    """
    from tsf_trt.engines.cuda import Cuda
    from tsf_trt.engines.gpu import device_info, import_tensorrt, require_trt
    from tsf_trt.engines.keys import Platform
    from tsf_trt.engines.manager import BuildSettings, EngineManager
    from tsf_trt.engines.profiles import make_profile
    from tsf_trt.synthesis.source import ModelSource

    setup_logging(quiet, no_progress, log_file, verbose=verbose, log_format=log_format)
    index = _gpu_index(device)
    require_trt("tsf-trt engines build")
    profile = make_profile(max_batch=max_batch, min_size=min_size, opt_size=opt_size, max_size=max_size)
    settings = BuildSettings(precision, profile, workspace)
    model_source = ModelSource.resolve(model)
    source = model_source.export_dir()  # an export directory is itself; a model is exported once (logged)
    trt = import_tensorrt()
    info = device_info(index)
    Cuda(index)  # TensorRT builds on this thread's current GPU: make it GPU `index`, not GPU 0
    with progress_bar() as bar:
        manager = EngineManager(source, Platform(str(trt.__version__), info.name, info.compute_capability), settings,
                                progress=lambda label: _PhaseDisplay(bar, label))
        profile.check(manager.downsample)
        decoders = [g for g in manager.graphs if g.startswith("decoder_")] or ["decoder"]
        graphs = ["encoder", *(["fusion"] if "fusion" in manager.graphs else []), *decoders]
        results = [(graph, *manager.build(graph, force=rebuild)) for graph in graphs]
    for graph, entry, built in results:
        size = entry.meta.get("size", 0) / 2**20
        how = f"built in {entry.meta.get('build_seconds', 0):.0f} s" if built else "cached"
        out.print(f"{graph}: {entry.path} ({manager.precision_of(graph)}, {size:.0f} MiB, {how})", highlight=False,
                  soft_wrap=True)
    out.print(f"{info.name} (compute {info.compute_capability}), TensorRT {trt.__version__}; "
              f"{profile.describe()}", highlight=False, soft_wrap=True)


def _gpu_index(device: str) -> int:
    """--device cuda or cuda:N -> N; a bare N (this command's old spelling) still works for one release."""
    from tsf_trt.console import deprecated
    from tsf_trt.errors import TsfError

    text = device.strip().lower()
    if text.isdigit():
        deprecated(f"--device {text}", f"--device cuda:{text}")
        return int(text)
    name, _, number = text.partition(":")
    if name != "cuda" or (number and not number.isdigit()):
        raise TsfError(f"--device '{device}': engines are built on a GPU: use cuda or cuda:N")
    return int(number or 0)
