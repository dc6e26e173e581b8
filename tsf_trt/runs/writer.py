"""Folder mode's background writer: subject k's outputs are written while subject k+1 computes.

Writing NIfTI files (gzip) takes about as long as a small subject's synthesis, so
:func:`tsf_trt.runs.jobs.infer_folder` hands each finished subject to :class:`Writer` and goes on.
The data-safety rules of folder mode still hold: a subject's claim is released only after its
outputs are published (or have failed), a stopped run publishes nothing more, and outcomes and
callbacks keep subject order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import DiskFullError
from tsf_trt.runs.claims import Claim
from tsf_trt.runs.outcomes import SubjectOutcome, Synthesized

if TYPE_CHECKING:
    from tsf_trt.inputs.subjects import Subject
    from tsf_trt.synthesis.pipeline import Progress


class _Abandoned(BaseException):
    """The run stops (Ctrl-C, a full disk): the subject being written publishes nothing."""


@dataclass
class _Pending:
    """One subject's outputs being written on the background thread; it holds the claim."""

    job: Synthesized
    claim: Claim
    created: Path | None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    outcome: SubjectOutcome | None = None
    error: BaseException | None = None


class Writer:
    """Writes one subject's outputs on a background thread while the next subject computes.

    At most one subject is being written, so memory holds one more result, no more. Outcomes
    are handed to `emit` in subject order, on the calling thread. The claim goes with the
    outputs and is released once they are published, or have failed (that subject's error).
    """

    def __init__(self, emit: Callable[[SubjectOutcome], None]):
        self._emit = emit
        self._pending: _Pending | None = None

    def submit(self, job: Synthesized, claim: Claim, created: Path | None) -> None:
        self.flush()
        pending = _Pending(job, claim, created)
        checks = job.before_publish

        def before_publish() -> None:
            if pending.stop.is_set():
                raise _Abandoned()
            if checks is not None:
                checks()

        job.before_publish = before_publish
        # Not a daemon: should the interpreter exit meanwhile, it waits for the group to end whole.
        pending.thread = threading.Thread(target=self._write, args=(pending,), name="tsf-trt writer")
        self._pending = pending
        pending.thread.start()

    @staticmethod
    def _write(pending: _Pending) -> None:
        try:
            pending.outcome = _publish(pending.job, pending.claim, pending.created)
        except BaseException as exc:  # noqa: BLE001 - raised again on the calling thread by flush()
            pending.error = exc

    def ready(self) -> bool:
        """Nothing is being written any more (flush would not wait)."""
        return self._pending is None or not self._pending.thread.is_alive()

    def flush(self) -> None:
        """Wait for the subject being written; hand on its outcome, or raise what stopped it."""
        pending = self._pending
        if pending is None:
            return
        pending.thread.join()
        self._pending = None  # only now: a Ctrl-C while joining leaves it to abandon()
        if pending.error is not None:
            raise pending.error
        self._emit(pending.outcome)

    def abandon(self) -> None:
        """The run stops: the subject being written publishes nothing unless it already has."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.stop.set()
        pending.thread.join()
        if pending.outcome is not None:  # published before the stop: its files exist, so its line
            self._emit(pending.outcome)


def _publish(job: Synthesized, claim: Claim, created: Path | None) -> SubjectOutcome:
    """Write a subject's outputs; its claim is released once they are published or have failed."""
    try:
        with claim:
            return job.write()
    except DiskFullError:
        raise  # not this subject's fault: every later one would fail the same way
    except (TsfError, OSError) as exc:
        return job.failed(exc, created)


class Started:
    """A subject's progress callback that calls `on_start` only once the subject before it
    is handed on: at the first progress tick after its write has ended, at the latest when
    this subject's synthesis ends. So callbacks keep subject order while the two overlap."""

    def __init__(self, writer: Writer, subject: Subject, on_start: Callable[[Subject], Progress | None] | None):
        self._writer, self._subject, self._on_start = writer, subject, on_start
        self._progress: Progress | None = None
        self._started = False

    def __call__(self, done: int, total: int) -> None:
        if not self._started and self._writer.ready():
            self.start()  # a write that failed for the whole run (a full disk) stops this one too
        if self._progress is not None:
            self._progress(done, total)

    def start(self) -> None:
        if self._started:
            return
        self._writer.flush()
        self._started = True
        self._progress = self._on_start(self._subject) if self._on_start else None

