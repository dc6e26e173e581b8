"""The engine cache: serialized engines beside the export, each with a metadata JSON.

Layout of `<export>/engines/` (or, when the export folder is read-only, a folder under
the tsf-trt cache named by the model id):

    encoder.fp16.<digest16>.engine   the serialized engine
    encoder.fp16.<digest16>.json     its key, SHA-256 and size, build time, versions
    timing-<platform>.cache          TensorRT timing cache, reused by every build
    fp16/                            FP16 variants of the graphs (tsf_trt.engines.fp16)
    ort-trt/                         ONNX Runtime TensorRT EP engine and timing caches

An engine is returned only when its metadata holds exactly the key asked for and the
file still has the SHA-256 recorded at build time: a stale, foreign, truncated or
modified engine is never handed to TensorRT. Pure Python: tested without a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsf_trt import __version__
from tsf_trt.cache_dir import cache_root, writable_dir
from tsf_trt.errors import TsfError
from tsf_trt.fileformat import file_sha256
from tsf_trt.atomic import atomic_path

from .keys import EngineKey, Platform

FORMAT = "tsf-trt-engine"
FORMAT_VERSION = 1


class CorruptEngine(TsfError):
    """An engine file that does not match its metadata, or that TensorRT refused."""


@dataclass(frozen=True)
class Entry:
    key: EngineKey
    path: Path
    meta: dict[str, Any]


def engine_dir(export_dir: str | Path, model_id: str = "") -> Path:
    """`<export>/engines`, or a per-export folder in the user cache when the export is read-only."""
    export_dir = Path(export_dir)
    beside = writable_dir(export_dir / "engines")
    if beside is not None:
        return beside
    name = model_id or hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:16]
    fallback = writable_dir(cache_root() / "engines" / name)
    if fallback is None:
        raise TsfError(f"{export_dir}: cannot write engines beside the export nor under {cache_root()} "
                       "(set TSF_TRT_CACHE to a writable folder)")
    return fallback


class EngineCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        return self.directory / f"{key.stem}.engine", self.directory / f"{key.stem}.json"

    def timing_cache_path(self, platform: Platform) -> Path:
        return self.directory / f"timing-{platform.slug()}.cache"

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every engine with readable metadata (unreadable metadata is skipped, never trusted)."""
        found = []
        for meta_path in sorted(self.directory.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
                    continue
                key = EngineKey.from_dict(meta["key"])
            except (OSError, ValueError, KeyError, TypeError, TsfError):
                continue
            found.append(Entry(key, meta_path.with_suffix(".engine"), meta))
        return found

    def lookup(self, key: EngineKey) -> Entry | None:
        """The engine stored under exactly `key`, checked; None when there is none.

        Raises CorruptEngine (after removing the files) when the engine file is missing,
        truncated or modified since it was built.
        """
        engine, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            stored = EngineKey.from_dict(meta["key"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, TsfError):
            self.remove(key)  # unreadable metadata: the pair cannot be trusted
            return None
        if stored != key:
            return None  # a digest collision or a hand-copied file: not this engine
        problem = self._verify(engine, meta)
        if problem:
            self.remove(key)
            raise CorruptEngine(f"{engine}: {problem}; it was deleted and will be rebuilt")
        return Entry(key, engine, meta)

    def find(self, like: EngineKey, batch: int, height: int, width: int) -> Entry | None:
        """A stored engine of the same build as `like` whose profile covers the request;
        the exact key is preferred, then the narrowest covering profile."""
        exact = self.lookup(like)
        if exact is not None and like.profile.covers(batch, height, width):
            return exact
        candidates = [e for e in self.entries() if e.key.same_build(like) and e.key.profile.covers(batch, height, width)]
        candidates.sort(key=lambda e: (e.key.profile.batch[2], e.key.profile.max_size))
        for entry in candidates:
            checked = self.lookup(entry.key)
            if checked is not None:
                return checked
        return None

    @staticmethod
    def _verify(engine: Path, meta: dict[str, Any]) -> str | None:
        if not engine.is_file():
            return "the engine file is missing"
        if engine.stat().st_size != meta.get("size"):
            return f"size {engine.stat().st_size} bytes differs from the {meta.get('size')} recorded at build time"
        if file_sha256(engine) != meta.get("sha256"):
            return "SHA-256 differs from the one recorded at build time (modified or damaged)"
        return None

    # -- writing ---------------------------------------------------------------------------
    def store(self, key: EngineKey, data: bytes, info: dict[str, Any] | None = None) -> Entry:
        """Write the engine, then its metadata (a reader never sees metadata without its engine)."""
        engine, meta_path = self.paths(key)
        with atomic_path(engine, overwrite=True) as tmp:
            tmp.write_bytes(data)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key.to_dict(),
                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "tsf_trt_version": __version__,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
        with atomic_path(meta_path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return Entry(key, engine, meta)

    def remove(self, key: EngineKey) -> None:
        for path in self.paths(key):
            path.unlink(missing_ok=True)

    def prune_stale(self, key: EngineKey) -> list[Path]:
        """Delete the engines `key` makes obsolete (same graph, precision and platform, other
        graph file or builder); return what was deleted."""
        removed = []
        for entry in self.entries():
            if entry.key.stale_for(key):
                self.remove(entry.key)
                removed.append(entry.path)
        return removed

    @contextlib.contextmanager
    def lock(self, key: EngineKey) -> Iterator[None]:
        """Serialise builds of one engine across processes (one worker per GPU may ask for the
        same engine at once): the second waits, then finds the first one's engine."""
        try:
            import fcntl
        except ImportError:  # not POSIX: builds may be duplicated, never corrupted (atomic writes)
            yield
            return
        path = self.directory / f".{key.graph}.{key.precision}.lock"
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once (timing caches are rewritten after each build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
