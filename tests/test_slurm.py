"""A real Slurm job array of the BIDS App (scripts/slurm_array_test.py): a one-node cluster started
on this machine, `sbatch --array=1-4` of cluster/tsf-trt-array.sbatch over 8 phantom subjects, one
task killed with `scancel` while it holds a subject, the killed task resubmitted; every subject
written exactly once, nothing left behind, the derivative valid by the BIDS schema.

Skipped, with the script's reason, where Slurm cannot start: not root, no slurm-wlm/munge
(Debian: `apt-get install slurm-wlm munge`), a daemon that does not come up. About 30-60 s on 2
cores (most of it the tasks' own start-up and the phantoms): marked slow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_a_slurm_array_shares_a_cohort_and_survives_a_killed_task() -> None:
    pytest.importorskip("bidsschematools")  # the script checks the derivative by the schema
    done = subprocess.run([sys.executable, "-m", "scripts.slurm_array_test"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if done.returncode == 77:
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "PASS: 8 subjects, each written once" in done.stdout
