"""The container recipe (container/): static checks that run everywhere, and a build-and-run test.

The static checks read container/Dockerfile, its .dockerignore and container/tsf-trt.def against
pyproject.toml: the entry point is the BIDS App, the user is not root, the cache lies outside the
image, the CPU image holds no torch, everything the recipe copies exists and reaches the build, and
every package reaches the wheel (the image installs a wheel, not an editable checkout).

`test_the_image_runs_as_a_bids_app` builds the image with container/build.sh and runs it on a
phantom BIDS dataset: 2-5 minutes, so it runs only with TSF_TRT_CONTAINER_TEST=1, as root (the
script hands the test folders to uid 4242), where podman can start a container.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "container"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VENV = "/opt/tsf-trt"  # where the Dockerfile installs; the def file's runscript names it too


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


DOCKERFILE = instructions((RECIPE / "Dockerfile").read_text())
FINAL = DOCKERFILE[max(i for i, (k, _) in enumerate(DOCKERFILE) if k == "FROM"):]  # the runtime stage
DEF = (RECIPE / "tsf-trt.def").read_text()


def def_section(name: str) -> str:
    match = re.search(rf"^%{name}\n(.*?)(?=^%|\Z)", DEF, re.M | re.S)
    assert match, f"tsf-trt.def has no %{name}"
    return match[1]


def final(keyword: str) -> list[str]:
    return [args for k, args in FINAL if k == keyword]


def build_args() -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults."""
    first = next(i for i, (k, _) in enumerate(DOCKERFILE) if k == "FROM")
    return dict(a.split("=", 1) for k, a in DOCKERFILE[:first] if k == "ARG" and "=" in a)


def test_the_entry_point_is_the_bids_app():
    assert final("ENTRYPOINT") == ['["tsf-trt-bids"]']
    assert PYPROJECT["project"]["scripts"]["tsf-trt-bids"] == "tsf_trt.cli:bids_main"
    from tsf_trt.cli import bids_main  # noqa: F401  (the console script's target exists)

    assert re.search(rf'^\s*exec {VENV}/bin/tsf-trt-bids "\$@"\s*$', def_section("runscript"), re.M)
    assert f"{VENV}/bin" in next(a for a in final("ENV") if a.startswith("PATH="))


def test_the_image_runs_as_a_user_that_is_not_root():
    users = final("USER")
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0
    assert [k for k, _ in FINAL].index("USER") < [k for k, _ in FINAL].index("ENTRYPOINT")


def image_env() -> dict[str, str]:
    return dict(part.split("=", 1) for a in final("ENV") for part in shlex.split(a))


def test_the_cache_is_outside_the_image():
    cache = image_env()["TSF_TRT_CACHE"]  # the variable tsf_trt/machine/cache_dir.py reads first
    assert cache == "/cache" and not cache.startswith(VENV)
    assert any(f"mkdir -m 1777 {cache}" in a for a in final("RUN"))  # writable by any uid (docker run -u)


@pytest.mark.parametrize("given, writable, expected", [
    (None, False, "HOME/.cache/tsf-trt"),  # a read-only SIF, /cache not bound: the home folder
    ("/cache", False, "HOME/.cache/tsf-trt"),  # named, but not writable
    ("/scratch/c", False, "/scratch/c"),  # --env TSF_TRT_CACHE=... wins
    (None, True, "/cache"),  # -B DIR:/cache
])
def test_the_apptainer_environment_moves_an_unwritable_cache(tmp_path, given, writable, expected):
    """The def file's %environment, run by sh after the line Apptainer writes for the Docker image's
    ENV (`export VAR="${VAR:-value}"`, .singularity.d/env/10-docker2singularity.sh), with /cache
    standing for a folder that exists (writable) or does not (not writable, even for root)."""
    cache = tmp_path / "cache"
    if writable:
        cache.mkdir()
    default = image_env()["TSF_TRT_CACHE"]
    docker_env = f'export TSF_TRT_CACHE="${{TSF_TRT_CACHE:-{default}}}"\n'
    script = (docker_env + def_section("environment")).replace("/cache", str(cache))
    env = {"HOME": "HOME", "PATH": os.environ["PATH"]}
    if given:
        env["TSF_TRT_CACHE"] = given.replace("/cache", str(cache))
    done = subprocess.run(["sh", "-c", script + '\nprintf %s "$TSF_TRT_CACHE"'], env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout == expected.replace("/cache", str(cache))


def test_the_cpu_image_installs_no_torch():
    runs = [a for k, a in DOCKERFILE if k == "RUN"]
    installs = [m for a in runs for m in re.findall(r'pip"? install ([^;&|]*)', a)]
    assert installs and not any("torch" in i for i in installs), installs
    assert re.search(r'cpu\) "\$pip" install "\$wheel" ;;', " ".join(runs))  # the wheel, no extra
    assert any('"$pip" show torch' in a and "exit 1" in a for a in runs)  # and the build checks it
    assert not any("torch" in dep for dep in PYPROJECT["project"]["dependencies"])


def test_the_gpu_variants_are_pyprojects_extras():
    install = next(a for k, a in DOCKERFILE if k == "RUN" and "VARIANT" in a)
    variants = re.search(r"(gpu-cu\d+(?:\|gpu-cu\d+)*)\)", install)[1].split("|")
    assert variants and all(v in PYPROJECT["project"]["optional-dependencies"] for v in variants)
    assert build_args()["VARIANT"] == "cpu"


def test_the_copied_files_exist_and_reach_the_build():
    sources = [src for k, a in DOCKERFILE if k == "COPY" and not a.startswith("--") for src in a.split()[:-1]]
    ignore = (RECIPE / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:] for line in ignore if line.startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src in included, f"{src} is COPY'd but Dockerfile.dockerignore leaves it out"
    setuptools = PYPROJECT["tool"]["setuptools"]
    needed = {*setuptools["package-dir"].values(), PYPROJECT["project"]["readme"], "pyproject.toml"}
    assert needed <= set(sources), needed - set(sources)


def test_every_package_reaches_the_wheel():
    """A folder with __init__.py left out of pyproject's list works in an editable install but is
    missing from the wheel the image installs (tsf_trt.uncertainty was, until the container ran)."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            name = ".".join([package, *init.parent.relative_to(ROOT / folder).parts])
            assert name in listed, f"{name} is not in pyproject's [tool.setuptools] packages"


def test_the_labels_and_the_version_agree_with_pyproject():
    version = PYPROJECT["project"]["version"]
    assert build_args()["VERSION"] == version
    labels = " ".join(final("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert build_args()["BASE"].startswith("docker.io/")  # fully qualified: podman needs no short-name alias
    assert re.search(rf"^\s*IMAGE=tsf-trt:{re.escape(version)}$", def_section("arguments"), re.M)
    assert DEF.startswith("Bootstrap: {{ BOOTSTRAP }}\nFrom: {{ IMAGE }}\n")


def test_the_scripts_parse():
    for script in ("build.sh", "apptainer.sh"):
        path = RECIPE / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)


def _container_test_skip() -> str | None:
    if os.environ.get("TSF_TRT_CONTAINER_TEST") != "1":
        return "builds an image (2-5 min): set TSF_TRT_CONTAINER_TEST=1"
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman mmdebstrap)"
    if os.geteuid() != 0:
        return "container/build.sh --test needs root (it hands the test folders to uid 4242)"
    return None


@pytest.mark.slow
def test_the_image_runs_as_a_bids_app(tmp_path):
    reason = _container_test_skip()
    if reason:
        pytest.skip(reason)
    done = subprocess.run([str(RECIPE / "build.sh"), "--test", str(tmp_path)], capture_output=True, text=True,
                          timeout=1500)
    if done.returncode in (3, 4):  # build.sh: no engine, or one that cannot start a container here
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-6000:]
    assert (tmp_path / "input.before").read_text() == (tmp_path / "input.after").read_text()
    out = tmp_path / "out"
    for subject in ("sub-Phantom00000", "sub-Phantom00001"):
        for name in ("desc-tsfsynth_T2w.nii.gz", "desc-tsfsynth_T2w.json", "desc-T2w_tsem.nii.gz"):
            written = out / subject / "anat" / f"{subject}_{name}"
            assert written.stat().st_uid == 4242, written  # as the user it ran as, not root
        assert (out / "logs" / f"{subject}_t2.json").is_file()
    assert (out / "dataset_description.json").is_file() and (out / "tsf-trt_t2.tsv").is_file()
    assert "2 done, 0 skipped" in (tmp_path / "participant.log").read_text()
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # the cache went to the mounted folder
