"""`--precision auto` (the default): bf16 or int8 where they cost nothing, fp32 everywhere else.

Why a check and not a rule: bf16 keeps 8 bits of mantissa. On the trained demo model it cost
-0.01 dB against the truth, but on random weights its output was only 39.5 dB from fp32's
(issue 15's measurements), so whether bf16 is harmless depends on the model. It is also only
faster where the CPU has bf16 instructions (AVX512-BF16, AMX, Arm BF16); elsewhere it is
emulated and slower than fp32. int8 (the export's int8 graphs, tsf_trt.export.quantize, OpenVINO
only) depends on the model, its calibration and the CPU: OpenVINO's int8 kernels differ between
CPU classes (issue 27), so it is checked per model and machine too, and more strictly (below).

So `auto` means: on a CPU backend that takes a reduced precision (torch and openvino: bf16 on a CPU
with native bf16; openvino: int8 where the export holds int8 graphs), run a held-out phantom's central
slices in fp32 and in each candidate, in PREFERENCE order, once per model, backend and machine; use the
first that passes, else fp32. bf16 passes when its synthesis is >= MIN_PSNR dB from fp32's inside the
head and ω agree within MAX_OMEGA. int8 also has to keep the synthesis' PSNR against the phantom's
true T2 within MAX_TRUTH_LOSS of fp32's and TSEM (the difference of two decodings, where int8's
noise weighs more) correlated with fp32's TSEM by MIN_TSEM_CORR. The verdict is cached
(tsf_trt.machine.cache_dir; used again only when valid, :mod:`.records`) and logged.
GPU backends run fp32 under `auto`: their fp16 has not been measured on a GPU yet
(docs/gpu.md); ask for it with --precision fp16.
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
MAX_OMEGA = 1e-3       # largest |ω bf16 (or int8) - ω fp32|
BF16_BACKENDS = ("torch", "openvino")
INT8_BACKENDS = ("openvino",)  # the export's int8 graphs are OpenVINO models
#: int8's bounds. Measured on the check's 4 slices (demo model, this project's AVX512-BF16 VNNI CPU):
#: int8 49.4 dB from fp32, 0.07 dB below fp32 against the truth, TSEM correlation 0.994 (bf16: 49.8 dB,
#: 0.02 dB, 0.988); over the 28 tasks of 4 held-out volumes (scripts/int8_study.py) -0.008 dB mean,
#: -0.023 dB worst, TSEM correlation 0.962. 40 dB is an RMS error of 2 % of the range of [-1, 1]: what an
#: export without its input range fixed (tsf_trt.export.quantize) loses is caught by the truth's bound
#: (it cost T1Gd targets up to 0.45 dB), a TSEM that is noise by the correlation.
MIN_PSNR_INT8, MAX_TRUTH_LOSS, MIN_TSEM_CORR = 40.0, 0.25, 0.9
#: Where both pass, the first is used. On the one CPU with both (AVX512-BF16 Zen 4) they ran at the same
#: speed within noise (int8's time over bf16's 0.84-1.02 in three runs: docs/performance.md, "int8"), and
#: int8 kept fp32's PSNR against the truth where bf16 lost 0.02 dB; without bf16, int8 is the only one.
PREFERENCE = ("int8", "bf16")
#: The check's input: held-out phantom 5000 (training phantoms have lower seeds: docs/getting-started.md,
#: "The bundled demo model"), at BraTS's in-plane size, its central CHECK_SLICES slices. 4, not 8 (issue
#: 27: the check is most of the first run's `auto`): bf16's PSNR from fp32 on the central 4 was within
#: 0.07 dB of that on 8, for the demo model (49.80 vs 49.82 dB) and the paper configuration's random
#: weights (40.79 vs 40.72), each over 4 dB from MIN_PSNR, at half the run time (scripts/probe_study.py --check).
CHECK_SEED, CHECK_SHAPE, CHECK_SLICES = 5000, (240, 240, 40), 4
TARGET = 2  # T2
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    precision: str
    why: str
    psnr_db: float | None = None       # the checked precision's synthesis vs fp32's
    omega_diff: float | None = None
    truth_loss_db: float | None = None  # int8: fp32's PSNR against the truth minus int8's
    tsem_corr: float | None = None      # int8: TSEM's correlation with fp32's
    checked: str | None = None          # the precision the figures are of (None: bf16, as records before int8)


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


def candidates(name: str, source: ModelSource, device: str) -> tuple[list[str], str]:
    """The reduced precisions `auto` checks for backend `name`, in PREFERENCE order, and why there
    are none when so."""
    if device != "cpu":
        return [], str(fp32_only(device))
    found = []
    if name in BF16_BACKENDS and native_bf16():
        found.append("bf16")
    if name in INT8_BACKENDS and has_int8_graphs(source):
        found.append("int8")
    if found:
        return sorted(found, key=PREFERENCE.index), ""
    why = str(fp32_only(device) or "")
    if name in INT8_BACKENDS:
        why += ("; " if why else "") + "this export has no int8 graphs (tsf-trt export --precision int8)"
    return [], why


def has_int8_graphs(source: ModelSource) -> bool:
    """Whether the export this source runs from holds int8 graphs (a model directory's own or
    cached export, as found: none is made to find out; a live module has none)."""
    from tsf_trt.export.cached_exports import find_export
    from tsf_trt.export.manifest import INT8, read_manifest

    directory = source.path if source.kind == "export" else \
        find_export(source.model_id, source.path, config=source.config) if source.kind == "model" else None
    if directory is None:
        return False
    try:
        return INT8 in read_manifest(directory, check_hashes=False)
    except TsfError:
        return False  # the backend that opens it says what is wrong


def _graphs(name: str) -> str:
    """What a verdict also depends on beyond model, backend and machine: the changes OpenVINO's backend
    makes to the graphs it compiles (a verdict is for what runs; an upgrade that changes them checks again)."""
    if name != "openvino":
        return ""
    from tsf_trt.backends.openvino_graph import VERSION

    return f"-g{VERSION}"


def resolve(name: str, source: ModelSource, *, device: str, threads: int | None) -> Verdict:
    """The precision `auto` means for backend `name` on `device` (see the module docstring)."""
    if name not in BF16_BACKENDS + INT8_BACKENDS:
        return Verdict("fp32", f"{name} runs fp32 unless another precision is asked for")
    checks, why = candidates(name, source, device)
    if not checks:
        return Verdict("fp32", why)
    key = f"{source.model_id}-{name}-{machine_key()}-{'+'.join(checks)}-v2{_graphs(name)}"
    record = cache_root() / "precision" / f"{key}.json"
    cached = records.read(record, lambda r: records.verdict_problem(r, passes, checks))
    if cached is not None:
        verdict = Verdict(**cached)
        # debug: the backend's own line says the precision and why; the record's path is for --verbose
        _log.debug("precision auto: %s (checked earlier on this machine: %s; record %s)", verdict.precision,
                   verdict.why, record)
        return verdict
    asked = " or ".join(f"--precision {c}" for c in (*checks, "fp32"))
    with step(f"precision auto: checking {' and '.join(checks)} against fp32 on {name} (once per model and "
              f"machine; {asked} skips it)", _log):
        verdict = check(name, source, threads, checks)
    _log.info("precision auto: %s (%s)", verdict.precision, verdict.why)
    records.write(record, asdict(verdict))  # no cache: check again next time
    return verdict


def check(name: str, source: ModelSource, threads: int | None, checks: list[str]) -> Verdict:
    """The first of `checks` that passes, else fp32 with every failed check's figures in its reason
    (the record keeps the last one's figures)."""
    failed = []
    verdict = Verdict("fp32", "nothing checked")
    for precision in checks:
        verdict = {"bf16": check_bf16, "int8": check_int8}[precision](name, source, threads)
        if verdict.precision == precision:
            return verdict
        failed.append(verdict.why)
    return Verdict(**{**asdict(verdict), "why": "; ".join(failed)})


def check_bf16(name: str, source: ModelSource, threads: int | None) -> Verdict:
    """Synthesise the check's slices in fp32 and bf16 on backend `name` and compare."""
    inputs, head = check_inputs(source.has_fusion)
    found = synthesized(name, source, threads, ("fp32", "bf16"), inputs, head)
    if isinstance(found, str):
        return Verdict("fp32", found)
    ((image32, w32), _), ((image16, w16), _) = found["fp32"], found["bf16"]
    return judge(image32, image16, check_mask(head, source), w32, w16)


def check_int8(name: str, source: ModelSource, threads: int | None) -> Verdict:
    """Synthesise the check's slices with TSEM in fp32 and int8 on backend `name`; compare with each
    other and with the check phantom's true T2."""
    from tsf_trt.metrics import psnr

    inputs, head, truth = check_volumes(source.has_fusion)
    found = synthesized(name, source, threads, ("fp32", "int8"), inputs, head, tsem=True)
    if isinstance(found, str):
        return Verdict("fp32", found, checked="int8")
    ((image32, w32, tsem32), _), ((image8, w8, tsem8), ran) = found["fp32"], found["int8"]
    if ran != "int8":  # e.g. OpenVINO runs no u8 convolution on this CPU
        return Verdict("fp32", f"int8 runs {ran} here", checked="int8")
    mask = check_mask(head, source)
    truth = plan_frame("head", head, source.config.downsample).take(normalize(truth))
    quality = psnr(image8, image32, mask)
    omega = max(abs(w32[i] - w8[i]) for i in w32)
    loss = psnr(image32, truth, mask) - psnr(image8, truth, mask)
    corr = float(np.corrcoef(tsem8[mask], tsem32[mask])[0, 1]) if tsem32 is not None else 1.0
    figures = (f"int8 is {quality:.1f} dB from fp32, its PSNR against the truth {-loss:+.2f} dB from fp32's, "
               f"TSEM correlation {corr:.3f}, ω within {omega:.1e}")
    if passes(quality, omega, loss, corr, "int8"):
        return Verdict("int8", f"this export's int8 graphs and {figures}", quality, omega, loss, corr, "int8")
    return Verdict("fp32", f"{figures}: short of {MIN_PSNR_INT8:g} dB / {MAX_TRUTH_LOSS:g} dB / "
                           f"{MIN_TSEM_CORR:g} / {MAX_OMEGA:g}", quality, omega, loss, corr, "int8")


def synthesized(name: str, source: ModelSource, threads: int | None, precisions: tuple[str, ...],
                inputs: dict[int, np.ndarray], head: np.ndarray, tsem: bool = False) -> dict[str, tuple] | str:
    """{precision: (what :func:`synthesize` gives, the precision the backend ran)} on backend `name` at
    each of `precisions`, one backend at a time; or why one did not start."""
    results = {}
    for precision in precisions:
        try:
            backend = build_backend(name, source, device="cpu", threads=threads, precision=precision)
        except TsfError as exc:
            return f"{precision} did not start: {exc}"
        with backend:
            results[precision] = (synthesize(backend, inputs, head, tsem=tsem), backend.runtime_precision)
    return results


def synthesize(backend: Backend, inputs: dict[int, np.ndarray], head: np.ndarray, tsem: bool = False) -> tuple:
    """The middle slices of the check volume, T2 from `inputs`, on the head frame as `infer` runs
    by default, in one batch of the one batch loop (tsf_trt.synthesis.batches): (network-unit images, ω),
    and with `tsem` also TSEM (None for a Seq2Seq-only model, which has none)."""
    frame = plan_frame("head", head, backend.config.downsample)
    framed = {i: frame.take(normalize(v)) for i, v in inputs.items()}
    sources = sorted(inputs)
    centres = range(next(iter(framed.values())).shape[0])
    (_, _, features), = encoded_batches(backend, framed, sources, centres, len(centres))
    with_avg = tsem and backend.has_fusion
    decoded = run_task(backend, features, sources, TARGET, with_avg=with_avg)
    image, image_avg = host_images(backend, decoded, MIDDLE)
    weights = {i: float(decoded.weights[i]) for i in sources}
    if not tsem:
        return image, weights
    return image, weights, np.abs(image - image_avg) if with_avg else None


def passes(psnr_db: float, omega_diff: float, truth_loss_db: float | None = None, tsem_corr: float | None = None,
           precision: str = "bf16") -> bool:
    """The rule (what `judge` and :func:`check_int8` decide, and what a recorded verdict is checked
    against: tsf_trt.synthesis.records): bf16 when its synthesis is within MIN_PSNR of fp32's and ω
    within MAX_OMEGA; int8 when within MIN_PSNR_INT8, ω within MAX_OMEGA, its loss against the truth
    at most MAX_TRUTH_LOSS and TSEM's correlation at least MIN_TSEM_CORR."""
    if precision == "int8":
        return (truth_loss_db is not None and tsem_corr is not None and psnr_db >= MIN_PSNR_INT8
                and omega_diff <= MAX_OMEGA and truth_loss_db <= MAX_TRUTH_LOSS and tsem_corr >= MIN_TSEM_CORR)
    return psnr_db >= MIN_PSNR and omega_diff <= MAX_OMEGA


def judge(fp32: np.ndarray, bf16: np.ndarray, head: np.ndarray, w32: dict[int, float],
          w16: dict[int, float]) -> Verdict:
    """bf16's rule: both bounds hold, or fp32."""
    from tsf_trt.metrics import psnr

    quality = psnr(bf16, fp32, head)
    omega = max(abs(w32[i] - w16[i]) for i in w32)
    figures = f"bf16 is {quality:.1f} dB from fp32, ω within {omega:.1e}"
    if passes(quality, omega):
        return Verdict("bf16", f"native bf16 on this CPU and {figures}", quality, omega, checked="bf16")
    return Verdict("fp32", f"{figures}: short of {MIN_PSNR:g} dB / {MAX_OMEGA:g}", quality, omega, checked="bf16")


def check_inputs(has_fusion: bool) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """T1, T1Gd, FLAIR (or T1 alone, for a Seq2Seq-only model) of the check phantom, (z, y, x)."""
    inputs, head, _ = check_volumes(has_fusion)
    return inputs, head


def check_volumes(has_fusion: bool) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`check_inputs`, and the check phantom's true T2 on the same slices."""
    from tsf_trt.phantoms.generator import make_subject

    phantom = make_subject(CHECK_SEED, CHECK_SHAPE)
    middle = CHECK_SHAPE[2] // 2
    keep = slice(middle - CHECK_SLICES // 2, middle + CHECK_SLICES // 2)

    def slices(name: str) -> np.ndarray:
        return np.ascontiguousarray(phantom.volumes[name][:, :, keep].transpose(2, 1, 0))

    names = ("t1", "t1gd", "flair") if has_fusion else ("t1",)
    volumes = {i: slices(n) for i, n in zip((0, 1, 3), names)}
    return volumes, np.logical_or.reduce([v > 0 for v in volumes.values()]), slices("t2")


def check_mask(head: np.ndarray, source: ModelSource) -> np.ndarray:
    """The head on the check's frame: where the check compares."""
    return plan_frame("head", head, source.config.downsample).take(head.astype(np.float32)) > 0
