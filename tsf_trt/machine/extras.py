"""Which optional part of tsf-trt a feature needs, and the one command that installs it here.

The base install is the runtime (ONNX Runtime, OpenVINO, NIfTI I/O, the CLI): enough to run an
export and the bundled demo. PyTorch is the `torch` extra, for training, export, the torch
backends and importing checkpoints; a deployment image with TensorRT or ONNX Runtime then
carries no PyTorch (docs/getting-started.md, "Set up").

tsf-trt is not on a package index, so `pip install 'tsf-trt[torch]'` works nowhere: the command
depends on how this copy was installed (:func:`how_installed`, from the distribution's
direct_url.json, PEP 610): from a checkout (`pip install -e .`, or run from its folder) the
checkout again with the extra; from a wheel or a folder the same file with the extra, or where it
is gone the extra's own requirements; inside the container image (container/Dockerfile installs
into /opt/tsf-trt) nothing can be added, so the hint says where the extra is. :func:`install_command`
is the one place every missing-extra message takes its command from.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from tsf_trt.errors import TsfError

#: The container image's environment (container/Dockerfile: `python3 -m venv /opt/tsf-trt`).
CONTAINER_PREFIX = Path("/opt/tsf-trt")
#: Where the GPU extras' TensorRT libraries come from (pyproject.toml, the gpu-cu12/gpu-cu13 extras).
NVIDIA_INDEX = "https://pypi.nvidia.com"
#: Top-level modules that come only with an extra -> the extra (torchvision: no extra, for --lpips).
_EXTRA_OF = {"torch": "torch", "safetensors": "torch", "onnxslim": "torch", "nncf": "int8",
             "torchvision": None}


@dataclass(frozen=True)
class Install:
    """How this copy of tsf-trt was installed: `kind` is checkout (editable, or run from a
    checkout's folder), wheel (an archive file), folder (a non-editable install of a folder), vcs,
    container, or index (no record of where it came from: a package index, or an installer that
    writes none); `location` the checkout, file, folder or repository URL; `requirements` the
    distribution's Requires-Dist lines (each extra's own packages, for when `location` is gone)."""

    kind: str
    location: str | None = None
    requirements: tuple[str, ...] = field(default=(), compare=False)
    pip: str = "pip"


def read_install(direct_url: dict | None, package_dir: Path, prefix: Path, requirements: tuple[str, ...] = (),
                 pip: str = "pip") -> Install:
    """The Install of a copy whose package is `package_dir`, in the environment `prefix`, with its
    distribution's PEP 610 record `direct_url` (None when it wrote none)."""
    def made(kind: str, location: str | None = None) -> Install:
        return Install(kind, location, requirements, pip)

    if prefix == CONTAINER_PREFIX:
        return made("container")
    info = direct_url or {}
    url = str(info.get("url", ""))
    local = unquote(urlparse(url).path) if url.startswith("file:") else None
    if info.get("dir_info", {}).get("editable") and local:
        return made("checkout", local)
    checkout = package_dir.parent
    if _is_checkout(checkout):
        return made("checkout", str(checkout))  # run from a checkout's folder, installed or not
    if "archive_info" in info and local:
        return made("wheel", local)
    if "dir_info" in info and local:
        return made("folder", local)
    if "vcs_info" in info:
        vcs = info["vcs_info"]
        return made("vcs", f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}".rstrip("@"))
    return made("index")


def _is_checkout(folder: Path) -> bool:
    """`folder` is a checkout of tsf-trt: its pyproject.toml names the project."""
    try:
        return 'name = "tsf-trt"' in (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False


def install_command(extra: str, install: Install | None = None) -> str:
    """The command that installs tsf-trt's `extra` (torch, int8, gpu-cu12, ...) for this copy."""
    how = install or how_installed()
    pip = how.pip
    index = f" --extra-index-url {NVIDIA_INDEX}" if extra.startswith("gpu") else ""
    if how.kind == "container":
        return (f"this container image has no [{extra}] extra: use it outside the image (from a checkout: "
                f"pip install -e '.[{extra}]')" + (f", or build the image with --build-arg VARIANT={extra} "
                                                   "(container/Dockerfile)" if extra.startswith("gpu-") else ""))
    if how.kind == "checkout" and how.location:
        return f"{pip} install -e {shlex.quote(f'{how.location}[{extra}]')}{index}"
    if how.kind in ("wheel", "folder") and how.location:
        if Path(how.location).exists():
            return f"{pip} install {shlex.quote(f'{how.location}[{extra}]')}{index}"
        wanted = extra_requirements(extra, how.requirements)
        if wanted:
            return f"{pip} install {' '.join(shlex.quote(r) for r in wanted)}{index}"
    if how.kind == "vcs" and how.location:
        return f"{pip} install {shlex.quote(f'tsf-trt[{extra}] @ {how.location}')}{index}"
    return f"{pip} install 'tsf-trt[{extra}]'{index}"


def extra_requirements(extra: str, requirements: tuple[str, ...]) -> list[str]:
    """The packages of `extra` from Requires-Dist lines (`torch>=2.2; extra == "torch"`), an extra
    that names another (`tsf-trt[gpu-cu12]; extra == "gpu"`) followed."""
    found: list[str] = []
    for line in requirements:
        spec, _, marker = line.partition(";")
        if marker.replace(" ", "").replace("'", '"') != f'extra=="{extra}"':
            continue
        spec = spec.strip()
        if spec.startswith("tsf-trt[") and spec.endswith("]"):
            for inner in spec[len("tsf-trt["):-1].split(","):
                found += extra_requirements(inner.strip(), requirements)
        else:
            found.append(spec)
    return list(dict.fromkeys(found))


@lru_cache(maxsize=1)
def how_installed() -> Install:
    """This copy's Install (read once per process)."""
    import importlib.metadata

    package_dir = Path(__file__).resolve().parents[1]
    direct_url, requirements = None, ()
    for dist in importlib.metadata.distributions(name="tsf-trt"):  # the installed record first, an
        text = dist.read_text("direct_url.json")                      # egg-info in a checkout after it
        requirements = requirements or tuple(dist.requires or ())
        if text:
            try:
                direct_url = json.loads(text)
            except ValueError:
                direct_url = None
            break
    return read_install(direct_url, package_dir, Path(sys.prefix), requirements, _pip())


def _pip() -> str:
    """`pip` where the pip on PATH is this environment's, else this Python's own (`python -m pip`)."""
    found = shutil.which("pip")
    if found and Path(found).absolute().parent == Path(sys.executable).absolute().parent:  # a venv's python is a link
        return "pip"
    return f"{shlex.quote(sys.executable)} -m pip"


def __getattr__(name: str) -> str:
    """TORCH_INSTALL: the torch extra's command here (computed on first use, not at import)."""
    if name == "TORCH_INSTALL":
        return install_command("torch")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_torch() -> bool:
    """PyTorch is installed (found without importing it, which takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses it (tests stand in for a torch-less install so)
        return False


class MissingExtra(TsfError):
    """A feature whose optional dependencies are not installed; the message names the install."""


def missing_extra(what: str, module: str = "torch") -> MissingExtra:
    """The error for `what` (e.g. "tsf-trt train") when `module` is not installed."""
    top = module.split(".")[0]
    return MissingExtra(f"{what} needs {top}, which is not installed: {_install_for(top)}")


def require_torch(what: str) -> None:
    """Raise the one-line MissingExtra for `what` when PyTorch is not installed."""
    if not has_torch():
        raise missing_extra(what)


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The install command when `exc` is a missing optional dependency of tsf-trt, else None."""
    top = (exc.name or "").split(".")[0]
    return _install_for(top) if top in _EXTRA_OF else None


def _install_for(module: str) -> str:
    extra = _EXTRA_OF.get(module, "")
    if extra:
        return install_command(extra)
    if module == "torchvision":
        return "pip install torchvision (only for --lpips)"
    return f"pip install {module}"
