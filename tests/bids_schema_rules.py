"""The BIDS schema's rules applied to files, for tests/test_bids_schema.py: the schema's expression
language (`evaluate`, `holds`; its semantics are the schema's meta.expression_tests, which the tests
hold it to), metadata values (`valid`), .bidsignore as the BIDS validator reads it (`ignored`), and a
file's context (`file_context`: what the schema's selectors and checks read). Needs bidsschematools.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import nibabel as nib
from bidsschematools import expressions
from bidsschematools.schema import load_schema

from tsf_trt.inputs.bids import parse_name

SCHEMA = load_schema()
SCHEMA_DICT = SCHEMA.to_dict()  # the "schema" of a context


def truthy(value: Any) -> bool:
    """The language's truth (JavaScript's: null, false, 0 and "" are false; an empty array is true)."""
    return value is not None and value is not False and value != 0 and value != "" or isinstance(value, list)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sorted(values: Any, method: str = "auto") -> Any:
    if not isinstance(values, list):
        return None
    if method == "auto":
        method = "numeric" if all(_number(v) for v in values) else "lexical"
    if method == "lexical":
        return sorted(values, key=str)
    numeric = [k for k, v in enumerate(values) if _number(v) or re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", str(v))]
    ordered = sorted((values[k] for k in numeric), key=float)
    out = list(values)  # the others ("n/a") keep their places
    for k, v in zip(numeric, ordered):
        out[k] = v
    return out


def _extreme(pick, values: Any) -> Any:
    if _number(values):
        return values
    numbers = [v for v in values if _number(v)] if isinstance(values, list) else []
    return pick(numbers) if numbers else None


def type_of(value: Any) -> str:
    for kind, test in (("null", lambda v: v is None), ("boolean", lambda v: isinstance(v, bool)),
                       ("number", _number), ("string", lambda v: isinstance(v, str)),
                       ("array", lambda v: isinstance(v, list)), ("object", lambda v: isinstance(v, dict))):
        if test(value):
            return kind
    raise TypeError(value)


def _unique(values: Any) -> Any:
    if not isinstance(values, list):
        return None
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _intersects(a: Any, b: Any) -> Any:
    if not isinstance(a, list) or not isinstance(b, list):
        return False
    return [v for v in a if v in b] or False


FUNCTIONS = {
    "intersects": _intersects,
    "match": lambda s, p: None if s is None else False if p is None else re.search(p, s) is not None,
    "type": type_of,
    "length": lambda v: len(v) if isinstance(v, (list, str)) else None,
    "count": lambda a, v: a.count(v) if isinstance(a, list) else None,
    "index": lambda a, v: a.index(v) if isinstance(a, list) and v in a else None,
    "sorted": _sorted,
    "allequal": lambda a, b: isinstance(a, list) and isinstance(b, list) and a == b,
    "min": lambda v: None if v is None else _extreme(min, v),
    "max": lambda v: None if v is None else _extreme(max, v),
    "unique": _unique,
    "substr": lambda s, a, b: None if None in (s, a, b) else s[a:b],
}
_ARITHMETIC = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
               "%": lambda a, b: a % b, "**": lambda a, b: a ** b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def evaluate(node: Any, context: dict[str, Any]) -> Any:
    """The value of a parsed schema expression (bidsschematools.expressions.parse) in `context`."""
    ex = expressions
    if isinstance(node, str):
        if node[:1] in "'\"":
            return node[1:-1]
        return {"null": None, "true": True, "false": False}[node] if node in ("null", "true", "false") \
            else context.get(node)
    if _number(node):
        return node
    if isinstance(node, ex.Array):
        return [evaluate(e, context) for e in node.elements]
    if isinstance(node, ex.Object):
        return {}
    if isinstance(node, ex.Property):
        owner = evaluate(node.name, context)
        return owner.get(node.field) if isinstance(owner, dict) else None
    if isinstance(node, ex.Element):
        owner, index = evaluate(node.name, context), evaluate(node.index, context)
        ok = isinstance(owner, (list, str)) and isinstance(index, int) and -len(owner) <= index < len(owner)
        return owner[index] if ok else None
    if isinstance(node, ex.RightOp):
        assert node.op == "!", node
        return not truthy(evaluate(node.rh, context))
    if isinstance(node, ex.Function):
        if node.name == "exists":
            return _exists(*(evaluate(a, context) for a in node.args), context)
        return FUNCTIONS[node.name](*(evaluate(a, context) for a in node.args))
    assert isinstance(node, ex.BinOp), node
    left = evaluate(node.lh, context)
    if node.op == "&&":
        return left if not truthy(left) else evaluate(node.rh, context)
    if node.op == "||":
        return left if truthy(left) else evaluate(node.rh, context)
    right = evaluate(node.rh, context)
    if node.op in ("==", "!="):
        same = left == right and type_of(left) == type_of(right) if None not in (left, right) else left is right
        return same if node.op == "==" else not same
    if node.op == "in":
        return None if not isinstance(right, (dict, list, str)) else left in right
    return None if left is None or right is None else _ARITHMETIC[node.op](left, right)


def _exists(paths: Any, rule: Any, context: dict[str, Any]) -> int:
    """How many of `paths` exist: "dataset" relative to the dataset, "file" to the file's folder."""
    if paths is None or rule is None:
        return 0
    root, here = context["_root"], context["_root"] / context["path"].lstrip("/")
    base = {"dataset": root, "file": here.parent, "subject": root / str(context.get("_subject", ""))}[rule]
    return sum((base / p).exists() for p in ([paths] if isinstance(paths, str) else paths))


@functools.lru_cache(maxsize=None)
def _parsed(expression: str) -> Any:
    return expressions.parse(expression)


def holds(expression: str, context: dict[str, Any]) -> Any:
    return evaluate(_parsed(expression), context)


def valid(value: Any, definition: Any) -> bool:
    """`value` as a metadata definition (objects.metadata: JSON Schema's type, items, enum, anyOf,
    minimum, maximum) allows; "format" is checked where it matters (Sources: BIDS URIs)."""
    kinds = {"string": str, "boolean": bool, "array": list, "object": dict}
    if "anyOf" in definition:
        return any(valid(value, d) for d in definition["anyOf"])
    kind = definition.get("type")
    if kind in ("number", "integer"):
        ok = _number(value) and (kind == "number" or float(value).is_integer())
    else:
        ok = kind is None or isinstance(value, kinds[kind])
    if ok and "enum" in definition:
        ok = value in definition["enum"]
    if ok and _number(value):
        ok = definition.get("minimum", -math.inf) <= value <= definition.get("maximum", math.inf)
    if ok and isinstance(value, list) and "items" in definition:
        ok = all(valid(v, definition["items"]) for v in value)
    return ok


def files(root: Path) -> list[Path]:
    """Every file a validator looks at: not hidden, nor in a hidden folder."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def ignored(relative: str, patterns: list[str]) -> bool:
    """.bidsignore as the BIDS validator reads it (gitignore patterns): a pattern without a slash
    matches a name at any depth, `NAME/` a folder at any depth, one with a slash the path."""
    parts = relative.split("/")
    for pattern in patterns:
        if not pattern or pattern.startswith("#"):
            continue
        if pattern.endswith("/") and "/" not in pattern[:-1]:
            if any(fnmatch.fnmatchcase(p, pattern[:-1]) for p in parts[:-1]):
                return True
        elif "/" not in pattern:
            if any(fnmatch.fnmatchcase(p, pattern) for p in parts):
                return True
        elif fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
            return True
    return False


def header(path: Path) -> dict[str, Any]:
    """The context's nifti_header (the fields the schema's checks read)."""
    img = nib.load(path)
    hdr = img.header
    xyz, t = hdr.get_xyzt_units()
    return {"dim": [int(v) for v in hdr["dim"]], "pixdim": [float(v) for v in hdr["pixdim"]],
            "shape": list(img.shape), "voxel_sizes": [float(v) for v in hdr.get_zooms()],
            "xyzt_units": {"xyz": xyz, "t": t}, "qform_code": int(hdr["qform_code"]),
            "sform_code": int(hdr["sform_code"]), "axis_codes": list(nib.aff2axcodes(img.affine))}


def file_context(path: Path, root: Path) -> dict[str, Any]:
    """A file's context for the schema's rules (schema meta.context): what these checks read."""
    relative = path.relative_to(root).as_posix()
    name = parse_name(path.name)
    entities = dict(name.entities) if name else {}
    datatype = path.parent.name if name and path.parent.name in SCHEMA.objects.datatypes else None
    modality = next((m for m, r in SCHEMA.rules.modalities.items() if datatype in r["datatypes"]), None)
    sidecar_path = path.with_name(path.name.split(".")[0] + ".json")
    is_json = path.name.endswith(".json")
    return {
        "_root": root, "schema": SCHEMA_DICT, "path": "/" + relative, "size": path.stat().st_size,
        "dataset": {"dataset_description": json.loads((root / "dataset_description.json").read_text()),
                    "subjects": {"sub_dirs": sorted(p.name for p in root.glob("sub-*"))},
                    "modalities": ["mri"], "datatypes": ["anat"]},
        "entities": entities, "datatype": datatype, "modality": modality,
        "suffix": name.suffix if name else None, "extension": name.extension if name else None,
        "sidecar": json.loads(sidecar_path.read_text()) if not is_json and sidecar_path.is_file() else {},
        "json": json.loads(path.read_text()) if is_json else None,
        "associations": {},
        "nifti_header": header(path) if path.name.endswith((".nii", ".nii.gz")) else None,
    }


def rules(group: Any):
    """(name, rule) of every rule under a schema group, however deep."""
    for name, rule in group.items():
        if "selectors" in rule:
            yield name, rule
        else:
            yield from rules(rule)


def applies(rule: Any, context: dict[str, Any]) -> bool:
    """Every selector of `rule` holds for the file of `context`."""
    return all(truthy(holds(s, context)) for s in rule["selectors"])


def level_of(field: Any) -> str:
    """A sidecar rule field's level (required, recommended, ...), written bare or with an addendum."""
    return field if isinstance(field, str) else field["level"]
