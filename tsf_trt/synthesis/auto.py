"""`--backend auto`: the fastest backend that is installed and works here.

On a GPU (`--device cuda`, or `auto` when one is visible) each GPU backend (trt, ort-trt,
ort-cuda, torch on CUDA) is checked first (packages present, a GPU visible, an ONNX Runtime
provider that really starts); when more than one passes, those are timed on one probe batch
and offered fastest first (:func:`gpu_ranking`; one that fails to build or run is left out,
with its reason in the record), and one that still fails when created gives way to the next.
At --precision fp16, ort-trt is left out, with a warning, when trt is usable and the installed
ONNX Runtime may build FP16 graphs weakly typed (microsoft/onnxruntime PR #29779,
:func:`tsf_trt.backends.ort_gpu.weak_fp16_problem`); without trt it is timed like the others.
On CPU it times every CPU backend that takes the precision and can run the model (torch,
ONNX Runtime, OpenVINO; an export directory has no PyTorch weights, so not torch) the same
way. Either verdict is cached per model, machine (and GPU), thread count and precision, so
later runs start at once; a record is used only when it is valid (:mod:`.records`), else it
is measured again and replaced. A model object handed over from Python stays in PyTorch (no
export behind the caller's back). The GPU timing is tested here with stand-in backends
(tests/test_auto_gpu.py); it has not run on a GPU.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np

from tsf_trt.backends import AUTO
from tsf_trt.console import step
from tsf_trt.errors import TsfError
from tsf_trt.machine.cache_dir import cache_root, machine_key
from tsf_trt.machine.extras import TORCH_INSTALL, has_torch
from tsf_trt.synthesis import records
from tsf_trt.synthesis.batches import MIDDLE, encoded_batches, host_images, run_task
from tsf_trt.synthesis.build import gpu_index
from tsf_trt.synthesis.precision_auto import build_at, fp32_only
from tsf_trt.synthesis.source import ModelSource

# Height, width of the timing batch: BraTS in-plane size, at each backend's own batch size. A small
# probe misleads: at 4x128x128 torch beat ONNX Runtime on the demo model, at 240x240 ORT is 1.5x faster.
PROBE = (240, 240)
_log = logging.getLogger(__name__)
#: The GPU candidates, in the order they are checked and, untimed, tried (the expected speed order).
GPU_ORDER = ("trt", "ort-trt", "ort-cuda", "torch-cuda")


def gpu_problem(candidate: str, source: ModelSource, index: int = 0) -> str | None:
    """Why `candidate` (one of GPU_ORDER) cannot run `source` here; None when it can."""
    if candidate == "torch-cuda":
        if source.kind == "export":
            return "an export directory has no PyTorch weights"
        if not has_torch():
            return f"PyTorch is not installed ({TORCH_INSTALL})"
        import torch

        return None if torch.cuda.is_available() else "this PyTorch has no CUDA GPU"
    if source.kind == "module":
        return "a model object from Python stays in PyTorch"
    if candidate == "trt":
        from tsf_trt.engines.gpu import missing_for_trt

        missing = missing_for_trt()
        return "; ".join(missing) if missing else None
    try:
        from tsf_trt.backends.ort_backend import PROVIDERS, provider_problem

        return provider_problem(PROVIDERS[candidate][0], index)
    except TsfError as exc:
        return str(exc)


def plan(source: ModelSource, *, device: str = "cpu", threads: int | None = None, precision: str = "fp32"
         ) -> Iterator[tuple[str, str]]:
    """(backend, device) pairs to try, in order: the usable GPU backends fastest first (unless
    `device` is 'cpu'), then the measured CPU choice (unless `device` names a GPU). Lazy, so
    that nothing is checked or timed on the CPU while a GPU backend starts."""
    from tsf_trt.backends import PRECISIONS

    source = ModelSource.resolve(source)
    offered, reasons = False, []
    if device != "cpu":
        index = gpu_index(device)
        where = f"cuda:{index}"
        usable = []
        for candidate in GPU_ORDER:
            name = "torch" if candidate == "torch-cuda" else candidate
            if precision != "auto" and precision not in PRECISIONS[name]:
                continue
            problem = gpu_problem(candidate, source, index)
            if problem is None:
                usable.append(name)
            else:
                reasons.append(f"{candidate}: {problem}")
        if precision == "fp16" and {"trt", "ort-trt"} <= set(usable) and (weak := _weak_ort_trt_fp16()):
            usable.remove("ort-trt")  # trt builds the same FP16 graphs strongly typed: not timed, no engines built
            reasons.append(f"ort-trt: {weak}")
            _log.warning("auto: ort-trt left out, trt runs fp16 instead: %s", weak)
        ranking, failed = gpu_ranking(source, usable, where, threads, precision) if usable else ([], {})
        reasons += [f"{name}: {why}" for name, why in failed.items()]
        for name in ranking:
            offered = True
            _log.info("auto: trying %s on %s", name, where)
            yield name, where
    if device in ("cpu", "auto") and precision in ("fp32", "bf16", "auto"):
        if reasons and not offered:
            _log.info("auto: the CPU, as no GPU backend is usable here (%s)", _gpu_summary(reasons))
        offered = True
        yield choose_backend(source, device="cpu", threads=threads, precision=precision), "cpu"
    if not offered and device == "cpu":
        raise TsfError(f"--precision {precision} runs on GPU backends only: use --device cuda (or auto)")
    if not offered:
        detail = "; ".join(reasons) or f"no GPU backend takes --precision {precision}"
        raise TsfError(f"--backend auto found nothing that runs with --device {device} --precision {precision} "
                       f"here ({detail})")


def _weak_ort_trt_fp16() -> str | None:
    """Why ort-trt's fp16 may build weakly typed networks with the onnxruntime and TensorRT here
    (:func:`tsf_trt.backends.ort_gpu.weak_fp16_problem`); None when it builds strongly typed."""
    from tsf_trt.backends.ort_backend import import_ort
    from tsf_trt.backends.ort_gpu import ort_trt_fp16_problem

    return ort_trt_fp16_problem(import_ort())


def _gpu_summary(reasons: list[str]) -> str:
    """Every GPU candidate's reason, unless it is simply that there is no GPU."""
    nogpu = [r for r in reasons if "no CUDA GPU" in r or "no NVIDIA GPU" in r]
    return nogpu[0].split(": ", 1)[1] if nogpu else "; ".join(reasons)


def gpu_ranking(source: ModelSource, usable: Sequence[str], where: str, threads: int | None, precision: str
                ) -> tuple[list[str], dict[str, str]]:
    """`usable` (backend names that passed gpu_problem) fastest first on GPU `where`, and those that
    failed to build or run on the probe, with why: timed once, then read from the record (keyed by
    the model, this machine and GPU, the precision and the candidates, so a backend installed later
    is timed then). A single candidate is not timed. TensorRT builds its engines during the timing
    (cached beside the export, so the runs that follow find them)."""
    if len(usable) < 2:
        return list(usable), {}
    key = hashlib.sha256(gpu_name(gpu_index(where)).encode()).hexdigest()[:12]
    name = f"{source.model_id}-{machine_key()}-gpu{key}-{precision}-{'+'.join(usable)}-g1.json"
    record = cache_root() / "auto" / name
    cached = records.read(record, lambda r: records.gpu_ranking_problem(r, usable, precision, PROBE))
    if cached is not None:
        _log.info("auto: %s on %s (measured earlier on this GPU: %s; record %s)", cached["ranking"][0], where,
                  _timings_text(cached["seconds_per_slice"]), record)
        return list(cached["ranking"]), dict(cached["failed"])
    failed: dict[str, str] = {}
    with step(f"auto: timing {', '.join(usable)} on {where} (once per model and GPU; TensorRT builds its engines "
              "now)", _log):
        timings = measure(source, threads, usable, precision, device=where, failed=failed)
    ranking = sorted(timings, key=timings.get)
    if ranking:
        _log.info("auto: %s, the fastest on %s (%s)", ranking[0], where, _timings_text(timings))
        records.write(record, {"seconds_per_slice": timings, "failed": failed, "ranking": ranking,
                               "probe_hw": list(PROBE), "gpu": gpu_name(gpu_index(where)), "precision": precision})
    return ranking, failed  # nothing worked: not recorded, so the next run tries the GPU again


def gpu_name(index: int) -> str:
    """GPU `index`'s model name (the GPU part of a timing record's key), from torch or the CUDA runtime."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(index)
    except ImportError:
        pass
    try:
        from tsf_trt.engines.gpu import device_info

        return device_info(index).name
    except TsfError:
        return f"GPU {index}"


#: The CPU backends auto times, in the order it tries them.
CPU_CANDIDATES = ("torch", "ort", "openvino")


def cpu_candidates(source: ModelSource, precision: str = "fp32") -> list[str]:
    """The CPU backends that take `precision` and can run `source` (an export has no PyTorch weights)."""
    from tsf_trt.backends import PRECISIONS

    return [name for name in CPU_CANDIDATES if (precision == "auto" or precision in PRECISIONS[name])
            and not (name == "torch" and source.kind == "export")]


def choose_backend(source: ModelSource, *, device: str = "cpu", threads: int | None = None,
                   precision: str = "fp32") -> str:
    source = ModelSource.resolve(source)
    if device != "cpu" or source.kind == "module":
        _log.info("auto: torch (%s)", "a model handed over from Python stays in PyTorch" if source.kind == "module"
                  else f"on {device}")
        return "torch"  # a live PyTorch model stays in PyTorch: no export behind the caller's back
    if precision == AUTO and fp32_only("cpu"):  # every backend's auto is fp32 here: time them at fp32
        precision = "fp32"
    candidates = cpu_candidates(source, precision)
    if source.kind == "model":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:  # exports are verified with it: no ONNX graphs without it
            _log.info("auto: torch (onnxruntime is not installed)")
            return "torch"
    if len(candidates) == 1:
        _log.info("auto: %s (the only CPU backend for this model at --precision %s)", candidates[0], precision)
        return candidates[0]
    # p3: 240x240 probe, OpenVINO among the candidates
    record = cache_root() / "auto" / f"{source.model_id}-{machine_key()}-t{threads or 0}-{precision}-p3.json"
    cached = records.read(record, lambda r: records.cpu_choice_problem(r, candidates, precision, PROBE))
    if cached is not None:
        _log.info("auto: %s (measured earlier on this machine: %s; record %s)", cached["choice"],
                  _timings_text(cached["seconds_per_slice"]), record)
        return cached["choice"]
    failed: dict[str, str] = {}
    with step(f"auto: timing {', '.join(candidates)} on this model (once per model and machine)", _log):
        timings = measure(source, threads, candidates, precision, failed=failed)
    if not timings:
        why = set(failed.values())  # e.g. damaged weights: one reason for all
        detail = next(iter(why)) if len(why) == 1 else "; ".join(f"{n}: {r}" for n, r in failed.items())
        raise TsfError(f"--backend auto: none of {', '.join(candidates)} could run this model on the CPU here"
                       + (f": {detail}" if detail else ""))
    choice = min(timings, key=timings.get)
    _log.info("auto: %s, the fastest here (%s)", choice, _timings_text(timings))
    records.write(record, {"seconds_per_slice": timings, "probe_hw": list(PROBE), "choice": choice,
                           "precision": precision})
    return choice


def _timings_text(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * seconds:.1f} ms/slice" for name, seconds in sorted(timings.items(),
                                                                                      key=lambda kv: kv[1]))


def measure(source: ModelSource, threads: int | None, candidates: Sequence[str] = CPU_CANDIDATES,
            precision: str = "fp32", *, device: str = "cpu", failed: dict[str, str] | None = None
            ) -> dict[str, float]:
    """Best-of-3 seconds per slice (encode, fuse, decode 2N of one batch, at the backend's own
    batch size for a PROBE-sized slice, its middle channel brought to the host) per backend that
    starts and runs on `device`; why each other one did not goes into `failed`."""
    height, width = PROBE
    rng = np.random.default_rng(0)
    sources = [0, 3] if source.has_fusion else [0]
    timings, failed = {}, {} if failed is None else failed
    for name in candidates:
        try:
            backend = build_at(name, source, device=device, threads=threads, precision=precision)
        except TsfError as exc:
            _log.info("auto: %s cannot run on %s (%s)", name, device, exc)
            failed[name] = str(exc)
            continue
        with backend:
            try:
                timings[name] = _probe(backend, rng, sources, height, width)
            except (TsfError, RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory at the probe batch
                _log.info("auto: %s failed on the probe batch on %s (%s)", name, device, exc)
                failed[name] = f"failed on the probe batch: {(str(exc) or type(exc).__name__).splitlines()[0]}"
    return timings


def _probe(backend, rng, sources: list[int], height: int, width: int) -> float:
    """Best of 3 seconds per slice of one batch at the backend's own batch size, through the one
    batch loop (tsf_trt.synthesis.batches) as the pipeline runs it: encoded per source, fused, decoded with
    TSEM's second half, the middle channel brought to the host (which waits for a GPU)."""
    n = backend.preferred_batch_size(height, width)
    volumes = {i: rng.uniform(-1, 1, (n, height, width)).astype(np.float32) for i in sources}
    best = float("inf")
    for _ in range(3):  # the first run warms up (and compiles, for OpenVINO; captures CUDA graphs)
        start = time.perf_counter()
        for _, _, features in encoded_batches(backend, volumes, sources, range(n), n):
            host_images(backend, run_task(backend, features, sources, 2, with_avg=True), MIDDLE)
        best = min(best, (time.perf_counter() - start) / n)
    return best
