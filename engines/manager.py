"""Find or build the engine of each graph of one export, for one GPU and precision.

Used by the `trt` backend (engines built on demand, at the first batch of a size the
cached engines do not cover) and by `tsf-trt engines build` (ahead of time). The
TensorRT builder and the platform (TensorRT version, GPU) are passed in, so the cache
logic — keys, staleness, corrupt files, profile widening, FP16 variants — is tested
on CPU with a fake builder. Each graph is checked for the role the manifest gives it
(:func:`tsf_trt.export.roles.check_graph_file`) before its engine is looked up or built,
and the role it records is part of the engine key.
"""

from __future__ import annotations

import logging

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tsf_trt.errors import TsfError

from tsf_trt.engines.engine_cache import CorruptEngine, EngineCache, Entry, engine_dir
from tsf_trt.engines.keys import EngineKey, Platform
from tsf_trt.engines.precision import check_precision, graph_precision
from tsf_trt.engines.profiles import DEFAULT_PROFILE, Profile, input_shapes

Reporter = Callable[[str], None]
Builder = Callable[..., bytes]          # build_engine's signature
ProgressFactory = Callable[[str], object]  # description -> a BuildProgress


def log_reporter(message: str) -> None:
    """Engine builds take minutes: their start and end are log lines (tsf_trt.console)."""
    if message.startswith("warning: "):
        _log.warning("%s", message.removeprefix("warning: "))
    else:
        _log.info("%s", message)


_log = logging.getLogger(__name__)


@dataclass
class BuildSettings:
    precision: str = "fp32"
    profile: Profile = field(default_factory=lambda: DEFAULT_PROFILE)
    workspace_gib: float = 8.0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.workspace_gib <= 0:
            raise TsfError(f"--workspace must be positive (GiB), got {self.workspace_gib}")


class EngineManager:
    def __init__(self, export_dir: str | Path, platform: Platform, settings: BuildSettings | None = None, *,
                 builder: Builder | None = None, report: Reporter = log_reporter,
                 progress: ProgressFactory | None = None):
        from tsf_trt.export.manifest import read_manifest
        from tsf_trt.model.config import ModelConfig

        self.export_dir = Path(export_dir)
        self.manifest = read_manifest(self.export_dir)
        self.downsample = ModelConfig.from_dict(self.manifest["model_config"]).downsample
        self.platform = platform
        self.settings = settings or BuildSettings()
        self.cache = EngineCache(engine_dir(self.export_dir, self.manifest.get("model_id", "")))
        if builder is None:
            from tsf_trt.engines.build import build_engine as builder
        self.builder = builder
        self.report = report
        self.progress = progress
        self._sources: dict[str, tuple[Path, str]] = {}
        self._roles: dict[str, str] = {}

    # -- graphs ---------------------------------------------------------------------------
    @property
    def graphs(self) -> list[str]:
        return list(self.manifest["graphs"])

    def decoder_graph(self, target: int) -> str:
        """The per-target decoder with baked kernels when the export has it (the TensorRT
        path: plain convolutions), else the code-input decoder."""
        from tsf_trt.export.manifest import decoder_graph

        return decoder_graph(self.manifest, target)

    def precision_of(self, graph: str) -> str:
        return graph_precision(self.settings.precision, graph)

    def role(self, graph: str) -> str:
        """The role `graph`'s ONNX file records, once checked against the manifest (read
        from the exported file: an FP16 variant keeps no metadata)."""
        if graph not in self._roles:
            from tsf_trt.export.roles import check_graph_file

            self._roles[graph] = check_graph_file(self.export_dir, self.manifest, graph)
        return self._roles[graph]

    def source(self, graph: str) -> tuple[Path, str]:
        """The ONNX file built for `graph` at this precision and its SHA-256 (the FP16
        variant is made once, beside the engines); the graph is checked first."""
        if graph not in self._sources:
            from tsf_trt.export.manifest import graph_path

            self.role(graph)
            path, sha = graph_path(self.export_dir, self.manifest, graph), self.manifest["graphs"][graph]["sha256"]
            if self.precision_of(graph) == "fp16":
                from tsf_trt.files.fileformat import file_sha256

                from tsf_trt.engines.fp16 import fp16_variant

                path, made = fp16_variant(path, sha, self.cache.directory / "fp16")
                if made:
                    self.report(f"wrote the FP16 variant of {graph}: {made}")
                sha = file_sha256(path)
            self._sources[graph] = (path, sha)
        return self._sources[graph]

    def key(self, graph: str, profile: Profile | None = None) -> EngineKey:
        return EngineKey(graph, self.source(graph)[1], self.precision_of(graph), self.platform,
                         profile or self.settings.profile, role=self.role(graph))

    # -- engines --------------------------------------------------------------------------
    def engine(self, graph: str, batch: int, height: int, width: int) -> Entry:
        """A checked engine for `graph` that accepts `batch` slices of `height` x `width`
        (padded sizes): from the cache, or built now with the configured profile widened
        just enough to cover the request."""
        wanted = self.key(graph)
        found = self._find(wanted, batch, height, width)
        if found is not None:
            return found
        with self.cache.lock(wanted):  # another process may be building it: wait, then look again
            found = self._find(wanted, batch, height, width)
            if found is not None:
                return found
            return self._build(self.key(graph, wanted.profile.widened(batch, height, width)))

    def build(self, graph: str, *, force: bool = False) -> tuple[Entry, bool]:
        """The engine for the configured profile: (entry, whether it was built now)."""
        key = self.key(graph)
        with self.cache.lock(key):
            if not force:
                try:
                    entry = self.cache.lookup(key)
                except CorruptEngine as exc:
                    self.report(f"warning: {exc}")
                    entry = None
                if entry is not None:
                    return entry, False
            return self._build(key), True

    def discard(self, entry: Entry, problem: str) -> None:
        """TensorRT refused a stored engine (after its checksum matched): delete it, say so."""
        self.cache.remove(entry.key)
        self.report(f"warning: {entry.path}: {problem}; it was deleted and will be rebuilt")

    def _find(self, wanted: EngineKey, batch: int, height: int, width: int) -> Entry | None:
        while True:
            try:
                return self.cache.find(wanted, batch, height, width)
            except CorruptEngine as exc:  # removed by the cache: look again, then build
                self.report(f"warning: {exc}")

    def _build(self, key: EngineKey) -> Entry:
        source, _ = self.source(key.graph)
        shapes = input_shapes(key.graph, self.manifest["graphs"][key.graph]["inputs"], key.profile, self.downsample)
        where = f"TensorRT {key.platform.tensorrt} on {key.platform.gpu}"
        self.report(f"building the {key.graph} engine ({key.precision}; {key.profile.describe()}; {where}): "
                    f"minutes, once; cached in {self.cache.directory}")
        progress = self.progress(f"{key.graph} ({key.precision})") if self.progress else None
        start = time.perf_counter()
        data = self.builder(source, shapes, precision=key.precision, workspace_gib=self.settings.workspace_gib,
                            timing_cache=self.cache.timing_cache_path(key.platform), progress=progress)
        seconds = time.perf_counter() - start
        entry = self.cache.store(key, data, {
            "source": str(source), "input_shapes": {k: [list(s) for s in v] for k, v in shapes.items()},
            "workspace_gib": self.settings.workspace_gib, "build_seconds": round(seconds, 1)})
        stale = self.cache.prune_stale(key)
        self.report(f"built the {key.graph} engine in {seconds:.0f} s ({len(data) / 2**20:.0f} MiB)"
                    + (f"; removed {len(stale)} stale engine(s)" if stale else ""))
        return entry
