"""Claims: folder mode that any number of processes, on one machine or many, share safely.

Before a process works on a subject it claims it with a file beside the outputs,
``.SUBJECT_TARGET.claim-G`` (hidden, so folder discovery ignores it), created exclusively
(a hard link of a complete temp file, so a claim is never seen half-written) and holding
the holder's host, pid, process start time and a random token. The highest generation G
present is the claim in force:

* none present: create generation 1;
* its holder is alive (same host: the process runs; other host: its file was refreshed
  within the lease): the subject is busy, leave it;
* its holder is dead: create generation G + 1. Creation is exclusive, so of several
  processes taking over one dead claim exactly one wins; the winner removes the dead
  generations below it.

A holder refreshes its claim's mtime (the heartbeat) every quarter lease, and checks
that its claim is still the one in force just before it publishes outputs, so even a
holder wrongly taken for dead (a frozen machine) cannot overwrite its successor's work.
Nothing here removes a file of a live process.

A folder run also registers itself in the output folder, with its model (:meth:`Claims.join`,
a claim of its own generation): the outputs of one folder and target are one model's, so the
later of two runs with different models stops (:class:`ModelConflict`) instead of mixing them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import link_exclusive, remove_stale, temp_path
from tsf_trt.files.owners import DEFAULT_LEASE_S, Owner

#: Bounds of the lease. Below a second, a live holder on another machine could be taken for dead
#: between two heartbeats (one every quarter lease, at most every 0.2 s: Claims._beat) on any
#: loaded machine. Above a week, a run that died on another machine keeps its subjects from every
#: other run for longer than any pause a machine survives; the bound also keeps the heartbeat's
#: wait finite (`inf` would end the heartbeat thread with an OverflowError).
LEASE_BOUNDS_S = (1.0, 7 * 24 * 3600.0)
# DOTALL: a subject named with a newline is refused before it is claimed, but a listing may hold any name.
_CLAIM = re.compile(r"^\.(?P<stem>.+)\.claim-(?P<gen>\d+)\Z", re.DOTALL)
_held_tokens: set[str] = set()   # claims this process holds, over all threads
_held_lock = threading.Lock()
#: The claim stem of folder mode's run registrations (Claims.join), in the output folder:
#: `.tsf-trt-run_TARGET.claim-G`, so that no subject's claim (in a subject's own folder) shares it.
RUN_STEM = "tsf-trt-run_{target}"


class ModelConflict(TsfError):
    """The output folder holds (or a live run writes there) another model's outputs of this
    target: the whole run stops, in one line naming both models (each subject would fail alike)."""


def check_lease(lease_s: float) -> None:
    """The lease is a number of seconds within LEASE_BOUNDS_S."""
    low, high = LEASE_BOUNDS_S
    if not low <= lease_s <= high:
        raise TsfError(f"--claim-lease must be between {low:g} and {high:g} seconds (a week), got {lease_s:g}")


@dataclass(frozen=True)
class Holder:
    """A claim in force that belongs to someone else: the subject is busy."""

    path: Path
    owner: Owner
    token: str
    host: str
    started: float
    model_id: str | None = None  # the model of the holder's run (None: a claim without it)

    def describe(self, verb: str = "claimed") -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        return f"{verb} by pid {self.owner.pid} on {self.host or '?'} since {since} ({self.path.name})"


class Claim:
    """A claim this process holds; released by :meth:`release` (or the `with` block)."""

    def __init__(self, path: Path, token: str, book: "Claims"):
        self.path, self.token, self._book = path, token, book

    def still_held(self) -> bool:
        """Our file is in place, still ours, and no later generation has superseded it."""
        holder = _read(self.path)
        if holder is None or holder.token != self.token:
            return False
        match = _CLAIM.match(self.path.name)
        assert match is not None
        return max(_generations(self.path.parent, match["stem"]), default=0) <= int(match["gen"])

    def _forget_token(self) -> None:
        with _held_lock:
            _held_tokens.discard(self.token)

    def release(self) -> None:
        self._book._forget(self)
        if _read_token(self.path) == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Claims:
    """Claims of one folder run, with the heartbeat that keeps them fresh."""

    def __init__(self, lease_s: float = DEFAULT_LEASE_S):
        check_lease(lease_s)
        self.lease_s = float(lease_s)
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, folder: Path, stem: str) -> Claim | Holder:
        """The claim of `stem` in `folder`, or the live holder that has it."""
        for _ in range(1000):
            gens = _generations(folder, stem)
            if gens:
                top = max(gens)
                holder = _read(gens[top])
                if holder is None:
                    continue  # released meanwhile: look again
                if not self.is_dead(holder):
                    return holder
            new = max(gens, default=0) + 1
            try:
                claim = self._create(folder, stem, new)
            except FileNotFoundError:  # the folder was removed meanwhile (a failed run tidying up)
                folder.mkdir(parents=True, exist_ok=True)
                continue
            if claim is None:
                continue  # another process took generation `new` first
            if max(_generations(folder, stem), default=0) > new:
                claim.release()  # superseded at once (we read an old listing): look again
                continue
            for gen, path in gens.items():
                if gen < new:
                    path.unlink(missing_ok=True)  # dead holders, or superseded ones
            return claim
        raise TsfError(f"{folder / stem}: could not claim this subject (claims change faster than they can be read)")

    def is_dead(self, holder: Holder) -> bool:
        with _held_lock:
            if holder.token in _held_tokens:
                return False
        if holder.owner.is_current_process():
            return True  # our pid and start, but not a claim we hold: left by a failed release
        mtime = _mtime(holder.path)
        return mtime is None or holder.owner.is_dead(mtime, self.lease_s)  # None: released meanwhile

    def sweep(self, folder: Path, stem: str) -> list[Path]:
        """Remove claims of dead holders (a run killed after its last output) and temp files
        of dead writers of this claim; returns what was removed."""
        removed = []
        for path in _generations(folder, stem).values():
            holder = _read(path)
            if holder is not None and self.is_dead(holder) and _read_token(path) == holder.token:
                path.unlink(missing_ok=True)
                removed.append(path)
        claim_name = re.compile(rf"^\.{re.escape(stem)}\.claim-\d+$")
        return removed + remove_stale(folder, lambda name: bool(claim_name.match(name)), self.lease_s)

    # -- run registrations ------------------------------------------------------------------
    def join(self, folder: Path, target: str, model_id: str) -> Claim:
        """Register this run among the live runs that write `target` outputs in `folder`: a
        ModelConflict (nothing held) when the earliest of them uses another model than `model_id`.

        A registration is a claim of RUN_STEM, one generation per run, created exclusively as
        max + 1, so generations order the runs as they registered, alike on every host (no
        clock is compared): of two runs of different models the later one stops, and two that
        register at once both see the same order. Dead runs' registrations go as dead claims do.
        Released with the other claims (:meth:`close`)."""
        stem = RUN_STEM.format(target=target)
        for _ in range(1000):
            gens = _generations(folder, stem)
            claim = self._create(folder, stem, max(gens, default=0) + 1, model_id)
            if claim is not None:
                break
        else:
            raise TsfError(f"{folder}: could not register this run (registrations change faster than they can "
                           "be read)")
        self.sweep(folder, stem)  # dead runs' registrations (a live one's never)
        first = next(iter(_live(folder, stem, self.is_dead)), None)
        if first is not None and first.token != claim.token and first.model_id != model_id:
            claim.release()
            raise conflict_with_run(folder, target, first, model_id)
        return claim

    def _create(self, folder: Path, stem: str, gen: int, model_id: str | None = None) -> Claim | None:
        path = folder / f".{stem}.claim-{gen}"
        token = secrets.token_hex(8)
        owner = Owner.current()
        body = json.dumps({"host": socket.gethostname(), "host_tag": owner.host, "pid": owner.pid,
                           "process_start": owner.start, "token": token, "started": time.time(),
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lease_s": self.lease_s,
                           **({"model_id": model_id} if model_id is not None else {})}) + "\n"
        with _held_lock:
            _held_tokens.add(token)  # before the file exists: no other thread may take it for dead
        claim = Claim(path, token, self)
        tmp = temp_path(path)
        try:
            with open(tmp, "x") as handle:
                handle.write(body)
            won = link_exclusive(tmp, path)
            if won is None:  # no hard links here: exclusive create, then write
                won = _create_with(path, body)
        except BaseException:
            claim._forget_token()
            raise
        finally:
            tmp.unlink(missing_ok=True)
        if not won:
            claim._forget_token()  # another process took generation `gen` first
            return None
        with self._lock:
            self._held[token] = claim
        self._start_heartbeat()
        return claim

    # -- heartbeat --------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="tsf-trt claims", daemon=True)
                self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(0.2, self.lease_s / 4)):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                try:
                    os.utime(claim.path)
                except OSError:
                    pass  # gone: still_held() will say so before anything is published

    def _forget(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.token, None)
        claim._forget_token()

    def close(self) -> None:
        """Release every claim still held and stop the heartbeat."""
        with self._lock:
            held = list(self._held.values())
        for claim in held:
            claim.release()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Claims":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def live_runs(folder: Path, target: str, lease_s: float) -> list[Holder]:
    """The live runs registered (:meth:`Claims.join`) to write `target` outputs in `folder`,
    earliest first; reads only (what `infer` checks before its model loads)."""
    check_lease(lease_s)
    return _live(folder, RUN_STEM.format(target=target),
                 lambda holder: holder.owner.is_dead(_mtime(holder.path) or 0.0, lease_s))


def _live(folder: Path, stem: str, is_dead) -> list[Holder]:
    found = []
    for _, path in sorted(_generations(folder, stem).items()):
        holder = _read(path)
        if holder is not None and _mtime(path) is not None and not is_dead(holder):
            found.append(holder)
    return found


def conflict_with_run(folder: Path, target: str, holder: Holder, model_id: str) -> ModelConflict:
    return ModelConflict(f"{folder}: a run of model {holder.model_id or '?'} writes its {target} outputs here "
                         f"({holder.describe('registered')}), and this run's model is {model_id}: an output folder "
                         "holds one model's outputs; use another -o, or wait for that run to end")


def _create_with(path: Path, body: str) -> bool:
    """Create `path` holding `body` only if it does not exist; False if it does."""
    try:
        with open(path, "x") as handle:
            handle.write(body)
    except FileExistsError:
        return False
    return True


def _generations(folder: Path, stem: str) -> dict[int, Path]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        match = _CLAIM.match(name)
        if match and match["stem"] == stem:
            found[int(match["gen"])] = folder / name
    return found


def _read(path: Path) -> Holder | None:
    """What a claim file says; None when it is gone. An unreadable one (a torn write on a
    file system without hard links) gets an unknown owner, judged by age alone."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        text = ""
    try:
        data = json.loads(text)
        owner = Owner(str(data["host_tag"]), int(data["pid"]), int(data.get("process_start", 0)))
        model = data.get("model_id")
        return Holder(path, owner, str(data["token"]), str(data.get("host", "")), float(data.get("started", 0)),
                      None if model is None else str(model))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Holder(path, Owner("", 0), "", "", 0.0)


def _read_token(path: Path) -> str | None:
    holder = _read(path)
    return None if holder is None else holder.token


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
