"""What each graph of an export must be, and the one check that it is.

manifest.json maps a role (encoder, fusion, decoder, decoder_<target>) to a file, and
its hashes only prove that each file is unmodified, not that it is the graph of that
role: swapping two entries moves the hashes with them, so a swapped encoder reached ONNX
Runtime as a decoder, and a swapped per-target decoder silently synthesised the wrong
sequence. Editing `model_config` changed the sizes a runtime assumes without touching a
graph. So every exported graph records what it is in its own ONNX metadata
(`metadata_props`, written by :mod:`tsf_trt.export.onnx_export`), and every runtime calls
:func:`check_graph` before it uses a graph: the recorded role, target, model id and
config hash against the manifest, then the graph's inputs and outputs against the rules
of its role, which are fixed here by the role name, never taken from what the manifest
declares.

Exports written before this check have no graph metadata: they are refused with "export
again" (the export cache, :func:`tsf_trt.export.cached_exports.ensure_export`, does that by itself).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import ModelError
from tsf_trt.model.config import ModelConfig
from tsf_trt.version import __version__

from tsf_trt.export.manifest import MANIFEST, graph_path, manifest_config

ROLE_KEY = "tsf_trt.graph"              # the role: encoder, fusion, decoder, decoder_t2, ...
TARGET_KEY = "tsf_trt.target"           # baked decoders only: the sequence name they synthesise
MODEL_ID_KEY = "tsf_trt.model_id"       # manifest.json's model_id at export time
CONFIG_KEY = "tsf_trt.config_sha256"    # config_sha256 of the model config at export time
VERSION_KEY = "tsf_trt.version"         # the tsf-trt that wrote the graph (informative only)

BAKED_PREFIX = "decoder_"
OLD_EXPORT = "written by an older tsf-trt without graph metadata: export again"

#: A tensor's dims: an int is a static size, None a dynamic (or unknown) one.
Dims = list[int | None]
Signature = dict[str, Dims]


def config_sha256(config: ModelConfig) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of `config.to_dict()`."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def role_target(role: str) -> str | None:
    """The target of a baked decoder role (decoder_t2 -> t2), None for the others;
    ValueError for a name that is no role of this tsf-trt."""
    if role in ("encoder", "fusion", "decoder"):
        return None
    target = role[len(BAKED_PREFIX):] if role.startswith(BAKED_PREFIX) else ""
    if target not in sequences.NAMES:
        raise ValueError(role)
    return target


def graph_metadata(role: str, model_id: str, config: ModelConfig) -> dict[str, str]:
    """What the export writes into each graph's `metadata_props`."""
    meta = {ROLE_KEY: role, MODEL_ID_KEY: model_id, CONFIG_KEY: config_sha256(config), VERSION_KEY: __version__}
    target = role_target(role)
    if target:
        meta[TARGET_KEY] = target
    return meta


def expected_signature(role: str, config: ModelConfig) -> tuple[Signature, Signature]:
    """(inputs, outputs) that a graph of `role` must have: names, ranks and the static
    sizes the runtimes rely on (channels, code lengths, ω's length)."""
    image: Dims = [None, config.in_channels, None, None]
    feats: Dims = [None, config.features, None, None]
    if role == "encoder":
        return {"image": image}, {"features": feats}
    if role == "fusion":
        n = config.n_sequences
        return ({"features": [None, n, config.features, None, None], "task_code": [1, config.task_dim]},
                {"fused": feats, "fused_avg": feats, "weights": [n]})
    if role == "decoder":
        return {"features": feats, "target_code": [1, config.style_dim]}, {"image": image}
    return {"features": feats}, {"image": image}  # a baked decoder (role_target checked the name)


def looks_like(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> str | None:
    """Which graph a signature's tensor names belong to, as words for a message; None if none."""
    names = (set(inputs), set(outputs))
    for words, (want_in, want_out) in {"the encoder": ({"image"}, {"features"}),
                                       "the fusion": ({"features", "task_code"}, {"fused", "fused_avg", "weights"}),
                                       "the decoder": ({"features", "target_code"}, {"image"}),
                                       "a per-target decoder": ({"features"}, {"image"})}.items():
        if names == (want_in, want_out):
            return f"{words} graph"
    return None


def _dim(value: Any) -> int | None:
    """A stored dim as a static size or None (ONNX writes 0 or a name for dynamic ones)."""
    return value if isinstance(value, int) and value > 0 else None


def normalise(signature: Mapping[str, Sequence[Any]]) -> Signature:
    return {name: [_dim(d) for d in dims] for name, dims in signature.items()}


def _describe(signature: Signature) -> str:
    return ", ".join(f"{name}[{','.join('?' if d is None else str(d) for d in dims)}]"
                     for name, dims in signature.items()) or "none"


def _fits(actual: Signature, expected: Signature) -> bool:
    if set(actual) != set(expected):
        return False
    for name, want in expected.items():
        got = actual[name]
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            return False
    return True


def check_graph(directory: str | Path, manifest: Mapping[str, Any], role: str, inputs: Mapping[str, Sequence[Any]],
                outputs: Mapping[str, Sequence[Any]], metadata: Mapping[str, str]) -> str:
    """Raise ModelError unless the graph the manifest lists as `role` is that role's graph
    of this model; `inputs`/`outputs`/`metadata` are what the graph itself holds (from an
    ORT session or the ONNX file). Returns the role the graph records."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        target = role_target(role)
    except ValueError:
        raise ModelError(manifest_path, f"lists a graph '{role}' that this tsf-trt does not know: export again") \
            from None
    path = graph_path(directory, manifest, role)
    file = path.name
    recorded = metadata.get(ROLE_KEY)
    if recorded is None:
        raise ModelError(path, OLD_EXPORT)
    if recorded != role:
        raise ModelError(manifest_path, f"lists {file} as the '{role}' graph, but {file} is the '{recorded}' graph "
                                        "(its metadata says so): export again")
    if target and metadata.get(TARGET_KEY) != target:
        raise ModelError(path, f"synthesises '{metadata.get(TARGET_KEY)}' (its metadata says so), not '{target}' "
                               f"as {MANIFEST} lists it: export again")
    model_id = str(manifest.get("model_id", ""))
    if metadata.get(MODEL_ID_KEY) != model_id:
        raise ModelError(manifest_path, f"model_id '{model_id}' differs from '{metadata.get(MODEL_ID_KEY)}' recorded "
                                        f"in {file}: export again")
    config = manifest_config(directory, manifest)
    if metadata.get(CONFIG_KEY) != config_sha256(config):
        raise ModelError(manifest_path, f"model_config differs from the one {file} was exported with (edited?): "
                                        "export again")
    actual_in, actual_out = normalise(inputs), normalise(outputs)
    want_in, want_out = expected_signature(role, config)
    if not (_fits(actual_in, want_in) and _fits(actual_out, want_out)):
        actual = looks_like(actual_in, actual_out)
        hint = f"; it looks like {actual}" if actual else ""
        raise ModelError(path, f"is not a '{role}' graph: it maps {_describe(actual_in)} -> {_describe(actual_out)}, "
                               f"a '{role}' graph maps {_describe(want_in)} -> {_describe(want_out)}{hint}: "
                               "export again")
    entry = manifest["graphs"][role]
    if (normalise(entry.get("inputs", {})), normalise(entry.get("outputs", {}))) != (actual_in, actual_out):
        raise ModelError(manifest_path, f"declares other inputs or outputs for '{role}' than {file} has: "
                                        "export again")
    return recorded


# -- reading what a graph holds ---------------------------------------------------------------
def session_signature(session: Any) -> tuple[Signature, Signature, dict[str, str]]:
    """(inputs, outputs, metadata) of an ONNX Runtime session: nothing read from disk."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return ({i.name: list(i.shape) for i in session.get_inputs()},
            {o.name: list(o.shape) for o in session.get_outputs()}, meta)


def onnx_signature(path: str | Path) -> tuple[Signature, Signature, dict[str, str]]:
    """(inputs, outputs, metadata) of an ONNX file, its external weights (if any) not read."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's own errors for a file that is not ONNX
        raise ModelError(path, f"not a readable ONNX graph ({str(exc).splitlines()[0] if str(exc) else exc!r}): "
                               "export again") from None

    def dims(value) -> list[int | str | None]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in model.graph.input}, {v.name: dims(v) for v in model.graph.output},
            {p.key: p.value for p in model.metadata_props})


def check_graph_file(directory: str | Path, manifest: Mapping[str, Any], role: str) -> str:
    """:func:`check_graph` on the ONNX file the manifest lists as `role` (the TensorRT path,
    before an engine is built or a cached one is used). Returns the recorded role."""
    path = graph_path(directory, manifest, role)
    return check_graph(directory, manifest, role, *onnx_signature(path))


def check_export(directory: str | Path, manifest: Mapping[str, Any]) -> None:
    """Every graph of an export checked (what the export cache does before reusing one)."""
    for role in manifest.get("graphs", {}):
        check_graph_file(directory, manifest, role)
