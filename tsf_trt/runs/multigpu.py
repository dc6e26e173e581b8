"""Folder mode on several GPUs: `tsf-trt infer --data FOLDER --devices 0,1,...`.

One worker process per GPU, each over a disjoint shard of the subjects (the `--shard`
round-robin, so the devices split the folder as `--shard k/n` runs would). A worker
sees only its GPU (CUDA_VISIBLE_DEVICES), builds one Synthesizer and runs two threads
over its subjects: while one thread has the network, the other reads the next
subject's NIfTI files or writes the last one's (gzip runs outside the GIL), so the GPU
does not wait on file I/O. Outcomes stream back to the parent as they happen.

The spawning of processes per GPU has NOT run on a machine with GPUs yet; the worker
body (threads, shared synthesizer, events) is tested on CPU in-process.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tsf_trt.errors import TsfError
from tsf_trt.inputs.subjects import Subject, shard
from tsf_trt.runs.request import InferRequest
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.source import ModelSource

Event = tuple[str, int, Any]   # (kind, device, payload): start / end / ready / fatal / done
IO_THREADS = 2


def parse_devices(text: str, visible: int | None = None) -> list[int]:
    """'0,1' -> [0, 1], checked against the GPUs visible here (a clean error without any)."""
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", text or ""):
        raise TsfError(f"--devices expects GPU indices separated by commas, such as 0,1 (got '{text}')")
    devices = [int(d) for d in text.split(",")]
    if len(set(devices)) != len(devices):
        raise TsfError(f"--devices names a GPU more than once: '{text}'")
    if visible is None:
        from tsf_trt.engines.gpu import device_count

        visible = device_count()
    if visible == 0:
        from tsf_trt.machine.extras import install_command

        raise TsfError("--devices runs one worker per NVIDIA GPU, but no GPU is visible here (no GPU, no driver, "
                       f"or neither cuda-python nor a CUDA build of PyTorch is installed: {install_command('gpu')})")
    beyond = [d for d in devices if d >= visible]
    if beyond:
        raise TsfError(f"--devices: GPU {beyond[0]} does not exist here ({visible} visible: 0 to {visible - 1})")
    return devices


@dataclass(frozen=True)
class WorkerJob:
    """What each worker needs to run its shard (picklable: it crosses to a new process).
    Inside a worker the one visible GPU is cuda:0, so `options.device` is "cuda" there."""

    model: ModelSource
    options: RunOptions
    request: InferRequest


class SharedSynthesizer:
    """One Synthesizer for several threads: the network runs one subject at a time,
    while reading and writing NIfTI files (in jobs.infer_subject) go on in parallel."""

    def __init__(self, synth):
        self._synth = synth
        self._lock = threading.Lock()

    def run(self, *args, **kwargs):
        with self._lock:
            return self._synth.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._synth, name)


def work(job: WorkerJob, subjects: Sequence[Subject], device: int, emit: Callable[[Event], None]) -> None:
    """A worker's whole life: its Synthesizer, then its subjects on IO_THREADS threads."""
    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.synthesis.pipeline import Synthesizer

    try:
        synth = Synthesizer(job.model, job.options)
    except TsfError as exc:
        emit(("fatal", device, str(exc)))
        emit(("done", device, None))
        return
    name = synth.backend.describe()
    emit(("ready", device, name))
    shared = SharedSynthesizer(synth)

    def run_part(part: Sequence[Subject]) -> None:
        infer_folder(shared, part, job.request, backend_name=name,
                     on_start=lambda subject: emit(("start", device, subject.name)),
                     on_end=lambda o: emit(("end", device, {"subject": o.subject, "status": o.status,
                                                             "error": o.error, "removed": [str(p) for p in o.removed],
                                                             "line": o.line(name),
                                                             "findings": [(str(f.path), f.kind, f.message)
                                                                          for f in o.findings]})))

    with synth.backend:
        try:
            with ThreadPoolExecutor(IO_THREADS) as pool:
                for future in [pool.submit(run_part, subjects[t::IO_THREADS]) for t in range(IO_THREADS)]:
                    future.result()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides the exit code
            emit(("fatal", device, f"{type(exc).__name__}: {exc}"))
    emit(("done", device, None))


def _worker_main(job: WorkerJob, subjects: list[Subject], device: int, events) -> None:
    work(job, subjects, device, events.put)


def visible_id(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry that makes GPU `index` (as this process numbers them)
    the only GPU of a worker."""
    current = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return current[index] if current else str(index)


def run_on_devices(job: WorkerJob, subjects: Sequence[Subject], devices: Sequence[int],
                   on_event: Callable[[Event], None]) -> None:
    """Start one worker per device over disjoint shards; forward their events until all end."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
    events = context.Queue()
    workers = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = {device: visible_id(device) for device in devices}  # before the loop changes the variable
    try:
        for k, device in enumerate(devices):
            part = shard(subjects, f"{k + 1}/{len(devices)}")
            if not part:
                continue
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[device]  # spawn copies the environment at start
            process = context.Process(target=_worker_main, args=(job, part, device, events), daemon=True)
            process.start()
            workers.append((device, process))
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    _drain(events, workers, on_event)


def _drain(events, workers: list, on_event: Callable[[Event], None]) -> None:
    running = {device for device, _ in workers}
    try:
        while running:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                for device, process in workers:
                    if device in running and not process.is_alive():
                        running.discard(device)
                        on_event(("fatal", device, f"worker exited with code {process.exitcode}"))
                continue
            on_event(event)
            if event[0] == "done":
                running.discard(event[1])
    except BaseException:
        for _, process in workers:
            process.terminate()
        raise
    for _, process in workers:
        process.join(timeout=10)


def export_once(source: ModelSource, backend: str) -> None:
    """Export a model directory into the cache before the workers start, so that they do
    not all export it at once (they find it there)."""
    if backend not in ("torch", "reference"):
        source.export_dir()
