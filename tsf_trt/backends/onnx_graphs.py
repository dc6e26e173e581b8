"""What the runtimes of an export's ONNX graphs (ONNX Runtime, OpenVINO) feed each graph and
take back from it: one rule, so the two backends cannot drift apart on the same graphs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.model.config import ModelConfig


def fusion_feeds(features: Mapping[int, Any], task_code: np.ndarray, config: ModelConfig,
                 stack: Callable[[Mapping[int, Any], int], Any] | None = None) -> dict[str, Any]:
    """The fusion graph's inputs: per-source features at their sequence's index (zeros where
    a sequence is missing) and the task code. `stack` does that stacking where the features are
    (on the device: :mod:`tsf_trt.backends.ort_device`); without it they are numpy."""
    stacked = (sequences.stack_by_index if stack is None else stack)(features, config.n_sequences)
    return {"features": stacked, "task_code": np.ascontiguousarray(task_code, np.float32)}


def decoder_feeds(manifest: Mapping[str, Any], config: ModelConfig, features: Any, target: int,
                  features_avg: Any | None, baked: bool, join: Callable[[Any, Any], Any] | None = None
                  ) -> tuple[str, dict[str, Any]]:
    """(decoder graph, its inputs): the per-target graph when `baked` and the export has it,
    else the code-input decoder with its target code; with `features_avg`, both feature
    batches as one batch of 2N (TSEM), which :func:`split_decoded` takes apart again. `join`
    makes that batch where the features are (on the device); without it they are numpy."""
    from tsf_trt.export.manifest import decoder_graph

    if join is None:
        batch = np.ascontiguousarray(features if features_avg is None else np.concatenate([features, features_avg]),
                                     np.float32)
    else:
        batch = features if features_avg is None else join(features, features_avg)
    graph = decoder_graph(manifest, target, baked=baked)
    feeds = {"features": batch}
    if graph == "decoder":  # the code-input decoder computes its kernels from the target code
        feeds["target_code"] = sequences.target_code(target, config.style_dim)
    return graph, feeds


def split_decoded(image: np.ndarray, n: int, paired: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The decoder's output of :func:`decoder_feeds` as (image, image of the averaged features or None)."""
    if not paired:
        return image, None
    return image[:n], image[n:]
