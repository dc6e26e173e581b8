"""`tsf-trt doctor`: print :func:`tsf_trt.doctor.collect` for a person (tables) or a script (--json).

Registered in :mod:`tsf_trt.cli.app`; it imports nothing from there, so that the app can
import it without a cycle.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from tsf_trt.console import out, user_errors


@user_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Write the report as one JSON object to stdout "
                                          "instead of tables (redirect it to keep a file).")] = False,
) -> None:
    """What this machine has and which backends really run here: the first command to run on a new machine.

    Reports the OS, Python, the CPU (usable cores, AVX2 / AVX-512 / AVX512-BF16 / AMX), the NVIDIA GPUs (compute capability, memory, driver), the CUDA runtime, and the versions of cuda-bindings, TensorRT, ONNX Runtime (with each provider that really attaches: one listed without its libraries falls back to the CPU silently), PyTorch (and whether it sees CUDA) and OpenVINO (with its CPU capabilities), and whether the cache folder is writable. Then, for every --backend: works, or the one thing missing and the command that installs it.

    Exit status: 0 when at least one backend works (missing GPU backends are part of the report, not an error); 3 when none does.

    Example: tsf-trt doctor

    Example: tsf-trt doctor --json
    """
    from tsf_trt.doctor import EXIT_NO_BACKEND, collect

    _quiet_onnxruntime()
    report = collect()
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        _print(report)
    if not report.working():
        raise typer.Exit(EXIT_NO_BACKEND)


def _quiet_onnxruntime() -> None:
    """ONNX Runtime's C++ warnings about a provider it skips would interleave with the report,
    which says the same in words; its errors (a library that fails to load) still show."""
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except Exception:  # noqa: BLE001 - absent or broken: the report says so
        pass


def _print(report) -> None:
    from rich.table import Table
    from rich.text import Text

    machine = Table(title="This machine", show_header=False)
    machine.add_column(style="bold", no_wrap=True)
    machine.add_column()
    for what, found in _machine_rows(report):
        machine.add_row(what, found)  # shown as given: the console reads no markup
    out.print(machine)
    backends = Table(title="Backends (--backend)")
    for column in ("backend", "status", "missing, or where it runs", "install with"):
        backends.add_column(column, no_wrap=column in ("backend", "status"))
    colours = {"works": "green", "missing": "yellow"}
    for b in report.backends:
        install = b.install or (b.note if b.status != "works" else "") or ""
        detail = b.missing or b.note or ""
        backends.add_row(b.name, Text(b.status, style=colours.get(b.status, "red")), detail, install)
    out.print(backends)
    working = report.working()
    out.print(f"{len(working)} of {len(report.backends)} backends work here"
              + (f": {', '.join(working)}" if working else ": install one of the above (exit status 3)"),
              highlight=False, soft_wrap=True)


def _machine_rows(report) -> list[tuple[str, str]]:
    system, cpu, cuda, packages = report.system, report.cpu, report.cuda, report.packages
    rows = [("tsf-trt", _text(system, "tsf_trt")),
            ("Python", f"{_text(system, 'python')} ({_text(system, 'executable')})"),
            ("OS", _text(system, "os")), ("CPU", _text(cpu, "model")), ("cores", _cores(cpu)),
            ("CPU extensions", _flags(cpu.get("flags", cpu.get("error"))))]
    if report.gpus:
        rows += [(f"GPU {g['index']}", f"{g['name']}, compute capability {g['compute_capability']}, "
                                       f"{g['memory_gib']} GiB (seen by {g['seen_by']})") for g in report.gpus]
    else:
        rows.append(("GPU", f"none visible ({cuda.get('no_gpu_because') or cuda.get('error') or 'no reason given'})"))
    rows.append(("NVIDIA driver", f"{cuda.get('driver') or 'none found'}"
                 + (f" (supports CUDA {cuda['driver_cuda']})" if cuda.get("driver_cuda") else "")))
    rows.append(("CUDA runtime", f"{cuda['runtime']} (cuda-bindings)" if cuda.get("runtime")
                 else "not loaded (needs cuda-bindings)"))
    rows.append(("cuda-bindings", _text(packages, "cuda-bindings")))
    rows.append(("TensorRT", _text(packages, "tensorrt")))
    providers = report.onnxruntime_providers
    rows.append(("ONNX Runtime", f"{_text(packages, 'onnxruntime')}; " + (
        "; ".join(f"{p}: {state}" for p, state in providers.items()) if "error" not in providers
        else f"providers: {providers['error']}")))
    torch = report.torch
    rows.append(("PyTorch", _text(packages, "torch") + ("" if "error" in torch else
                                                        f"; sees CUDA: {'yes' if torch.get('cuda') else 'no'} ("
                                                        + (f"built for CUDA {cuda['torch_built_for']})"
                                                           if cuda.get("torch_built_for") else "a CPU build)"))))
    ov = report.openvino
    rows.append(("OpenVINO", _text(packages, "openvino") + ("" if "error" in ov else
                                                             f"; CPU: {', '.join(ov.get('cpu_capabilities', []))}")))
    cache = report.cache
    where = "from TSF_TRT_CACHE" if cache.get("set_by") == "TSF_TRT_CACHE" else "set TSF_TRT_CACHE to move it"
    rows.append(("cache", f"{_text(cache, 'path')} ({'writable' if cache.get('writable') else 'NOT writable'}; "
                          f"{where})" if "error" not in cache else cache["error"]))
    return rows


def _text(section: dict[str, Any], key: str) -> str:
    """A field, or the section's own failure text when its probe failed."""
    return str(section.get(key, section.get("error", "unknown")))


def _cores(cpu: dict[str, Any]) -> str:
    if "error" in cpu:
        return cpu["error"]
    text = f"{cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical, {cpu['physical_cores'] or '?'} physical"
    return text + (f"; the container's quota allows {cpu['cgroup_cpu_limit']}" if cpu.get("cgroup_cpu_limit") else "")


def _flags(flags: Any) -> str:
    if not isinstance(flags, dict):
        return str(flags)
    has = [f for f, present in flags.items() if present]
    lacks = [f for f, present in flags.items() if not present]
    return (", ".join(has) or "none of those listed") + (f"; lacks {', '.join(lacks)}" if lacks else "")
