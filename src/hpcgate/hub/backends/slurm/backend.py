"""The ``slurm`` backend: JupyterLab as a Slurm batch job, submitted on a login host.

Submit
    The job script is rendered from a template (:mod:`.template`) and piped to
    ``sbatch --parsable`` on one of the system's login hosts, over SSH, as the user's
    account (:class:`~hpcgate.remote.SystemRemote`). Login hosts are taken round
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

Accounting (projects from Slurm)
    ``sacctmgr -n -P show user withassoc format=User,DefaultAccount,Account`` -- the
    associations (``show assoc``) with each user's default account, in one call -- once
    per ``projects.ttl`` for all users (:class:`~hpcgate.hub.accounting.AccountingCache`).
    Who may read all associations: any user, unless slurmdbd has ``PrivateData=users`` or
    ``accounts``; then only operators, admins and coordinators. So it runs as
    ``projects.query_as`` if the catalog names one (a non-personal reader account, a
    Slurm operator where PrivateData hides associations, reached like any account of the
    system's identity: its key through ``key_path``, or ``switch_user`` from the service
    account), else as the system's service account (``identity.mode:
    service_account``), else as the account of the user whose form needs it (enough
    without PrivateData). Never as the ``tunnel_account``: that login only forwards
    ports (``restrict``/``nologin`` in a sound set-up). ``projects.cluster`` limits the
    answer to one cluster of a slurmdbd that serves several.

Reservations
    ``env SLURM_TIME_FORMAT=%s scontrol show reservation -o`` -- every reservation of
    the system, in one call -- once per ``HPCGate.reservations_interval`` for all users
    (:class:`~hpcgate.hub.reservations.ReservationCache`), read by the same account as
    the associations. A launch in one is submitted with ``sbatch --reservation=<name>``
    (a name the catalog validated against the user's reservations, passed as a
    positional parameter, never into the job script).

Pending reasons
    A pending job whose reason can never clear by waiting (:data:`STUCK_REASONS`, e.g.
    ``PartitionConfig`` for more CPUs than any node of the partition has) is reported
    with ``stuck=True``; the spawner then cancels it and shows the reason.

Stop
    ``scancel`` as the owner, then up to :attr:`SlurmBackend.cancel_wait` seconds until
    the job no longer runs (Slurm sends SIGTERM, SIGKILL after ``KillWait``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from .... import protocol
from ....catalog import LaunchRequest, System
from ....energy import parse_consumed_energy
from ....remote import CommandFailed, RemoteError, SSHPool
from ...health import SystemHealth
from ..base import (
    AccountingUnavailable,
    Association,
    Backend,
    BackendContext,
    BackendError,
    CancelError,
    JobHandle,
    JobSpec,
    JobStatus,
    SchedulerReservation,
    StatusUnavailable,
    SubmitError,
)
from ..login import PRIVATE_DIRS, LoginHosts, env_lines, remote_workdir, safe_name
from .parse import (
    FINAL_STATES,
    JOB_ID,
    SINFO_FORMAT,
    SQUEUE_ENV,
    SQUEUE_FIELDS,
    UNKNOWN_JOB,
    ControllerError,
    controller_error,
    health_from,
    parse_associations,
    parse_sacct,
    parse_squeue,
    reservations_from,
)
from .template import render_job_script, template_values

log = logging.getLogger("hpcgate.backends.slurm")

# The scripts below are constants; every value reaches them as a positional parameter.

#: $1 run id, $2 separator line, $3 the reservation (validated by the catalog) or "".
#: stdin: ``export NAME='value'`` lines, the separator, the job script. Prints the job
#: id; sbatch's error goes to stderr.
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
if out=$(sbatch --parsable "--output=$base/logs/slurm-%j.log" ${3:+"--reservation=$3"} < "$script"); then
  rm -f "$script"
  echo "$out"
else
  code=$?
  rm -f "$script" "$envfile"
  exit "$code"
fi
"""

#: $1 job id, $2 run id, $3 seconds to wait for the job to end (a state of
#: :data:`~.parse.FINAL_STATES`, or gone from squeue).
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
    ""|@FINAL_STATES@) exit 0 ;;
  esac
  sleep 0.25
  i=$((i + 1))
done
echo "job $1 is still $state after $3 s" >&2
exit 0
""".replace("@FINAL_STATES@", "|".join(sorted(FINAL_STATES)))


# --- the backend -----------------------------------------------------------------------


class SlurmBackend(Backend):
    """Servers as Slurm batch jobs, submitted and watched over SSH on login hosts.

    Composes :class:`~hpcgate.hub.backends.login.LoginHosts` (as the ssh backend
    does): the login-host choice, the log tail (``~/.hpcgate/logs/<log>.log``) and the
    connection file (``~/.hpcgate/run/<run id>.json``).
    """

    kind = "slurm"
    needs_tunnel = True
    uses_ssh_pool = True
    #: Seconds :meth:`cancel` waits for a cancelled job to stop running.
    cancel_wait = 20
    #: Accounts tried in turn for the status query before it counts as failed.
    status_accounts_tried = 3

    def __init__(self, name: str, system: System, context: BackendContext, pool: SSHPool | None = None):
        super().__init__(name, system, context)
        #: the login hosts, the commands run there, the server's log and connection file
        self.login = LoginHosts(name, system, context, pool)
        self.remote = self.login.remote
        #: None: not known yet whether ``sacct`` works on this system.
        self._sacct_works: bool | None = None
        #: Number of scheduler commands sent (squeue, sacct, sbatch, scancel): for tests
        #: and benchmarks.
        self.commands: dict[str, int] = {}
        #: the account health queries run as when there is no service account
        self._health_account = ""

    def _count(self, what: str) -> None:
        self.commands[what] = self.commands.get(what, 0) + 1

    # --- submit ---------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobHandle:
        return await self.login.submit(spec.request.partition, lambda host: self._start_on(host, spec))

    async def _start_on(self, host: str, spec: JobSpec) -> JobHandle:
        """Render the job script and sbatch it on ``host`` (called by ``submit``)."""
        assert self.system.ssh is not None
        run_id = f"{safe_name(spec.server_name)}-{secrets.token_hex(6)}"
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
        env.pop(protocol.BIND_IP, None)
        env.pop(protocol.REPORT_HOST, None)
        separator = f"--hpcgate-job-script-{secrets.token_hex(16)}--"
        self._count("sbatch")
        try:
            result = await self.remote.run_script(
                host,
                spec.account,
                SUBMIT_SCRIPT,
                [run_id, separator, spec.request.reservation or ""],
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

    async def _squeue(self, account: str, job_ids: Sequence[str], host: str | None = None) -> dict[str, JobStatus]:
        """One squeue for ``job_ids`` as ``account``; StatusUnavailable when Slurm cannot say."""
        argv = [*SQUEUE_ENV, "squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", SQUEUE_FIELDS]
        login_host, (result,) = await self._on_a_login(account, [("squeue", argv)], StatusUnavailable, host)
        if result.returncode == 0:
            return parse_squeue(result.stdout)
        if UNKNOWN_JOB.search(result.stderr):
            return {}  # one id asked, and Slurm has forgotten it
        raise ControllerError(f"squeue on {login_host}: {controller_error(result.stderr, result.returncode)}")

    async def _on_a_login(
        self, account: str, commands: list[tuple[str, list[str]]], error: type[BackendError], host: str | None = None
    ) -> tuple[str, list[Any]]:
        """Run ``commands`` (``(name for self.commands, argv)``, in order) as ``account``
        on the first login host that answers (or on ``host`` alone): that host and the
        results. Raises ``error`` with every host's failure when none answers."""
        errors = []
        for login_host in [host] if host else self.login.in_order():
            try:
                results = []
                for name, argv in commands:
                    self._count(name)
                    results.append(await self.remote.run(login_host, account, argv))
            except RemoteError as exc:
                self.login.failed(login_host)
                errors.append(str(exc))
                continue
            self.login.worked(login_host)
            return login_host, results
        raise error("; ".join(errors) or "no login host")

    # --- accounting -----------------------------------------------------------------

    async def associations(self, asking: str) -> list[Association]:
        """All users' associations from one ``sacctmgr`` (see the module doc, Accounting)."""
        argv = ["sacctmgr", "-n", "-P", "show", "user", "withassoc", "format=User,DefaultAccount,Account"]
        if self.system.projects.cluster:
            argv.append(f"cluster={self.system.projects.cluster}")
        return parse_associations(await self._read_table(asking, argv, AccountingUnavailable))

    async def reservations(self, asking: str) -> list[SchedulerReservation]:
        """Every reservation of the system from one ``scontrol show reservation -o``
        (times as epoch seconds; see the module doc, Reservations). Without
        ``PrivateData=reservations`` every account sees them all; with it, only those
        the reading account may use."""
        argv = [*SQUEUE_ENV, "scontrol", "show", "reservation", "-o"]
        return reservations_from(await self._read_table(asking, argv, StatusUnavailable))

    async def _read_table(self, asking: str, argv: list[str], failed: type[BackendError]) -> str:
        """The output of a system-wide query (associations, reservations) on the first
        login host that answers, run as ``projects.query_as``, else the service
        account, else ``asking`` (the user who needs it); ``failed`` when none answers
        or the command fails."""
        assert self.system.ssh is not None
        identity = self.system.ssh.identity
        service = identity.service_account if identity.mode == "service_account" else None
        login = self.system.projects.query_as or service or asking
        command = next(a for a in argv if not a.startswith(("env", "SLURM_")))
        host, (result,) = await self._on_a_login(login, [(command, argv)], failed)
        if result.returncode != 0:
            raise failed(f"{command} on {host}: {controller_error(result.stderr, result.returncode)}")
        return result.stdout

    # --- health -----------------------------------------------------------------------

    async def health(self) -> SystemHealth | None:
        """``sinfo`` and ``scontrol show reservation`` on one login host, as the service
        account or the account of the last status query (no account known yet: None).
        Raises StatusUnavailable when no login host answers or sinfo fails."""
        assert self.system.ssh is not None
        identity = self.system.ssh.identity
        account = identity.service_account if identity.mode == "service_account" else self._health_account
        if not account:
            return None
        commands = [("sinfo", ["sinfo", "-h", "-o", SINFO_FORMAT]), ("scontrol", ["scontrol", "show", "reservation", "-o"])]
        login_host, (sinfo, res) = await self._on_a_login(account, commands, StatusUnavailable)
        if sinfo.returncode != 0:
            raise StatusUnavailable(f"sinfo on {login_host}: {controller_error(sinfo.stderr, sinfo.returncode)}")
        return health_from(sinfo.stdout, res.stdout if res.returncode == 0 else "")

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Every job of ``handles`` from one squeue (see the module docstring)."""
        if not handles:
            return {}
        ids = [h.job_id for h in handles]
        errors = []
        logins = self._status_logins(handles)
        if logins:
            self._health_account = logins[0]  # health queries go as an account that logs in
        for account in logins:
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
        host = self.login.in_order()[0]
        try:
            result = await self.remote.run(host, account, argv)
        except RemoteError as exc:
            raise StatusUnavailable(str(exc)) from exc
        if result.returncode != 0:
            if "accounting storage is disabled" in result.stderr or "not running a supported accounting" in result.stderr:
                log.info("sacct does not work on %s (%s); using squeue only", self.name, result.stderr.strip())
                self._sacct_works = False
                return {}
            raise StatusUnavailable(f"sacct on {host}: {controller_error(result.stderr, result.returncode)}")
        self._sacct_works = True
        return parse_sacct(result.stdout)

    async def consumed_energy(self, handle: JobHandle) -> float | None:
        """``sacct ConsumedEnergyRaw`` of the job in Wh, as its owner; None where
        accounting does not run or no energy plugin recorded anything (``0``)."""
        if self._sacct_works is False:
            return None
        argv = ["sacct", "-n", "-P", "-X", "-j", handle.job_id, "-o", "ConsumedEnergyRaw"]
        self._count("sacct")
        host = handle.host or self.login.in_order()[0]
        try:
            result = await self.remote.run(host, handle.extra["account"], argv)
        except RemoteError as exc:
            raise StatusUnavailable(str(exc)) from exc
        if result.returncode != 0:
            if "accounting storage is disabled" in result.stderr or "not running a supported accounting" in result.stderr:
                self._sacct_works = False
            return None
        return parse_consumed_energy(result.stdout)

    # --- stop -----------------------------------------------------------------------

    async def cancel(self, handle: JobHandle) -> None:
        """scancel the job and wait (up to :attr:`cancel_wait` s) until it stopped running."""
        host = handle.host or self.system.hosts[0]
        self._count("scancel")
        try:
            result = await self.remote.run_script(
                host,
                handle.extra["account"],
                CANCEL_SCRIPT,
                [handle.job_id, handle.extra.get("run_id", "-"), str(self.cancel_wait)],
                name="scancel",
                timeout=self.cancel_wait + 30,
            )
        except RemoteError as exc:
            raise CancelError(str(exc)) from exc
        if not result.ok:
            raise CancelError(
                f"Cannot cancel Slurm job {handle.job_id} on {host}: "
                f"{controller_error(result.stderr, result.returncode)}"
            )
        if result.stderr.strip():
            log.warning("scancel of job %s on %s: %s", handle.job_id, host, result.stderr.strip())

    # --- logs, connection file ----------------------------------------------------------

    async def log_tail(self, handle: JobHandle, nbytes: int = 4096) -> str:
        return await self.login.log_tail(handle, nbytes)

    async def read_connection_file(self, handle: JobHandle) -> tuple[str, int] | None:
        return await self.login.read_connection_file(handle)

    async def close(self) -> None:
        await self.login.close()


def _sbatch_refusal(system_name: str, request: LaunchRequest, stderr: str) -> str:
    """The sentence a user reads when sbatch refused the job."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    said = "; ".join(ln.removeprefix("sbatch: error: ") for ln in lines[-3:]) or "no reason given"
    return (
        f"Slurm on {system_name} refused the job: {said}. "
        f"Choose fewer resources in partition {request.partition}, or another partition, and start again."
    )


