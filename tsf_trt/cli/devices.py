"""`tsf-trt infer --devices 0,1`: the display side of folder mode on several GPUs.

The work itself is :mod:`tsf_trt.runs.multigpu`; this shows one progress bar over all
subjects, a line per GPU when its worker is ready, and the same closing summary as
single-process folder mode. Not a command of its own: `infer` calls it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer
from tsf_trt.cli.app import EXIT_ERROR, log, out, progress_bar, step


def run_devices(devices_text: str, model, options, request, subjects) -> None:
    """`model`: a ModelSource (resolved and checked by `infer`) or what resolves to one."""
    from tsf_trt.errors import TsfError
    from tsf_trt.runs.jobs import FolderSummary
    from tsf_trt.runs.multigpu import WorkerJob, export_once, parse_devices, run_on_devices
    from tsf_trt.inputs.preflight import Finding
    from tsf_trt.runs.outcomes import SubjectOutcome, findings_summary
    from tsf_trt.runs.table import write_table
    from tsf_trt.synthesis.source import ModelSource

    devices = parse_devices(devices_text)
    if options.device == "cpu":
        raise TsfError("--devices runs one worker per GPU: drop --device cpu")
    source = ModelSource.resolve(model)
    with step(f"preparing {source.path} for the workers (an ONNX export, once)"):
        export_once(source, options.backend)
    job = WorkerJob(source, replace(options, device="cuda"), request)
    summary, broken = FolderSummary(), []
    start = time.perf_counter()
    with progress_bar() as bar:
        overall = bar.add_task(f"subjects on GPUs {','.join(map(str, devices))}", total=len(subjects))

        def on_event(event) -> None:
            kind, gpu, payload = event
            if kind == "ready":
                log.info("GPU %s: %s", gpu, payload)
            elif kind == "end":
                outcome = SubjectOutcome(payload["subject"], payload["status"], error=payload["error"],
                                         removed=[Path(p) for p in payload.get("removed", [])],
                                         findings=[Finding(Path(f), kind, message)
                                                   for f, kind, message in payload.get("findings", [])])
                summary.outcomes.append(outcome)
                bar.advance(overall)
                (log.error if outcome.status == "failed" else log.info)("GPU %s: %s", gpu,
                                                                        payload.get("line") or outcome.line(),
                                                                        extra={"subject": outcome.subject})
            elif kind == "fatal":
                broken.append(gpu)
                log.error("GPU %s stopped: %s", gpu, payload)

        run_on_devices(job, subjects, devices, on_event)
    for line in findings_summary(summary.outcomes):
        log.warning("%s", line)
    try:  # every worker left one as it ended; this one knows every worker's failures
        summary.table = write_table(request.output, request.target, outcomes=summary.outcomes, subjects=subjects)
    except (TsfError, OSError) as exc:
        log.warning("the cohort table was not written: %s", exc)
    out.print(f"{summary.line(time.perf_counter() - start)}, on {len(devices)} GPUs"
              + (f"; GPU {', '.join(map(str, broken))} stopped early" if broken else ""), highlight=False,
              soft_wrap=True)
    if summary.table is not None:
        out.print(f"cohort table: {summary.table}", highlight=False, soft_wrap=True)
    if summary.failed or broken:
        raise typer.Exit(EXIT_ERROR)
