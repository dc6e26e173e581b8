"""Who wrote a file, and whether that process still runs: what makes leftovers safe to remove.

Temporary files and folder-mode claims carry their writer: a host tag (hostname, kernel
boot id, so a rebooted machine is another host, and PID namespace), the pid, and the
process's start time in clock ticks since boot (so a reused pid is not taken for the
writer). On the writer's own host that is decided exactly; a writer on another host (a
cluster sharing the folder) is taken as dead only once its file is older than a lease,
because its pid means nothing here. A pid means nothing in another PID namespace either
(containers sharing the host's hostname, Kubernetes `hostNetwork`): there pid 1 may be the
writer, and here it is init, so the namespace is part of the host tag and another
namespace counts as another host.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path


#: How long a writer on another host may leave its file untouched before it counts as dead: the
#: default claim lease of folder runs (--claim-lease) and of every command's sweep of leftovers.
DEFAULT_LEASE_S = 600.0
#: A leftover beside NAME (tsf_trt.files.atomic.temp_path): `.NAME.KIND-OWNER-RAND...`; OWNER is
#: HOST-PID-START, or a bare PID in names written by tsf-trt 0.1 (judged by age only, as if from
#: another host).
_LEFTOVER = re.compile(r"^\.(?P<final>.+)\.(?P<kind>tmp|probe|old)-"
                       r"(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)|(?P<old_pid>\d+))-[0-9a-f]{8}")


@functools.lru_cache(maxsize=1)
def host_tag() -> str:
    """8 hex digits naming this machine since its last boot, as seen from this PID namespace
    (the hex form keeps temp names `.NAME.tmp-HOST-PID-START-RAND` as tsf_trt.files.atomic reads them)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{boot}{pid_namespace()}".encode()).hexdigest()[:8]


def pid_namespace() -> str:
    """This process's PID namespace: the inode of /proc/self/ns/pid (namespaces(7)), the same
    for every process of one namespace; '' where it cannot be read (not Linux)."""
    try:
        return f"\0pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str]:
    """Fields 3... of /proc/PID/stat (Linux), [] where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[-1].split()


def process_start(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot (Linux), 0 where it cannot be read."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: int = 0  # 0: unknown (another OS, or a file name without it)

    @classmethod
    def current(cls) -> "Owner":
        return _current(os.getpid())

    @property
    def tag(self) -> str:
        """The owner as it appears in file names: HOST-PID-START."""
        return f"{self.host}-{self.pid}-{self.start}"

    def is_current_process(self) -> bool:
        return self == Owner.current()

    def running_here(self) -> bool | None:
        """Whether the owner process still runs; None when it is on another host."""
        if self.host != host_tag():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        except OSError:
            return False
        fields = _proc_stat(self.pid)
        if fields and fields[0] in ("Z", "X"):
            return False  # killed, not yet reaped by its parent: it writes nothing any more
        return not self.start or process_start(self.pid) in (0, self.start)

    def is_dead(self, mtime: float, lease_s: float) -> bool:
        """Dead for certain on this host; on another host, silent for longer than the lease."""
        here = self.running_here()
        if here is not None:
            return not here
        return time.time() - mtime > lease_s


@functools.lru_cache(maxsize=4)
def _current(pid: int) -> Owner:
    return Owner(host_tag(), pid, process_start(pid))


def leftover_owner(name: str) -> tuple[str, Owner] | None:
    """(the final name, its writer) of a temporary, probe or old name that tsf-trt's writers
    give (:func:`tsf_trt.files.atomic.temp_path`); None for any other name."""
    match = _LEFTOVER.match(name)
    if match is None:
        return None
    if match["host"]:
        return match["final"], Owner(match["host"], int(match["pid"]), int(match["start"]))
    return match["final"], Owner("", int(match["old_pid"]))  # unknown host: by age only
