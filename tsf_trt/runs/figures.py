"""PNG figures shared by the commands: one subject at a glance, and contribution weights ω.

Why a module of its own: `evaluate` (paper Figs. 2-4 and Fig. 3's shape) and `demo` draw
the same pictures, so they look the same everywhere. Matplotlib is imported on first use
and driven through its object API with the Agg canvas (no pyplot, no global backend
switch), so importing this module costs nothing and never touches a user's GUI session.
Every PNG is written under a temporary name and renamed when complete.

Arrays are canonical (z, y, x) in network units [-1, 1] (background -1); an axial slice
is drawn as stored, anterior up and the patient's right on the left (radiological view,
:func:`side_markers`). What a subject figure shows is decided first, as a :class:`SubjectSpec`
(scales, thresholds, labels: what the tests read), then drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.ownership import PNG_METADATA
from tsf_trt.metrics import TSEM_TOP
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE

DPI = 110
CELL_IN = 1.9  # inches per image cell
IMAGE_WINDOW = (-1.0, 1.0)  # network units: background -1, the clip level 2·p99 +1
#: Output units (the 0-1000 of the synthesis and half-width files) per network unit.
PER_NETWORK_UNIT = OUTPUT_SCALE / 2
#: |error| and the interval's half-width: one colour scale, 0 to this, in output units, the same in
#: every figure so that subjects and runs compare (0.4 network units; larger values saturate). The
#: bundled demo model's |error| on its phantoms reaches ~150-250 at the 99.5th percentile of a slice.
ERROR_MAX = 200.0
#: TSEM's colour scale, 0 to this, in network units (as the *_tsem file and Table 2 hold it), the
#: same in every figure. The bundled demo's top 1 % starts at 0.08-0.2 and its maximum is 0.25-0.45,
#: so the drawn region keeps its gradation (at 0.2 the whole overlay saturated).
TSEM_MAX = 0.5
#: One colour per sequence, in index order (T1, T1Gd, T2, FLAIR), the same in every chart.
SEQUENCE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
_DISPLAY = {"t1": "T1", "t1gd": "T1Gd", "t2": "T2", "flair": "FLAIR"}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_SIDE = {"L": "left", "R": "right"}
UNITS = "0–1000"  # how titles and colour bars name output units


def _display(name: str) -> str:
    return _DISPLAY.get(name.lower(), name)


def _colour(name: str, k: int) -> str:
    keys = list(_DISPLAY)
    return SEQUENCE_COLOURS[keys.index(name.lower())] if name.lower() in keys else f"C{k % 10}"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def save_png(fig: Any, path: str | Path, *, own_location: bool = False) -> Path:
    """Render `fig` with the Agg canvas to `path`, atomically (a reader never sees half a PNG),
    marked as tsf-trt's (:data:`tsf_trt.files.ownership.PNG_METADATA`); an existing file is replaced
    only when it is a tsf-trt figure too, or `own_location` (a folder recognised as ours)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path, overwrite=True, own_location=own_location) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", metadata=PNG_METADATA)
    return path


def choose_slices(reference: np.ndarray, tsem: np.ndarray | None = None, count: int = 3) -> list[int]:
    """`count` axial slices through the head: centred on the slice with the most TSEM, or on
    the middle of the head when there is no TSEM, spaced by a sixth of the head's extent."""
    depth = reference.shape[0]
    foreground = (reference > IMAGE_WINDOW[0] + 1e-3).reshape(depth, -1).sum(1)
    occupied = np.flatnonzero(foreground) if foreground.any() else np.arange(depth)
    lo, hi = int(occupied[0]), int(occupied[-1])
    if tsem is not None and float(tsem.max()) > 0:
        centre = int(np.argmax(tsem.reshape(depth, -1).sum(1)))
    else:
        centre = (lo + hi) // 2
    step = max(1, (hi - lo + 1) // 6)
    half = (count - 1) / 2
    picked = [int(np.clip(round(centre + (k - half) * step), lo, hi)) for k in range(count)]
    return sorted(set(picked))


def slice_label(z: int) -> str:
    """The one way a figure names an axial slice: its index in the volume as loaded (canonical z)."""
    return f"axial z {int(z)}"


def scored_title(subject: str, task: str, psnr: float | None = None, ssim: float | None = None,
                 note: str = "") -> str:
    """The one title of a subject figure: who, which task and, where the truth is known, the scores
    (inside the head, as tsf_trt.metrics computes them)."""
    scores = "" if psnr is None or ssim is None else f"   PSNR {psnr:.2f} dB, SSIM {ssim:.3f} (head)"
    return f"{subject}: {task}{scores}" + (f"  {note}" if note else "")


def side_markers() -> tuple[str, str]:
    """(left edge, right edge) of an axial slice as drawn. Arrays are (z, y, x), x along the loader's
    first axis code (tsf_trt.files.volume.CANONICAL_AXCODES: 'L', x grows toward the patient's left)
    and drawn growing to the right, so the patient's right is on the left (radiological view)."""
    from tsf_trt.files.volume import CANONICAL_AXCODES

    toward = CANONICAL_AXCODES[0]
    return _OPPOSITE[toward], toward


def tsem_threshold(tsem: np.ndarray, head: np.ndarray) -> float | None:
    """The TSEM the figure draws above: its (100 - TSEM_TOP)th percentile over the head, so the overlay
    is the top 1 % region that tsf_trt.metrics.tsem_regions scores for Table 2; None without head."""
    inside = tsem[head]
    return float(np.percentile(inside, 100 - TSEM_TOP)) if inside.size else None


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _weights_axis(ax: Any, weights: Mapping[str, float]) -> None:
    names = list(weights)
    values = [float(weights[n]) for n in names]
    ys = np.arange(len(names))[::-1]
    ax.barh(ys, values, color=[_colour(n, k) for k, n in enumerate(names)], height=0.6)
    for y, v in zip(ys, values):
        ax.text(min(v + 0.03, 0.97), y, f"{v:.2f}", va="center", ha="left" if v < 0.75 else "right",
                fontsize=8, color="black" if v < 0.75 else "white")
    ax.set_yticks(ys, [_display(n) for n in names], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("ω (contribution)", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def panels(inputs: Mapping[str, np.ndarray], synthesis: np.ndarray, truth: np.ndarray | None,
           tsem: np.ndarray | None, half_width: np.ndarray | None = None) -> list[tuple[str, np.ndarray, str]]:
    """The columns of :func:`subject_figure`: (title, volume, kind). Kind 'error' (|error| and, beside it,
    the interval's half-width) is in output units (0-1000), on the one fixed scale ERROR_MAX, so a reader
    compares them with each other and across subjects; the images and TSEM stay in network units."""
    unit = np.float32(PER_NETWORK_UNIT)
    columns: list[tuple[str, np.ndarray, str]] = [(_display(n), a, "image") for n, a in inputs.items()]
    columns.append(("synthesis", synthesis, "image"))
    if truth is not None:
        columns += [("truth", truth, "image"), (f"|error| ({UNITS})", np.abs(synthesis - truth) * unit, "error")]
    if half_width is not None:
        columns.append((f"half-width ({UNITS})", half_width * unit, "error"))
    if tsem is not None:
        columns.append((f"TSEM, top {TSEM_TOP:g} % of head", tsem, "tsem"))
    return columns


@dataclass
class SubjectSpec:
    """Everything a subject figure shows but the pixels: what the tests read."""

    columns: list[tuple[str, np.ndarray, str]]  # (title, volume, kind: image | error | tsem), see panels
    rows: list[int]                             # indices into the arrays, one figure row each
    row_labels: list[str]                       # slice_label of each row
    synthesis: np.ndarray                       # under the TSEM overlay
    weights: dict[str, float] | None
    title: str
    scales: dict[str, tuple[float, float]]      # kind -> (vmin, vmax), fixed
    tsem_threshold: float | None                # TSEM at or below it is not drawn (network units)
    colourbar_labels: dict[str, str]            # kind -> label, with units
    markers: tuple[str, str]                    # drawn at the left and right edge of each row's first image
    note: str                                   # the caption under the figure: view, units, threshold


def subject_spec(*, inputs: dict[str, np.ndarray], synthesis: np.ndarray, truth: np.ndarray | None,
                 tsem: np.ndarray | None, weights: dict[str, float] | None, title: str,
                 slices: Sequence[int] | None = None, slice_numbers: Sequence[int] | None = None,
                 half_width: np.ndarray | None = None, head: np.ndarray | None = None) -> SubjectSpec:
    """Check the arrays and decide the figure (see :func:`subject_figure` for the arguments)."""
    shape = synthesis.shape
    for name, array in (*inputs.items(), ("truth", truth), ("tsem", tsem), ("half_width", half_width),
                        ("head", head)):
        if array is not None and array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, the synthesis {shape}")
    rows = list(slices) if slices is not None else choose_slices(truth if truth is not None else synthesis, tsem)
    if not rows or not all(0 <= z < shape[0] for z in rows):
        raise ValueError(f"slices {rows} are not within 0..{shape[0] - 1}")
    numbers = list(slice_numbers) if slice_numbers is not None else rows
    if len(numbers) != len(rows):
        raise ValueError(f"{len(numbers)} slice numbers for {len(rows)} slices")
    if head is None:  # as evaluate's head mask: any sequence above its background (-1 after normalising)
        head = np.logical_or.reduce([v > IMAGE_WINDOW[0] for v in (*inputs.values(), truth) if v is not None])
    head = np.asarray(head, dtype=bool)
    threshold = None if tsem is None else tsem_threshold(tsem, head)
    tsem = None if tsem is None else np.where(head, tsem, 0)  # the overlay is of the head's top region only
    half_width = None if half_width is None else np.where(head, half_width, np.nan)  # not drawn off the head
    on_left, on_right = side_markers()
    note = [(f"Axial slices: the patient's {_SIDE[on_left]} ({on_left}) on the left, {_SIDE[on_right]} ({on_right}) "
             f"on the right, anterior up. Grey: window {UNITS} (the synthesis file's units; inputs and truth "
             "normalised as the network sees them).")]
    if truth is not None or half_width is not None:
        said = " and ".join(["|error| = |synthesis - truth|"] * (truth is not None) +
                            ["the interval's half-width (over the head, where the interval is stated)"] *
                            (half_width is not None))
        note.append(f"{said[0].upper()}{said[1:]}: output units ({UNITS}), one fixed scale 0 to {ERROR_MAX:g} in every "
                    "figure (larger values saturate).")
    if tsem is not None:
        note.append(f"TSEM drawn only above {threshold:.3g} (its {100 - TSEM_TOP:g}th percentile over the head: "
                    f"the top {TSEM_TOP:g} % region of Table 2), network units." if threshold is not None
                    else "TSEM: no head voxel, nothing drawn.")
    return SubjectSpec(
        columns=panels(inputs, synthesis, truth, tsem, half_width), rows=rows,
        row_labels=[slice_label(n) for n in numbers], synthesis=synthesis, weights=weights or None, title=title,
        scales={"image": IMAGE_WINDOW, "error": (0.0, ERROR_MAX), "tsem": (0.0, TSEM_MAX)},
        tsem_threshold=threshold,
        colourbar_labels={"error": f"output units ({UNITS}), fixed", "tsem": f"TSEM, network units (> {threshold:.3g})"
                          if threshold is not None else "TSEM, network units"},
        markers=(on_left, on_right), note="\n".join(note))


def draw_subject(spec: SubjectSpec) -> Any:
    """The matplotlib Figure of `spec`: one row per axial slice, one column per panel, ω beside."""
    columns, rows = spec.columns, spec.rows
    aspect = spec.synthesis.shape[1] / spec.synthesis.shape[2]
    n_cols = len(columns) + (1 if spec.weights else 0)
    fig = _figure(CELL_IN * len(columns) + (1.9 if spec.weights else 0), CELL_IN * aspect * len(rows) + 1.3)
    grid = fig.add_gridspec(len(rows), n_cols, width_ratios=[1.0] * len(columns) + ([0.9] if spec.weights else []))
    mappables: dict[str, Any] = {}
    for r, z in enumerate(rows):
        for c, (label, volume, kind) in enumerate(columns):
            ax = fig.add_subplot(grid[r, c])
            _bare(ax)
            low, high = spec.scales[kind]
            if kind == "image":
                ax.imshow(volume[z], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            elif kind == "error":
                mappables["error"] = ax.imshow(volume[z], cmap="inferno", vmin=low, vmax=high, interpolation="nearest")
            else:
                ax.imshow(spec.synthesis[z], cmap="gray", vmin=IMAGE_WINDOW[0], vmax=IMAGE_WINDOW[1],
                          interpolation="nearest")
                cut = np.inf if spec.tsem_threshold is None else spec.tsem_threshold
                shown = np.ma.masked_less_equal(volume[z], cut)  # the top region only: the anatomy shows through
                mappables["tsem"] = ax.imshow(shown, cmap="autumn", vmin=low, vmax=high, interpolation="nearest")
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(spec.row_labels[r], fontsize=8)
                for x, text, align in ((0.02, spec.markers[0], "left"), (0.98, spec.markers[1], "right")):
                    ax.text(x, 0.5, text, transform=ax.transAxes, ha=align, va="center", fontsize=9,
                            fontweight="bold", color="#ffd700")
            if r == len(rows) - 1 and kind in mappables:
                bar = fig.colorbar(mappables[kind], ax=ax, orientation="horizontal", fraction=0.06, pad=0.03,
                                   extend="max")
                bar.ax.tick_params(labelsize=7)
                bar.set_label(spec.colourbar_labels[kind], fontsize=7)
    if spec.weights:
        _weights_axis(fig.add_subplot(grid[:, -1]), spec.weights)
    fig.suptitle(spec.title, fontsize=10)
    fig.supxlabel(spec.note, fontsize=7, ha="left", x=0.01)
    return fig


def subject_figure(path: str | Path, *, inputs: dict[str, np.ndarray], synthesis: np.ndarray,
                   truth: np.ndarray | None, tsem: np.ndarray | None, weights: dict[str, float] | None,
                   title: str, slices: Sequence[int] | None = None,
                   slice_numbers: Sequence[int] | None = None, own_location: bool = False,
                   half_width: np.ndarray | None = None, head: np.ndarray | None = None) -> Path:
    """One row per axial slice; columns: each input, the synthesis, the truth, |error|, the
    interval's half-width and the TSEM over the synthesis (the last four when given), plus a bar
    chart of ω. Arrays in network units; `title` from :func:`scored_title`.

    Scales are fixed, the same in every figure: images the window [-1, 1] (0-1000 written);
    |error| and half-width 0 to ERROR_MAX output units; TSEM 0 to TSEM_MAX, drawn only on the top
    1 % of the head (`head`: the head mask; default, where any input or the truth is above the
    background). `slice_numbers` names the rows when the arrays are a subset of the volume's slices
    (default: `slices` themselves). `own_location`: see :func:`save_png`.
    """
    spec = subject_spec(inputs=inputs, synthesis=synthesis, truth=truth, tsem=tsem, weights=weights, title=title,
                        slices=slices, slice_numbers=slice_numbers, half_width=half_width, head=head)
    return save_png(draw_subject(spec), path, own_location=own_location)


def weights_chart(path: str | Path, rows: Sequence[tuple[str, dict[str, float]]], *,
                  title: str = "Contribution weight ω of each input, per task", own_location: bool = False) -> Path:
    """Paper Fig. 3's content: one horizontal bar per task, split into the ω of its inputs
    (they sum to 1), one colour per sequence."""
    if not rows:
        raise ValueError("no task to draw")
    fig = _figure(7.5, 0.32 * len(rows) + 1.4)
    ax = fig.add_subplot()
    seen: dict[str, Any] = {}
    for y, (_, weights) in enumerate(rows):
        left = 0.0
        for name, value in weights.items():
            value = float(value)
            bar = ax.barh(y, value, left=left, color=_colour(name, len(seen)), height=0.7,
                          edgecolor="white", linewidth=0.5)
            seen.setdefault(_display(name), bar)
            if value >= 0.09:
                ax.text(left + value / 2, y, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
            left += value
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first task on top, no empty margin
    ax.set_xlim(0, 1)
    ax.set_xlabel("ω", fontsize=9)
    fig.suptitle(title, fontsize=10)
    order = [_display(n) for n in _DISPLAY if _display(n) in seen] + [n for n in seen if n not in _DISPLAY.values()]
    ax.legend([seen[n] for n in order], order, ncols=len(order), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return save_png(fig, path, own_location=own_location)
