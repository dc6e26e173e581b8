"""`--backend auto`: the fastest backend that is installed and works here.

On a GPU (`--device cuda`, or `auto` when one is visible) each GPU backend (trt, ort-trt,
ort-cuda, torch on CUDA) is checked first (packages present, a GPU visible, an ONNX Runtime
provider that really starts); when more than one passes, those are timed on one probe batch
and offered fastest first (:func:`gpu_ranking`; one that fails to build or run is left out,
with its reason in the record), and one that still fails when created gives way to the next.
At --precision fp16, ort-trt is left out, with a warning, when trt is usable and the installed
ONNX Runtime may build FP16 graphs weakly typed (microsoft/onnxruntime PR #29779,
:func:`tsf_trt.backends.ort_gpu.weak_fp16_problem`); without trt it is timed like the others.
On the CPU (:func:`probe_cpu`) the candidates are the CPU backends that take the precision and
can run the model (torch, ONNX Runtime, OpenVINO; an export directory has no PyTorch weights, so
not torch), decided where measurements never disagreed and timed where they did, so that the first
run pays seconds, not the tens of seconds of timing all three (issue 27): torch only where OpenVINO or (at
fp32) ONNX Runtime cannot run the model, OpenVINO untimed where it runs a checked reduced precision
natively (RULE_PRECISIONS), otherwise one warm-up and one timed call of a small batch each, built
lazily (the warm-up counts where it already shows a clear lead). Either verdict is cached per
model, machine (and GPU), thread count and precision, so
later runs start at once; a record is used only when it is valid (:mod:`.records`), else it
is measured again and replaced. A model object handed over from Python stays in PyTorch (no
export behind the caller's back). The GPU timing is tested here with stand-in backends
(tests/test_auto_gpu.py); it has not run on a GPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence

import numpy as np

from tsf_trt.backends import AUTO
from tsf_trt.console import step
from tsf_trt.errors import TsfError
from tsf_trt.machine.cache_dir import cache_root, machine_key
from tsf_trt.machine.extras import TORCH_INSTALL, has_torch, missing_extra
from tsf_trt.synthesis import precision_auto, records
from tsf_trt.synthesis.batches import MIDDLE, encoded_batches, host_images, run_task
from tsf_trt.synthesis.build import gpu_index
from tsf_trt.synthesis.precision_auto import build_at, fp32_only
from tsf_trt.synthesis.source import ModelSource

# Height, width of the GPU timing batch: BraTS in-plane size, at each backend's own batch size. A small
# probe misleads: at 4x128x128 torch beat ONNX Runtime on the demo model, at 240x240 ORT is 1.5x faster
# (the CPU probe's size: CPU_PROBE).
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
    if device in ("cpu", "auto") and precision in ("fp32", "bf16", "int8", "auto"):
        if reasons and not offered:
            _log.info("auto: the CPU (%s)", _gpu_summary(reasons))
            _log.debug("auto: why each GPU backend is not usable: %s", "; ".join(reasons))
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
    """Why no GPU backend runs, in a few words (every candidate's reason: --verbose, `tsf-trt doctor`):
    the one that says there is no GPU, else the candidates' names."""
    nogpu = [r.split(": ", 1)[1] for r in reasons if "no CUDA GPU" in r or "no NVIDIA GPU" in r]
    said = nogpu[0] if nogpu else ", ".join(r.split(": ", 1)[0] for r in reasons)
    return f"no GPU backend usable here: {said}; --verbose or `tsf-trt doctor` says why"


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


#: The CPU backends auto may time. The probe builds them in the order of :func:`probe_order`.
CPU_CANDIDATES = ("torch", "ort", "openvino")
#: The CPU probe's rules: in its record's file name and body, so a record made under other rules
#: is never read (p3: every candidate, each backend's own batch size, the best of 2 timed calls).
CPU_RULES = "p4"
#: The CPU probe: one warm-up and one timed call of PROBE_BATCH slices (at most; fewer where a
#: backend's own batch size is smaller) of CPU_PROBE pixels: a head frame's size (the default frame:
#: the demo phantom's is 220x188). Measured (scripts/probe_study.py --shapes, this 2-core AVX512-BF16
#: CPU, two runs): OpenVINO's fp32 time over ONNX Runtime's was 0.80-0.84 at batch 4 (240x240 or 220x188),
#: 0.82-0.87 at batch 9 (what a run uses), 0.87 per volume, but 0.73-0.76 at batch 2 and 0.58 at 1 (ONNX
#: Runtime's cost per call weighs more): so batch 4. 224x192 instead of 240x240 took the cold fp32 probe
#: from 7.2 to 5.9 s at load 3 (10.6 to 8.8 s at load 4-7).
CPU_PROBE, PROBE_BATCH = (224, 192), 4
#: A candidate whose warm-up call alone (compilation and first touch included, so never faster
#: than its later calls) is CLEAR_LEAD times faster than every timed one is taken without its timed call.
CLEAR_LEAD = 1.3
#: Reduced precisions at which OpenVINO is chosen without timing, where it runs them natively and
#: the model passed --precision auto's check. bf16, measured on this AVX512-BF16 CPU (the only native
#: bf16 CPU measured; scripts/probe_study.py): OpenVINO bf16 took 0.39-0.59 of ONNX Runtime fp32's time
#: per slice and 0.22-0.72 of torch's (bf16) in all 12 full probes, 0.46-0.73 of ONNX Runtime's per
#: volume (docs/performance.md: 0.49). int8 (the export's int8 graphs), per volume files in and out:
#: 0.45-0.47 of ONNX Runtime fp32's time on this CPU (scripts/frame_speed.py), 0.67 on issue 27's AVX2 CPU.
RULE_PRECISIONS = ("bf16", "int8")


def cpu_candidates(source: ModelSource, precision: str = "fp32") -> list[str]:
    """The CPU backends that take `precision` and can run `source` (an export has no PyTorch weights)."""
    from tsf_trt.backends import PRECISIONS

    return [name for name in CPU_CANDIDATES if (precision == "auto" or precision in PRECISIONS[name])
            and not (name == "torch" and source.kind == "export")]


def probe_order(candidates: Sequence[str]) -> list[str]:
    """OpenVINO first (its precision may decide alone: RULE_PRECISIONS; its warm-up compiles, so it
    is the one better timed than bounded by CLEAR_LEAD), then ONNX Runtime, torch last (it is timed
    only when :func:`torch_skipped` allows, which depends on what ran before it)."""
    rank = {"openvino": 0, "ort": 1, "torch": 2}
    return sorted(candidates, key=lambda name: rank.get(name, 1))


def torch_skipped(ran: dict[str, str], precision: str) -> str | None:
    """Why torch is not timed, given the precisions the ONNX backends `ran` at; None to time it.
    Measured (issue 27's AVX2 CPU; this project's AVX512-BF16 CPU: scripts/probe_study.py): torch
    fp32 was slower than ONNX Runtime and OpenVINO fp32, and torch bf16 slower than OpenVINO bf16.
    torch bf16 against fp32 ones was not: it beat ONNX Runtime fp32 (docs/performance.md, paper
    configuration) and, in one of two volume runs here, OpenVINO fp32; so where torch may run bf16
    and OpenVINO does not, torch is timed."""
    if not has_torch():
        return str(missing_extra("--backend torch"))  # the extra named, nothing imported
    torch_fp32 = precision == "fp32" or (precision == AUTO and fp32_only("cpu") is not None)
    if torch_fp32 and ran:
        return f"{' and '.join(sorted(ran))} ran this model, and torch fp32 was slower on every CPU measured"
    if ran.get("openvino") == "bf16":
        return "OpenVINO runs this model in bf16, and torch bf16 was slower on every CPU measured"
    return None


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
    name = f"{source.model_id}-{machine_key()}-t{threads or 0}-{precision}-{CPU_RULES}.json"
    record = cache_root() / "auto" / name
    checks = precision_auto.candidates("openvino", source, "cpu")[0] \
        if precision == AUTO and "openvino" in candidates else []  # cpu_setup keeps them at auto only
    setup = cpu_setup(precision, checks)
    cached = records.read(record, lambda r: records.cpu_choice_problem(r, candidates, setup, RULE_PRECISIONS))
    if cached is not None:
        _log.info("auto: %s (chosen earlier on this machine: %s; record %s)", cached["choice"], cached["why"], record)
        return cached["choice"]
    skip = " or ".join(f"--backend {c}" for c in probe_order(candidates) if c != "torch")
    with step(f"auto: choosing among {', '.join(candidates)} (once per model and machine; {skip} skips it)", _log):
        found = probe_cpu(source, threads, candidates, precision)
    if found["choice"] is None:
        why = set(found["failed"].values())  # e.g. damaged weights: one reason for all
        detail = next(iter(why)) if len(why) == 1 else "; ".join(f"{n}: {r}" for n, r in found["failed"].items())
        raise TsfError(f"--backend auto: none of {', '.join(candidates)} could run this model on the CPU here"
                       + (f": {detail}" if detail else ""))
    for name, why in found["skipped"].items():  # the choice's line says the rule; each reason at --verbose
        _log.debug("auto: %s not timed (%s)", name, why)
    _log.info("auto: %s (%s)", found["choice"], found["why"])
    records.write(record, {**setup, **found})
    return found["choice"]


def cpu_setup(precision: str, checks: Sequence[str] = ()) -> dict[str, object]:
    """What a CPU record must have been made under to be used: the rules, the precision, the probe, and
    at --precision auto the reduced precisions OpenVINO's check considers (`checks`: an export that
    gained int8 graphs is chosen for again, not by a rule its record made for bf16)."""
    setup = {"rules": CPU_RULES, "precision": precision, "probe_hw": list(CPU_PROBE), "probe_batch": PROBE_BATCH}
    return {**setup, "checks": list(checks)} if precision == AUTO else setup


def probe_cpu(source: ModelSource, threads: int | None, candidates: Sequence[str], precision: str
              ) -> dict[str, object]:
    """The CPU choice among `candidates`, built lazily in :func:`probe_order`: a candidate decided
    by rule is not built (:func:`torch_skipped`), OpenVINO at a precision of RULE_PRECISIONS is
    taken untimed, one left alone is taken untimed, the others are timed (:func:`_time_cpu`).
    Returns the record's fields: choice (None when nothing ran), rule, why, seconds_per_slice,
    failed, skipped, ran (the precision each built candidate ran at)."""
    rng = np.random.default_rng(0)
    sources = [0, 3] if source.has_fusion else [0]
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    ran: dict[str, str] = {}
    order = probe_order(candidates)
    found = {"seconds_per_slice": timings, "failed": failed, "skipped": skipped, "ran": ran}
    for index, name in enumerate(order):
        if name == "torch" and (why := torch_skipped(ran, precision)):
            skipped[name] = why
            continue
        try:
            backend = build_at(name, source, device="cpu", threads=threads, precision=precision)
        except TsfError as exc:
            _log.info("auto: %s cannot run on the CPU (%s)", name, exc)
            failed[name] = str(exc)
            continue
        with backend:
            ran[name] = backend.runtime_precision
            if name == "openvino" and precision == AUTO and ran[name] in RULE_PRECISIONS:
                why = (f"OpenVINO runs {ran[name]} natively here and this model passed its check; the other "
                       "CPU backends were slower on every CPU measured")
                skipped.update({other: (other == "torch" and torch_skipped(ran, precision)) or why
                                for other in order[index + 1:]})
                return {**found, "choice": name, "rule": f"openvino-{ran[name]}", "why": f"by rule: {why}"}
            later = [n for n in order[index + 1:] if not (n == "torch" and torch_skipped(ran, precision))]
            if not timings and not later:  # nothing to compare with: no timing
                skipped.update({n: str(torch_skipped(ran, precision)) for n in order[index + 1:]})  # torch alone
                rest = "; ".join(f"{n}: {r}" for n, r in {**failed, **skipped}.items())
                return {**found, "choice": name, "rule": "only", "why": f"the only one to compare ({rest})"}
            try:
                timings[name] = _time_cpu(backend, rng, sources, min(timings.values(), default=math.inf))
            except (TsfError, RuntimeError, MemoryError) as exc:
                _log.info("auto: %s failed on the probe batch (%s)", name, exc)
                failed[name] = f"failed on the probe batch: {(str(exc) or type(exc).__name__).splitlines()[0]}"
                del ran[name]  # it does not run this model: no rule may lean on it
    if not timings:
        return {**found, "choice": None, "rule": "none", "why": "nothing ran"}
    choice = min(timings, key=timings.get)
    return {**found, "choice": choice, "rule": "timed", "why": f"the fastest here: {_timings_text(timings)}"}


def _time_cpu(backend, rng, sources: list[int], best: float) -> float:
    """Seconds per slice of one probe batch: the better of a warm-up and one timed call (the warm-up
    compiles and touches memory first, so it is never the faster by more than noise), or the warm-up
    alone when it already beats `best` (the fastest timed so far) by CLEAR_LEAD."""
    height, width = CPU_PROBE
    n = min(PROBE_BATCH, backend.preferred_batch_size(height, width))
    volumes = {i: rng.uniform(-1, 1, (n, height, width)).astype(np.float32) for i in sources}
    seconds = []
    for call in range(2):
        start = time.perf_counter()
        for _, _, features in encoded_batches(backend, volumes, sources, range(n), n):
            host_images(backend, run_task(backend, features, sources, 2, with_avg=True), MIDDLE)
        seconds.append((time.perf_counter() - start) / n)
        if call == 0 and math.isfinite(best) and seconds[0] * CLEAR_LEAD < best:
            _log.info("auto: %s clearly ahead at its warm-up call (%.1f ms/slice): not timed again", backend.name,
                      1e3 * seconds[0])
            break
    return min(seconds)


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
