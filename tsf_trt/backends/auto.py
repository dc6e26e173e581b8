"""`--backend auto`: the fastest backend that is installed and works here, by measurement.

For a model directory on CPU it times torch and ONNX Runtime on the same probe
batch once, and caches the verdict per model, machine and thread count, so later
runs start at once. An export directory can only run on ONNX Runtime; a model
object handed over from Python stays in PyTorch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import sequences
from ..cache import cache_root, machine_key
from ..errors import TsfError

PROBE = (4, 128, 128)  # slices, height, width of the timing batch


def choose_backend(model, *, device: str = "cpu", threads: int | None = None) -> str:
    from tsf_trt.export.manifest import is_export_dir

    if isinstance(model, (str, Path)) and is_export_dir(model):
        return "ort"
    if device != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    from ..model import TSFSeq2Seq, load_model

    if isinstance(model, TSFSeq2Seq):
        return "torch"  # a live PyTorch model stays in PyTorch: no export behind the caller's back
    model = load_model(model)
    from tsf_trt.export.cache import model_key

    record = cache_root() / "auto" / f"{model_key(model)}-{machine_key()}-t{threads or 0}.json"
    try:
        return json.loads(record.read_text())["choice"]
    except (OSError, ValueError, KeyError):
        pass
    timings = measure(model, threads)
    choice = min(timings, key=timings.get)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"seconds_per_probe": timings, "probe": PROBE, "choice": choice}, indent=2))
    except OSError:
        pass  # no cache: measure again next time
    return choice


def measure(model, threads: int | None) -> dict[str, float]:
    """Best-of-3 seconds for one probe batch (encode, fuse, decode 2N) per backend."""
    from . import create_backend

    n, height, width = PROBE
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, model.config.in_channels, height, width)).astype(np.float32)
    sources = [0, 3] if model.has_fusion else [0]
    task = sequences.task_code(sources, 2)
    code = sequences.target_code(2, model.config.style_dim)
    timings = {}
    for name in ("torch", "ort"):
        try:
            backend = create_backend(name, model, threads=threads)
        except TsfError:
            continue
        best = float("inf")
        for _ in range(4):  # the first run warms up
            start = time.perf_counter()
            feats = {i: backend.encode(images) for i in sources}
            if backend.has_fusion:
                fused, avg, _ = backend.fuse(feats, task)
                out = backend.decode(fused, code, avg)
            else:
                out = backend.decode(feats[0], code)
            backend.to_numpy(out[0])
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings
