"""Where tsf-trt keeps what it derives once and reuses: exports of model directories,
runtime-optimised graphs, backend timings. `TSF_TRT_CACHE` overrides the location."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from tsf_trt.machine.cpu import cpu_name


def cache_root() -> Path:
    env = os.environ.get("TSF_TRT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tsf-trt"


def machine_key() -> str:
    """Short stable key of this machine's CPU (and architecture)."""
    return hashlib.sha256(f"{platform.machine()}|{cpu_name()}".encode()).hexdigest()[:12]


def writable_dir(path: Path) -> Path | None:
    """`path`, created if needed, or None when it cannot be written (caching is optional)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return path
    except OSError:
        return None


def runtime_cache(export_dir: Path, name: str) -> Path | None:
    """Where a runtime keeps what it derives from the graphs of `export_dir` (optimised graphs,
    compiled models): `<export_dir>/.<name>-cache`, except for an export inside the installed
    tsf-trt package (the bundled demo's), which is never written: its caches go to the cache
    root. None when neither can be written (caching is optional)."""
    package, where = Path(__file__).resolve().parents[1], Path(export_dir).resolve()  # tsf_trt/, from tsf_trt/machine/
    if package in where.parents:
        return writable_dir(cache_root() / f"{name}-cache" / where.relative_to(package).as_posix().replace("/", "-"))
    return writable_dir(Path(export_dir) / f".{name}-cache")
