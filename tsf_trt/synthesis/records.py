"""The records `--backend auto` and `--precision auto` keep: used only when they are what tsf-trt
writes, else measured again.

Why: a record is trusted on every later run. `"choice": "reference"` silently ran the slowest
backend, and `"choice": 42` failed every run with a precision error that never named the record
(issue 22). So each record is checked here, in one place, when it is read: its types, that its
choice is one of this key's candidates and is the fastest of its own timings, that the timings
are finite and positive, that its precision is legal and consistent. A bad record is one
WARNING line naming it; the caller measures again and the new record replaces it. Records are
written all at once (a temporary file renamed), so a concurrent reader never sees half of one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from tsf_trt.errors import TsfError
from tsf_trt.files.cache_entry import write_atomic

_log = logging.getLogger(__name__)
#: What a check returns: None for a valid record, else what is wrong with it.
Problem = str | None


def read(path: Path, check: Callable[[dict[str, Any]], Problem]) -> dict[str, Any] | None:
    """The record at `path` when it passes `check`; None when there is none, or (after one WARNING
    naming it) when it is unreadable or invalid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problem: Problem = f"cannot be read ({exc})"
    else:
        try:
            data = json.loads(text)
        except ValueError:
            problem = "is not JSON"
        else:
            problem = check(data) if isinstance(data, dict) else "is not a JSON object"
            if problem is None:
                return data
    _log.warning("auto: the record %s %s; measuring again (the new record replaces it)", path, problem)
    return None


def write(path: Path, record: dict[str, Any]) -> None:
    """Replace the record at `path` all at once; no cache (read-only, full) means measuring again next time."""
    try:
        write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    except (OSError, TsfError) as exc:
        _log.info("auto: the record %s was not written (%s)", path, exc)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def timings_problem(timings: Any, candidates: Collection[str]) -> Problem:
    """Seconds per slice by backend: a non-empty object of this key's candidates, each finite and > 0."""
    if not isinstance(timings, dict) or not timings:
        return "has no timings ('seconds_per_slice')"
    for name, seconds in timings.items():
        if name not in candidates:
            return f"times '{name}', which is not among this key's candidates ({', '.join(candidates)})"
        if not _number(seconds) or not math.isfinite(seconds) or seconds <= 0:
            return f"records {seconds!r} seconds per slice for {name} (finite and positive expected)"
    return None


def _common(record: dict[str, Any], precision: str, probe: Sequence[int]) -> Problem:
    if record.get("precision") != precision:
        return f"is for precision {record.get('precision')!r}, not {precision!r}"
    if record.get("probe_hw") != list(probe):
        return f"was timed on a {record.get('probe_hw')!r} probe, not {list(probe)}"
    return None


def cpu_choice_problem(record: dict[str, Any], candidates: Sequence[str], precision: str,
                       probe: Sequence[int]) -> Problem:
    """The CPU choice record: the choice is a candidate and the fastest of the recorded timings."""
    timings = record.get("seconds_per_slice")
    choice = record.get("choice")
    problem = _common(record, precision, probe) or timings_problem(timings, candidates)
    if problem:
        return problem
    if not isinstance(choice, str) or choice not in candidates:
        return f"chooses {choice!r}, which is not among this key's candidates ({', '.join(candidates)})"
    if choice not in timings or timings[choice] != min(timings.values()):
        return f"chooses {choice}, which is not the fastest of its own timings"
    return None


def gpu_ranking_problem(record: dict[str, Any], usable: Sequence[str], precision: str,
                        probe: Sequence[int]) -> Problem:
    """The GPU ranking record: every usable candidate either timed or failed, the ranking the timed
    ones fastest first."""
    timings, failed, ranking = record.get("seconds_per_slice"), record.get("failed"), record.get("ranking")
    problem = _common(record, precision, probe) or timings_problem(timings, usable)
    if problem:
        return problem
    if not isinstance(failed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in failed.items()):
        return "has no reasons for the failed candidates ('failed')"
    if set(timings) & set(failed) or set(timings) | set(failed) != set(usable):
        return f"does not account for each of {', '.join(usable)} once (timed or failed)"
    if not isinstance(ranking, list) or sorted(map(str, ranking)) != sorted(timings) or len(ranking) != len(timings):
        return "ranks other backends than it timed"
    if any(timings[a] > timings[b] for a, b in zip(ranking, ranking[1:])):
        return "does not rank its backends fastest first"
    return None


def verdict_problem(record: dict[str, Any], passes: Callable[[float, float], bool]) -> Problem:
    """The `--precision auto` verdict: fp32 or bf16, with figures that agree with the rule that made
    it (`passes(psnr_db, omega_diff)`: tsf_trt.synthesis.precision_auto.passes)."""
    precision, why = record.get("precision"), record.get("why")
    psnr, omega = record.get("psnr_db"), record.get("omega_diff")
    if precision not in ("fp32", "bf16"):
        return f"holds precision {precision!r} (fp32 or bf16 expected)"
    if not isinstance(why, str) or not why:
        return "gives no reason ('why')"
    unknown = sorted(set(record) - {"precision", "why", "psnr_db", "omega_diff"})
    if unknown:
        return f"holds unknown fields ({', '.join(unknown)})"
    if psnr is not None and (not _number(psnr) or math.isnan(psnr)):  # +inf: bf16 equal to fp32
        return f"records a PSNR of {psnr!r}"
    if omega is not None and (not _number(omega) or not math.isfinite(omega) or omega < 0):
        return f"records an ω difference of {omega!r}"
    ok = psnr is not None and omega is not None and passes(psnr, omega)
    if precision == "bf16" and not ok:
        return "says bf16 without figures that pass the check"
    if precision == "fp32" and ok:
        return "says fp32 although its figures pass the check for bf16"
    return None
