"""The records `--backend auto` and `--precision auto` keep: used only when they are what tsf-trt
writes, else measured again.

Why: a record is trusted on every later run. `"choice": "reference"` silently ran the slowest
backend, and `"choice": 42` failed every run with a precision error that never named the record
(issue 22). So each record is checked here, in one place, when it is read: its types, that its
choice is one of this key's candidates and is the one its rule gives (the fastest of its own
timings, for a timed choice), that the timings are finite and positive, that its precision is
legal and consistent, that it was made under the probe's current rules. A bad record is one
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


def _reasons(value: Any, what: str, candidates: Collection[str]) -> Problem:
    """`value` maps candidates to strings (why each failed, was skipped or ran at which precision)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return f"has no {what}"
    strangers = sorted(set(value) - set(candidates))
    return f"names {', '.join(strangers)} in its {what}, not among this key's candidates" if strangers else None


def cpu_choice_problem(record: dict[str, Any], candidates: Sequence[str], setup: dict[str, Any],
                       rule_precisions: Collection[str]) -> Problem:
    """The CPU choice record (tsf_trt.synthesis.auto.probe_cpu): made under `setup` (the probe's rules,
    precision and batch: a change of rules is a new version, so an older record is measured again),
    every candidate accounted for once (timed, failed or skipped; the choice may be untimed), and
    the choice the one its rule gives: the fastest timed ('timed'), the only one left ('only'), or
    OpenVINO at a precision it ran that the rule names ('openvino-bf16')."""
    for key, expected in setup.items():
        if record.get(key) != expected:
            return f"was made with {key} {record.get(key)!r}, not {expected!r}"
    timings, choice, rule = record.get("seconds_per_slice"), record.get("choice"), record.get("rule")
    problem = (timings_problem(timings, candidates) if timings != {} else None) or next(
        (p for key in ("failed", "skipped", "ran") if (p := _reasons(record.get(key), f"'{key}'", candidates))), None)
    if problem:
        return problem
    if not isinstance(choice, str) or choice not in candidates:
        return f"chooses {choice!r}, which is not among this key's candidates ({', '.join(candidates)})"
    failed, skipped = record["failed"], record["skipped"]
    groups = [set(timings), set(failed), set(skipped)]
    if sum(map(len, groups)) != len(set().union(*groups)) or choice in failed or choice in skipped \
            or set().union(*groups, {choice}) != set(candidates):
        return f"does not account for each of {', '.join(candidates)} once (timed, failed or skipped)"
    if rule == "timed":
        if choice not in timings or timings[choice] != min(timings.values()):
            return f"chooses {choice}, which is not the fastest of its own timings"
    elif rule == "only":
        if timings:
            return f"chooses {choice} as the only one left, yet timed {', '.join(timings)}"
    elif isinstance(rule, str) and rule.startswith("openvino-") and rule[len("openvino-"):] in rule_precisions:
        if choice != "openvino" or record["ran"].get("openvino") != rule[len("openvino-"):] or timings:
            return f"chooses {choice} by the rule {rule} without OpenVINO having run at that precision, untimed"
        if record.get("precision") != "auto":
            return f"applies the rule {rule}, which is --precision auto's, at --precision {record.get('precision')}"
    else:
        return f"names an unknown rule ({rule!r})"
    if not isinstance(record.get("why"), str):
        return "gives no reason ('why')"
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


def verdict_problem(record: dict[str, Any], passes: Callable[..., bool],
                    checks: Collection[str] = ("bf16",)) -> Problem:
    """The `--precision auto` verdict: fp32 or one of the `checks` it was made among, with figures
    that agree with the rule that made it (`passes(psnr_db, omega_diff, truth_loss_db, tsem_corr,
    precision)`: tsf_trt.synthesis.precision_auto.passes)."""
    precision, why = record.get("precision"), record.get("why")
    psnr, omega = record.get("psnr_db"), record.get("omega_diff")
    truth, corr = record.get("truth_loss_db"), record.get("tsem_corr")
    checked = record.get("checked") or "bf16"
    if precision not in ("fp32", *checks):
        return f"holds precision {precision!r} ({' or '.join(('fp32', *checks))} expected)"
    if not isinstance(why, str) or not why:
        return "gives no reason ('why')"
    unknown = sorted(set(record) - {"precision", "why", "psnr_db", "omega_diff", "truth_loss_db", "tsem_corr",
                                    "checked"})
    if unknown:
        return f"holds unknown fields ({', '.join(unknown)})"
    if checked not in checks:
        return f"holds figures of {checked!r}, which is not checked here"
    if psnr is not None and (not _number(psnr) or math.isnan(psnr)):  # +inf: equal to fp32
        return f"records a PSNR of {psnr!r}"
    if omega is not None and (not _number(omega) or not math.isfinite(omega) or omega < 0):
        return f"records an ω difference of {omega!r}"
    for name, value in (("truth loss", truth), ("TSEM correlation", corr)):
        if value is not None and (not _number(value) or not math.isfinite(value)):
            return f"records a {name} of {value!r}"
    ok = psnr is not None and omega is not None and passes(psnr, omega, truth, corr, checked)
    if precision != "fp32" and not (ok and checked == precision):
        return f"says {precision} without figures that pass the check"
    if precision == "fp32" and ok:
        return f"says fp32 although its figures pass the check for {checked}"
    return None
