"""munge and Slurm: slurmctld on the login node, slurmd on compute1.

The sandbox runs its own ``munged`` (own key ``<state_dir>/munge/munge.key``, socket
``<run_dir>/munge/munge.socket.2``) in the root namespace: a unix socket needs no
network, and the file system is shared, so both namespaces reach it. It never touches a
system munged. ``slurm.conf`` names that socket (``AuthInfo``) and is written to
``/etc/netns/<ns>/slurm/slurm.conf`` for both namespaces: ``ip netns exec`` mounts that
directory over ``/etc/slurm``, so every Slurm command inside the sandbox -- daemons,
users' ssh sessions, jobs -- finds it without ``SLURM_CONF``, and the root namespace's
``/etc/slurm`` stays untouched.

Accounting: MariaDB and slurmdbd on login1 (:mod:`.accounting`), started before
slurmctld, with the associations the projects-from-Slurm tests use.

Addresses: ``SlurmctldHost=login1(10.250.2.1)`` (the controller's compute-facing
address, reachable from slurmd and from commands run on login), ``NodeName=compute1
NodeAddr=10.250.2.2``. Controller state is wiped by a cold ``up`` (a fresh cluster) and
kept by :func:`stop_slurmctld`/:func:`start_slurmctld` (a controller restart keeps jobs).
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from . import accounting
from . import layout as L
from .daemons import daemon_pid
from .network import ns_argv
from .proc import SandboxError, make_dir, run, wait_until, write_file


def slurm_conf_text(lay: L.Layout) -> str:
    partitions = []
    for i, (name, minutes) in enumerate(L.PARTITIONS.items()):
        default = "YES" if i == 0 else "NO"
        partitions.append(
            f"PartitionName={name} Nodes={L.COMPUTE_HOST} Default={default} MaxTime={minutes} State=UP"
        )
    slurm = lay.slurm_dir
    return "\n".join(
        [
            "# written by hpcgate sandbox",
            "ClusterName=hpcg-sandbox",
            f"SlurmctldHost={L.LOGIN_HOST}({L.LOGIN_INNER_ADDR})",
            "SlurmUser=slurm",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={lay.munge_socket}",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            *accounting.slurm_conf_lines(lay),
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SlurmdTimeout=60",
            "KillWait=5",
            "MinJobAge=300",
            f"SlurmctldPidFile={lay.pid_file('slurmctld')}",
            f"SlurmdPidFile={lay.pid_file('slurmd')}",
            f"StateSaveLocation={slurm / 'ctld'}",
            f"SlurmdSpoolDir={slurm / 'd'}",
            f"SlurmctldLogFile={lay.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={lay.log_dir / 'slurmd.log'}",
            f"NodeName={L.COMPUTE_HOST} NodeAddr={L.COMPUTE_ADDR} CPUs={lay.node_cpus} "
            f"RealMemory={lay.node_memory_mb} State=UNKNOWN",
            *partitions,
            "",
        ]
    )


def setup_slurm(lay: L.Layout, fresh: bool) -> None:
    """Write munge key (once), slurm.conf and the state directories.

    ``fresh`` wipes the controller's and slurmd's saved state (jobs, node states).
    """
    munge = pwd.getpwnam("munge")
    make_dir(lay.munge_dir, 0o700, owner="munge")
    key = lay.munge_dir / "munge.key"
    if not key.exists():
        run(["mungekey", "--create", f"--keyfile={key}"], what="creating the sandbox munge key")
    os.chown(key, munge.pw_uid, munge.pw_gid)
    os.chmod(key, 0o400)
    make_dir(lay.munge_run_dir, 0o755, owner="munge")
    make_dir(lay.log_dir, 0o755)
    for name in ("ctld", "d"):
        path = lay.slurm_dir / name
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
    make_dir(lay.slurm_dir, 0o755)
    make_dir(lay.slurm_dir / "ctld", 0o700, owner="slurm")
    make_dir(lay.slurm_dir / "d", 0o755)
    ctld_log = lay.log_dir / "slurmctld.log"
    ctld_log.touch()
    shutil.chown(ctld_log, "slurm", "slurm")
    text = slurm_conf_text(lay)
    for ns in L.NAMESPACES:
        etc = make_dir(lay.ns_etc(ns) / "slurm", 0o755)
        write_file(etc / "slurm.conf", text, 0o644)
    accounting.setup_accounting(lay)


def munge_works(lay: L.Layout) -> bool:
    """True when a credential encoded on the sandbox socket decodes again."""
    sock = f"--socket={lay.munge_socket}"
    cred = run(["munge", sock, "-n"], check=False, timeout=10)
    if cred.returncode != 0:
        return False
    return run(["unmunge", sock], input=cred.stdout, check=False, timeout=10).returncode == 0


def start_munged(lay: L.Layout) -> int:
    pid = daemon_pid(lay, "munged")
    if pid is None:
        _pid_file_for_munge(lay)
        run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "/usr/sbin/munged",
                f"--socket={lay.munge_socket}",
                f"--key-file={lay.munge_dir / 'munge.key'}",
                f"--pid-file={lay.pid_file('munged')}",
                f"--log-file={lay.munge_dir / 'munged.log'}",
                f"--seed-file={lay.munge_dir / 'munged.seed'}",
            ],
            what="starting munged",
        )
        pid = wait_until(lambda: daemon_pid(lay, "munged"), "munged to write its pid file", 10)
    wait_until(lambda: munge_works(lay), f"munged to answer on {lay.munge_socket}", 10)
    return int(pid)


def _pid_file_for_munge(lay: L.Layout) -> None:
    # munged (user munge) writes its pid file into run_dir
    make_dir(lay.run_dir, 0o755)
    path = lay.pid_file("munged")
    path.touch()
    shutil.chown(path, "munge", "munge")


def sinfo_state(lay: L.Layout) -> str:
    """compute1's state as ``sinfo`` prints it (``idle``, ``down*``...), ``""`` on error."""
    argv = ns_argv(lay, L.LOGIN_NS, ["sinfo", "-h", "-n", L.COMPUTE_HOST, "-o", "%T"])
    result = run(argv, check=False, timeout=15)
    states = set(result.stdout.split()) if result.returncode == 0 else set()
    return states.pop() if len(states) == 1 else ""


def controller_answers(lay: L.Layout) -> bool:
    result = run(ns_argv(lay, L.LOGIN_NS, ["scontrol", "ping"]), check=False, timeout=15)
    return result.returncode == 0 and "UP" in result.stdout


def start_slurmctld(lay: L.Layout, timeout: float = 30) -> int:
    """Start slurmctld in the login namespace if it is not running; wait until it answers."""
    pid = daemon_pid(lay, "slurmctld")
    if pid is None:
        run(
            ns_argv(lay, L.LOGIN_NS, ["/usr/sbin/slurmctld"]),
            what="starting slurmctld in the login namespace",
        )
        pid = wait_until(lambda: daemon_pid(lay, "slurmctld"), "slurmctld to write its pid file", timeout)
    wait_until(lambda: controller_answers(lay), "slurmctld to answer `scontrol ping`", timeout, 0.3)
    return int(pid)


def start_slurmd(lay: L.Layout, timeout: float = 30) -> int:
    pid = daemon_pid(lay, "slurmd")
    if pid is None:
        run(
            ns_argv(lay, L.COMPUTE_NS, lay.node_argv(["/usr/sbin/slurmd", "-N", L.COMPUTE_HOST])),
            what="starting slurmd in the compute namespace",
        )
        pid = wait_until(lambda: daemon_pid(lay, "slurmd"), "slurmd to write its pid file", timeout)
    return int(pid)


def wait_idle(lay: L.Layout, timeout: float = 60) -> None:
    """Wait until ``sinfo`` shows compute1 idle (or allocated/mixed: it runs jobs)."""
    try:
        wait_until(
            lambda: sinfo_state(lay) in ("idle", "mixed", "allocated"),
            "compute1 to be idle in sinfo",
            timeout,
            0.3,
        )
    except SandboxError as exc:
        raise SandboxError(
            f"{exc} (last state: {sinfo_state(lay) or 'unknown'}; "
            f"see {lay.log_dir / 'slurmctld.log'} and {lay.log_dir / 'slurmd.log'})"
        ) from exc


def start_all(lay: L.Layout) -> dict[str, int]:
    """munged, MariaDB + slurmdbd (with the associations), slurmctld, slurmd; returns
    daemon -> PID once compute1 is idle."""
    pids = {"munged": start_munged(lay)}
    pids.update(accounting.start_accounting(lay))
    pids.update({"slurmctld": start_slurmctld(lay), "slurmd": start_slurmd(lay)})
    wait_idle(lay)
    return pids


def conf_path(lay: L.Layout) -> Path:
    return lay.ns_etc(L.LOGIN_NS) / "slurm" / "slurm.conf"
