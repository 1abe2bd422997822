"""The sandbox cluster as one object: :class:`Sandbox` builds, checks and removes it.

``Sandbox().up()`` returns a :class:`SandboxInfo` (addresses, accounts, key paths,
catalog, venv, daemon PIDs). It is idempotent: on a running sandbox it only restarts
what is missing (say an sshd a test stopped), brings the sshd config (sshd re-reads a
changed one) and the catalog up to date, and reports -- unless a test session that held
it died without releasing it (killed) and nobody else holds it: then it starts clean
(down, then a cold start), so no job, lab or session of the killed run is left in the
queue or on the nodes for the next one. ``down()`` leaves no
sandbox process, namespace, UTS handle, ``/etc/netns`` overlay, veth or route behind;
accounts, keys, the sshd host key and the job venv stay (cached; see layout.py).

Both take a lock (``/run/hpcgate-sandbox.lock``), so several processes -- pytest
sessions, the CLI -- can call them at once. All of it needs root.

Integration tests build their cluster only through this module (see
the ``sandbox`` fixture of ``tests/conftest.py``; their test-only handles on it are in
``harness/sandbox.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import accounting, jobenv, network, slurm, ssh, users
from . import layout as L
from .catalog import write_catalog
from .daemons import EXECUTABLES, STOP_ORDER, daemon_pid, stop_daemon
from .identity import identity_down, identity_status, identity_up
from .modules import write_modules
from .proc import SandboxError, kill_pids, pid_alive, pids_of_users, run

RUNUSER = "/usr/sbin/runuser"
#: Short names accepted wherever a namespace is expected.
NS_ALIASES = {
    "login": L.LOGIN_NS,
    "compute": L.COMPUTE_NS,
    L.LOGIN_HOST: L.LOGIN_NS,
    L.COMPUTE_HOST: L.COMPUTE_NS,
}


def require_root(what: str = "the hpcgate sandbox") -> None:
    """Raise :class:`SandboxError` unless running as root."""
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise SandboxError(
            f"{what} needs root: it creates network namespaces, Unix accounts and daemons "
            f"(sshd, munged, MariaDB, slurmdbd, slurmctld, slurmd). You are {user!r}; run it as root."
        )


@dataclass(frozen=True)
class SandboxInfo:
    """What a running sandbox offers: where to connect, as whom, with which files."""

    hub_addr: str
    login_addr: str
    login_inner_addr: str
    compute_addr: str
    login_ns: str
    compute_ns: str
    login_host: str
    compute_host: str
    ssh_port: int
    #: hub user name -> Unix account
    users: dict[str, str]
    tunnel_account: str
    #: account -> private key (root-owned, 0600)
    keys: dict[str, Path]
    known_hosts: Path
    #: the SSH CA's private key (root-owned, 0600) the catalog's certificates come from
    ca_key: Path
    catalog: Path
    account_map: Path
    venv: Path
    slurm_conf: Path
    partitions: tuple[str, ...]
    state_dir: Path
    log_dir: Path
    #: daemon -> PID (munged, mariadbd, slurmdbd, slurmctld, slurmd, sshd)
    pids: dict[str, int]
    #: phase -> seconds of the ``up`` that built this sandbox
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def accounts(self) -> list[str]:
        return list(self.users.values())

    def ssh_argv(self, account: str, *command: str, host: str | None = None) -> list[str]:
        """OpenSSH client argv logging in as ``account`` with its key and host key check.

        ``command`` is an argv: it is quoted into the one string the remote shell runs.
        """
        return [
            "ssh",
            "-i",
            str(self.keys[account]),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.ssh_port),
            f"{account}@{host or self.login_addr}",
            *([shlex.join(command)] if command else []),
        ]

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


class Sandbox:
    """The machine's sandbox cluster. Cheap to create; all work happens in methods."""

    def __init__(self, layout: L.Layout | None = None):
        self.layout = layout or L.Layout()
        self._info: SandboxInfo | None = None
        self._holder: Path | None = None

    # --- building and removing ------------------------------------------------------

    def up(self, *, rebuild_venv: bool = False, log: Any = None) -> SandboxInfo:
        """Build the sandbox, or repair and report a running one; return its info.

        ``log`` (optional) is called with one line of progress per phase. Raises
        :class:`SandboxError` naming the part that failed; on failure of a cold start
        everything built so far is removed again.
        """
        require_root()
        say = log or (lambda line: None)
        lay = self.layout
        with self._lock():
            live, dead = self._scan_holders()
            killed_run = bool(dead) and not live
            test_owned = lay.test_owned_marker.exists()
            if killed_run and self._network_complete():
                say(f"{dead} test session(s) ended without releasing the sandbox (killed?): starting it clean")
            elif self._network_complete():
                say("sandbox network is up; starting whatever is missing")
                # a sandbox built by an older hpcgate: its sshd config and catalog follow this one
                if ssh.setup_sshd(lay):
                    say("the sshd config changed; sshd re-reads it")
                    ssh.reload_sshd(lay)
                write_catalog(lay)
                timings = self._read_state().get("timings", {})
                pids = self._start_daemons(lay, say, timings={})
                return self._remember(pids, timings)
            self._down_locked()
            timings: dict[str, float] = {}
            try:
                pids = self._cold_up(lay, say, timings, rebuild_venv)
            except BaseException:
                say("up failed; removing what was built")
                self._down_locked()
                raise
            if killed_run and test_owned:  # still the test sessions' sandbox (release() removes it)
                lay.test_owned_marker.touch()
            return self._remember(pids, timings)

    def _cold_up(
        self, lay: L.Layout, say: Any, timings: dict[str, float], rebuild_venv: bool
    ) -> dict[str, int]:
        started = time.monotonic()

        def phase(name: str, since: float) -> float:
            now = time.monotonic()
            timings[name] = round(now - since, 2)
            return now

        t = started
        say(f"job venv {lay.venv_dir} (built once, then cached)")
        env = jobenv.ensure_venv(lay, rebuild=rebuild_venv)
        t = phase("venv" if env.built else "venv (cached)", t)
        say("accounts and keys: " + ", ".join(L.ACCOUNTS))
        users.setup_accounts(lay)
        t = phase("accounts", t)
        say("network namespaces, veths, guard route")
        network.network_up(lay)
        t = phase("network", t)
        ssh.setup_sshd(lay)
        slurm.setup_slurm(lay, fresh=True)
        network.enter_overlays(lay)
        write_modules(lay)
        write_catalog(lay)
        t = phase("config", t)
        pids = self._start_daemons(lay, say, timings)
        timings["total"] = round(time.monotonic() - started, 2)
        return pids

    def _start_daemons(self, lay: L.Layout, say: Any, timings: dict[str, float]) -> dict[str, int]:
        t = time.monotonic()
        say("munged, MariaDB + slurmdbd (login1), slurmctld (login1), slurmd (compute1); waiting until compute1 is idle")
        pids = slurm.start_all(lay)
        timings["slurm"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        say(f"sshd on {L.LOGIN_ADDR}:{L.SSH_PORT} and {L.LOGIN_INNER_ADDR}:{L.SSH_PORT}")
        pids["sshd"] = ssh.start_sshd(lay)
        timings["sshd"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        identity_up(lay, say)  # their PIDs are in status()["identity"], not among the cluster's daemons
        timings["identity"] = round(time.monotonic() - t, 2)
        return pids

    def down(self) -> None:
        """Stop every sandbox process and remove namespaces, links, routes, run files."""
        require_root()
        with self._lock():
            self._down_locked()

    def _down_locked(self) -> None:
        lay = self.layout
        present = network.namespaces()
        # daemons first, gently, by their recorded PIDs
        identity_down(lay)
        for daemon in STOP_ORDER:
            stop_daemon(lay, daemon)
        # then whatever else lives in the namespaces (sessions, job steps, labs) ...
        for ns in L.NAMESPACES:
            if ns in present:
                left = network.ns_pids(ns)
                if left:
                    kill_pids(left, f"processes in {ns}")
        # ... and any process of a sandbox account elsewhere
        left = pids_of_users(users.account_uids())
        if left:
            kill_pids(left, "processes of sandbox accounts")
        network.network_down(lay)
        shutil.rmtree(lay.run_dir, ignore_errors=True)
        group = L.node_cgroup()
        if group is not None:
            try:
                group[0].rmdir()  # the node cgroup of a load benchmark, empty now
            except OSError:
                pass  # none was made (tests), or a process outlived the kill above
        self._info = None

    # --- state ------------------------------------------------------------------

    def _network_complete(self) -> bool:
        return network.nodes_complete(self.layout)

    def daemon_pids(self) -> dict[str, int | None]:
        """daemon -> PID of the running process, ``None`` when it is not running."""
        return {d: daemon_pid(self.layout, d) for d in EXECUTABLES}

    def is_up(self) -> bool:
        """True when the network is complete and every daemon runs."""
        return self._network_complete() and all(self.daemon_pids().values())

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.layout.run_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, pids: dict[str, int], timings: dict[str, float]) -> SandboxInfo:
        state = {
            "pids": pids,
            "timings": timings,
            "up_since": self._read_state().get("up_since", time.time()),
        }
        (self.layout.run_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        self._info = self._make_info(pids, timings)
        return self._info

    def _make_info(self, pids: dict[str, int], timings: dict[str, float]) -> SandboxInfo:
        lay = self.layout
        return SandboxInfo(
            hub_addr=L.HUB_ADDR,
            login_addr=L.LOGIN_ADDR,
            login_inner_addr=L.LOGIN_INNER_ADDR,
            compute_addr=L.COMPUTE_ADDR,
            login_ns=L.LOGIN_NS,
            compute_ns=L.COMPUTE_NS,
            login_host=L.LOGIN_HOST,
            compute_host=L.COMPUTE_HOST,
            ssh_port=L.SSH_PORT,
            users=dict(L.HUB_USERS),
            tunnel_account=L.TUNNEL_ACCOUNT,
            keys={a: lay.key_path(a) for a in L.ACCOUNTS},
            known_hosts=lay.known_hosts,
            ca_key=lay.ca_key,
            catalog=lay.catalog,
            account_map=lay.account_map,
            venv=lay.venv_dir,
            slurm_conf=slurm.conf_path(lay),
            partitions=tuple(L.PARTITIONS),
            state_dir=lay.state_dir,
            log_dir=lay.log_dir,
            pids=dict(pids),
            timings=dict(timings),
        )

    @property
    def info(self) -> SandboxInfo:
        """Info of the running sandbox, PIDs as of now (a daemon a test stopped is absent).

        Raises :class:`SandboxError` when the sandbox network is not up.
        """
        pids = {d: p for d, p in self.daemon_pids().items() if p}
        if self._info is not None and self._info.pids == pids:
            return self._info  # cheap path: same daemons as last time
        if not self._network_complete():
            raise SandboxError("the sandbox is not up; run `hpcgate sandbox up`")
        self._info = self._make_info(pids, self._read_state().get("timings", {}))
        return self._info

    def status(self) -> dict[str, Any]:
        """What runs and where things are, as JSON-able data (``hpcgate sandbox status``)."""
        lay = self.layout
        present = network.namespaces()
        pids = self.daemon_pids()
        return {
            "up": self.is_up(),
            "namespaces": {ns: ns in present for ns in L.NAMESPACES},
            "daemons": pids,
            "addresses": {
                "hub": L.HUB_ADDR,
                "login": f"{L.LOGIN_ADDR} (hub side), {L.LOGIN_INNER_ADDR} (compute side)",
                "compute": L.COMPUTE_ADDR,
            },
            "guard_route": network.guard_route_present(),
            "login_ip_forward": network.forwarding(L.LOGIN_NS) if L.LOGIN_NS in present else None,
            "compute_state": slurm.sinfo_state(lay) if pids["slurmctld"] else None,
            "users": dict(L.HUB_USERS),
            "tunnel_account": L.TUNNEL_ACCOUNT,
            "keys": {a: str(lay.key_path(a)) for a in L.ACCOUNTS},
            "known_hosts": str(lay.known_hosts),
            "ssh_ca": str(lay.ca_dir),
            "catalog": str(lay.catalog),
            "account_map": str(lay.account_map),
            "venv": str(lay.venv_dir) + ("" if jobenv.venv_ready(lay) else " (not built)"),
            "logs": str(lay.log_dir),
            "timings": self._read_state().get("timings", {}),
            "identity": identity_status(lay),
        }

    # --- helpers for tests ----------------------------------------------------------

    def ns_argv(self, ns: str, argv: Sequence[str], user: str | None = None) -> list[str]:
        """argv that runs ``argv`` in namespace ``ns`` (``login``/``compute`` or full
        name), as ``user`` when given (through ``runuser``)."""
        name = NS_ALIASES.get(ns, ns)
        if name not in L.NAMESPACES:
            raise SandboxError(f"unknown sandbox namespace {ns!r}; use login or compute")
        inner = [RUNUSER, "-u", user, "--", *argv] if user else list(argv)
        return network.ns_argv(self.layout, name, inner)

    def run_in(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in namespace ``ns`` and return the completed process (text output).

        As ``user``, it runs in the user's home with a clean login-like environment
        (HOME, USER, LOGNAME, PATH, LANG). ``check`` raises :class:`SandboxError` on a
        non-zero exit.
        """
        env = None
        cwd = None
        label = f"{' '.join(map(str, argv))} in {ns}" + (f" as {user}" if user else "")
        if user:
            entry = pwd.getpwnam(user)
            cwd = entry.pw_dir
            env = {
                "HOME": entry.pw_dir,
                "USER": user,
                "LOGNAME": user,
                "SHELL": entry.pw_shell,
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
            }
        # cwd is inherited through nsenter, ip netns exec and runuser
        full = self.ns_argv(ns, argv, user)
        return run(full, check=check, timeout=timeout, input=input, env=env, cwd=cwd, what=label)

    def stop_sshd(self, sessions: bool = True) -> None:
        """Stop the login node's sshd; with ``sessions`` (default) drop its connections too."""
        require_root()
        ssh.stop_sshd(self.layout, sessions=sessions)

    def start_sshd(self) -> int:
        """Start the login node's sshd again; return its PID once it accepts connections."""
        require_root()
        return ssh.start_sshd(self.layout)

    def stop_slurmctld(self) -> None:
        """Stop the controller (jobs keep running on compute1; state is kept)."""
        require_root()
        stop_daemon(self.layout, "slurmctld")

    def start_slurmctld(self, wait_idle: bool = True) -> int:
        """Start the controller again with its saved state; return its PID."""
        require_root()
        pid = slurm.start_slurmctld(self.layout)
        if wait_idle:
            slurm.wait_idle(self.layout)
        return pid

    def stop_slurmdbd(self) -> None:
        """Stop Slurm's accounting daemon (an accounting outage; slurmctld keeps running)."""
        require_root()
        stop_daemon(self.layout, "slurmdbd")

    def start_slurmdbd(self) -> int:
        """Start slurmdbd again; return its PID once sacctmgr gets answers."""
        require_root()
        return accounting.start_slurmdbd(self.layout)

    # --- sharing between test sessions ---------------------------------------------

    def hold(self) -> SandboxInfo:
        """Bring the sandbox up (if needed) and register this object as a user of it.

        Test sessions call this instead of :meth:`up` and :meth:`release` at the end, so
        that several sessions at once share one sandbox and the last one out removes it
        -- but only if a test session brought it up (a sandbox started with
        ``hpcgate sandbox up`` stays up). Each holder is a file ``<pid>.<token>`` in
        ``holders_dir``; entries of dead processes do not count.
        """
        require_root()
        lay = self.layout
        with self._lock():
            was_up = self.is_up()
            # registered before up(): a session starting meanwhile sees this one alive
            lay.holders_dir.mkdir(parents=True, exist_ok=True)
            if self._holder is None:
                self._holder = lay.holders_dir / f"{os.getpid()}.{secrets.token_hex(4)}"
            self._holder.touch()
        info = self.up()
        if not was_up:
            with self._lock():
                lay.test_owned_marker.touch()
        return info

    def other_holders(self) -> list[int]:
        """PIDs of the live holders in other processes (stale entries are removed).

        Holders in this process are not "others": one test session may hold the
        sandbox through more than one object."""
        return [pid for pid in self._live_holders() if pid != os.getpid()]

    def _live_holders(self) -> list[int]:
        """PIDs of the live holders except this object; removes stale entries."""
        return self._scan_holders()[0]

    def _scan_holders(self) -> tuple[list[int], int]:
        """(PIDs of the live holders except this object, number of stale entries: holders
        that died without :meth:`release`); removes the stale entries."""
        found, dead = [], 0
        for entry in self.layout.holders_dir.glob("*"):
            if entry == self._holder:
                continue
            pid = entry.name.split(".")[0]
            if pid.isdigit() and pid_alive(int(pid)):
                found.append(int(pid))
            else:
                entry.unlink(missing_ok=True)
                dead += 1
        return found, dead

    def release(self, keep: bool = False) -> bool:
        """Unregister this holder; remove the sandbox if it was the last holder, a test
        session brought the sandbox up, and not ``keep``. True when it was removed."""
        require_root()
        lay = self.layout
        with self._lock():
            if self._holder is not None:
                self._holder.unlink(missing_ok=True)
                self._holder = None
            if keep or self._live_holders() or not lay.test_owned_marker.exists():
                return False
            self._down_locked()
            return True

    # --- internals ------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        path = self.layout.lock_file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SandboxError(f"another process holds {path} for more than 600 s") from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)
