"""The ``slurm`` backend: JupyterLab as a Slurm batch job, submitted on a login host.

Submit
    The job script is rendered from a template (below) and piped to
    ``sbatch --parsable`` on one of the system's login hosts, over SSH, as the user's
    account (:class:`~hpcgate.hub.remote.SystemRemote`). Login hosts are taken round
    robin; one that cannot be reached is skipped (as in the ssh backend). ``sbatch``'s
    own refusal ("Requested node configuration is not available", an unknown account)
    fails the spawn with sbatch's words.

Secrets
    The script on stdin holds no secret. The server's environment (its JupyterHub API
    token among it) travels on the same stdin, ahead of the script, and the submit step
    writes it to ``~/.hpcgate/run/<run id>.env`` (0600, in a 0700 directory); the job
    reads and removes it before anything else runs, and :meth:`SlurmBackend.cancel`
    removes it when the job never ran. We chose the file over sbatch's copy of the
    submitting environment because Slurm keeps both the script and that environment
    (``scontrol write batch_script``, ``AccountingStoreFlags=job_script,job_env`` puts
    them in the accounting database): the token must be in neither. The file needs a
    home directory shared by login and compute nodes -- so does the job's log.

Output
    ``sbatch --output=$HOME/.hpcgate/logs/slurm-<job id>.log``: what a failed spawn shows
    (:meth:`log_tail`, the last bytes, read on the login host).

Status
    One ``squeue -h -t all -j id1,id2,... -O JobID,State,Reason,NodeList,exit_code`` per
    interval for every job of the system (the StatusCache batches; one controller RPC
    whatever the number of jobs). It runs as the system's service account
    (``identity.mode: service_account``), else as the account of one of the watched jobs:
    without ``PrivateData=jobs`` every account sees every job. With ``PrivateData=jobs``
    other users' jobs are missing from that answer; :meth:`confirm_ended` then asks as
    each job's owner, so the answer is still right, only dearer. ``-t all`` keeps jobs
    that ended within ``MinJobAge`` in the answer, with their final state and exit code.
    A job missing from an answer is asked about once more (:meth:`confirm_ended`):
    ``squeue`` as its owner, then ``sacct`` where accounting runs. A failed or timed-out
    ``squeue`` (controller down, "Socket timed out") raises
    :class:`~hpcgate.hub.backends.base.StatusUnavailable`: UNKNOWN, never stopped.

Pending reasons
    A pending job whose reason can never clear by waiting (:data:`STUCK_REASONS`, e.g.
    ``PartitionConfig`` for more CPUs than any node of the partition has) is reported
    with ``stuck=True``; the spawner then cancels it and shows the reason.

Stop
    ``scancel`` as the owner, then up to :attr:`SlurmBackend.cancel_wait` seconds until
    the job no longer runs (Slurm sends SIGTERM, SIGKILL after ``KillWait``).

The job template
----------------
Sandboxed Jinja2 (``jinja2.sandbox.SandboxedEnvironment``) with ``StrictUndefined``: a
misspelt variable fails the spawn with the template's path instead of rendering empty.
Every ``{{ value }}`` is shell-quoted automatically (``shlex.quote``; names and numbers
come out unchanged). ``setup`` lines are admin shell and come out as they are, as does
the output of ``super()`` and blocks; the ``sh`` filter quotes explicitly, ``shjoin``
quotes and joins a list. The values are
those the catalog validated: nothing a user typed reaches the script otherwise.

Where the template comes from, first match wins: the partition's ``template:``, the
system's ``template:`` (paths on the hub host), hpcgate's built-in
``hpcgate/slurm-job.sh.j2``. An admin template may ``{% extends
"hpcgate/slurm-job.sh.j2" %}`` and replace its blocks ``resources``, ``options``,
``environment``, ``workdir``, ``setup``, ``launch``; other templates in its directory
can be included by name.

Variables (all always defined; see :data:`TEMPLATE_VARIABLES`):

==================  =======================================================================
``job_name``        ``hpcgate-<server name>`` (``hpcgate-default`` for the default server)
``system``          catalog name of the system
``partition``       Slurm partition (``--partition``)
``project``         project to charge (``--account``), or None when the system has none
``nodes``           number of nodes (``--nodes``)
``cpus``            CPUs for the lab (``--cpus-per-task``)
``memory``          memory in GiB (``--mem=<memory>G``)
``gpus``            GPUs (``--gres=gpu:<gpus>`` when above 0)
``runtime``         wall time in minutes (``--time``)
``user``            the JupyterHub user name
``account``         the user's account on the system
``server_name``     the server's name, ``""`` for the default server
``run_id``          unique id of this launch (names its files under ``~/.hpcgate/run``)
``env_file``        the environment file, relative to ``$HOME`` (read and removed first)
``connection_file`` the connection file relative to ``$HOME``, or None when not used
``workdir``         working directory: relative to ``$HOME``, or absolute
``setup``           list of shell lines: the system's ``setup``, then the partition's
``command``         argv of the server (``hpcgate-singleuser`` and its arguments)
==================  =======================================================================
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shlex
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from ...catalog import LaunchRequest, System
from ..remote import CommandFailed, RemoteError, SSHPool
from .base import BackendContext, JobHandle, JobSpec, JobState, JobStatus, StatusUnavailable, SubmitError
from .ssh import HOST_RETRY_AFTER, PRIVATE_DIRS, SSHBackend, _safe_name, env_lines, remote_workdir

log = logging.getLogger("hpcgate.backends.slurm")

BUILTIN_TEMPLATE = "hpcgate/slurm-job.sh.j2"

#: name -> meaning of every variable a job template may use (the module docstring
#: documents the same, in a table for the README).
TEMPLATE_VARIABLES = {
    "job_name": "hpcgate-<server name>",
    "system": "catalog name of the system",
    "partition": "Slurm partition (--partition)",
    "project": "project to charge (--account), or None",
    "nodes": "number of nodes (--nodes)",
    "cpus": "CPUs for the lab (--cpus-per-task)",
    "memory": "memory in GiB (--mem=<memory>G)",
    "gpus": "GPUs (--gres=gpu:<gpus> when above 0)",
    "runtime": "wall time in minutes (--time)",
    "user": "the JupyterHub user name",
    "account": "the user's account on the system",
    "server_name": "the server's name, empty for the default server",
    "run_id": "unique id of this launch",
    "env_file": "environment file relative to $HOME",
    "connection_file": "connection file relative to $HOME, or None",
    "workdir": "working directory, relative to $HOME or absolute",
    "setup": "shell lines: the system's setup, then the partition's",
    "command": "argv of the server",
}

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

#: Slurm job states (squeue %T / sacct State) -> JobState.
STATE_MAP = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,  # nodes allocated, booting
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,  # the server is there, frozen; keep it
    "STOPPED": JobState.RUNNING,
    "COMPLETING": JobState.DONE,  # the job's processes are ending
    "COMPLETED": JobState.DONE,
    "FAILED": JobState.DONE,
    "CANCELLED": JobState.DONE,
    "TIMEOUT": JobState.DONE,
    "NODE_FAIL": JobState.DONE,
    "OUT_OF_MEMORY": JobState.DONE,
    "BOOT_FAIL": JobState.DONE,
    "DEADLINE": JobState.DONE,
    "PREEMPTED": JobState.DONE,
    "SPECIAL_EXIT": JobState.DONE,
    "REVOKED": JobState.DONE,
}

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
#: Errors of scancel on a job that is already over.
ALREADY_OVER = re.compile(r"Invalid job id specified|already completing or completed|Job has already finished")
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")

# The scripts below are constants; every value reaches them as a positional parameter.

#: $1 run id, $2 separator line. stdin: ``export NAME='value'`` lines, the separator, the
#: job script. Prints the job id; sbatch's error goes to stderr.
SUBMIT_SCRIPT = PRIVATE_DIRS + r"""
envfile="$base/run/$1.env"
script="$base/run/$1.sh"
# files of jobs that never ran and were cancelled behind hpcgate's back (their tokens
# are revoked when the hub stops the server)
find "$base/run" -name '*.env' -mmin +10080 -exec rm -f {} + 2>/dev/null || true
: > "$envfile"
: > "$script"
chmod 600 "$envfile" "$script"
awk -v sep="$2" -v envfile="$envfile" -v script="$script" '
  body { print > script; next }
  $0 == sep { body = 1; next }
  { print > envfile }'
if out=$(sbatch --parsable "--output=$base/logs/slurm-%j.log" < "$script"); then
  rm -f "$script"
  echo "$out"
else
  code=$?
  rm -f "$script" "$envfile"
  exit "$code"
fi
"""

#: $1 job id, $2 run id, $3 seconds to wait for the job to end.
CANCEL_SCRIPT = r"""
rm -f "$HOME/.hpcgate/run/$2.env" "$HOME/.hpcgate/run/$2.json"
if ! out=$(scancel "$1" 2>&1); then
  case $out in
    *"Invalid job id"*|*"already completing or completed"*|*"already finished"*) exit 0 ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
i=0
while [ "$i" -lt "$(($3 * 4))" ]; do
  state=$(squeue -h -t all -j "$1" -o %T 2>/dev/null) || exit 0
  case $state in
    ""|COMPLETED|CANCELLED|FAILED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) exit 0 ;;
  esac
  sleep 0.25
  i=$((i + 1))
done
echo "job $1 is still $state after $3 s" >&2
exit 0
"""


# --- the template ----------------------------------------------------------------------


class ShellCode(Markup):
    """Text that goes into the job script as it is: admin shell or already quoted.

    A :class:`markupsafe.Markup` so that Jinja2's own "already safe" marking (the
    output of ``super()`` and of other blocks, ``|safe`` in an admin's template) also
    passes unquoted; HTML escaping never happens because :func:`_finalize` hands Jinja2
    only Markup.
    """


def _finalize(value: Any) -> Markup:
    """Every ``{{ value }}``: quoted for the shell unless it is already Markup."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises, naming the variable
    if isinstance(value, bool) or value is None:
        raise jinja2.TemplateError(
            f"a template printed {value!r}; test it with {{% if %}} instead of printing it"
        )
    if isinstance(value, int):
        return ShellCode(str(value))
    if isinstance(value, str):
        return ShellCode(shlex.quote(value))
    raise jinja2.TemplateError(
        f"a template printed a {type(value).__name__}; join lists with the shjoin filter"
    )


def _sh(value: Any) -> ShellCode:
    return ShellCode(shlex.quote(str(value)))


def _shjoin(values: Iterable[Any]) -> ShellCode:
    if isinstance(values, str):
        raise jinja2.TemplateError("shjoin takes a list, not a string; use the sh filter")
    return ShellCode(shlex.join(str(v) for v in values))


def _builtin_source(name: str) -> str | None:
    if name != BUILTIN_TEMPLATE.split("/", 1)[1]:
        return None
    return resources.files("hpcgate.data").joinpath(name).read_text("utf-8")


def template_environment(directory: str | None = None) -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment job templates render in.

    ``directory``: where an admin template lives, so it can include its neighbours.
    The built-in template is ``hpcgate/slurm-job.sh.j2`` in every environment.
    """
    loaders: list[jinja2.BaseLoader] = []
    if directory:
        loaders.append(jinja2.FileSystemLoader(directory))
    loaders.append(jinja2.PrefixLoader({"hpcgate": jinja2.FunctionLoader(_builtin_source)}))
    env = SandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        # on, so that Jinja2 marks block output (super()) as safe; _finalize quotes the rest
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    env.filters["sh"] = _sh
    env.filters["shjoin"] = _shjoin
    return env


def template_source(system_name: str, system: System, partition: str) -> tuple[str, str | None]:
    """``(config key, path)`` of the template a launch uses; path None: the built-in."""
    part = system.partitions.get(partition)
    if part is not None and part.template:
        return f"systems.{system_name}.partitions.{partition}.template", part.template
    if system.template:
        return f"systems.{system_name}.template", system.template
    return "built-in template", None


def template_values(
    request: LaunchRequest,
    *,
    user: str,
    account: str,
    server_name: str,
    run_id: str,
    workdir: str,
    command: Sequence[str],
    connection_file: bool,
) -> dict[str, Any]:
    """The template's variables (:data:`TEMPLATE_VARIABLES`) for one launch."""
    system = request.system_config
    safe = _safe_name(server_name)
    return {
        "job_name": f"hpcgate-{safe}",
        "system": request.system,
        "partition": request.partition,
        "project": request.project,
        "nodes": request.nodes,
        "cpus": request.cpus,
        "memory": request.memory,
        "gpus": request.gpus,
        "runtime": request.runtime,
        "user": user,
        "account": account,
        "server_name": server_name,
        "run_id": run_id,
        "env_file": f".hpcgate/run/{run_id}.env",
        "connection_file": f".hpcgate/run/{run_id}.json" if connection_file else None,
        "workdir": workdir,
        "setup": [ShellCode(line) for line in [*system.setup, *request.partition_config.setup]],
        "command": list(command),
    }


def render_job_script(system_name: str, system: System, partition: str, values: dict[str, Any]) -> str:
    """The job script for ``values``; :class:`SubmitError` (naming the template) on failure.

    Admin errors (a missing file, a syntax error, an unknown variable) are logged with
    the config key and the path; the user reads that the admins must fix the template.
    """
    key, path = template_source(system_name, system, partition)
    try:
        if path is None:
            template = template_environment().get_template(BUILTIN_TEMPLATE)
        else:
            file = Path(path).expanduser()
            template = template_environment(str(file.parent)).get_template(file.name)
        script = template.render(values)
    except (jinja2.TemplateError, OSError) as exc:
        where = f"{key} ({path})" if path else key
        log.error("Cannot render the Slurm job template %s: %s: %s", where, type(exc).__name__, exc)
        raise SubmitError(
            f"The job template of {system_name} cannot be used ({where}: {exc}). "
            "Tell the hub's admins; they need to fix the template."
        ) from exc
    if not script.startswith("#!"):
        log.error("Slurm job template %s does not start with #! (sbatch needs an interpreter line)", key)
        raise SubmitError(
            f"The job template of {system_name} ({key}) does not start with an interpreter "
            "line (#!). Tell the hub's admins; they need to fix the template."
        )
    return script


# --- squeue / sacct output -------------------------------------------------------------


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
    mapped = STATE_MAP.get(word, JobState.UNKNOWN)
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


def _controller_error(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {code}"


# --- the backend -----------------------------------------------------------------------


class SlurmBackend(SSHBackend):
    """Servers as Slurm batch jobs, submitted and watched over SSH on login hosts.

    Shares the ssh backend's login-host choice, log tail (``~/.hpcgate/logs/<log>.log``)
    and connection file (``~/.hpcgate/run/<run id>.json``).
    """

    kind = "slurm"
    needs_tunnel = True
    uses_ssh_pool = True
    #: Seconds :meth:`cancel` waits for a cancelled job to stop running.
    cancel_wait = 20
    #: Accounts tried in turn for the status query before it counts as failed.
    status_accounts_tried = 3

    def __init__(self, name: str, system: System, context: BackendContext, pool: SSHPool | None = None):
        super().__init__(name, system, context, pool)
        #: None: not known yet whether ``sacct`` works on this system.
        self._sacct_works: bool | None = None
        #: Number of scheduler commands sent (squeue, sacct, sbatch, scancel): for tests
        #: and benchmarks.
        self.commands: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.commands[what] = self.commands.get(what, 0) + 1

    # --- submit ---------------------------------------------------------------------

    async def _start_on(self, host: str, spec: JobSpec) -> JobHandle:
        """Render the job script and sbatch it on ``host`` (called by ``submit``)."""
        assert self.system.ssh is not None
        run_id = f"{_safe_name(spec.server_name)}-{secrets.token_hex(6)}"
        workdir = remote_workdir(spec.workdir, spec.account)
        connection_file = bool(self.system.ssh.connection_file)
        values = template_values(
            spec.request,
            user=spec.hub_user,
            account=spec.account,
            server_name=spec.server_name,
            run_id=run_id,
            workdir=workdir,
            command=spec.command,
            connection_file=connection_file,
        )
        script = render_job_script(self.name, self.system, spec.request.partition, values)
        env = dict(spec.env)
        # the node picks its own address; the tunnel reaches it through the jump host
        env.pop("HPCGATE_BIND_IP", None)
        env.pop("HPCGATE_REPORT_HOST", None)
        separator = f"--hpcgate-job-script-{secrets.token_hex(16)}--"
        self._count("sbatch")
        try:
            result = await self.remote.run_script(
                host,
                spec.account,
                SUBMIT_SCRIPT,
                [run_id, separator],
                name="sbatch",
                input=env_lines(env) + separator + "\n" + script,
                check=True,
            )
        except CommandFailed as exc:
            raise SubmitError(_sbatch_refusal(self.name, spec.request, exc.result.stderr)) from exc
        first = result.stdout.strip().splitlines()[-1:] or [""]
        job_id = first[0].split(";", 1)[0].strip()
        if not JOB_ID.match(job_id):
            raise SubmitError(
                f"sbatch on {host} gave no job id ({result.stdout.strip()[:200] or 'no output'}). "
                "Tell the hub's admins."
            )
        return JobHandle(
            job_id=job_id,
            host=host,
            extra={
                "account": spec.account,
                "log": f"slurm-{job_id}",
                "run_id": run_id,
                "connection_file": connection_file,
                "partition": spec.request.partition,
            },
        )

    # --- status ---------------------------------------------------------------------

    def _status_logins(self, handles: Sequence[JobHandle]) -> list[str]:
        """Accounts to run the system-wide squeue as, best first."""
        assert self.system.ssh is not None
        identity = self.system.ssh.identity
        if identity.mode == "service_account" and identity.service_account:
            return [identity.service_account]
        # the most common owner first: its connection is the likeliest to be open already
        counts: dict[str, int] = {}
        for h in handles:
            counts[h.extra["account"]] = counts.get(h.extra["account"], 0) + 1
        return sorted(counts, key=lambda a: (-counts[a], a))[: self.status_accounts_tried]

    def _status_hosts(self) -> list[str]:
        """Login hosts in catalog order; hosts that failed recently go last."""
        now = time.monotonic()
        recent = {h for h, t in self._unreachable.items() if now - t < HOST_RETRY_AFTER}
        hosts = list(self.system.hosts)
        return [h for h in hosts if h not in recent] + [h for h in hosts if h in recent]

    async def _squeue(self, account: str, job_ids: Sequence[str], host: str | None = None) -> dict[str, JobStatus]:
        """One squeue for ``job_ids`` as ``account``; StatusUnavailable when Slurm cannot say."""
        argv = [*SQUEUE_ENV, "squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", SQUEUE_FIELDS]
        errors = []
        for login_host in [host] if host else self._status_hosts():
            self._count("squeue")
            try:
                result = await self.remote.run(login_host, account, argv)
            except RemoteError as exc:
                self._unreachable[login_host] = time.monotonic()
                errors.append(str(exc))
                continue
            self._unreachable.pop(login_host, None)
            if result.returncode == 0:
                return parse_squeue(result.stdout)
            if UNKNOWN_JOB.search(result.stderr):
                return {}  # one id asked, and Slurm has forgotten it
            raise ControllerError(f"squeue on {login_host}: {_controller_error(result.stderr, result.returncode)}")
        raise StatusUnavailable("; ".join(errors) or "no login host")

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Every job of ``handles`` from one squeue (see the module docstring)."""
        if not handles:
            return {}
        ids = [h.job_id for h in handles]
        errors = []
        for account in self._status_logins(handles):
            try:
                return await self._squeue(account, ids)
            except ControllerError:
                raise  # Slurm itself cannot answer: another login would not help
            except StatusUnavailable as exc:
                errors.append(str(exc))  # this account could not log in: try the next
        raise StatusUnavailable("; ".join(errors))

    async def confirm_ended(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Ask about jobs missing from :meth:`status` once more, as their owners.

        ``squeue`` first (sees jobs hidden by ``PrivateData``), then ``sacct`` where
        accounting runs (final state and exit code of jobs squeue has forgotten). Jobs
        neither knows are left out: they ended.
        """
        by_account: dict[str, list[JobHandle]] = {}
        for h in handles:
            by_account.setdefault(h.extra["account"], []).append(h)
        answer: dict[str, JobStatus] = {}
        for account, owned in by_account.items():
            found = await self._squeue(account, [h.job_id for h in owned])
            answer.update(found)
            missing = [h.job_id for h in owned if h.job_id not in found]
            if missing and self._sacct_works is not False:
                answer.update(await self._sacct(account, missing))
        return answer

    async def _sacct(self, account: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        argv = ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,Reason,NodeList,ExitCode"]
        self._count("sacct")
        host = self._status_hosts()[0]
        try:
            result = await self.remote.run(host, account, argv)
        except RemoteError as exc:
            raise StatusUnavailable(str(exc)) from exc
        if result.returncode != 0:
            if "accounting storage is disabled" in result.stderr or "not running a supported accounting" in result.stderr:
                log.info("sacct does not work on %s (%s); using squeue only", self.name, result.stderr.strip())
                self._sacct_works = False
                return {}
            raise StatusUnavailable(f"sacct on {host}: {_controller_error(result.stderr, result.returncode)}")
        self._sacct_works = True
        return parse_sacct(result.stdout)

    # --- stop -----------------------------------------------------------------------

    async def cancel(self, handle: JobHandle) -> None:
        """scancel the job and wait (up to :attr:`cancel_wait` s) until it stopped running."""
        host = handle.host or self.system.hosts[0]
        self._count("scancel")
        result = await self.remote.run_script(
            host,
            handle.extra["account"],
            CANCEL_SCRIPT,
            [handle.job_id, handle.extra.get("run_id", "-"), str(self.cancel_wait)],
            name="scancel",
            timeout=self.cancel_wait + 30,
        )
        if not result.ok:
            raise RemoteError(
                f"Cannot cancel Slurm job {handle.job_id} on {host}: "
                f"{_controller_error(result.stderr, result.returncode)}"
            )
        if result.stderr.strip():
            log.warning("scancel of job %s on %s: %s", handle.job_id, host, result.stderr.strip())


def _sbatch_refusal(system_name: str, request: LaunchRequest, stderr: str) -> str:
    """The sentence a user reads when sbatch refused the job."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    said = "; ".join(ln.removeprefix("sbatch: error: ") for ln in lines[-3:]) or "no reason given"
    return (
        f"Slurm on {system_name} refused the job: {said}. "
        f"Choose fewer resources in partition {request.partition}, or another partition, and start again."
    )


def explain_stuck(reason: str) -> str:
    """The sentence a user reads when a job can never start."""
    why = STUCK_EXPLAINED.get(reason)
    detail = f" ({why})" if why else ""
    return (
        f"Slurm will not start this job: {reason}{detail}. "
        "Choose fewer resources or another partition or project, and start again."
    )
