"""Synthesis tasks: which inputs make which target, and how a user names them.

With the four sequences there are 28 tasks: every non-empty subset of sources times every
target outside it (12 with one input, 12 with two, 4 with three), the paper's Table 1.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tsf_trt import sequences
from tsf_trt.errors import TsfError

_SPLIT = re.compile(r"[;\s]+")


@dataclass(frozen=True)
class Task:
    """Sources (sorted sequence indices) -> target."""

    sources: tuple[int, ...]
    target: int

    @property
    def n_inputs(self) -> int:
        return len(self.sources)

    @property
    def label(self) -> str:
        """As people write it: 'T1,FLAIR->T2'."""
        return sequences.describe(self.sources, self.target)

    @property
    def key(self) -> str:
        """As the command line takes it, and as caches store it: 't1,flair->t2'."""
        return sequences.task_key(self.sources, self.target)

    @property
    def slug(self) -> str:
        """For file names: 't1-flair_to_t2'."""
        return "-".join(sequences.NAMES[s] for s in self.sources) + "_to_" + sequences.NAMES[self.target]

    def task_code(self) -> np.ndarray:
        return sequences.task_code(self.sources, self.target)

    def order(self) -> tuple[int, int, tuple[int, ...]]:
        """Table order: number of inputs, then target, then sources."""
        return self.n_inputs, self.target, self.sources


def all_tasks(available: Iterable[int] = range(sequences.N_SEQUENCES), max_inputs: int | None = None) -> list[Task]:
    """Every task the `available` sequences allow, in table order."""
    have = sorted(set(available))
    tasks = []
    for target in have:
        rest = [s for s in have if s != target]
        for n in range(1, len(rest) + 1 if max_inputs is None else min(max_inputs, len(rest)) + 1):
            tasks += [Task(tuple(c), target) for c in itertools.combinations(rest, n)]
    return sorted(tasks, key=Task.order)


def parse_task(text: str) -> Task:
    """'t1,flair->t2' (any accepted spelling, any case) -> Task (sequences.parse_task_key's rule)."""
    try:
        sources, target = sequences.parse_task_key(text)
    except TsfError as exc:
        raise TsfError(f"--tasks: {exc}") from None
    return Task(tuple(sources), target)


def parse_tasks(specs: Sequence[str] | str | None) -> list[Task]:
    """Tasks from `--tasks` values: 'all' (the default), 'single' (the 12 one-input tasks), '->t2'
    (every task with target T2), or explicit tasks; several per value separated by ';' or
    spaces, or repeated options."""
    items = [specs] if isinstance(specs, str) else list(specs or ["all"])
    words = [w for item in items for w in _SPLIT.split(item.strip()) if w]
    if not words:
        raise TsfError("--tasks is empty: give 'all' or tasks like t1,flair->t2")
    chosen: dict[Task, None] = {}
    for word in words:
        if word.lower() == "all":
            found = all_tasks()
        elif word.lower() == "single":
            found = all_tasks(max_inputs=1)
        elif word.startswith("->"):
            try:
                target = sequences.parse(word[2:])
            except TsfError as exc:
                raise TsfError(f"--tasks: '{word}': {exc}") from None
            found = [t for t in all_tasks() if t.target == target]
        else:
            task = parse_task(word)
            if task in chosen:
                raise TsfError(f"--tasks: {task.label} is given twice")
            found = [task]
        chosen.update(dict.fromkeys(found))
    return sorted(chosen, key=Task.order)
