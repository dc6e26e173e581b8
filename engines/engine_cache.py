"""The engine cache: serialized engines beside the export, each one verified cache entry.

Layout of `<export>/engines/` (or, when the export folder is read-only, a folder under
the tsf-trt cache named by the model id):

    encoder.fp16.<digest16>.tsfengine   the serialized engine, with its key, SHA-256, size,
                                        build time and versions (tsf_trt.files.cache_entry)
    timing-<platform>.cache             TensorRT timing cache (a verified entry too)
    fp16/                               FP16 variants of the graphs (tsf_trt.engines.fp16)
    ort-trt/                            ONNX Runtime TensorRT EP engine and timing caches

An engine is returned only when its entry holds exactly the key asked for and the whole
file still has the SHA-256 recorded at build time: a stale, foreign, truncated or modified
engine is never handed to TensorRT. Engine and metadata are one file, written at once, so
no torn or concurrent write can pair one build's engine with another's record (tsf-trt
0.1 kept them in two files, `.engine` and `.json`: those are never used, and are deleted
with the stale engines). Pure Python: tested without a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsf_trt.errors import TsfError
from tsf_trt.files import cache_entry
from tsf_trt.machine.cache_dir import cache_root, writable_dir
from tsf_trt.version import __version__

from tsf_trt.engines.keys import EngineKey, Platform

FORMAT = "tsf-trt-engine"
FORMAT_VERSION = 2  # 1: engine and metadata in two files
SUFFIX = ".tsfengine"


class CorruptEngine(TsfError):
    """An engine file that does not match its metadata, or that TensorRT refused."""


@dataclass(frozen=True)
class Entry:
    key: EngineKey
    path: Path
    meta: dict[str, Any]
    data: bytes = field(default=b"", repr=False)  # the checked engine (lookup, store); b"" in listings


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

    def path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem}{SUFFIX}"

    def timing_cache_path(self, platform: Platform) -> Path:
        """The timing cache entry of `platform` (read and written by tsf_trt.engines.build)."""
        return self.directory / f"timing-{platform.slug()}.cache"

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every engine whose metadata reads as an engine's (without its data: listed, not checked;
        `lookup` checks the one used). Unreadable metadata is skipped, never trusted."""
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            meta = cache_entry.read_meta(path)
            key = _key(meta)
            if key is not None:
                found.append(Entry(key, path, meta))  # type: ignore[arg-type]
        return found

    def lookup(self, key: EngineKey) -> Entry | None:
        """The engine stored under exactly `key`, checked; None when there is none.

        Raises CorruptEngine (after removing the file) when the entry is truncated or modified
        since it was built, or holds no engine's metadata.
        """
        path = self.path(key)
        try:
            found = cache_entry.load(path)
        except cache_entry.DamagedEntry as exc:
            raise CorruptEngine(str(exc)) from None
        if found is None:
            return None
        stored = _key(found.meta)
        if stored is None:
            path.unlink(missing_ok=True)
            raise CorruptEngine(f"{path}: its metadata is not an engine's; it was removed and will be rebuilt")
        if stored != key:
            return None  # a digest collision or a hand-copied file: not this engine
        return Entry(key, path, found.meta, found.payload)

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

    # -- writing ---------------------------------------------------------------------------
    def store(self, key: EngineKey, data: bytes, info: dict[str, Any] | None = None) -> Entry:
        """Write the engine with its key and hash, as one file at once."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key.to_dict(),
                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "tsf_trt_version": __version__,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
        saved = cache_entry.save(self.path(key), data, meta)
        return Entry(key, saved.path, saved.meta, data)

    def remove(self, key: EngineKey) -> None:
        self.path(key).unlink(missing_ok=True)

    def prune_stale(self, key: EngineKey) -> list[Path]:
        """Delete the engines `key` makes obsolete (same graph, precision and platform, other
        graph file or builder), and the two-file engines of tsf-trt 0.1 (never read by this
        version); return what was deleted."""
        removed = []
        for entry in self.entries():
            if entry.key.stale_for(key):
                self.remove(entry.key)
                removed.append(entry.path)
        for meta_path in sorted(self.directory.glob("*.json")):
            try:
                old = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(old, dict) and old.get("format") == FORMAT and old.get("format_version") == 1:
                engine = meta_path.with_suffix(".engine")
                engine.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                removed.append(engine)
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


def _key(meta: dict[str, Any] | None) -> EngineKey | None:
    """The key an engine entry's metadata holds; None when it holds no engine of this format."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        return None
    try:
        return EngineKey.from_dict(meta["key"])
    except (ValueError, KeyError, TypeError, TsfError):
        return None
