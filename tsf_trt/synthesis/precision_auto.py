"""`--precision auto` (the default): bf16 where it costs nothing, fp32 everywhere else.

Why a check and not a rule: bf16 keeps 8 bits of mantissa. On the trained demo model it cost
-0.01 dB against the truth, but on random weights its output was only 39.5 dB from fp32's
(issue 15's measurements), so whether bf16 is harmless depends on the model. It is also only
faster where the CPU has bf16 instructions (AVX512-BF16, AMX, Arm BF16); elsewhere it is
emulated and slower than fp32.

So `auto` means: on a CPU backend that takes bf16 (torch, openvino), on a CPU with native bf16,
run a held-out phantom's central slices in fp32 and in bf16 once per model, backend and
machine; use bf16 when the synthesis is >= MIN_PSNR dB from fp32's inside the head and ω
agree within MAX_OMEGA, else fp32. The verdict is cached (tsf_trt.machine.cache_dir; used again only
when valid, :mod:`.records`) and logged.
GPU backends run fp32 under `auto`: their fp16 has not been measured on a GPU yet
(README, "GPU"); ask for it with --precision fp16.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from tsf_trt.backends import AUTO, Backend
from tsf_trt.console import step
from tsf_trt.errors import TsfError
from tsf_trt.machine.cache_dir import cache_root, machine_key
from tsf_trt.machine.cpu import native_bf16
from tsf_trt.synthesis import records
from tsf_trt.synthesis.batches import MIDDLE, encoded_batches, host_images, run_task
from tsf_trt.synthesis.build import build_backend, on_cpu
from tsf_trt.synthesis.frame import plan_frame
from tsf_trt.synthesis.preprocess import normalize
from tsf_trt.synthesis.source import ModelSource

MIN_PSNR = 45.0        # dB, bf16 synthesis vs fp32, inside the head, network units
MAX_OMEGA = 1e-3       # largest |ω bf16 - ω fp32|
BF16_BACKENDS = ("torch", "openvino")
#: The check's input: held-out phantom 5000 (training phantoms have lower seeds: README,
#: "The bundled model"), at BraTS's in-plane size, its central CHECK_SLICES slices.
CHECK_SEED, CHECK_SHAPE, CHECK_SLICES = 5000, (240, 240, 40), 8
TARGET = 2  # T2
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    precision: str
    why: str
    psnr_db: float | None = None
    omega_diff: float | None = None


def fp32_only(device: str) -> str | None:
    """Why `--precision auto` means fp32 for every backend on `device` ('cpu' or 'cuda'); None
    where bf16 may be checked. The one place of the rule "no native bf16 -> fp32"."""
    if device != "cpu":
        return "on a GPU, auto runs fp32 (fp16 unmeasured there: ask for it)"
    if not native_bf16():
        return "this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm BF16)"
    return None


def build_at(name: str, source: ModelSource, *, device: str, threads: int | None, precision: str,
             decoder: str = "baked", compile: bool = False) -> Backend:
    """Backend `name` (not `auto`) built at `precision`, or at what :func:`resolve` finds when
    that is `auto`; its `.precision_reason` says which and why."""
    reason = "asked for (--precision)"
    if precision == AUTO:
        verdict = resolve(name, source, device="cpu" if on_cpu(name, device) else "cuda", threads=threads)
        precision, reason = verdict.precision, f"--precision auto: {verdict.why}"
    backend = build_backend(name, source, device=device, threads=threads, precision=precision, decoder=decoder,
                            compile=compile)
    backend.precision_reason = reason
    return backend


def resolve(name: str, source: ModelSource, *, device: str, threads: int | None) -> Verdict:
    """The precision `auto` means for backend `name` on `device` (see the module docstring)."""
    if name not in BF16_BACKENDS:
        return Verdict("fp32", f"{name} runs fp32 unless another precision is asked for")
    if (why := fp32_only(device)) is not None:
        return Verdict("fp32", why)
    record = cache_root() / "precision" / f"{source.model_id}-{name}-{machine_key()}-v1.json"
    cached = records.read(record, lambda r: records.verdict_problem(r, passes))
    if cached is not None:
        verdict = Verdict(**cached)
        _log.info("precision auto: %s (checked earlier on this machine: %s; record %s)", verdict.precision,
                  verdict.why, record)
        return verdict
    with step(f"precision auto: checking bf16 against fp32 on {name} (once per model and machine)", _log):
        verdict = check_bf16(name, source, threads)
    _log.info("precision auto: %s (%s)", verdict.precision, verdict.why)
    records.write(record, asdict(verdict))  # no cache: check again next time
    return verdict


def check_bf16(name: str, source: ModelSource, threads: int | None) -> Verdict:
    """Synthesise the check's slices in fp32 and bf16 on backend `name` and compare."""
    inputs, head = check_inputs(source.has_fusion)
    results = {}
    for precision in ("fp32", "bf16"):
        try:
            backend = build_backend(name, source, device="cpu", threads=threads, precision=precision)
        except TsfError as exc:
            return Verdict("fp32", f"{precision} did not start: {exc}")
        with backend:
            results[precision] = synthesize(backend, inputs, head)
    (image32, w32), (image16, w16) = results["fp32"], results["bf16"]
    frame = plan_frame("head", head, source.config.downsample)
    return judge(image32, image16, frame.take(head.astype(np.float32)) > 0, w32, w16)


def synthesize(backend: Backend, inputs: dict[int, np.ndarray], head: np.ndarray
               ) -> tuple[np.ndarray, dict[int, float]]:
    """The middle slices of the check volume, T2 from `inputs`, on the head frame as `infer` runs
    by default, in one batch of the one batch loop (tsf_trt.synthesis.batches): (network-unit images, ω)."""
    frame = plan_frame("head", head, backend.config.downsample)
    framed = {i: frame.take(normalize(v)) for i, v in inputs.items()}
    sources = sorted(inputs)
    centres = range(next(iter(framed.values())).shape[0])
    (_, _, features), = encoded_batches(backend, framed, sources, centres, len(centres))
    decoded = run_task(backend, features, sources, TARGET, with_avg=False)
    image, _ = host_images(backend, decoded, MIDDLE)
    return image, {i: float(decoded.weights[i]) for i in sources}


def passes(psnr_db: float, omega_diff: float) -> bool:
    """The rule: bf16 when its synthesis is within MIN_PSNR of fp32's and ω within MAX_OMEGA (what
    `judge` decides, and what a recorded verdict is checked against: tsf_trt.synthesis.records)."""
    return psnr_db >= MIN_PSNR and omega_diff <= MAX_OMEGA


def judge(fp32: np.ndarray, bf16: np.ndarray, head: np.ndarray, w32: dict[int, float],
          w16: dict[int, float]) -> Verdict:
    """The rule: both bounds hold, or fp32."""
    from tsf_trt.metrics import psnr

    quality = psnr(bf16, fp32, head)
    omega = max(abs(w32[i] - w16[i]) for i in w32)
    figures = f"bf16 is {quality:.1f} dB from fp32, ω within {omega:.1e}"
    if passes(quality, omega):
        return Verdict("bf16", f"native bf16 on this CPU and {figures}", quality, omega)
    return Verdict("fp32", f"{figures}: short of {MIN_PSNR:g} dB / {MAX_OMEGA:g}", quality, omega)


def check_inputs(has_fusion: bool) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """T1, T1Gd, FLAIR (or T1 alone, for a Seq2Seq-only model) of the check phantom, (z, y, x)."""
    from tsf_trt.phantoms.generator import make_subject

    phantom = make_subject(CHECK_SEED, CHECK_SHAPE)
    middle = CHECK_SHAPE[2] // 2
    keep = slice(middle - CHECK_SLICES // 2, middle + CHECK_SLICES // 2)
    names = ("t1", "t1gd", "flair") if has_fusion else ("t1",)
    volumes = {i: np.ascontiguousarray(phantom.volumes[n][:, :, keep].transpose(2, 1, 0))
               for i, n in zip((0, 1, 3), names)}
    return volumes, np.logical_or.reduce([v > 0 for v in volumes.values()])
