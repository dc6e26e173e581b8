"""The one batch loop: 2.5D stacks -> encode (once per source) -> fuse -> decode.

Every caller that runs the network goes through here, so that what a slice's output is
cannot differ between them: the pipeline (whole volumes, :mod:`tsf_trt.synthesis.pipeline`),
evaluation (every task of a subject from one encoding, :mod:`tsf_trt.evaluation.loop`), the
`auto` backend probe and the `--precision auto` check (:mod:`tsf_trt.synthesis.auto`,
:mod:`tsf_trt.synthesis.precision_auto`). It asks a backend only for its interface
(:class:`Backend` here), so the backend package itself may use it.

One step, as the paper's Eq. 1-6 chain it (docs/architecture.md, "Tensor contracts"):

* :func:`encoded_batches`: the stacks centred on each batch of slices, encoded once per source;
* :func:`run_task`: the sources' features fused with the task code (ω and the attention
  branch; a Seq2Seq-only model, or a one-to-one pass, takes the one source's features as
  they are), then `fused` and, for TSEM, `fused_avg` decoded as one batch of 2N;
* :func:`host_images`: the decoded images on the host, all three channels or only the middle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tsf_trt import sequences
from tsf_trt.synthesis.preprocess import stack_25d


class Backend(Protocol):
    """What the loop asks of a :class:`tsf_trt.backends.Backend` (its interface, not the package:
    the backends' own `auto` probe and precision check run this loop)."""

    has_fusion: bool

    def encode(self, images: np.ndarray) -> Any: ...
    def fuse(self, features: Mapping[int, Any], task_code: np.ndarray) -> tuple[Any, Any, np.ndarray]: ...
    def decode(self, features: Any, target: int, features_avg: Any | None = None) -> tuple[Any, Any | None]: ...
    def to_numpy(self, array: Any, channel: int | None = None) -> np.ndarray: ...


MIDDLE = 1  # the centre slice of a 2.5D stack: the one the middle rule keeps, and TSEM's channel


@contextmanager
def timed(timings: dict[str, float] | None, key: str) -> Iterator[None]:
    """Add the wall time of the block to timings[key] (nothing without `timings`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def encode_stacks(be: Backend, normed: Mapping[int, np.ndarray], sources: Sequence[int],
                  centres: Sequence[int] | range) -> dict[int, Any]:
    """Features of the 2.5D stacks centred on `centres`, one encoder batch per source."""
    return {i: be.encode(stack_25d(normed[i], centres)) for i in sources}


def encoded_batches(be: Backend, normed: Mapping[int, np.ndarray], sources: Sequence[int], slices: Sequence[int],
                    batch: int, timings: dict[str, float] | None = None
                    ) -> Iterator[tuple[range, Sequence[int], dict[int, Any]]]:
    """(positions in `slices`, their centres, each source's features) per batch of `batch` slices:
    each slice's stack is encoded once per source, whatever the callers then do with it."""
    total = len(slices)
    for start in range(0, total, batch):
        positions = range(start, min(start + batch, total))
        centres = slices[start:positions.stop]
        with timed(timings, "encode"):
            features = encode_stacks(be, normed, sources, centres)
        yield positions, centres, features


@dataclass
class Decoded:
    """One batch of one task through the decoder, still where the backend keeps it."""

    image: Any                  # decoded `fused`: the synthesis, (N, 3, H, W)
    image_avg: Any | None       # decoded `fused_avg` (TSEM's other half), None when not asked for
    weights: np.ndarray         # ω per sequence index, (N_SEQUENCES,)


def run_task(be: Backend, features: Mapping[int, Any], sources: Sequence[int], target: int, *,
             with_avg: bool, fuse: bool | None = None, timings: dict[str, float] | None = None) -> Decoded:
    """Fuse the sources' features for the task and decode: `fused`, and with `with_avg` also
    `fused_avg` in the same batch of 2N (TSEM, paper Eq. 6). Without fusion (a Seq2Seq-only model,
    or `fuse=False` for the Seq2Seq stage's one-to-one output) the one source's features are
    decoded as they are, with ω = 1 for it (and no TSEM)."""
    fuse = be.has_fusion if fuse is None else fuse
    task_code = sequences.task_code(sorted(sources), target)
    if fuse:
        with timed(timings, "fuse"):
            fused, fused_avg, weights = be.fuse({i: features[i] for i in sources}, task_code)
    else:
        if len(sources) != 1:
            raise ValueError(f"without fusion one source is decoded, got {len(sources)}")
        fused, fused_avg = features[sources[0]], None
        weights = task_code[0, : sequences.N_SEQUENCES].copy()  # one-to-one: ω = 1 for the source
    with_avg = with_avg and fused_avg is not None
    with timed(timings, "decode"):
        image, image_avg = be.decode(fused, target, fused_avg if with_avg else None)
    return Decoded(image, image_avg, np.asarray(weights))


def host_images(be: Backend, decoded: Decoded, channel: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch's images on the host (waits for a GPU backend): all 3 channels, or only `channel`,
    (N, H, W); the `fused_avg` image then only the middle one (all TSEM needs)."""
    avg_channel = MIDDLE if channel is not None else None
    image_avg = None if decoded.image_avg is None else be.to_numpy(decoded.image_avg, avg_channel)
    return be.to_numpy(decoded.image, channel), image_avg


def middle(images: np.ndarray) -> np.ndarray:
    """The middle channel of (N, 3, H, W) decoder images; (N, H, W) ones are that already."""
    return images if images.ndim == 3 else images[:, MIDDLE]
