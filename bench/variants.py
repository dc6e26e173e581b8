"""What one benchmark row runs (a backend at a precision, ONNX Runtime with either decoder), the
options that name the rows, and how far each row's output is from torch fp32's.

Why variants beside the backends: docs/performance.md's whole-slice tables compare ways of running
that `--backend` does not name apart — bf16 autocast, the code-input ONNX decoder beside the
baked per-target ones — and a speed-up means little without the price in agreement, so every
row also says how its image, TSEM and ω differ from torch fp32's on the same subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsf_trt import metrics
from tsf_trt.backends import NAMES, PRECISIONS, Backend
from tsf_trt.errors import TsfError
from tsf_trt.synthesis.backend import create_backend
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Result

DECODERS = ("baked", "code")
BASELINE, REFERENCE = "torch", "reference"  # what ratios and agreement compare with; the authors' way


@dataclass(frozen=True)
class Variant:
    """One way of running: `backend` as `--backend` names it, its precision, for ONNX Runtime
    backends the decoder ('baked' per-target graphs when the export has them, or 'code'), and for
    torch whether each stage is torch.compile'd (`compile`)."""

    backend: str
    precision: str = "fp32"
    decoder: str | None = None
    frame: str = "head"  # tsf_trt.synthesis.frame; the reference row is always "full" (the authors' way)
    compile: bool = False

    @property
    def name(self) -> str:
        """'torch', 'torch-bf16', 'torch-compile', 'ort-code', 'ort-cuda-fp16-code', 'ort-full': the
        defaults (fp32, baked decoder, head frame; full for the reference; not compiled) are left out."""
        parts = [self.backend] + ([self.precision] if self.precision != "fp32" else [])
        parts += (["code"] if self.decoder == "code" else []) + (["compile"] if self.compile else [])
        return "-".join(parts + ([self.frame] if self.frame != default_frame(self.backend) else []))

    @property
    def is_baseline(self) -> bool:
        """torch fp32, eager: what every ratio and every agreement is measured against."""
        return self.backend == BASELINE and self.precision == "fp32" and not self.compile


def default_frame(backend: str) -> str:
    return "full" if backend == REFERENCE else "head"


def expand(backends: list[str], precisions: list[str], decoders: list[str], frames: list[str] | None = None,
           *, compile: bool = False) -> tuple[list[Variant], list[dict]]:
    """backends x the precisions each takes x (ONNX graph backends) decoders x frames, in that order
    (the reference row: its one definition, full frame), each torch row followed by its torch.compile
    twin when `compile`; a backend that takes none of `precisions` is returned as skipped with the reason."""
    variants, skipped = [], []
    frames = frames or ["head"]
    for name in backends:
        taken = [p for p in precisions if p in PRECISIONS[name]]
        if not taken:
            skipped.append({"backend": name, "reason": f"takes {', '.join(PRECISIONS[name])} only "
                                                       f"(--precision {','.join(precisions)})"})
        kinds = decoders if name.startswith("ort") or name == "openvino" else [None]
        shown = ["full"] if name == REFERENCE else frames
        twins = (False, True) if compile and name == BASELINE else (False,)
        variants += [Variant(name, p, d, f, c) for f in shown for p in taken for d in kinds for c in twins]
    return variants, skipped


def parse_backends(text: str, reference: bool = True) -> list[str]:
    """'all' or a comma list -> backend names, `reference` last (added unless `reference` is False)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    explicit = REFERENCE in names  # named by the user: kept even with reference=False
    if names == ["all"]:
        names = [n for n in NAMES if n != "auto"]
    for name in names:
        if name == "auto":
            raise TsfError("--backend: 'auto' only picks one of the others; name them (or 'all')")
        if name not in NAMES:
            raise TsfError(f"--backend: unknown backend '{name}' (use all or some of "
                           f"{', '.join(n for n in NAMES if n != 'auto')})")
    names = list(dict.fromkeys(names))
    if not names:
        raise TsfError("--backend: name at least one backend, or 'all'")
    names = [n for n in names if n != REFERENCE]
    return names + [REFERENCE] if reference or explicit else names


def check_compile(backends: list[str]) -> None:
    """--compile adds a torch.compile twin to each torch row: without a torch row it would add nothing."""
    if BASELINE not in backends:
        raise TsfError(f"--compile times torch.compile'd torch rows: add torch to --backend "
                       f"(got {','.join(backends)})")


def parse_batch_sizes(text: str) -> list[int | None]:
    """'1,4,16' -> [1, 4, 16]; 'auto' (None) lets each backend choose for the volume's size."""
    try:
        sizes = [None if p.strip().lower() == "auto" else int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        sizes = []
    if not sizes or min((s for s in sizes if s is not None), default=1) < 1:
        raise TsfError(f"--batch-size '{text}': expected positive integers (or auto) separated by commas, "
                       "e.g. 1,4,16")
    return list(dict.fromkeys(sizes))


def parse_list(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """'fp32,bf16' -> ['fp32', 'bf16'], each one of `allowed`, duplicates dropped."""
    names = list(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names or any(n not in allowed for n in names):
        raise TsfError(f"{flag} '{text}': use a comma list of {', '.join(allowed)}")
    return names


def create_variant(variant: Variant, model: Any, *, device: str, threads: int | None) -> Backend:
    """The backend of `variant`."""
    options = RunOptions(backend=variant.backend, device=device, threads=threads, precision=variant.precision,
                         compile=variant.compile)
    return create_backend(model, options, decoder=variant.decoder or "baked")


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max())


def compare(result: Result, base: Result, baseline: dict[str, Any]) -> dict[str, Any]:
    """How far `result` is from `base` (torch fp32's output on the same subject)."""
    psnr = metrics.psnr(result.image, base.image)  # the whole volume, network units
    both = result.tsem is not None and base.tsem is not None
    return {"baseline": baseline,
            "image_max_abs_diff": _max_abs(result.image, base.image),
            "image_psnr_db": psnr if np.isfinite(psnr) else None,  # strict JSON: identical images -> null
            "tsem_max_abs_diff": _max_abs(result.tsem, base.tsem) if both else None,
            "weights_max_abs_diff": max((abs(result.weights[i] - base.weights[i]) for i in result.weights),
                                        default=0.0)}


class Agreement:
    """Fills each row's `agreement` against a torch fp32 row: the one of the same batch size and frame,
    else the first. A row's output is kept only until its baseline has run (torch runs first by default),
    and one torch fp32 output per batch size and frame, so whole volumes do not pile up."""

    def __init__(self) -> None:
        self.baselines: dict[int | None, tuple[dict[str, Any], Result]] = {}
        self.pending: list[tuple[dict[str, Any], Result]] = []

    def add(self, variant: Variant, row: dict[str, Any], result: Result) -> None:
        key = (row["batch_size"], variant.frame)
        if variant.is_baseline:
            row["agreement"] = None  # the baseline itself
            self.baselines.setdefault(key, (row, result))
        elif key in self.baselines:
            self._fill(row, result, *self.baselines[key])
        else:
            self.pending.append((row, result))

    def finish(self) -> None:
        """Rows still waiting: against a torch fp32 row of the same frame and another batch size,
        else of any frame, or null without one."""
        first = next(iter(self.baselines.values()), None)
        for row, result in self.pending:
            same_frame = next((b for (_, f), b in self.baselines.items() if f == row["frame"]), first)
            found = self.baselines.get((row["batch_size"], row["frame"]), same_frame)
            if found is None:
                row["agreement"] = None
            else:
                self._fill(row, result, *found)
        self.pending.clear()
        self.baselines.clear()

    @staticmethod
    def _fill(row: dict[str, Any], result: Result, base_row: dict[str, Any], base: Result) -> None:
        row["agreement"] = compare(result, base, {"backend": base_row["backend"], "precision": "fp32",
                                                  "batch_size": base_row["batch_size"], "frame": base_row["frame"]})
