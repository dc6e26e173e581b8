"""What this CPU can do natively, read once from the kernel: doctor reports it, and
`--precision auto` picks bf16 only where the CPU runs it natively (elsewhere bf16 is emulated
and slower than fp32)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 and AMX (x86-64), and Arm's BF16
#: extension (its flag is `bf16` under "Features").
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The first CPU's flags ("flags" on x86, "Features" on Arm); None without /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> bool:
    """True when the CPU has bf16 instructions (unknown counts as no: fp32 is never wrong)."""
    flags = cpu_flags()
    return bool(flags) and any(f in flags for f in BF16_FLAGS) and platform.machine() in ("x86_64", "AMD64",
                                                                                          "aarch64", "arm64")
