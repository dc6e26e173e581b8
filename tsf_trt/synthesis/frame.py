"""The in-plane frame the network runs on: the head's box (default), the whole slice, or a size.

Why it matters for quality as well as speed: InstanceNorm's statistics depend on how much
background the frame holds. The demo model was trained on 128² crops and the authors' on
192² crops, so a whole 240² BraTS slice is a mismatch that measurably costs PSNR, and most
of its pixels are background the network computes for nothing (docs/backends.md, "The frame").

One frame serves the whole volume, so the network's input shape stays the same for every
batch (compiled runtimes keep one shape). Outputs stay on the input's full grid: outside
the frame, and on slices whose 3-slice stack holds no head voxel (not computed at all),
the image is background and TSEM is 0. ``full`` is the behaviour before frames existed:
every slice, the whole slice padded to the network's multiple.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tsf_trt.errors import TsfError
from tsf_trt.synthesis.preprocess import BACKGROUND, pad_amounts

#: Pixels kept around the head's box: the 8-pixel margin the evaluation scores within
#: (tsf_trt.evaluation.loop.MARGIN, itself past SSIM's window), so every scored voxel's SSIM
#: window lies inside the frame. Less background is also what the models were trained on (crops):
#: on the held-out phantoms 5000-5003, all 28 tasks, ONNX Runtime fp32, 8 px scored +0.26 dB
#: PSNR (every subject +0.24 to +0.28, no task's mean below +0.003 dB) and +0.006 SSIM against
#: 16 px (issue 15's choice), with ω unchanged, and the demo volume's frame has 15 % fewer pixels
#: (docs/backends.md, "The head frame's margin").
HEAD_MARGIN = 8
_SIZE = re.compile(r"(\d{1,12})x(\d{1,12})")  # digits bounded: int() of thousands of digits raises
KINDS = ("head", "full")
#: Largest side of a given frame: twice the finest in-plane matrix MRI is stored at (1024, e.g.
#: 0.2 mm over 200 mm at 7 T), so any slice fits with room to spare; a frame past the slice is only
#: background padding, and at 2048² the paper config's first encoder activation (64 channels,
#: float32: tsf_trt/model/config.py) is already 1 GiB per slice. Larger sizes fail up front, not
#: with an out-of-memory error after the model has loaded.
MAX_SIDE = 2048


@dataclass(frozen=True)
class FrameSpec:
    """What --frame asked for: 'head', 'full' or a size 'HxW' (rows x columns of the axial slice)."""

    kind: str
    size: tuple[int, int] | None = None
    #: Pixels around the head's box (kind head). Not a --frame choice: scripts.frame_speed compares margins.
    margin: int = HEAD_MARGIN

    @classmethod
    def parse(cls, text: "str | FrameSpec") -> "FrameSpec":
        if isinstance(text, FrameSpec):
            return text
        text = str(text).strip().lower()
        if text in KINDS:
            return cls(text)
        match = _SIZE.fullmatch(text)
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise TsfError(f"--frame must be head, full or HxW (e.g. 192x192), got '{text}'")
        if max(int(match[1]), int(match[2])) > MAX_SIDE:
            raise TsfError(f"--frame {text}: each side must be at most {MAX_SIDE} pixels (twice the finest MRI "
                           "matrix; use full for the whole slice)")
        return cls("size", (int(match[1]), int(match[2])))

    def __str__(self) -> str:
        if self.size:
            return f"{self.size[0]}x{self.size[1]}"
        return self.kind if self.kind != "head" or self.margin == HEAD_MARGIN else f"head (margin {self.margin})"

    def check(self, multiple: int) -> None:
        """A given size must suit the network (its feature maps are 1/multiple of the frame)."""
        if self.size and any(s % multiple for s in self.size):
            raise TsfError(f"--frame {self}: both sides must be multiples of {multiple} for this model")


@dataclass(frozen=True)
class Frame:
    """Where the network runs: rows [y0, y1) and columns [x0, x1) in the input's coordinates
    (they may reach past the volume: that part is background padding), and which slices."""

    spec: FrameSpec
    y0: int
    y1: int
    x0: int
    x1: int
    slices: np.ndarray          # centre slices to compute, increasing
    depth: int
    head_outside: float = 0.0   # fraction of head voxels outside the frame (only a given size can cut)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The frame of a (z, y, x) volume, background where it reaches past the volume."""
        return cut(volume, self.y0, self.y1, self.x0, self.x1, BACKGROUND)

    def place(self, framed: np.ndarray, shape: tuple[int, int, int], fill: float) -> np.ndarray:
        """A (z, frame h, frame w) result back on the full (z, y, x) grid, `fill` outside the
        frame and on the slices not computed."""
        out = cut(framed, -self.y0, shape[1] - self.y0, -self.x0, shape[2] - self.x0, fill)
        return out if self.computes_all else _blank_others(out, self.slices, fill)

    @property
    def computes_all(self) -> bool:
        return len(self.slices) == self.depth

    def describe(self) -> dict[str, object]:
        """For the report: what was asked, the box, and how much of the volume ran."""
        return {"frame": str(self.spec), "rows": [self.y0, self.y1], "columns": [self.x0, self.x1],
                "size": list(self.shape), "slices_computed": int(len(self.slices)), "slices": self.depth,
                "head_outside": round(self.head_outside, 6)}


def _blank_others(volume: np.ndarray, keep: np.ndarray, fill: float) -> np.ndarray:
    others = np.setdiff1d(np.arange(volume.shape[0]), keep)
    volume = volume.copy()
    volume[others] = fill
    return volume


def cut(array: np.ndarray, y0: int, y1: int, x0: int, x1: int, fill: float) -> np.ndarray:
    """Rows [y0, y1) and columns [x0, x1) of the last two axes of `array`, `fill` where the box
    reaches past it (a view when it does not)."""
    height, width = array.shape[-2:]
    inner = array[..., max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    pads = [(0, 0)] * (array.ndim - 2) + [(max(-y0, 0), max(y1 - height, 0)), (max(-x0, 0), max(x1 - width, 0))]
    if not any(p for pair in pads for p in pair):
        return inner
    return np.pad(inner, pads, constant_values=fill)


def plan_frame(spec: FrameSpec | str, head: np.ndarray, multiple: int) -> Frame:
    """The frame for a volume whose head voxels are `head` (z, y, x bool), for a network whose
    frame sides must be multiples of `multiple`."""
    spec = FrameSpec.parse(spec)
    margin = spec.margin
    spec.check(multiple)
    depth, height, width = head.shape
    if spec.kind == "full":
        (y_before, y_after), (x_before, x_after) = pad_amounts(height, multiple), pad_amounts(width, multiple)
        return Frame(spec, -y_before, height + y_after, -x_before, width + x_after, np.arange(depth), depth)
    rows, cols = np.flatnonzero(head.any(axis=(0, 2))), np.flatnonzero(head.any(axis=(0, 1)))
    if not len(rows):  # nothing above the background anywhere: the whole slice, as `full` would
        return plan_frame(FrameSpec("full"), head, multiple)
    if spec.kind == "head":
        y0, y1 = _grow(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, height), multiple)
        x0, x1 = _grow(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, width), multiple)
    else:
        y0, y1 = _centred(int(rows[0]), int(rows[-1]) + 1, spec.size[0])
        x0, x1 = _centred(int(cols[0]), int(cols[-1]) + 1, spec.size[1])
    inside = head[:, max(y0, 0):y1, max(x0, 0):x1].sum()
    outside = 1.0 - float(inside) / float(head.sum())
    return Frame(spec, y0, y1, x0, x1, stacks_with_head(head), depth, outside)


def stacks_with_head(head: np.ndarray) -> np.ndarray:
    """Centre slices whose 3-slice stack (z-1, z, z+1) holds a head voxel: the others are
    background in, background out, and are not computed."""
    occupied = head.any(axis=(1, 2))
    near = occupied.copy()
    near[1:] |= occupied[:-1]
    near[:-1] |= occupied[1:]
    return np.flatnonzero(near)


def _grow(lo: int, hi: int, multiple: int) -> tuple[int, int]:
    """[lo, hi) widened evenly to a multiple (past the volume's edge if need be: padding)."""
    before, after = pad_amounts(hi - lo, multiple)
    return lo - before, hi + after


def _centred(lo: int, hi: int, size: int) -> tuple[int, int]:
    """A window of `size` centred on [lo, hi)."""
    start = (lo + hi - size) // 2
    return start, start + size
