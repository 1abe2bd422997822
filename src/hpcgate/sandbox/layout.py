"""Where the sandbox cluster keeps things, and the names and addresses it uses.

One sandbox per machine. Everything it writes lives in three places:

- ``state_dir`` (default ``/var/lib/hpcgate-sandbox``): keys, the SSH CA, sshd host
  key, known_hosts, catalog, account map, Slurm/munge state and logs. Kept across ``down``
  (the host key and user keys stay stable, so known_hosts stays valid).
- ``run_dir`` (default ``/run/hpcgate-sandbox``): pid files, the munge socket, the UTS
  and mount namespace handles of the nodes. Removed by ``down``.
- ``venv_dir`` (default ``/opt/hpcgate-sandbox/venv``): the Python environment jobs run,
  world-readable, cached across ``down``/``up``.

Network model (see DESIGN.md, "The network model")::

    root namespace (hub)      hpcg-login (login1)            hpcg-compute (compute1)
    hpcg-hub 10.250.1.1  <->  hpcg-l-hub 10.250.1.2
                              hpcg-l-cmp 10.250.2.1    <->   hpcg-cmp 10.250.2.2

Host names resolve only inside the namespaces: each node has its own mount namespace in
which ``/etc/netns/<ns>/hosts`` is bind-mounted over ``/etc/hosts`` (the same files
``ip netns exec`` would use); the root namespace's ``/etc/hosts`` is never touched, and
the catalog uses addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOGIN_NS = "hpcg-login"
COMPUTE_NS = "hpcg-compute"
NAMESPACES = (LOGIN_NS, COMPUTE_NS)

LOGIN_HOST = "login1"
COMPUTE_HOST = "compute1"
HOSTNAMES = {LOGIN_NS: LOGIN_HOST, COMPUTE_NS: COMPUTE_HOST}

#: Root-namespace guard: traffic to any sandbox address not on a veth goes nowhere.
GUARD_ROUTE = "10.250.0.0/16"
HUB_ADDR = "10.250.1.1"
LOGIN_ADDR = "10.250.1.2"  # login's hub-facing address: what the hub connects to
LOGIN_INNER_ADDR = "10.250.2.1"  # login's compute-facing address
COMPUTE_ADDR = "10.250.2.2"
PREFIX = 24

#: veth pairs: (name in first namespace, name in second namespace).
#: ``None`` is the root namespace.
HUB_VETH = ("hpcg-hub", "hpcg-l-hub")  # root <-> login
COMPUTE_VETH = ("hpcg-l-cmp", "hpcg-cmp")  # login <-> compute

#: Hub user -> Unix account on the sandbox.
HUB_USERS = {"alice": "hpcg-alice", "bob": "hpcg-bob"}
TUNNEL_ACCOUNT = "hpcg-tunnel"
ACCOUNTS = (*HUB_USERS.values(), TUNNEL_ACCOUNT)

SSH_PORT = 22
#: Slurm partitions: name -> MaxTime in minutes. The first is the default.
PARTITIONS = {"debug": 60, "batch": 240}
NODE_CPUS = 4
NODE_MEMORY_MB = 4096


@dataclass(frozen=True)
class Layout:
    """Paths of one sandbox. The defaults are the machine's sandbox."""

    state_dir: Path = Path("/var/lib/hpcgate-sandbox")
    run_dir: Path = Path("/run/hpcgate-sandbox")
    venv_dir: Path = Path("/opt/hpcgate-sandbox/venv")
    netns_etc: Path = Path("/etc/netns")
    #: CPUs and memory compute1 declares to Slurm (``SlurmdParameters=config_overrides``
    #: lets it declare more than the machine has: capacity for load benchmarks, e.g. 200
    #: one-CPU jobs). Read by a cold ``up`` only; the defaults are what tests expect.
    node_cpus: int = NODE_CPUS
    node_memory_mb: int = NODE_MEMORY_MB
    #: nice value the node daemons start with (slurmd on compute1, sshd on login1), so
    #: every job step and login session (labs, the hub's commands) inherits it: a load
    #: benchmark models compute and login nodes that do not share the hub's cores (in
    #: the sandbox they all share the machine's). Read by a cold ``up`` only; 0: as
    #: started (what tests expect).
    node_nice: int = 0
    #: CPU weight of one cgroup that the node daemons start in (``cpu.shares`` of the
    #: cgroup v1 cpu controller, where a process at nice 0 weighs 1024; the matching
    #: ``cpu.weight`` under cgroup v2). Every job step and login session inherits the
    #: group, so ALL node processes together weigh this much against each of the hub's
    #: own (the hub, its proxy, its ssh masters): what separate compute and login nodes
    #: are to a hub. ``nice`` alone cannot model that (fifty labs at nice 10 still
    #: outweigh the hub five to one). Read by a cold ``up`` only; 0: no group (what tests
    #: expect).
    node_cpu_shares: int = 0

    def node_argv(self, argv: list[str]) -> list[str]:
        """``argv`` of a node daemon: under ``nice`` when :attr:`node_nice` is set, in the
        node cgroup (:attr:`node_cpu_shares`, :func:`node_cgroup`) when that is set."""
        argv = ["nice", "-n", str(self.node_nice), *argv] if self.node_nice else list(argv)
        group = node_cgroup() if self.node_cpu_shares else None
        if group is None:
            return argv
        directory, weight_file, weight = group[0], group[1], group[2](self.node_cpu_shares)
        # the shell makes the group, sets its weight, joins it and becomes the daemon
        # (all values are this module's own: no user input reaches the shell)
        join = 'mkdir -p "$1" && echo "$2" > "$1/$3" && echo $$ > "$1/cgroup.procs" && shift 3 && exec "$@"'
        return ["sh", "-c", join, "sh", str(directory), str(weight), weight_file, *argv]

    @property
    def lock_file(self) -> Path:
        # beside run_dir, not in it: run_dir is removed by ``down``
        return self.run_dir.with_name(self.run_dir.name + ".lock")

    @property
    def holders_dir(self) -> Path:
        """One file per process (PID) that uses the sandbox (test sessions)."""
        return self.run_dir.with_name(self.run_dir.name + ".holders")

    @property
    def test_owned_marker(self) -> Path:
        """Present while the running sandbox was brought up by a test session."""
        return self.run_dir / "up-by-tests"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    def key_path(self, account: str) -> Path:
        return self.keys_dir / account / "id_ed25519"

    @property
    def key_path_template(self) -> str:
        return str(self.keys_dir / "{account}" / "id_ed25519")

    @property
    def ca_dir(self) -> Path:
        """The hub's SSH CA for the sandbox (``hpcgate ca init``'s layout), kept by ``down``."""
        return self.state_dir / "ssh-ca"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca_key"

    @property
    def principals_dir(self) -> Path:
        """sshd's ``AuthorizedPrincipalsFile`` per account (read as the account: 0755/0644)."""
        return self.state_dir / "ssh-principals"

    @property
    def sshd_dir(self) -> Path:
        return self.state_dir / "sshd"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def catalog(self) -> Path:
        return self.state_dir / "catalog.yaml"

    @property
    def account_map(self) -> Path:
        return self.state_dir / "accounts.yaml"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def slurm_dir(self) -> Path:
        return self.state_dir / "slurm"

    @property
    def munge_dir(self) -> Path:
        return self.state_dir / "munge"

    @property
    def munge_run_dir(self) -> Path:
        return self.run_dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_run_dir / "munge.socket.2"

    def pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    @property
    def handles_dir(self) -> Path:
        """Bind-mounted namespace handles (UTS, mount) of the sandbox nodes."""
        return self.run_dir / "ns"

    def ns_handle(self, ns: str, kind: str) -> Path:
        """Handle of namespace ``kind`` (``uts`` or ``mnt``) of node namespace ``ns``."""
        return self.handles_dir / f"{ns}.{kind}"

    def ns_etc(self, ns: str) -> Path:
        return self.netns_etc / ns


#: the cgroup the node daemons of a sandbox with ``node_cpu_shares`` start in
NODE_CGROUP = "hpcgate-sandbox-nodes"


def node_cgroup(root: Path = Path("/sys/fs/cgroup")) -> tuple[Path, str, Callable[[int], int]] | None:
    """Where the node cgroup lives on this machine: (directory, weight file, shares ->
    weight), or None when neither a cgroup v1 cpu controller nor a cgroup v2 hierarchy
    with the cpu controller enabled for its children is mounted at ``root``."""
    if (root / "cpu" / "cpu.shares").exists():
        return root / "cpu" / NODE_CGROUP, "cpu.shares", lambda shares: shares
    try:
        v2 = "cpu" in (root / "cgroup.subtree_control").read_text().split()
    except OSError:
        v2 = False
    if v2:
        # cgroup v2's weights: 100 is what 1024 shares are in v1, range 1..10000
        return root / NODE_CGROUP, "cpu.weight", lambda shares: min(max(shares * 100 // 1024, 1), 10000)
    return None
