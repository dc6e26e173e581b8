"""tsf_trt.runs.claims, function by function: how a claim is taken, judged, superseded, swept,
released and kept fresh, and the lease's bounds (no model, no CLI; the processes that share a
folder through these claims are in tests/test_folder_processes.py and tests/test_cohort_safety.py).

A holder on another host is stood in for by a host tag that is not this machine's (it is then
judged by its file's age against the lease); a dead holder on this host by a pid that has exited.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import dead_pid
from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import temp_path
from tsf_trt.files.owners import Owner, host_tag
from tsf_trt.runs.claims import LEASE_BOUNDS_S, RUN_STEM, Claim, Claims, Holder, ModelConflict, check_lease, live_runs

STEM = "sub01_t2"
ELSEWHERE = "0badf00d"  # a host tag that is not this machine's (host_tag() hashes the host name)


@pytest.fixture
def claims():
    """A Claims with the shortest lease; closed (its claims released) after the test."""
    book = Claims(lease_s=LEASE_BOUNDS_S[0])
    yield book
    book.close()


def claim_file(folder: Path, gen: int, owner: Owner, *, stem: str = STEM, token: str = "theirs",
               age_s: float = 0.0, **extra) -> Path:
    """A claim written as another process writes one (Claims._create's fields), `age_s` old."""
    path = folder / f".{stem}.claim-{gen}"
    path.write_text(json.dumps({"host": "elsewhere", "host_tag": owner.host, "pid": owner.pid,
                                "process_start": owner.start, "token": token, "started": time.time() - age_s,
                                **extra}) + "\n")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- the lease ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [LEASE_BOUNDS_S[0], 600.0, LEASE_BOUNDS_S[1]])
def test_a_lease_within_the_bounds_is_taken(lease):
    check_lease(lease)
    book = Claims(lease_s=lease)
    assert book.lease_s == lease
    book.close()


@pytest.mark.parametrize("lease", [0.0, LEASE_BOUNDS_S[0] - 0.001, LEASE_BOUNDS_S[1] + 1, float("inf"), float("nan"),
                                   -600.0])
def test_a_lease_outside_the_bounds_is_one_error_naming_the_option(lease):
    with pytest.raises(TsfError, match="--claim-lease must be between 1 and 604800 seconds"):
        check_lease(lease)
    with pytest.raises(TsfError, match="--claim-lease"):
        Claims(lease_s=lease)
    with pytest.raises(TsfError, match="--claim-lease"):
        live_runs(Path("/nonexistent"), "t2", lease)


# --- claiming ---------------------------------------------------------------------------------------


def test_the_first_claim_is_generation_one_and_says_who_holds_it(tmp_path, claims):
    claim = claims.claim(tmp_path, STEM)
    assert isinstance(claim, Claim) and claim.path == tmp_path / f".{STEM}.claim-1"
    body = json.loads(claim.path.read_text())
    me = Owner.current()
    assert (body["host_tag"], body["pid"], body["process_start"]) == (me.host, me.pid, me.start)
    assert body["token"] == claim.token and body["lease_s"] == LEASE_BOUNDS_S[0] and "model_id" not in body
    assert names(tmp_path) == [f".{STEM}.claim-1"]  # the temp file it was linked from is gone
    assert claim.still_held()


def test_a_subject_this_process_holds_is_busy_even_to_another_claims(tmp_path, claims):
    """Tokens are shared by every Claims of the process: a second folder run in the same process
    (or a second thread) never takes this one's subject for dead."""
    mine = claims.claim(tmp_path, STEM)
    other = Claims(lease_s=LEASE_BOUNDS_S[0])
    try:
        holder = other.claim(tmp_path, STEM)
        assert isinstance(holder, Holder) and holder.token == mine.token and holder.path == mine.path
        assert holder.describe().startswith(f"claimed by pid {os.getpid()} on ")
        assert holder.describe().endswith(f"({mine.path.name})")
    finally:
        other.close()
    assert names(tmp_path) == [mine.path.name]


def test_a_dead_holder_is_superseded_by_the_next_generation_and_removed(tmp_path, claims):
    dead = claim_file(tmp_path, 3, Owner(host_tag(), dead_pid(), 0))
    claim = claims.claim(tmp_path, STEM)
    assert claim.path.name == f".{STEM}.claim-4"
    assert not dead.exists() and names(tmp_path) == [claim.path.name]


def test_a_live_holder_on_this_host_is_left_alone(tmp_path, claims):
    parent = Owner(host_tag(), os.getppid(), 0)  # start 0: any process with that pid counts as it
    theirs = claim_file(tmp_path, 1, parent, age_s=10 * 24 * 3600)  # age says nothing on this host
    holder = claims.claim(tmp_path, STEM)
    assert isinstance(holder, Holder) and holder.owner == parent and holder.token == "theirs"
    assert theirs.exists() and names(tmp_path) == [theirs.name]


def test_a_holder_on_another_host_is_alive_within_the_lease_and_dead_after_it(tmp_path):
    lease = 60.0
    with Claims(lease_s=lease) as claims:
        fresh = claim_file(tmp_path, 1, Owner(ELSEWHERE, 1, 1), age_s=lease / 2)
        assert isinstance(claims.claim(tmp_path, STEM), Holder)
        then = time.time() - 2 * lease
        os.utime(fresh, (then, then))  # its heartbeat stopped two leases ago
        claim = claims.claim(tmp_path, STEM)
        assert isinstance(claim, Claim) and claim.path.name == f".{STEM}.claim-2" and not fresh.exists()


def test_a_reused_pid_is_not_the_holder(tmp_path, claims):
    """Our own pid with another start time: the holder was an earlier process with this pid."""
    me = Owner.current()
    claim_file(tmp_path, 1, Owner(me.host, me.pid, me.start + 1))
    assert isinstance(claims.claim(tmp_path, STEM), Claim)


def test_our_own_claim_left_by_a_failed_release_is_dead(tmp_path, claims):
    """This process's pid and start, but a token it does not hold: nobody will release it."""
    left = claim_file(tmp_path, 1, Owner.current(), token="forgotten")
    holder = Holder(left, Owner.current(), "forgotten", "", 0.0)
    assert claims.is_dead(holder)
    assert claims.claim(tmp_path, STEM).path.name == f".{STEM}.claim-2" and not left.exists()


def test_an_unreadable_claim_is_judged_by_its_age(tmp_path):
    """A torn write (a file system without hard links): an unknown owner, alive within the lease."""
    with Claims(lease_s=60.0) as claims:
        torn = tmp_path / f".{STEM}.claim-1"
        torn.write_text('{"host_tag": "0badf0')
        assert isinstance(claims.claim(tmp_path, STEM), Holder)
        then = time.time() - 120
        os.utime(torn, (then, then))
        assert claims.claim(tmp_path, STEM).path.name == f".{STEM}.claim-2"


def test_only_this_stems_generations_count(tmp_path, claims):
    """Other subjects' claims, other names and malformed generations are never touched."""
    dead = Owner(host_tag(), dead_pid(), 0)
    others = [claim_file(tmp_path, 7, dead, stem=STEM + "x"), claim_file(tmp_path, 9, dead, stem="sub0"),
              tmp_path / f".{STEM}.claim-x", tmp_path / f"{STEM}.claim-5", tmp_path / f".{STEM}.claim-2.json"]
    for path in others[2:]:
        path.write_text("not a claim\n")
    claim = claims.claim(tmp_path, STEM)
    assert claim.path.name == f".{STEM}.claim-1"
    assert all(path.exists() for path in others)


def test_a_missing_folder_is_made(tmp_path, claims):
    claim = claims.claim(tmp_path / "new" / "sub01", STEM)
    assert isinstance(claim, Claim) and claim.path.parent.is_dir()


# --- holding and releasing --------------------------------------------------------------------------


def test_a_later_generation_supersedes_a_claim(tmp_path, claims):
    """still_held() is what a holder checks before it publishes: a successor (which took this
    holder for dead) means it must not."""
    claim = claims.claim(tmp_path, STEM)
    later = claim_file(tmp_path, 2, Owner(ELSEWHERE, 1, 1))
    assert not claim.still_held()
    later.unlink()
    assert claim.still_held()


def test_a_claim_replaced_or_removed_is_no_longer_held(tmp_path, claims):
    claim = claims.claim(tmp_path, STEM)
    claim_file(tmp_path, 1, Owner(ELSEWHERE, 1, 1), token="someone else's")  # same name, other writer
    assert not claim.still_held()
    claim.path.unlink()
    assert not claim.still_held()


def test_release_removes_only_our_own_file(tmp_path, claims):
    claim = claims.claim(tmp_path, STEM)
    claim.release()
    assert names(tmp_path) == []
    second = claims.claim(tmp_path, STEM)
    theirs = claim_file(tmp_path, 1, Owner(ELSEWHERE, 1, 1), token="theirs")  # took our name meanwhile
    second.release()
    assert theirs.exists() and json.loads(theirs.read_text())["token"] == "theirs"


def test_a_claim_is_released_by_its_with_block_and_by_close(tmp_path):
    with Claims(lease_s=LEASE_BOUNDS_S[0]) as claims:
        with claims.claim(tmp_path, "a"):
            assert names(tmp_path) == [".a.claim-1"]
        assert names(tmp_path) == []
        claims.claim(tmp_path, "b")
        claims.claim(tmp_path, "c")
    assert names(tmp_path) == []  # close() released both and stopped the heartbeat
    assert claims._thread is not None and not claims._thread.is_alive()


def test_a_released_claim_is_dead_to_the_next_run(tmp_path, claims):
    """Once released, its token is forgotten: a claim file of ours that stayed (the unlink
    failed) no longer keeps the subject busy."""
    claim = claims.claim(tmp_path, STEM)
    kept = claim.path.read_bytes()
    claim.release()
    claim.path.write_bytes(kept)  # as if the unlink had failed
    holder = Holder(claim.path, Owner.current(), claim.token, "", 0.0)
    assert claims.is_dead(holder)
    assert claims.claim(tmp_path, STEM).path.name == f".{STEM}.claim-2"


# --- the heartbeat ----------------------------------------------------------------------------------


def test_the_heartbeat_refreshes_every_held_claim_and_stops_on_close(tmp_path):
    """One beat every quarter lease, at most every 0.2 s: with the 1 s lease a claim's mtime set
    an hour back is fresh again well within 5 s (the bound only allows for a loaded machine)."""
    claims = Claims(lease_s=LEASE_BOUNDS_S[0])
    claim = claims.claim(tmp_path, STEM)
    hour_ago = time.time() - 3600
    os.utime(claim.path, (hour_ago, hour_ago))
    deadline = time.monotonic() + 5
    while claim.path.stat().st_mtime < hour_ago + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert claim.path.stat().st_mtime > time.time() - 60, "the heartbeat did not touch the claim"
    claims.close()
    assert not claims._thread.is_alive()


def test_the_heartbeat_survives_a_claim_that_vanished(tmp_path):
    claims = Claims(lease_s=LEASE_BOUNDS_S[0])
    gone, kept = claims.claim(tmp_path, "gone"), claims.claim(tmp_path, "kept")
    gone.path.unlink()
    hour_ago = time.time() - 3600
    os.utime(kept.path, (hour_ago, hour_ago))
    deadline = time.monotonic() + 5
    while kept.path.stat().st_mtime < hour_ago + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kept.path.stat().st_mtime > time.time() - 60 and claims._thread.is_alive()
    assert not gone.still_held()
    claims.close()


# --- sweeping -----------------------------------------------------------------------------------------


def test_sweep_removes_dead_holders_and_their_temp_files_never_a_live_ones(tmp_path, claims):
    dead = Owner(host_tag(), dead_pid(), 0)
    dead_claim = claim_file(tmp_path, 1, dead)
    live = claim_file(tmp_path, 2, Owner(host_tag(), os.getppid(), 0), token="live")
    live_temp = temp_path(tmp_path / f".{STEM}.claim-3")  # as Claims._create names it: ours, alive
    dead_temp = tmp_path / live_temp.name.replace(Owner.current().tag, dead.tag)
    other_temp = tmp_path / f"..sub02_t2.claim-1.tmp-{dead.tag}-0123abcd.claim-1"  # another stem's
    for path in (dead_temp, live_temp, other_temp):
        path.write_text("{")
    removed = claims.sweep(tmp_path, STEM)
    assert sorted(removed) == sorted([dead_claim, dead_temp])
    assert names(tmp_path) == sorted(p.name for p in (live, live_temp, other_temp))


# --- run registrations ---------------------------------------------------------------------------------


def test_runs_register_in_order_and_the_later_model_stops(tmp_path):
    first, second, third = (Claims(lease_s=LEASE_BOUNDS_S[0]) for _ in range(3))
    try:
        mine = first.join(tmp_path, "t2", "model-a")
        assert mine.path.name == f".{RUN_STEM.format(target='t2')}.claim-1"
        assert json.loads(mine.path.read_text())["model_id"] == "model-a"
        same = second.join(tmp_path, "t2", "model-a")  # the same model may share the folder
        assert same.path.name.endswith(".claim-2")
        with pytest.raises(ModelConflict, match="model-a writes its t2 outputs here.*this run's model is model-b"):
            third.join(tmp_path, "t2", "model-b")
        assert [h.model_id for h in live_runs(tmp_path, "t2", 600)] == ["model-a", "model-a"]  # none of model-b's
        assert third.join(tmp_path, "flair", "model-b").path.name.endswith(".claim-1")  # another target: its own
    finally:
        for book in (first, second, third):
            book.close()
    assert names(tmp_path) == [] and live_runs(tmp_path, "t2", 600) == []


def test_a_dead_runs_registration_is_swept_when_the_next_registers(tmp_path, claims):
    stem = RUN_STEM.format(target="t2")
    dead = claim_file(tmp_path, 1, Owner(host_tag(), dead_pid(), 0), stem=stem, model_id="model-a")
    mine = claims.join(tmp_path, "t2", "model-b")  # the only live run: no conflict
    assert mine.path.name == f".{stem}.claim-2" and not dead.exists()
    assert [h.model_id for h in live_runs(tmp_path, "t2", 600)] == ["model-b"]


def test_live_runs_reads_only(tmp_path):
    stem = RUN_STEM.format(target="t2")
    dead = claim_file(tmp_path, 1, Owner(host_tag(), dead_pid(), 0), stem=stem, model_id="a")
    old = claim_file(tmp_path, 2, Owner(ELSEWHERE, 1, 1), stem=stem, model_id="b", age_s=120)
    fresh = claim_file(tmp_path, 3, Owner(ELSEWHERE, 2, 1), stem=stem, model_id="c")
    before = {p: p.stat().st_mtime_ns for p in (dead, old, fresh)}
    assert [h.model_id for h in live_runs(tmp_path, "t2", 60)] == ["c"]
    assert [h.model_id for h in live_runs(tmp_path, "t2", 600)] == ["b", "c"]
    assert {p: p.stat().st_mtime_ns for p in (dead, old, fresh)} == before  # nothing removed or touched
