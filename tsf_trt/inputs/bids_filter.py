"""`--bids-filter-file`: fMRIPrep's JSON filter file, read into the `select` rules of
:func:`tsf_trt.inputs.bids.find_cases` (which chooses among a case's candidate images).

The format, as fMRIPrep reads it (its `--bids-filter-file`, handed to pybids' queries): one JSON
object whose keys name queries (`t1w`, `t2w`, `flair`, `bold`, `fmap`, ...) and whose values are
objects of entity -> value, entities by pybids' names (`session`, `acquisition`, `ceagent`,
`reconstruction`, `run`, ...; tsf-trt also takes the BIDS keys `acq`, `ce`, `rec`, ...): a string
or a number keeps the files with that value, null those without the entity, "*" those with any
value of it, a list those with any of its values.

What tsf-trt makes of it (the one rule):

* a query names a sequence by any spelling `--target` takes: `t1w` (T1: the T1w images without
  `ce-`), `t1gd` / `t1ce` / `t1c` (T1Gd: T1w images with `ce-`; fMRIPrep has no such query),
  `t2w`, `flair`; its entities apply to that sequence's candidates only;
* fMRIPrep's other queries (`bold`, `sbref`, `fmap`, `dwi`, `asl`, `roi`, ...) choose no
  anatomical image: they are skipped, and the log names them, so one filter file serves both
  tools; any other query name is an error;
* `datatype`, `suffix` and `extension` say what a query reads: they must agree with it (`anat`;
  T1w for t1w and t1gd, T2w, FLAIR; a NIfTI extension) and narrow nothing further, since tsf-trt
  reads exactly those (another value would be a query that chooses nothing: an error);
* `subject` and `session` are refused: tsf-trt synthesises each session from its own images, and
  chooses subjects and sessions by --participant-label and --session-label.

Every problem is one line naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.bids import ANY, NIFTI, FilterValue, check_filter

_log = logging.getLogger(__name__)

#: fMRIPrep's queries that choose no anatomical image tsf-trt reads (fmriprep/config.py, DEFAULT_BIDS_QUERIES).
OTHER_QUERIES = frozenset({"bold", "sbref", "fmap", "dwi", "asl", "roi", "pet", "t2star", "sbrefs", "epi", "phase"})
#: Keys that say what a query reads, with the values that agree with tsf-trt's reading.
_SUFFIX = {0: "T1w", 1: "T1w", 2: "T2w", 3: "FLAIR"}
_REFUSED = {"subject": "--participant-label", "sub": "--participant-label", "session": "--session-label",
            "ses": "--session-label"}


def read_filter_file(path: Path) -> tuple[tuple[str, FilterValue], ...]:
    """The rules of an fMRIPrep filter file, as (`SEQUENCE.ENTITY`, value) pairs for `select`
    (rule: the module docstring); an InputError naming the file for anything wrong in it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "--bids-filter-file: no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"--bids-filter-file: not JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"--bids-filter-file: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "--bids-filter-file: expected a JSON object of queries (e.g. {\"t1w\": {\"acquisition\": "
                               "\"mprage\"}})")
    pairs: list[tuple[str, FilterValue]] = []
    skipped = []
    for query, entities in data.items():
        if query.lower() in OTHER_QUERIES:
            skipped.append(query)
            continue
        try:
            index = sequences.parse(query)
        except TsfError:
            raise InputError(path, f"query '{query}': not a sequence tsf-trt reads (t1w, t1gd, t2w, flair) nor one of "
                                   "fMRIPrep's other queries") from None
        if not isinstance(entities, dict):
            raise InputError(path, f"query '{query}': expected an object of entity: value")
        for entity, value in entities.items():
            rule = _rule(path, query, index, entity, value)
            if rule is not None:
                pairs.append(rule)
    try:
        check_filter(dict(pairs))
    except TsfError as exc:
        raise InputError(path, str(exc)) from None
    if skipped:
        _log.info("%s: queries for no anatomical image tsf-trt reads, not used: %s", path, ", ".join(skipped))
    return tuple(pairs)


def _rule(path: Path, query: str, index: int, entity: str, value) -> tuple[str, FilterValue] | None:
    """One entity of a query as a `select` pair, or None for one that only says what the query reads."""
    where = f"query '{query}', {entity}"
    if entity in _REFUSED:
        raise InputError(path, f"{where}: choose these with {_REFUSED[entity]} (tsf-trt synthesises each session "
                               "from its own images)")
    values = value if isinstance(value, list) else [value]
    if entity in ("datatype", "suffix", "extension"):
        allowed = {"datatype": ("anat",), "suffix": (_SUFFIX[index],),
                   "extension": (*NIFTI, *(e.lstrip(".") for e in NIFTI))}[entity]
        if not any(v in allowed or v == ANY for v in values):
            raise InputError(path, f"{where}: {value!r} chooses nothing tsf-trt reads for {sequences.DISPLAY[index]} "
                                   f"({' or '.join(allowed[:2])})")
        return None
    if not values:
        raise InputError(path, f"{where}: an empty list keeps no file")
    out = []
    for v in values:
        if isinstance(v, bool) or not (v is None or isinstance(v, (str, int))):
            raise InputError(path, f"{where}: {json.dumps(v)} is not a label, an index, null or \"*\"")
        out.append(None if v is None else str(v))
    return f"{sequences.NAMES[index]}.{entity}", out[0] if len(out) == 1 else tuple(out)
