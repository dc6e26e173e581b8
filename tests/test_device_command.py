"""scripts/gpu_check_plan.py's device command, rehearsed here: the exact command on a copy of the
tree the device tool sends, in a venv that sees only what the GPU machine has, offline.

Why a rehearsal: on the GPU machine nothing of the project is installed and nothing can be
fetched, and the first call there may be the only one. The venv (this interpreter's Python, 3.11 in
CI's image; the device's is 3.12) sees, through a .pth file, a folder of links to the packages
installed here that scripts/device_packages.txt names, with what they need here, and nothing else:
not tsf-trt, not nibabel or onnxslim (the command installs those from the carried wheels), not
openvino or isal (absent there). The wheels are repacked from the distributions installed here,
the versions `--wheels` downloads (no network in tests); the command's `pip --no-index` installs
them and the checkout as it would there. Then the command runs the check with GPU_CHECK_ARGS
--dry-run. 15-25 s on 2 cores (a copy of the tree, a venv, an editable build, the whole dry run):
marked slow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import gpu_check
from scripts import gpu_check_plan as plan

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tree_copy(dest: Path) -> Path:
    """What the device tool sends: tracked files and untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git and a checkout: the device tool sends git's view of the tree")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def device_view(dest: Path) -> Path:
    """Links to the installed distributions the device has (and what they need here, e.g. Python
    3.11's backports), less tsf-trt and the carried ones."""
    carried = set(plan.carried())
    keep, todo = set(), sorted(plan.device_packages() | set(plan.carried(None)) - carried)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in keep or name in carried or name == "tsf-trt":
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        keep.add(name)
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
    dest.mkdir()
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in keep:
            continue
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (dest / top).exists():
                (dest / top).symlink_to(dist.locate_file(top))
    return dest


def repack(name: str, folder: Path) -> Path:
    """The installed distribution `name` as the wheel it was installed from (its files, a fresh RECORD)."""
    dist = metadata.distribution(name)
    info = next(f for f in dist.files if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tag = next(line.split(": ", 1)[1] for line in info.read_text().splitlines() if line.startswith("Tag: "))
    record = f"{info.parent.as_posix()}/RECORD"
    wheel = folder / f"{canonicalize_name(name).replace('-', '_')}-{dist.version}-{tag}.whl"
    rows = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts or f.as_posix() == record or \
                    f.name in ("INSTALLER", "REQUESTED", "direct_url.json"):
                continue  # scripts (pip makes them from entry_points.txt), caches, what pip writes itself
            data = Path(dist.locate_file(f)).read_bytes()
            zf.writestr(f.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{f.as_posix()},sha256={digest},{len(data)}")
        zf.writestr(record, "\n".join([*rows, f"{record},,"]) + "\n")
    return wheel


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    for name in ("pip", "setuptools"):  # the GPU machine has both; the command runs them from the view
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"needs {name} installed here (the rehearsal's venv takes it from this environment)")
    tmp = tmp_path_factory.mktemp("device")
    tree = tree_copy(tmp / "tree")
    (tree / plan.CARRY_DIR).mkdir()
    wheels = [repack(name, tree / plan.CARRY_DIR) for name in plan.carried()]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "device-view.pth").write_text(f"{device_view(tmp / 'view')}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OUT=str(tmp / "out"),
               GPU_CHECK_ARGS="--dry-run", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    (tmp / "out").mkdir()
    done = subprocess.run(["bash", "-c", plan.DEVICE_COMMAND], cwd=tree, env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    return {"done": done, "tree": tree, "site": site, "out": tmp / "out", "wheels": wheels}


def test_the_device_command_installs_offline_and_runs_the_dry_run(rehearsal):
    done, out = rehearsal["done"], rehearsal["out"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    status = {step["name"]: step["status"] for step in report["steps"]}
    assert status == {name if name != "phantom" else f"phantom {gpu_check.DRY_SHAPE_XYZ}":
                      "skipped" if trt else "passed" for name, _, trt in gpu_check.PLAN}, \
        [(s["name"], s["error"]) for s in report["steps"] if s["status"] != "passed"]
    steps = {step["name"]: step for step in report["steps"]}
    # The mapped packages came from the copy's install, not from the checkout the tests run in.
    engines = Path(steps["versions"]["details"]["imported_from"]["tsf_trt.engines"])
    assert engines == (rehearsal["tree"] / "engines").resolve()
    # Collection of every gpu-marked file worked after the install (tests/test_engines.py among them).
    tests = steps["gpu-marked tests"]["details"]
    assert "tests/test_engines.py" in tests["command"] and "skipped" in tests["summary"], tests
    assert "error" not in tests["summary"]
    # The carried wheels were installed into the venv; the device lacks isal, which is only noted.
    assert {(rehearsal["site"] / name).is_dir() for name in ("nibabel", "onnxslim")} == {True}
    rows = {canonicalize_name(Requirement(r["requirement"]).name): r
            for r in steps["versions the project needs"]["details"]["requirements"]}
    assert rows["isal"]["installed"] is None and rows["isal"]["note"] and rows["nibabel"]["ok"]
    log = (out / "gpu_check.log").read_text()
    assert "The first GPU call, planned" in log and "report:" in log


def test_the_carried_wheels_fit(rehearsal):
    """Repacked from the same versions `--wheels` downloads: both pure Python, and under the limit
    (the downloaded ones measured 3.4 MiB; a repack differs only by its compression)."""
    names = {w.name.split("-")[0] for w in rehearsal["wheels"]}
    assert names == {"nibabel", "onnxslim"} and all(w.name.endswith("-py3-none-any.whl") for w in rehearsal["wheels"])
    assert sum(w.stat().st_size for w in rehearsal["wheels"]) <= plan.CARRY_LIMIT
