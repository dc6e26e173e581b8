"""What the first GPU call needs besides the checkout, in one place: the device command, the wheels
to carry, the versions to check on the machine, and the time the call would take.

Why a module of its own: scripts/gpu_check.py runs the steps; this says how they get onto the
machine. The GPU machine (scripts/device_packages.txt) has Python 3.12, PyTorch, ONNX Runtime CPU and
most of the project's dependencies, no TensorRT and no network, and nothing of the project is
installed there: `tsf_trt.engines`, `.export` and `.bench` exist only through pyproject.toml's
package-dir mapping, so the command installs the checkout (editable, offline, with the image's
setuptools, whose version it prints first: pyproject's `license = "MIT"` needs setuptools >= 77;
76.1 refuses it, 77.0.3 builds it, both tried here) before it runs the check. Checked here in a venv
(tests/test_device_command.py), not on a GPU machine: none was lent to this project yet.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES_FILE = Path(__file__).with_name("device_packages.txt")
CARRY_DIR = ".whl"            # ignored by .gitignore: the device tool's `carry` names it
CARRY_LIMIT = 10 << 20        # bytes of wheels beside the tracked files (the tool's limit for all: 64 MiB)
CALL_LIMIT_S = 600            # the device tool's limit for one command (its timeout_s at most)
SESSION_S = 900               # a session's device time, the machine's start, idle time and close included
START_S = 120                 # a machine's start and the tree's transfer ("a minute or more"): a guess
INSTALL_S = 30                # the command's two pip installs: a guess (~6 s here, on 2 cores)
# The device's interpreter, for the markers of what to carry (x86-64 Linux, CPython 3.12.3).
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "platform_machine": "x86_64", "sys_platform": "linux",
              "platform_system": "Linux", "os_name": "posix"}
EXTRAS = ("", "torch")        # the check runs the torch backends and exports graphs (onnxslim)
DEV_NEEDED = ("pytest",)      # of [dev], only what its `gpu-marked tests` step runs
# Base dependencies the device lacks that no step needs: imported on use only, each absence handled.
OPTIONAL = {
    "openvino": "--backend openvino only; doctor reports it missing",
    "isal": "gzip speed-up only: tsf_trt/files/gunzip.py and volume_write.py fall back to zlib",
}

# The one command (device tool: run(command=DEVICE_COMMAND, carry=[CARRY_DIR], timeout_s=CALL_LIMIT_S)),
# from the checkout's root. GPU_CHECK_ARGS adds flags (--compile; the tests' rehearsal: --dry-run).
DEVICE_COMMAND = (
    "set -o pipefail; export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1; "
    "python3 -V; python3 -m pip --version; "
    "python3 -c 'import setuptools; print(\"setuptools\", setuptools.__version__)'; "
    "python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . || exit 1; "
    f"python3 -m pip install -q --no-index --no-deps --no-cache-dir {CARRY_DIR}/*.whl || exit 1; "
    "python3 -m scripts.gpu_check --out \"$OUT\" $GPU_CHECK_ARGS 2>&1 | tee \"$OUT/gpu_check.log\""
)


def device_packages() -> set[str]:
    return {canonicalize_name(line.strip()) for line in PACKAGES_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _applies(req: Requirement, env: dict[str, str] | None, extras: tuple[str, ...]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**(env or {}), "extra": e}) for e in extras)


def project_needs(env: dict[str, str] | None = None) -> list[Requirement]:
    """The requirements of the checkout's pyproject.toml (what the device installs) that the check
    needs (EXTRAS, DEV_NEEDED), markers evaluated for `env` (None: this interpreter)."""
    import tomllib  # Python >= 3.11: here and on the device

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needs = []
    for extra, texts in {"": project["dependencies"], **project.get("optional-dependencies", {})}.items():
        for req in map(Requirement, texts):
            name = canonicalize_name(req.name)
            if name != "tsf-trt" and (extra in EXTRAS or extra == "dev" and name in DEV_NEEDED) and \
                    _applies(req, env, ("",)):
                needs.append(req)
    return needs


def walk(env: dict[str, str] | None = None) -> list[tuple[str, Requirement]]:
    """(who requires it, requirement): the project's needs, then the requirements of each one the
    device lacks (installed there with --no-deps), recursively; what the device has is its own."""
    have, seen = device_packages(), set()
    todo = [("tsf-trt", req) for req in project_needs(env)]
    out = []
    while todo:
        parent, req = todo.pop(0)
        out.append((parent, req))
        name = canonicalize_name(req.name)
        if name in have or name in seen or name in OPTIONAL:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo += [(name, r) for r in map(Requirement, dist.requires or []) if _applies(r, env, ("",))]
    return out


def carried(env: dict[str, str] | None = DEVICE_ENV) -> dict[str, str]:
    """The distributions to carry ({name: the version installed here}): what the check needs and
    the device lacks, with what those need, less OPTIONAL."""
    have, out = device_packages(), {}
    for _, req in walk(env):
        name = canonicalize_name(req.name)
        if name not in have and name not in OPTIONAL and name not in out:
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                sys.exit(f"{name} is not installed here, so its version to carry is unknown: pip install -e '.[dev]'")
    return dict(sorted(out.items()))


def check_requirements() -> dict:
    """A gpu_check step: every requirement of walk() against what is installed here (on the device:
    what the image has), failed on a missing or out-of-range one (OPTIONAL ones: noted only)."""
    rows, problems = [], []
    for parent, req in walk(None):
        name = canonicalize_name(req.name)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        ok = version is not None and req.specifier.contains(version, prereleases=True)
        note = None if ok else OPTIONAL.get(name)
        rows.append({"required_by": parent, "requirement": str(req), "installed": version, "ok": ok, "note": note})
        if not ok and note is None:
            problems.append(f"{req} (by {parent}): {'missing' if version is None else version}")
    return {"requirements": rows, "failed": bool(problems), "error": "; ".join(problems) or None}


@functools.cache
def _owners() -> dict[str, list[str]]:
    """Top-level module -> distributions (read once: gpu_check rewrites its report after every step)."""
    return metadata.packages_distributions()


def imported_distributions() -> list[str]:
    """The distributions of every module imported so far (the report's record of what a run needed)."""
    owners = _owners()
    return sorted({canonicalize_name(d) for name in list(sys.modules) for d in owners.get(name.partition(".")[0], [])})


def download(folder: Path) -> int:
    """`pip download` of carried() for the device's Python into `folder`, here (PyPI); 1 when the
    wheels there exceed CARRY_LIMIT."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    f"--python-version={DEVICE_ENV['python_version']}", "--implementation=cp", *platforms,
                    "-d", str(folder), *(f"{n}=={v}" for n, v in carried().items())], check=True)
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print("\n".join(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}" for w in wheels))
    print(f"{total / 2**20:7.2f} MiB in all (limit {CARRY_LIMIT / 2**20:g} MiB)")
    return 0 if total <= CARRY_LIMIT else 1


def time_plan(steps: list[tuple[str, float, bool]], budget_s: float) -> dict:
    """The call's time: `steps` are (name, estimated s on the device, needs TensorRT), guesses
    (no GPU run yet); the device has no TensorRT, so those steps skip at once there."""
    check = sum(s for _, s, trt in steps if not trt)
    with_trt = sum(s for _, s, _ in steps)
    call = INSTALL_S + min(check, budget_s)
    lines = ["The first GPU call, planned (estimated seconds: guesses, no GPU run yet)",
             f"  ~{START_S:>4} s  machine start and transfer (device time, before the call)",
             f"  ~{INSTALL_S:>4} s  install: pip -e . and the carried wheels"]
    lines += [f"  ~{s:>4.0f} s  {name}{' (needs TensorRT: skipped without it)' if trt else ''}"
              for name, s, trt in steps]
    lines += [(f"  the check: ~{check:.0f} s without TensorRT (the device's case), ~{with_trt:.0f} s with it; "
               f"--budget {budget_s:.0f} s: a step that would start with less left than its estimate is skipped"),
              (f"  the call: ~{call:.0f} s (~{INSTALL_S + budget_s:.0f} s when the budget binds) of the "
               f"{CALL_LIMIT_S} s call limit"),
              (f"  device time: ~{START_S + call:.0f} s (~{START_S + INSTALL_S + budget_s:.0f} s) of the session's "
               f"{SESSION_S} s")]
    return {"text": "\n".join(lines), "check_s": check, "check_with_trt_s": with_trt, "call_s": call,
            "call_max_s": INSTALL_S + budget_s, "device_s": START_S + call}


def usage() -> str:
    """What to run: the wheels, then the device tool's call."""
    return (f"here: python -m scripts.gpu_check --wheels {CARRY_DIR}   # {', '.join(carried())}, for Python "
            f"{DEVICE_ENV['python_version']}\nthen the device tool: run(carry=['{CARRY_DIR}'], "
            f"timeout_s={CALL_LIMIT_S}, command=<the line below>)\n{DEVICE_COMMAND}")
