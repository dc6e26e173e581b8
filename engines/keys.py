"""What identifies an engine: everything that, if it changed, makes an engine unusable or wrong.

An engine is compiled for one graph, one TensorRT version, one GPU model and compute
capability, one precision and one optimisation profile, and it plays one role (encoder,
fusion, decoder, decoder_<target>: the role the graph records in its own metadata, checked
by tsf_trt.export.roles, so an engine is never reused under another role even where the
manifest's names were edited). The key holds all of them; the
cache stores it beside each engine and loads an engine only when every field matches,
so a stale engine (the graph was re-exported) or a foreign one (another GPU, another
TensorRT) is rebuilt, never loaded. Pure Python: tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tsf_trt.engines.profiles import Profile

#: Bump when the way engines are built changes (builder settings, the FP16 pass), so
#: that engines from an older tsf-trt are rebuilt rather than trusted. 2: TF32 cleared for FP16 graphs too.
BUILDER_VERSION = 2


@dataclass(frozen=True)
class Platform:
    """The TensorRT version and the GPU an engine is built on and for."""

    tensorrt: str
    gpu: str
    compute_capability: str   # "9.0"

    def slug(self) -> str:
        """Short file-name-safe id (timing caches are per TensorRT version and GPU, too)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EngineKey:
    graph: str                  # manifest name: encoder, fusion, decoder, decoder_t2, ...
    graph_sha256: str           # of the ONNX file actually built (the FP16 variant for fp16)
    precision: str              # "fp32" or "fp16", as built
    platform: Platform
    profile: Profile
    builder: int = field(default=BUILDER_VERSION)
    role: str = ""              # what the graph records it is ("" in engines of an older tsf-trt)

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "graph_sha256": self.graph_sha256, "precision": self.precision,
                "platform": asdict(self.platform), "profile": self.profile.to_dict(), "builder": self.builder,
                "role": self.role}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        return cls(str(data["graph"]), str(data["graph_sha256"]), str(data["precision"]),
                   Platform(**data["platform"]), Profile.from_dict(data["profile"]), int(data["builder"]),
                   str(data.get("role", "")))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        """File name without extension: readable part + enough of the digest to be unique."""
        return f"{self.graph}.{self.precision}.{self.digest()[:16]}"

    def same_build(self, other: EngineKey) -> bool:
        """Same graph, role, precision, platform and builder: only the profile may differ."""
        return (self.graph, self.role, self.graph_sha256, self.precision, self.platform, self.builder) == \
               (other.graph, other.role, other.graph_sha256, other.precision, other.platform, other.builder)

    def stale_for(self, other: EngineKey) -> bool:
        """Same graph name, precision and platform, but another graph file, role or builder:
        this entry can never be used again and may be deleted. (A foreign platform's engine
        is kept: an export folder may be shared by machines with different GPUs.)"""
        return ((self.graph, self.precision, self.platform) == (other.graph, other.precision, other.platform)
                and (self.graph_sha256, self.builder, self.role) != (other.graph_sha256, other.builder, other.role))
