"""The training run's log: what rank 0 writes for people (train.log) and for tools
(log.csv, log.json), kept consistent with the checkpoints across resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_FIELDS = ("step", "epoch", "kind", "loss", "rec", "per", "psnr", "ssim", "seconds")


class RunLog:
    """log.csv + log.json (records and messages, rewritten whole each time: small) and train.log.

    Only rank 0 writes (``enabled``); a resumed run drops records after the resumed step.
    """

    def __init__(self, out: Path, enabled: bool, echo: Callable[[str], None] | None, resume: bool):
        self.out, self.enabled, self.echo = out, enabled, echo
        self.data: dict[str, list] = {"messages": [], "records": []}
        if resume and (out / "log.json").is_file():
            self.data = json.loads((out / "log.json").read_text())

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.echo is not None:
            self.echo(text)
        self.data["messages"].append(text)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "train.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self._write()

    def record(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.data["records"].append(row)
            self._write()

    def truncate(self, step: int) -> None:
        self.data["records"] = [r for r in self.data["records"] if r["step"] <= step]
        self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        tmp = self.out / ".log.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.out / "log.json")
        lines = [",".join(LOG_FIELDS)]
        for r in self.data["records"]:
            lines.append(",".join("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]))
                                  for k in LOG_FIELDS))
        tmp = self.out / ".log.csv.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.out / "log.csv")
