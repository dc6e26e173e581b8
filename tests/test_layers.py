"""The layers of docs/architecture.md, checked against the code: every import of a tsf-trt module
(at the top of a file or inside a function) points to its own package or to a lower layer, and no
modules import each other in a loop. A new module is placed by adding its package here and to the
architecture page; the test fails for a module of no layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where each installed package's sources are (pyproject.toml, [tool.setuptools] package-dir).
SOURCES = {"tsf_trt": "tsf_trt", "tsf_trt.train": "train", "tsf_trt.export": "export",
           "tsf_trt.engines": "engines", "tsf_trt.bench": "bench"}
#: Bottom up, as docs/architecture.md draws them; one line is one layer.
LAYERS = [
    ["tsf_trt.version", "tsf_trt.errors"],
    ["tsf_trt.sequences", "tsf_trt.metrics", "tsf_trt.machine"],
    ["tsf_trt.console", "tsf_trt.files"],
    ["tsf_trt.bundled", "tsf_trt.model", "tsf_trt.phantoms", "tsf_trt.uncertainty"],
    ["tsf_trt.export"],
    ["tsf_trt.engines"],
    ["tsf_trt.backends"],
    ["tsf_trt.synthesis"],
    ["tsf_trt.inputs"],
    ["tsf_trt.runs"],
    ["tsf_trt.evaluation", "tsf_trt.train", "tsf_trt.bench"],
    ["tsf_trt.doctor"],
    ["tsf_trt.cli", "tsf_trt"],  # tsf_trt: the package's face (its __init__)
    ["tsf_trt.__main__"],
]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the package or module the layer names) of `module`: the longest name that holds it."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > len(best[1]):
                    best = (index, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The tsf-trt modules `module` imports, wherever in the file (a name imported from a package
    counts as that submodule when it is one)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            if not name or not name.startswith("tsf_trt"):
                continue
            for alias in node.names:
                out.add(f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tsf_trt"))
    return {m for m in out if m in known and m != module}


def test_every_import_points_down_or_inside_its_package():
    found = modules()
    known = set(found)
    wrong = []
    for module, path in found.items():
        here, home = layer_of(module)
        for other in imports(module, path, known):
            there, other_home = layer_of(other)
            if there > here or (there == here and other_home != home):
                wrong.append(f"{module} -> {other} ({home} is layer {here}, {other_home} layer {there})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_module_imports_itself_through_others():
    found = modules()
    known = set(found)
    graph = {m: imports(m, p, known) - {"tsf_trt"} for m, p in found.items()}
    state: dict[str, int] = {}
    loops = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                loops.append(" -> ".join(trail[trail.index(other):] + [module, other]) if other in trail
                             else f"{module} -> {other}")
            elif other not in state:
                visit(other, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_the_layers_name_what_exists():
    """Every name in LAYERS is a module or package that exists (a renamed one fails here)."""
    found = modules()
    missing = [name for names in LAYERS for name in names if name not in found]
    assert not missing, missing
