"""What this CPU is and can do natively, read once from the kernel: the one reader of
/proc/cpuinfo. doctor and `tsf-trt bench` report it, the cache keys runtime-optimised graphs by
the processor model, and `--precision auto` and the bench's bf16 GEMM peak take bf16 only where
the CPU runs it natively (elsewhere bf16 is emulated and slower than fp32)."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 and AMX (x86-64), and Arm's BF16
#: extension (its flag is `bf16` under "Features").
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: The architectures whose flags BF16_FLAGS names (platform.machine()'s spellings).
BF16_MACHINES = ("x86_64", "AMD64", "aarch64", "arm64")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    """The text of /proc/cpuinfo (read once: it does not change while we run); None without it."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags() -> frozenset[str] | None:
    """The first CPU's flags ("flags" on x86, "Features" on Arm); None without /proc/cpuinfo."""
    text = _cpuinfo()
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    """The processor model: runtime-optimised graphs may use its instruction set."""
    for line in (_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where that file is not there."""
    text = _cpuinfo()
    if text is None:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def native_bf16_flags(flags: Iterable[str] | None) -> list[str]:
    """The native-bf16 flags among `flags` (the evidence), sorted; none on another architecture."""
    if platform.machine() not in BF16_MACHINES:
        return []
    return sorted(set(BF16_FLAGS) & set(flags or ()))


def native_bf16() -> bool:
    """True when the CPU has bf16 instructions (unknown counts as no: fp32 is never wrong)."""
    return bool(native_bf16_flags(cpu_flags()))
