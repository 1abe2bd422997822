"""The ``ssh`` backend: JupyterLab as a detached process on a system's login host.

- Host: the login hosts of the user's partition (``ssh.partition_hosts``; the user picks
  a login node by picking the partition) or else all of the system's ``hosts``, taken
  round robin; a host that cannot be reached is skipped (and avoided for
  ``HOST_RETRY_AFTER`` seconds) and the next one is tried (:mod:`.login`, shared with
  the slurm backend).
- Start: one SSH command as the user's account runs :data:`START_SCRIPT`. The
  environment (with the server's API token) arrives on stdin and is written to a 0600
  file under ``~/.hpcgate/run`` (0700). The server's shell is a login shell
  (``sh -l``: ``/etc/profile`` and ``~/.profile``), so the server has the account's
  login environment (``PATH``, module systems); it then reads and removes that file,
  whose variables (``JUPYTERHUB_*``, ``HPCGATE_*``; never the hub's ``PATH`` or other
  hub-side variables) come on top; no locale at all becomes ``LANG=C.UTF-8``. The
  server runs in its own session (``setsid``), detached from the SSH session, with
  stdin from /dev/null and its output in
  ``~/.hpcgate/logs/<hub user>-<server>.log`` (0600). The job id is ``<pid>@<host>``; the handle
  keeps the process start time so a recycled PID is never taken for the server.
- Status: one ``ps -o pid=,stat=,lstart= -p pid1,pid2,...`` per host for every server there.
  A host that cannot be reached makes its servers UNKNOWN, never stopped.
- Stop: SIGTERM to the server's process group and every descendant (kernels run in
  sessions of their own), SIGKILL to what is left after ``stop_grace`` seconds.
- Connection file: with ``ssh.connection_file`` the server also writes its address to
  ``~/.hpcgate/run/<run id>.json`` (0600), which :meth:`read_connection_file` reads and
  removes -- for servers whose callback to the hub API cannot get through.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence

from ... import protocol
from ...remote import RemoteError, SSHPool
from .base import (
    Backend,
    BackendContext,
    CancelError,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    StatusUnavailable,
    SubmitError,
)
from .login import PRIVATE_DIRS, LoginHosts, env_lines, remote_workdir, safe_name

log = logging.getLogger("hpcgate.backends.ssh")

# The scripts below are constants; every value reaches them as a positional parameter.
# They are written for POSIX sh and procps/coreutils, as found on Linux login nodes.

#: $1 log name, $2 run id, $3 working directory (relative to $HOME or absolute),
#: $4 setup lines (admin's shell, from the catalog), $5 "1" for a connection file,
#: $6... the server's argv. stdin: the environment as ``export NAME='value'`` lines.
START_SCRIPT = PRIVATE_DIRS + r"""
log="$base/logs/$1.log"
envfile="$base/run/$2.env"
conn=""
if [ "$5" = 1 ]; then conn="$base/run/$2.json"; rm -f "$conn"; fi
cat > "$envfile"
: > "$log"
chmod 600 "$log" "$envfile"
workdir=$3
setup=$4
shift 5
setsid sh -l -c '
  . "$1"; rm -f "$1"
  if [ -n "$2" ]; then @CONNECTION_FILE@=$2; export @CONNECTION_FILE@; fi
  cd "$3" || { echo "hpcgate: cannot change to the working directory $3" >&2; exit 1; }
  eval "$4"
  shift 4
  exec "$@"
' hpcgate-server "$envfile" "$conn" "$workdir" "$setup" "$@" > "$log" 2>&1 < /dev/null &
pid=$!
echo "$pid"
LC_ALL=C ps -o lstart= -p "$pid" || true
""".replace("@CONNECTION_FILE@", protocol.CONNECTION_FILE)

#: $1 pid, $2 its start time (ps lstart), $3 grace seconds, $4 run id.
STOP_SCRIPT = r"""
export LC_ALL=C
rm -f "$HOME/.hpcgate/run/$4.env" "$HOME/.hpcgate/run/$4.json"
pid=$1
now=$(ps -o lstart= -p "$pid") || exit 0
[ "$(echo $now)" = "$(echo $2)" ] || exit 0
desc=$(ps -e -o pid=,ppid= | awk -v root="$pid" '
  { parent[$1] = $2 }
  END { n = 1; q[1] = root
        for (i = 1; i <= n; i++) for (c in parent) if (parent[c] == q[i]) { q[++n] = c; printf "%s ", c } }')
kill -TERM "-$pid" 2>/dev/null
[ -n "$desc" ] && kill -TERM $desc 2>/dev/null
all=$(echo $pid $desc | tr ' ' ,)
alive() { ps -o pid=,stat= -p "$all" | awk '$2 !~ /^Z/ { printf " %s", $1 }'; }
wait_gone() {
  i=0
  while [ "$i" -lt "$1" ]; do
    [ -z "$(alive)" ] && return 0
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}
wait_gone $(($3 * 10)) && exit 0
kill -KILL "-$pid" 2>/dev/null
kill -KILL $pid $desc 2>/dev/null
wait_gone 50 && exit 0
echo "processes still alive after SIGKILL:$(alive)" >&2
exit 1
"""


def _one_line(text: str) -> str:
    """Normalise whitespace (``ps lstart`` pads days with a space)."""
    return " ".join(text.split())


class SSHBackend(Backend):
    """Servers as detached processes on login hosts, reached over SSH."""

    kind = "ssh"
    needs_tunnel = True
    #: HPCGate passes its shared SSHPool as ``pool``.
    uses_ssh_pool = True
    #: Seconds between SIGTERM and SIGKILL when stopping a server.
    stop_grace = 5

    def __init__(self, name, system, context: BackendContext, pool: SSHPool | None = None):
        super().__init__(name, system, context)
        #: the login hosts, the commands run there, the server's log and connection file
        self.login = LoginHosts(name, system, context, pool)
        self.remote = self.login.remote

    # --- submit ---------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobHandle:
        return await self.login.submit(spec.request.partition, lambda host: self._start_on(host, spec))

    async def _start_on(self, host: str, spec: JobSpec) -> JobHandle:
        assert self.system.ssh is not None
        # one log per hub user and server: several hub users may share one account (an
        # account map), and one log for all of them mixed their servers' lines
        log_name = safe_name(f"{spec.hub_user}-{spec.server_name or 'default'}")
        run_id = f"{log_name}-{secrets.token_hex(6)}"
        env = dict(spec.env)
        if host == self.system.tunnel_host:
            # the tunnel ends on this host: the lab needs to listen on loopback only
            env[protocol.BIND_IP] = "127.0.0.1"
            env[protocol.REPORT_HOST] = "127.0.0.1"
        else:
            env.pop(protocol.BIND_IP, None)
            env.pop(protocol.REPORT_HOST, None)
        setup = "\n".join([*self.system.setup, *spec.request.partition_config.setup])
        workdir = remote_workdir(spec.workdir, spec.account)
        result = await self.remote.run_script(
            host,
            spec.account,
            START_SCRIPT,
            [
                log_name,
                run_id,
                workdir,
                setup,
                "1" if self.system.ssh.connection_file else "",
                *spec.command,
            ],
            name="start",
            input=env_lines(env),
            check=True,
        )
        lines = result.stdout.strip().splitlines()
        if not lines or not lines[0].strip().isdigit():
            raise SubmitError(f"The server on {host} did not start: {result.stderr.strip() or 'no process id'}.")
        pid = lines[0].strip()
        started = _one_line(lines[1]) if len(lines) > 1 else ""
        return JobHandle(
            job_id=f"{pid}@{host}",
            host=host,
            extra={
                "pid": int(pid),
                "start": started,
                "account": spec.account,
                "log": log_name,
                "run_id": run_id,
                "connection_file": bool(self.system.ssh.connection_file),
            },
        )

    # --- status ---------------------------------------------------------------------

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        by_host: dict[str, list[JobHandle]] = {}
        for h in handles:
            by_host.setdefault(h.host or "", []).append(h)
        answers = await asyncio.gather(
            *(self._status_on(host, hs) for host, hs in by_host.items()), return_exceptions=True
        )
        result: dict[str, JobStatus] = {}
        errors = []
        for (host, hs), answer in zip(by_host.items(), answers, strict=True):
            if isinstance(answer, RemoteError):
                errors.append(str(answer))
                for h in hs:
                    result[h.job_id] = JobStatus(JobState.UNKNOWN, reason=str(answer), node=host)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                result.update(answer)
        if errors and len(errors) == len(by_host):
            raise StatusUnavailable("; ".join(errors))
        return result

    async def _status_on(self, host: str, handles: list[JobHandle]) -> dict[str, JobStatus]:
        """One ``ps`` on ``host`` for all ``handles`` there; ended ones are left out."""
        pids = ",".join(str(int(h.extra["pid"])) for h in handles)
        result = await self.remote.run(
            host, handles[0].extra["account"], ["env", "LC_ALL=C", "ps", "-o", "pid=,stat=,lstart=", "-p", pids]
        )
        if result.returncode not in (0, 1) or (result.returncode == 1 and result.stderr.strip()):
            raise RemoteError(f"ps on {host} failed: {result.stderr.strip() or result.returncode}")
        alive: dict[int, str] = {}
        for line in result.stdout.splitlines():
            fields = line.split(None, 2)
            # a zombie has ended; it only waits for its parent (init) to reap it
            if len(fields) == 3 and fields[0].isdigit() and not fields[1].startswith("Z"):
                alive[int(fields[0])] = _one_line(fields[2])
        answer = {}
        for h in handles:
            started = alive.get(int(h.extra["pid"]))
            if started is not None and (not h.extra.get("start") or started == h.extra["start"]):
                answer[h.job_id] = JobStatus(JobState.RUNNING, node=host)
        return answer

    # --- stop, logs, connection file --------------------------------------------------

    async def cancel(self, handle: JobHandle) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace`` s, to the server and its descendants."""
        assert handle.host
        try:
            result = await self.remote.run_script(
                handle.host,
                handle.extra["account"],
                STOP_SCRIPT,
                [str(int(handle.extra["pid"])), handle.extra.get("start", ""), str(self.stop_grace), handle.extra["run_id"]],
                name="stop",
                timeout=self.stop_grace + 30,
            )
        except RemoteError as exc:
            raise CancelError(str(exc)) from exc
        if not result.ok:
            raise CancelError(f"Cannot stop the server on {handle.host}: {result.stderr.strip()}")

    async def log_tail(self, handle: JobHandle, nbytes: int = 4096) -> str:
        return await self.login.log_tail(handle, nbytes)

    async def read_connection_file(self, handle: JobHandle) -> tuple[str, int] | None:
        return await self.login.read_connection_file(handle)

    async def close(self) -> None:
        await self.login.close()
