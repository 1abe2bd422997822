"""Slurm's words, read: job states, pending reasons, squeue, sacct and scontrol output,
and the system's health (sinfo, scontrol show reservation).

:data:`SLURM_STATES` is the one table of Slurm job states in hpcgate: what each means
for a server (:class:`~hpcgate.hub.backends.base.JobState`) and whether the job's
processes are gone (:data:`FINAL_STATES`, e.g. what ``scancel`` waits for). The
status parser, the cancel script and the tests' sandbox helpers all read it.
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

from ....catalog import NAME_PATTERN
from ...health import PartitionHealth, SystemHealth
from ..base import Association, JobState, JobStatus, SchedulerReservation, StatusUnavailable


class SlurmState(NamedTuple):
    """What a Slurm job state means for hpcgate."""

    #: the server's state: pending, running, or ended
    state: JobState
    #: True when the job's processes are gone (COMPLETING: ended, processes still ending)
    final: bool = False


#: squeue -O fields; each ends in "|" so a line splits cleanly (the reason may hold spaces).
#: StartTime is what ``squeue --start`` shows: the expected start of a pending job (once
#: the scheduler has planned it), the real one of a running job; EndTime is when its
#: wall time runs out. Both as epoch seconds (:data:`SQUEUE_ENV`).
SQUEUE_FIELDS = "JobID:|,State:|,StartTime:|,EndTime:|,Reason:|,NodeList:|,exit_code:|"
#: Times in squeue's answer as epoch seconds: no time zone or locale of the login host
#: to guess.
SQUEUE_ENV = ["env", "SLURM_TIME_FORMAT=%s"]
#: A StartTime/EndTime field: epoch seconds, or a word for "not planned yet".
_TIME_FIELD = re.compile(r"^\s*(?:[0-9]{1,12}|N/A|Unknown|None|NONE)\s*$")

#: Every Slurm job state (squeue %T, sacct State, scontrol JobState) -> its meaning.
SLURM_STATES: dict[str, SlurmState] = {
    "PENDING": SlurmState(JobState.PENDING),
    "CONFIGURING": SlurmState(JobState.PENDING),  # nodes allocated, booting
    "REQUEUED": SlurmState(JobState.PENDING),
    "REQUEUE_HOLD": SlurmState(JobState.PENDING),
    "REQUEUE_FED": SlurmState(JobState.PENDING),
    "RESV_DEL_HOLD": SlurmState(JobState.PENDING),
    "RUNNING": SlurmState(JobState.RUNNING),
    "RESIZING": SlurmState(JobState.RUNNING),
    "SIGNALING": SlurmState(JobState.RUNNING),
    "STAGE_OUT": SlurmState(JobState.RUNNING),
    "SUSPENDED": SlurmState(JobState.RUNNING),  # the server is there, frozen; keep it
    "STOPPED": SlurmState(JobState.RUNNING),
    "COMPLETING": SlurmState(JobState.DONE),  # the job's processes are ending
    "COMPLETED": SlurmState(JobState.DONE, final=True),
    "FAILED": SlurmState(JobState.DONE, final=True),
    "CANCELLED": SlurmState(JobState.DONE, final=True),
    "TIMEOUT": SlurmState(JobState.DONE, final=True),
    "NODE_FAIL": SlurmState(JobState.DONE, final=True),
    "OUT_OF_MEMORY": SlurmState(JobState.DONE, final=True),
    "BOOT_FAIL": SlurmState(JobState.DONE, final=True),
    "DEADLINE": SlurmState(JobState.DONE, final=True),
    "PREEMPTED": SlurmState(JobState.DONE, final=True),
    "SPECIAL_EXIT": SlurmState(JobState.DONE, final=True),
    "REVOKED": SlurmState(JobState.DONE, final=True),
}

#: The states in which a job's processes are gone (a cancelled job has stopped).
FINAL_STATES = frozenset(name for name, meaning in SLURM_STATES.items() if meaning.final)


#: Pending reasons that waiting never clears: the request does not fit the partition, the
#: account or QOS is not allowed, a hold that hpcgate never releases.
STUCK_REASONS = frozenset(
    {
        "AccountNotAllowed",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "JobHeldAdmin",
        "JobHeldUser",
        "PartitionConfig",
        "PartitionInactive",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "QOSNotAllowed",
        "launch failed requeued held",
    }
)

#: What a stuck reason means, for the sentence the user reads.
STUCK_EXPLAINED = {
    "PartitionConfig": "the request does not fit the nodes of the partition",
    "PartitionNodeLimit": "the partition does not allow that many nodes",
    "PartitionTimeLimit": "the run time is longer than the partition allows",
    "BadConstraints": "no node of the partition can satisfy the request",
    "InvalidAccount": "the project is not a valid Slurm account for you",
    "AccountNotAllowed": "the project may not use this partition",
    "InvalidQOS": "your Slurm QOS is not valid",
    "QOSNotAllowed": "your Slurm QOS may not use this partition",
}

#: Errors of squeue/scancel that mean "this job id is not known (any more)".
UNKNOWN_JOB = re.compile(r"Invalid job id specified")
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")


def _exit_code(raw: str) -> int | None:
    """squeue's ``exit_code`` (a wait status) or sacct's ``ExitCode`` (``code:signal``)."""
    raw = raw.strip()
    if ":" in raw:
        code, _, sig = raw.partition(":")
        if code.isdigit() and sig.isdigit():
            return 128 + int(sig) if int(sig) else int(code)
        return None
    if not raw.isdigit():
        return None
    status = int(raw)
    if status & 0x7F:
        return 128 + (status & 0x7F)
    return status >> 8


def _epoch(raw: str) -> float | None:
    """A squeue time field (``SLURM_TIME_FORMAT=%s``) as epoch seconds; None if unplanned."""
    raw = raw.strip()
    return float(raw) if raw.isdigit() and int(raw) > 0 else None


def job_status(
    state: str, reason: str, nodes: str, exit_code: str, start: str = "", end: str = ""
) -> JobStatus:
    """One job's status from Slurm's words (``start``/``end``: squeue's time fields)."""
    word = state.split()[0] if state.strip() else "UNKNOWN"  # sacct: "CANCELLED by 1001"
    meaning = SLURM_STATES.get(word)
    mapped = meaning.state if meaning is not None else JobState.UNKNOWN
    reason = "" if reason.strip() in ("None", "(null)") else reason.strip()
    node = nodes.strip() or None
    if node in ("(null)", "None assigned"):
        node = None
    if mapped is JobState.DONE:
        why = word if not reason or word == reason else f"{word}, {reason}"
        return JobStatus(JobState.DONE, reason=why, node=node, exit_code=_exit_code(exit_code))
    if mapped is JobState.PENDING:
        shown = reason if word == "PENDING" else f"{word.capitalize()}{', ' + reason if reason else ''}"
        stuck = explain_stuck(reason) if reason in STUCK_REASONS else ""
        return JobStatus(
            JobState.PENDING, reason=shown, node=node, stuck=stuck,
            start_time=_epoch(start), end_time=_epoch(end),
        )
    if mapped is JobState.RUNNING:
        return JobStatus(
            JobState.RUNNING, reason="" if word == "RUNNING" else word.capitalize(), node=node,
            start_time=_epoch(start), end_time=_epoch(end),
        )
    return JobStatus(JobState.UNKNOWN, reason=f"Slurm state {word}", node=node)


def parse_squeue(stdout: str) -> dict[str, JobStatus]:
    """``squeue -h -O`` + :data:`SQUEUE_FIELDS` output -> job id -> status."""
    answer = {}
    for line in stdout.splitlines():
        fields = line.split("|")
        if len(fields) < 6 or not JOB_ID.match(fields[0].strip()):
            continue
        job_id, state = fields[0].strip(), fields[1]
        exit_code, nodes = fields[-2], fields[-3]
        start = end = ""
        if len(fields) >= 8 and _TIME_FIELD.match(fields[2]) and _TIME_FIELD.match(fields[3]):
            start, end = fields[2], fields[3]
            reason = "|".join(fields[4:-3])
        else:  # the fields without the times (an older hpcgate's query)
            reason = "|".join(fields[2:-3])
        answer[job_id] = job_status(state, reason, nodes, exit_code, start, end)
    return answer


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    """``sacct -n -P -X -o JobID,State,Reason,NodeList,ExitCode`` -> job id -> status."""
    answer = {}
    for line in stdout.splitlines():
        fields = line.split("|")
        if len(fields) != 5 or not JOB_ID.match(fields[0].strip()):
            continue
        job_id, state, reason, nodes, exit_code = fields
        answer[job_id.strip()] = job_status(state, reason, nodes, exit_code)
    return answer


class ControllerError(StatusUnavailable):
    """Slurm's controller answered a query with an error (down, timed out, refused)."""


def parse_associations(stdout: str) -> list[Association]:
    """``sacctmgr -n -P show user withassoc format=User,DefaultAccount,Account`` -> associations.

    Lines without a user or an account (a user with no association) are skipped.
    """
    out = []
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not parts[0] or not parts[2]:
            continue
        out.append(Association(user=parts[0], account=parts[2], default=parts[1]))
    return out


def parse_reservations(stdout: str) -> list[dict[str, str]]:
    """``scontrol show reservation -o`` -> one dict of its ``Key=Value`` fields per reservation."""
    found = []
    for line in stdout.splitlines():
        if "ReservationName=" not in line:
            continue
        found.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return found


def _names(raw: str | None) -> tuple[str, ...]:
    """A reservation's list field (``a,b``, ``-a,-b``; ``(null)``: none)."""
    if not raw or raw in ("(null)", "N/A"):
        return ()
    return tuple(n for n in raw.split(",") if n)


def _reservation_time(raw: str | None) -> float | None:
    """StartTime/EndTime: epoch seconds (:data:`SQUEUE_ENV`), else Slurm's local
    ``YYYY-MM-DDTHH:MM:SS`` read in the hub's time zone."""
    if raw and raw.isdigit():
        return float(raw)
    try:
        return time.mktime(time.strptime(raw or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def reservations_from(stdout: str) -> list[SchedulerReservation]:
    """``env SLURM_TIME_FORMAT=%s scontrol show reservation -o`` -> reservations.

    Names a launch option could not carry (:data:`~hpcgate.catalog.NAME_PATTERN`) and
    entries without readable times are left out.
    """
    out = []
    for fields in parse_reservations(stdout):
        name = fields.get("ReservationName", "")
        start, end = _reservation_time(fields.get("StartTime")), _reservation_time(fields.get("EndTime"))
        if not re.fullmatch(NAME_PATTERN, name) or start is None or end is None:
            continue
        partition = fields.get("PartitionName") or None
        out.append(
            SchedulerReservation(
                name=name,
                start=start,
                end=end,
                partition=None if partition == "(null)" else partition,
                users=_names(fields.get("Users")),
                accounts=_names(fields.get("Accounts")),
                groups=bool(_names(fields.get("Groups"))),
                flags=_names(fields.get("Flags")),
            )
        )
    return out


def controller_error(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {code}"


def explain_stuck(reason: str) -> str:
    """The sentence a user reads when a job can never start."""
    why = STUCK_EXPLAINED.get(reason)
    detail = f" ({why})" if why else ""
    return (
        f"Slurm will not start this job: {reason}{detail}. "
        "Choose fewer resources or another partition or project, and start again."
    )


# --- sinfo / scontrol show reservation (the system's health) ------------------------------

#: sinfo -o fields: partition, availability, node count, node state, node list
SINFO_FORMAT = "%R|%a|%D|%T|%N"
#: node states that can take a job now
FREE_NODE_STATES = ("idle", "mixed")


def expand_hostlist(hostlist: str) -> set[str]:
    """Slurm's compressed host list (``node[01-03,7],login1``) as a set of names."""
    names: set[str] = set()
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", hostlist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            if part and part != "(null)":
                names.add(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if hi and lo.isdigit() and hi.isdigit():
                names.update(f"{prefix}{n:0{len(lo)}d}{suffix}" for n in range(int(lo), int(hi) + 1))
            else:
                names.add(f"{prefix}{lo}{suffix}")
    return names


def parse_sinfo(stdout: str) -> dict[str, dict[str, Any]]:
    """``sinfo -h -o`` + :data:`SINFO_FORMAT` -> partition -> availability, nodes, free, node names."""
    parts: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5 or not fields[2].isdigit():
            continue
        name, avail, count, state, nodes = fields
        name = name.rstrip("*")  # the default partition
        p = parts.setdefault(name, {"availability": avail, "total": 0, "free": 0, "nodes": set()})
        p["total"] += int(count)
        # "idle~" (powered down) and "idle*" (not responding) are not free
        if state.rstrip("+") in FREE_NODE_STATES:
            p["free"] += int(count)
        p["nodes"] |= expand_hostlist(nodes)
    return parts


def health_from(sinfo: str, reservations: str) -> SystemHealth:
    """The scheduler's answers (sinfo, scontrol show reservation) as a SystemHealth."""
    parts = parse_sinfo(sinfo)
    active = [r for r in parse_reservations(reservations) if r.get("State") == "ACTIVE"]
    out = {}
    for name, p in parts.items():
        notes = []
        for r in active:
            covers = r.get("PartitionName") == name or (p["nodes"] & expand_hostlist(r.get("Nodes", "")))
            if covers:
                kind = "a maintenance reservation" if "MAINT" in r.get("Flags", "").split(",") else "a reservation"
                until = r.get("EndTime", "").replace("T", " ")
                notes.append(f"is held by {kind} ({r.get('ReservationName', '?')}) until {until}")
        out[name] = PartitionHealth(
            availability=p["availability"], nodes_total=p["total"], nodes_free=p["free"], reservations=tuple(notes)
        )
    return SystemHealth(partitions=out)
