"""PNG figures shared by the commands: one subject at a glance, and contribution weights ω.

Why a module of its own: `evaluate` (paper Figs. 2-4 and Fig. 3's shape) and `demo` draw
the same pictures, so they look the same everywhere. Matplotlib is imported on first use
and driven through its object API with the Agg canvas (no pyplot, no global backend
switch), so importing this module costs nothing and never touches a user's GUI session.
Every PNG is written under a temporary name and renamed when complete.

Arrays are canonical (z, y, x) in network units [-1, 1] (background -1); an axial slice
is drawn as stored, anterior up and the patient's right on the left (radiological view).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.ownership import PNG_METADATA

DPI = 110
CELL_IN = 1.9  # inches per image cell
IMAGE_WINDOW = (-1.0, 1.0)  # network units: background -1, the clip level 2·p99 +1
#: One colour per sequence, in index order (T1, T1Gd, T2, FLAIR), the same in every chart.
SEQUENCE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
_DISPLAY = {"t1": "T1", "t1gd": "T1Gd", "t2": "T2", "flair": "FLAIR"}


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
    """The columns of :func:`subject_figure`: (title, volume, kind). Kind 'error' shares one colour
    scale: |error| and, beside it, the interval's half-width, both then in output units (0-1000,
    tsf_trt.uncertainty.calibration.PER_NETWORK_UNIT), so a reader can compare them."""
    from tsf_trt.uncertainty.calibration import PER_NETWORK_UNIT

    unit, units = (PER_NETWORK_UNIT, " (0–1000)") if half_width is not None else (1.0, "")
    columns: list[tuple[str, np.ndarray, str]] = [(_display(n), a, "image") for n, a in inputs.items()]
    columns.append(("synthesis", synthesis, "image"))
    if truth is not None:
        error = np.abs(synthesis - truth) * np.float32(unit)
        columns += [("truth", truth, "image"), ("|error|" + units, error, "error")]
    if half_width is not None:
        columns.append(("half-width" + units, half_width * np.float32(unit), "error"))
    if tsem is not None:
        columns.append(("TSEM on synthesis", tsem, "tsem"))
    return columns


def subject_figure(path: str | Path, *, inputs: dict[str, np.ndarray], synthesis: np.ndarray,
                   truth: np.ndarray | None, tsem: np.ndarray | None, weights: dict[str, float] | None,
                   title: str, slices: Sequence[int] | None = None,
                   slice_labels: Sequence[str] | None = None, own_location: bool = False,
                   half_width: np.ndarray | None = None) -> Path:
    """One row per axial slice; columns: each input, the synthesis, the truth, |error|, the
    interval's half-width (network units, as every array here) and the TSEM over the synthesis
    (the last four when given), plus a bar chart of ω.

    Images share the window [-1, 1]; |error| and the half-width share one colour scale, TSEM its
    own, over the rows drawn (the 99.5th percentile of what is shown), so rows compare at a glance;
    TSEM below a fifth of its scale is left transparent so that the anatomy shows through.
    `slice_labels` names the rows (default 'slice z'), e.g. when the arrays are a subset.
    `own_location`: see :func:`save_png`.
    """
    shape = synthesis.shape
    for name, array in (*inputs.items(), ("truth", truth), ("tsem", tsem), ("half_width", half_width)):
        if array is not None and array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, the synthesis {shape}")
    rows = list(slices) if slices is not None else choose_slices(truth if truth is not None else synthesis, tsem)
    if not rows or not all(0 <= z < shape[0] for z in rows):
        raise ValueError(f"slices {rows} are not within 0..{shape[0] - 1}")
    labels = list(slice_labels) if slice_labels is not None else [f"slice {z}" for z in rows]
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} slice labels for {len(rows)} slices")
    columns = panels(inputs, synthesis, truth, tsem, half_width)

    def top(kind: str) -> float:
        shown = [volume[rows] for _, volume, k in columns if k == kind]
        return float(max(max(np.percentile(v, 99.5) for v in shown), 1e-6)) if shown else 1.0

    scales = {"error": top("error"), "tsem": top("tsem")}
    aspect = shape[1] / shape[2]
    n_cols = len(columns) + (1 if weights else 0)
    fig = _figure(CELL_IN * len(columns) + (1.9 if weights else 0), CELL_IN * aspect * len(rows) + 0.8)
    ratios = [1.0] * len(columns) + ([0.9] if weights else [])
    grid = fig.add_gridspec(len(rows), n_cols, width_ratios=ratios)
    mappables: dict[str, Any] = {}
    for r, z in enumerate(rows):
        for c, (label, volume, kind) in enumerate(columns):
            ax = fig.add_subplot(grid[r, c])
            _bare(ax)
            if kind == "image":
                ax.imshow(volume[z], cmap="gray", vmin=IMAGE_WINDOW[0], vmax=IMAGE_WINDOW[1], interpolation="nearest")
            elif kind == "error":
                mappables["error"] = ax.imshow(volume[z], cmap="inferno", vmin=0, vmax=scales["error"],
                                               interpolation="nearest")
            else:
                ax.imshow(synthesis[z], cmap="gray", vmin=IMAGE_WINDOW[0], vmax=IMAGE_WINDOW[1],
                          interpolation="nearest")
                shown = np.ma.masked_less_equal(volume[z], 0.2 * scales["tsem"])  # the anatomy shows through
                mappables["tsem"] = ax.imshow(shown, cmap="hot", vmin=0, vmax=scales["tsem"], alpha=0.85,
                                              interpolation="nearest")
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
            if r == len(rows) - 1 and kind in mappables:
                bar = fig.colorbar(mappables[kind], ax=ax, orientation="horizontal", fraction=0.06, pad=0.03)
                bar.ax.tick_params(labelsize=7)
    if weights:
        _weights_axis(fig.add_subplot(grid[:, -1]), weights)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path, own_location=own_location)


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
