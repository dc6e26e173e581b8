"""Every missing-extra message names the command that works for the way this copy was installed
(tsf_trt/machine/extras.py): tsf-trt is on no package index, so `pip install 'tsf-trt[torch]'` is
right only where nothing says where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsf_trt.machine import extras
from tsf_trt.machine.extras import CONTAINER_PREFIX, Install, install_command, read_install

ROOT = Path(__file__).resolve().parents[1]
#: Requires-Dist lines as the wheel's metadata writes them (pyproject.toml's extras).
REQUIRES = ('numpy>=1.24', 'torch<2.14,>=2.2; extra == "torch"', 'safetensors>=0.4; extra == "torch"',
            'onnxslim>=0.1.40; extra == "torch"', 'tensorrt-cu12<11,>=10.13; extra == "gpu-cu12"',
            'cuda-python<13,>=12.6; extra == "gpu-cu12"', 'tsf-trt[gpu-cu12]; extra == "gpu"')
ENV = Path("/srv/venv")
SITE = ENV / "lib" / "python3.11" / "site-packages" / "tsf_trt"


def _install(direct_url, package_dir=SITE, prefix=ENV) -> Install:
    return read_install(direct_url, package_dir, prefix, REQUIRES)


def test_an_editable_install_names_its_checkout():
    how = _install({"url": "file:///home/me/tsf%20trt", "dir_info": {"editable": True}})
    assert how.kind == "checkout" and how.location == "/home/me/tsf trt"
    assert install_command("torch", how) == "pip install -e '/home/me/tsf trt[torch]'"


def test_run_from_a_checkout_without_a_record_names_it(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "tsf-trt"\n')
    how = _install(None, package_dir=tmp_path / "tsf_trt")
    assert how.kind == "checkout" and install_command("torch", how) == f"pip install -e '{tmp_path}[torch]'"


def test_a_wheel_names_its_file_or_else_the_extras_packages(tmp_path):
    wheel = tmp_path / "tsf_trt-0.1.0-py3-none-any.whl"
    how = _install({"url": wheel.as_uri(), "archive_info": {"hashes": {}}})
    assert how.kind == "wheel"
    assert install_command("torch", how) == "pip install 'torch<2.14,>=2.2' 'safetensors>=0.4' 'onnxslim>=0.1.40'"
    wheel.write_bytes(b"")
    assert install_command("torch", how) == f"pip install '{wheel}[torch]'"


def test_a_folder_installed_without_e_names_the_folder(tmp_path):
    how = _install({"url": tmp_path.as_uri(), "dir_info": {}})
    assert how.kind == "folder" and install_command("int8", how) == f"pip install '{tmp_path}[int8]'"


def test_a_repository_install_names_the_commit():
    how = _install({"url": "https://example.org/tsf-trt.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}})
    assert install_command("torch", how) == \
        "pip install 'tsf-trt[torch] @ git+https://example.org/tsf-trt.git@abc123'"


def test_an_install_with_no_record_is_an_index_install():
    how = _install(None)
    assert how.kind == "index" and install_command("torch", how) == "pip install 'tsf-trt[torch]'"


def test_the_container_image_says_where_the_extra_is():
    """container/Dockerfile installs the wheel into /opt/tsf-trt, a runtime without PyTorch, as uid 1000."""
    how = _install({"url": "file:///wheels/tsf_trt-0.1.0-py3-none-any.whl", "archive_info": {}},
                   package_dir=CONTAINER_PREFIX / "lib/python3.11/site-packages/tsf_trt", prefix=CONTAINER_PREFIX)
    assert how.kind == "container"
    torch = install_command("torch", how)
    assert "container image has no [torch] extra" in torch and "pip install -e '.[torch]'" in torch
    assert "--build-arg VARIANT=gpu-cu12" in install_command("gpu-cu12", how)


def test_gpu_extras_name_nvidias_index_and_nested_extras_resolve():
    how = _install({"url": "file:///gone.whl", "archive_info": {}})
    assert install_command("gpu", how) == ("pip install 'tensorrt-cu12<11,>=10.13' 'cuda-python<13,>=12.6' "
                                           "--extra-index-url https://pypi.nvidia.com")
    editable = _install({"url": "file:///src", "dir_info": {"editable": True}})
    assert install_command("gpu-cu13", editable) == "pip install -e '/src[gpu-cu13]' --extra-index-url " \
                                                    "https://pypi.nvidia.com"


def test_pip_of_another_environment_is_not_named(monkeypatch, tmp_path):
    monkeypatch.setattr(extras.shutil, "which", lambda name: str(tmp_path / "bin" / name))
    assert extras._pip().endswith(" -m pip")
    how = read_install(None, SITE, ENV, REQUIRES, extras._pip())
    assert install_command("torch", how).endswith(" -m pip install 'tsf-trt[torch]'")


def test_this_copy_is_this_checkout_and_every_message_says_so():
    how = extras.how_installed()
    assert how.kind == "checkout" and Path(how.location).resolve() == ROOT
    command = install_command("torch")
    assert command.endswith(f"install -e '{how.location}[torch]'")
    assert str(extras.missing_extra("tsf-trt train")).endswith(f"which is not installed: {command}")
    assert extras.TORCH_INSTALL == command
    error = ModuleNotFoundError("No module named 'onnxslim'", name="onnxslim")
    assert extras.extra_for(error) == command
    with pytest.raises(AttributeError):
        extras.NO_SUCH_NAME  # noqa: B018
