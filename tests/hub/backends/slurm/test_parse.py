"""Slurm's words read (hpcgate.hub.backends.slurm.parse), without a cluster."""

from __future__ import annotations

import re

from hpcgate.hub.backends.base import JobState
from hpcgate.hub.backends.slurm import backend as slurm_backend
from hpcgate.hub.backends.slurm import parse as slurm_parse


def test_parse_squeue():
    out = (
        "4|FAILED|NonZeroExitCode|compute1|768|\n"
        "6|PENDING|PartitionConfig||0|\n"
        "7|PENDING|Resources||0|\n"
        "8|PENDING|None||0|\n"
        "9|RUNNING|None|compute1|0|\n"
        "10|CANCELLED|None|compute1|15|\n"
        "11|PENDING|Nodes required for job are DOWN, DRAINED or reserved||0|\n"
        "garbage line\n"
    )
    got = slurm_parse.parse_squeue(out)
    assert got["4"].state is JobState.DONE and got["4"].exit_code == 3 and "NonZeroExitCode" in got["4"].reason
    assert got["6"].state is JobState.PENDING and "PartitionConfig" in got["6"].stuck
    assert got["7"].reason == "Resources" and not got["7"].stuck
    assert got["8"].reason == ""
    assert got["9"].state is JobState.RUNNING and got["9"].node == "compute1"
    assert got["10"].state is JobState.DONE and got["10"].exit_code == 128 + 15
    assert got["11"].reason.startswith("Nodes required") and not got["11"].stuck
    assert len(got) == 7


def test_parse_sacct():
    got = slurm_parse.parse_sacct("12|CANCELLED by 1001|None|compute1|0:15\n13|COMPLETED|None|compute1|0:0\n14|RUNNING|None|c2|0:0\n")
    assert got["12"].state is JobState.DONE and got["12"].exit_code == 128 + 15 and got["12"].reason == "CANCELLED"
    assert got["13"].exit_code == 0
    assert got["14"].state is JobState.RUNNING


def test_one_table_of_slurm_states_decides_status_and_cancel():
    # every state of the table maps to the status the parser gives ...
    for name, meaning in slurm_parse.SLURM_STATES.items():
        assert slurm_parse.job_status(name, "None", "", "0").state is meaning.state, name
    # ... and the cancel script stops waiting on exactly the final ones
    waits_for = re.search(r'""\|([A-Z_|]+)\) exit 0', slurm_backend.CANCEL_SCRIPT).group(1).split("|")
    assert set(waits_for) == slurm_parse.FINAL_STATES
    assert "COMPLETING" not in slurm_parse.FINAL_STATES and "COMPLETED" in slurm_parse.FINAL_STATES
    assert slurm_parse.job_status("BOGUS_STATE", "", "", "").state is JobState.UNKNOWN
