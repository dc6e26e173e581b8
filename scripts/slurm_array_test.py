"""A real Slurm job array of the BIDS App on a one-node cluster started here (issue 28, item 3).

    python -m scripts.slurm_array_test [--subjects 8] [--shape 96 96 32] [--keep DIR] [--show-logs]

Starts munged, slurmctld and slurmd with a generated slurm.conf in a temporary folder (the node:
this machine, 2 CPUs, no cgroups; ports chosen free), makes a BIDS dataset of phantoms (`tsf-trt
phantom --layout bids`), submits cluster/tsf-trt-array.sbatch as `sbatch --array=1-4` (every task
the whole dataset with --wait, one CPU each, the bundled demo model on ONNX Runtime), kills one
array task with `scancel` while it holds a subject, waits for the array, then reruns the killed
task as a user resubmits one (`sbatch --array=K`) and writes the group level's table. Then it
checks: every subject finished exactly once (one "wrote" line in all the tasks' logs, one
record), the killed subject finished by another task, nothing left behind (no claim, no
temporary file; what the kill left was there and is gone), the raw dataset untouched, and the
derivative valid by the BIDS schema (tests/bids_schema_rules.py: file names, sidecars, checks).

Exit status: 0 passed, 1 failed (what failed is printed), 77 Slurm cannot start here (the reason is
printed: not root, no slurmctld/munged binary, a daemon that does not come up). Needs root (the
daemons run as root from the temporary folder) and the [dev] extra (bidsschematools).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SBATCH_SCRIPT = ROOT / "cluster" / "tsf-trt-array.sbatch"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "squeue", "scontrol", "sinfo")
SKIP = 77
_start = time.monotonic()


class Skip(Exception):
    """Slurm cannot run here: the reason."""


def say(message: str) -> None:
    print(f"[{time.monotonic() - _start:6.1f} s] {message}", flush=True)


def run(cmd: list[str], env: dict | None = None, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


# --- the cluster -------------------------------------------------------------------------------


class Cluster:
    """munged + slurmctld + slurmd of one node, all files under `top`; `env` for the client commands."""

    def __init__(self, top: Path, cpus: int = 2):
        if os.geteuid() != 0:
            raise Skip("not root: slurmd must start jobs as their user, and the daemons here run as root")
        missing = [b for b in BINARIES if which(b) is None]
        if missing:
            raise Skip(f"no {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
        self.top, self.cpus = top, cpus
        self.node = socket.gethostname().split(".")[0]
        self.conf = top / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.munge = top / "munge"

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.top / sub).mkdir(mode=0o700)
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))  # this cluster's own key, never the machine's
        key.chmod(0o600)
        socket_path = self.munge / "munge.socket"
        done = subprocess.run([which("munged"), "--force", f"--key-file={key}", f"--socket={socket_path}",
                               f"--pid-file={self.munge / 'munged.pid'}", f"--log-file={self.munge / 'munged.log'}",
                               f"--seed-file={self.munge / 'seed'}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"munged does not start: {done.stderr.strip()}")
        self.conf.write_text(self._conf(socket_path))
        for daemon in ("slurmctld", "slurmd"):
            done = subprocess.run([which(daemon), "-f", str(self.conf)], env=self.env, capture_output=True, text=True)
            if done.returncode != 0:
                raise Skip(f"{daemon} does not start: {done.stderr.strip()}")
        for _ in range(60):
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True).stdout
            if state.strip() in ("idle", "mix", "alloc"):
                say(f"cluster up: node {self.node}, {self.cpus} CPUs, slurm {run(['sinfo', '-V'], env=self.env).strip()}")
                return
            time.sleep(0.5)
        raise Skip(f"the node did not come up (sinfo: {state.strip() or 'nothing'}); "
                   f"see {self.top / 'log'}")

    def _conf(self, socket_path: Path) -> str:
        t = self.top
        return "\n".join([
            "ClusterName=tsftrttest", f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={t / 'state'}", f"SlurmdSpoolDir={t / 'spool'}",
            f"SlurmctldPidFile={t / 'slurmctld.pid'}", f"SlurmdPidFile={t / 'slurmd.pid'}",
            f"SlurmctldLogFile={t / 'log/slurmctld.log'}", f"SlurmdLogFile={t / 'log/slurmd.log'}",
            # no cgroups (a container has no writable cgroup tree): processes tracked by parentage
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "MpiDefault=none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "ReturnToService=2", "KillWait=2", "InactiveLimit=0", "MinJobAge=600", "SchedulerParameters=sched_interval=1",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP", ""])

    def sbatch(self, args: list[str], env: dict) -> str:
        return run(["sbatch", "--parsable", *args, str(SBATCH_SCRIPT)], env={**self.env, **env}).strip().split(";")[0]

    def running(self, job: str) -> list[str]:
        """The job's array tasks still pending or running ('JOB_K')."""
        lines = run(["squeue", "-h", "-r", "-j", job, "-o", "%i %t"], env=self.env, check=False)
        return [line.split()[0] for line in lines.splitlines() if line.strip()]

    def wait(self, job: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.running(job):
            if time.monotonic() > end:
                raise RuntimeError(f"job {job} still running after {timeout:.0f} s: {self.running(job)}")
            time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for pidfile in (self.top / "slurmctld.pid", self.top / "slurmd.pid", self.munge / "munged.pid"):
            _stop(pidfile)


def _stop(pidfile: Path) -> None:
    """Stop the daemon of `pidfile` (started by this script): SIGTERM, SIGKILL after 10 s."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    for _ in range(40):
        time.sleep(0.25)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the run -----------------------------------------------------------------------------------


def claims(out: Path) -> dict[Path, dict]:
    """The subjects' claims in the derivative (not the runs' registrations), with what each says."""
    found = {}
    for path in out.rglob(".*.claim-*"):
        if not path.name.startswith(".tsf-trt-run_"):
            try:
                found[path] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return found


def task_of(pid: int) -> tuple[str, str] | None:
    """(array job id, task id) of a process started by Slurm, from its environment (we are root)."""
    try:
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    except OSError:
        return None
    job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return (job, task) if job and task else None


def kill_one_mid_subject(cluster: Cluster, job: str, out: Path, timeout: float = 120) -> tuple[str, str, int]:
    """scancel the first array task seen holding a subject it claimed less than 0.3 s ago (a subject
    takes seconds: the kill lands well before its record), as (task, subject, pid)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for path, held in claims(out).items():
            owner = task_of(int(held.get("pid", 0)))
            subject = path.name[1:].split("_t2.claim-")[0]
            young = time.time() - float(held.get("started", 0)) < 0.3  # most of the subject still to do
            if not young or owner is None or owner[0] != job or (out / "logs" / f"{subject}_t2.json").exists():
                continue
            run(["scancel", f"{job}_{owner[1]}"], env=cluster.env)
            say(f"scancel {job}_{owner[1]}: it held {subject} (pid {held['pid']}, claim {path.name}), record not written")
            return owner[1], subject, int(held["pid"])
        time.sleep(0.02)
    raise RuntimeError("no array task was seen holding a subject: nothing to kill")


def wait_dead(pid: int, timeout: float = 30) -> None:
    """Until `pid` has exited (gone, or a zombie not yet reaped: it writes nothing any more)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise RuntimeError(f"pid {pid} still runs {timeout:.0f} s after scancel")


def hidden(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*") if p.name != ".bidsignore")


def left_by(out: Path, pid: int) -> list[str]:
    """The hidden files of process `pid` in `out`: its claims (their pid) and temporary files (their
    names: .NAME.tmp-HOST-PID-START-RAND, tsf_trt/files/atomic.py)."""
    found = []
    for name in hidden(out):
        path = out / name
        try:
            mine = json.loads(path.read_text()).get("pid") == pid if ".claim-" in path.name else False
        except (OSError, ValueError):
            mine = False
        if mine or re.search(rf"\.tmp-[0-9a-f]{{8}}-{pid}-", path.name):
            found.append(name)
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and "derivatives" not in p.relative_to(folder).parts}


def derivative_problems(deriv: Path) -> list[str]:
    """What the BIDS schema says is wrong with the derivative (tests/test_bids_schema.py's checks)."""
    from bidsschematools import rules as bst_rules

    from tests.bids_schema_rules import (SCHEMA, applies, file_context, files, holds, ignored, level_of, rules,
                                         truthy, valid)

    problems = []
    patterns = [r["regex"] for group in (SCHEMA.rules.files.common, SCHEMA.rules.files.deriv)
                for r in bst_rules.regexify_filename_rules(group, SCHEMA, level=2)]
    ignore = (deriv / ".bidsignore").read_text().splitlines()
    for path in files(deriv):
        relative = path.relative_to(deriv).as_posix()
        if ignored(relative, ignore):
            continue
        if not any(re.fullmatch(r, relative) for r in patterns):
            problems.append(f"{relative}: no file rule of the schema")
        context = file_context(path, deriv)
        for name, rule in rules(SCHEMA.rules.sidecars):
            if applies(rule, context):
                missing = [f for f, lv in rule["fields"].items() if level_of(lv) == "required"
                           and f not in context["sidecar"]]
                problems += [f"{relative}: sidecar lacks {f} ({name})" for f in missing]
        for key, value in context["sidecar"].items():
            if key != "tsf-trt" and not valid(value, SCHEMA.objects.metadata[key].to_dict()):
                problems.append(f"{relative}: sidecar {key}={value!r} is not valid")
        for name, rule in rules(SCHEMA.rules.checks):
            if name not in ("ReadmeFileMissing", "TooFewAuthors") and applies(rule, context):
                problems += [f"{relative}: check {name} fails: {c}" for c in rule["checks"] if not truthy(holds(c, context))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 32), metavar=("X", "Y", "Z"))
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="work in this new folder and leave it (default: a temporary one, removed)")
    parser.add_argument("--show-logs", action="store_true", help="print every array task's log at the end")
    args = parser.parse_args(argv)
    top = Path(tempfile.mkdtemp(prefix="tsf-trt-slurm-")) if args.keep is None else args.keep
    top.mkdir(parents=True, exist_ok=True)
    cluster = None
    try:
        cluster = Cluster(top / "cluster")
        (top / "cluster").mkdir()
        cluster.start()
        return check_array(cluster, top, args)
    except Skip as why:
        print(f"SKIP: {why}", flush=True)
        return SKIP
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)


def check_array(cluster: Cluster, top: Path, args) -> int:
    bids, out, work, logs = top / "bids", top / "bids" / "derivatives" / "tsf-trt", top / "work", top / "logs"
    logs.mkdir()
    tsf = [sys.executable, "-m", "tsf_trt"]
    run([*tsf, "phantom", "-o", str(bids), "--subjects", str(args.subjects), "--layout", "bids", "--shape",
         *map(str, args.shape), "--quiet"])
    subjects = sorted(p.name for p in bids.glob("sub-*"))
    before = snapshot(bids)
    say(f"dataset: {len(subjects)} subjects of {'x'.join(map(str, args.shape))} voxels in {bids}")
    env = {"BIDS_DIR": str(bids), "OUTPUT_DIR": str(out), "WORK_DIR": str(work), "TARGET": "t2",
           "TSF_TRT_BIDS": str(Path(sys.executable).with_name("tsf-trt-bids")), "TSF_TRT_ARGS": "--backend ort"}
    job = cluster.sbatch([f"--array=1-{args.tasks}", "--cpus-per-task=1", f"--output={logs}/task_%a.log"], env)
    say(f"sbatch --array=1-{args.tasks} {SBATCH_SCRIPT.relative_to(ROOT)}: job {job}")
    killed, subject, pid = kill_one_mid_subject(cluster, job, out)
    wait_dead(pid)
    left = left_by(out, pid)  # at once: the other tasks take a dead holder's subject over within a second
    say(f"left by the killed task (pid {pid}) as it died: {', '.join(left) or 'nothing (already swept)'}")
    cluster.wait(job, timeout=600)
    say(f"job {job} ended; {len(list((out / 'logs').glob('*_t2.json')))} records")
    rerun = cluster.sbatch([f"--array={killed}", "--cpus-per-task=1", f"--output={logs}/rerun_%a.log"], env)
    cluster.wait(rerun, timeout=300)
    rerun_log = (logs / f"rerun_{killed}.log").read_text()
    say(f"rerun of task {killed} (sbatch --array={killed}): job {rerun}: "
        f"{next((l for l in rerun_log.splitlines() if ' skipped (already complete)' in l), '?')}")
    group = run([str(Path(sys.executable).with_name("tsf-trt-bids")), str(bids), str(out), "group"])
    say(f"group level: {group.strip()}")

    failures = []
    wrote: dict[str, list[str]] = {s: [] for s in subjects}
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text().splitlines():
            match = re.search(r"\b(sub-\w+): [^ ]+->T2, .* wrote ", line)
            if match:
                wrote.setdefault(match.group(1), []).append(log.stem)
    for name, by in sorted(wrote.items()):
        say(f"  {name}: written by {', '.join(by) or 'nobody'}")
        if len(by) != 1:
            failures.append(f"{name} written {len(by)} times ({', '.join(by)})")
    if wrote.get(subject) == [f"task_{killed}"]:
        failures.append(f"{subject} was written by the killed task {killed}")
    records = sorted(p.name for p in (out / "logs").glob("*_t2.json"))
    if records != [f"{s}_t2.json" for s in subjects]:
        failures.append(f"records: {records}")
    if not all(json.loads((out / "logs" / r).read_text()).get("complete") for r in records):
        failures.append("a record is not complete")
    swept = [line for log in sorted(logs.glob("*.log")) for line in log.read_text().splitlines()
             if "leftovers of killed runs removed" in line]
    if not left and not swept:
        failures.append("the killed task left nothing, and no task removed a leftover: was it killed mid-subject?")
    now = hidden(out)
    if now:
        failures.append(f"left behind: {now}")
    if snapshot(bids) != before:
        failures.append("the raw dataset changed")
    rows = (out / "tsf-trt_t2.tsv").read_text().splitlines()[1:]
    if len(rows) != len(subjects) or not all("\tdone\t" in row for row in rows):
        failures.append(f"cohort table: {len(rows)} rows, not all done")
    for log in sorted(logs.glob("task_*.log")):
        summary = next((l for l in log.read_text().splitlines() if " skipped (already complete)" in l), None)
        say(f"  {log.stem}: {summary or 'no summary line (killed)'}")
    if args.show_logs:
        for log in sorted(logs.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text().rstrip()}", flush=True)
    problems = derivative_problems(out)
    say(f"derivative checked by the BIDS schema: {len(problems)} problem(s)")
    failures += problems
    if failures:
        for failure in failures:
            print(f"FAIL: {failure}", flush=True)
        return 1
    print(f"PASS: {len(subjects)} subjects, each written once; task {killed} killed holding {subject}, which "
          "another task finished; nothing left behind; the derivative valid", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
