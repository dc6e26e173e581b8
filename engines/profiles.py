"""Optimisation profiles: the range of batch sizes and slice sizes an engine accepts.

A TensorRT engine with dynamic axes runs only on shapes inside the profile it was
built for, and is tuned for the profile's `opt` shape. One model-level profile
(slices per batch N, padded in-plane size H x W) gives every graph's input shapes
through the symbolic dimensions the export writes in its manifest
(`N`, `H`, `W`, `h = H/4`, `w = W/4`). Pure Python: tested without a GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tsf_trt.errors import TsfError

Size = tuple[int, int]
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)

#: Decoders see TSEM's two passes as one batch of 2N (fused and fused_avg together).
DECODER_BATCH_FACTOR = 2


@dataclass(frozen=True)
class Profile:
    """min <= opt <= max slices per batch, and min <= opt <= max padded slice size (H, W)."""

    batch: tuple[int, int, int] = (1, 16, 16)
    min_size: Size = (128, 128)
    opt_size: Size = (240, 240)
    max_size: Size = (256, 256)

    def check(self, multiple: int = 4) -> Profile:
        """Raise a TsfError naming the first inconsistent setting."""
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise TsfError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
        for axis, name in ((0, "height"), (1, "width")):
            sizes = (self.min_size[axis], self.opt_size[axis], self.max_size[axis])
            if not 0 < sizes[0] <= sizes[1] <= sizes[2]:
                raise TsfError(f"slice {name}s must satisfy min <= opt <= max, got {'/'.join(map(str, sizes))}")
            odd = [s for s in sizes if s % multiple]
            if odd:
                raise TsfError(f"slice size {odd[0]} is not a multiple of {multiple}: volumes are padded to a "
                               f"multiple of {multiple} in-plane, so profiles are given in those sizes")
        return self

    def covers(self, batch: int, height: int, width: int) -> bool:
        return (self.batch[0] <= batch <= self.batch[2]
                and self.min_size[0] <= height <= self.max_size[0]
                and self.min_size[1] <= width <= self.max_size[1])

    def widened(self, batch: int, height: int, width: int) -> Profile:
        """The smallest widening of this profile that covers (batch, height, width)."""
        return replace(
            self,
            batch=(min(self.batch[0], batch), self.batch[1], max(self.batch[2], batch)),
            min_size=(min(self.min_size[0], height), min(self.min_size[1], width)),
            max_size=(max(self.max_size[0], height), max(self.max_size[1], width)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "min_size": list(self.min_size), "opt_size": list(self.opt_size),
                "max_size": list(self.max_size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        try:
            return cls(tuple(data["batch"]), tuple(data["min_size"]), tuple(data["opt_size"]),  # type: ignore[arg-type]
                       tuple(data["max_size"]))  # type: ignore[arg-type]
        except (KeyError, TypeError) as exc:
            raise TsfError(f"malformed optimisation profile {dict(data)!r}: {exc}") from None

    def describe(self) -> str:
        def size(s: Size) -> str:
            return f"{s[0]}x{s[1]}"

        return (f"batch {self.batch[0]}-{self.batch[2]} (opt {self.batch[1]}), slices {size(self.min_size)} to "
                f"{size(self.max_size)} (opt {size(self.opt_size)})")


#: Fits BraTS volumes (240 x 240, opt) and 192 x 192 crops with room on both sides, at the
#: GPU batch the pipeline uses by default (tsf_trt.backends.base.GPU_BATCH).
DEFAULT_PROFILE = Profile()


def parse_size(text: str, option: str = "size") -> Size:
    """'240x240' (or '240') -> (240, 240)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text or "")
    if not match:
        raise TsfError(f"--{option}: expected HxW such as 240x240, got '{text}'")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def make_profile(*, max_batch: int | None = None, min_size: str | None = None, opt_size: str | None = None,
                 max_size: str | None = None, multiple: int = 4, base: Profile = DEFAULT_PROFILE) -> Profile:
    """The default profile with the command-line overrides applied, checked.

    A given opt size that falls outside the default range widens the range to it, so
    that `--opt-size 512x512` alone is enough for larger volumes.
    """
    profile = base
    if max_batch is not None:
        if max_batch < 1:
            raise TsfError(f"--max-batch must be at least 1, got {max_batch}")
        profile = replace(profile, batch=(1, max_batch, max_batch))
    if opt_size:
        opt = parse_size(opt_size, "opt-size")
        profile = replace(profile, opt_size=opt).widened(profile.batch[2], *opt)
    if min_size:
        profile = replace(profile, min_size=parse_size(min_size, "min-size"))
    if max_size:
        profile = replace(profile, max_size=parse_size(max_size, "max-size"))
    return profile.check(multiple)


def graph_batch_factor(graph: str) -> int:
    return DECODER_BATCH_FACTOR if graph == "decoder" or graph.startswith("decoder_") else 1


def input_shapes(graph: str, inputs: Mapping[str, list[int | str]], profile: Profile, downsample: int) -> Shapes:
    """(min, opt, max) shape of every input of one graph, from its manifest dims."""
    factor = graph_batch_factor(graph)
    batch = (profile.batch[0], profile.batch[1] * factor, profile.batch[2] * factor)
    sizes = (profile.min_size, profile.opt_size, profile.max_size)
    shapes: Shapes = {}
    for name, dims in inputs.items():
        per_level = []
        for level in range(3):
            height, width = sizes[level]
            fill = {"N": batch[level], "H": height, "W": width,
                    "h": math.ceil(height / downsample), "w": math.ceil(width / downsample)}
            try:
                per_level.append(tuple(fill[d] if isinstance(d, str) else int(d) for d in dims))
            except KeyError as exc:
                raise TsfError(f"graph '{graph}': input '{name}' has an unknown dynamic axis {exc} "
                               f"(this tsf-trt knows {', '.join(fill)})") from None
        shapes[name] = (per_level[0], per_level[1], per_level[2])
    return shapes


def ort_profile_options(shapes: Shapes, dynamic: Mapping[str, list[int | str]]) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options `trt_profile_{min,opt,max}_shapes` ('name:1x3x128x128,...'),
    for the inputs that have dynamic axes (the EP wants exactly those)."""
    names = [n for n, dims in dynamic.items() if any(isinstance(d, str) for d in dims)]
    options = {}
    for level, key in enumerate(("min", "opt", "max")):
        options[f"trt_profile_{key}_shapes"] = ",".join(
            f"{name}:{'x'.join(str(d) for d in shapes[name][level])}" for name in names)
    return options
