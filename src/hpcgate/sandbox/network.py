"""The sandbox network: two namespaces, two veth pairs, a guard route, host names.

``network_up`` builds, in this order:

1. the guard ``blackhole 10.250.0.0/16`` in the root namespace, before any sandbox
   address exists, so a packet to a sandbox address never leaves through the real
   network; the connected /24 of the hub veth is more specific and still works;
2. namespaces ``hpcg-login`` and ``hpcg-compute`` with ``lo`` up; each node also gets
   its own UTS namespace (host name ``login1``/``compute1``) and mount namespace, whose
   handles are bind-mounted under ``run_dir/ns``. In the node's mount namespace every
   entry of ``/etc/netns/<ns>/`` (``hosts``, ``resolv.conf``: no DNS; ``slurm/``, see
   slurm.py) is bind-mounted
   over ``/etc/<entry>``, as ``ip netns exec`` does -- but once, and without
   remounting ``/sys``, so ``/sys/fs/cgroup`` stays visible (slurmd needs it);
3. veth hub<->login (10.250.1.0/24) and login<->compute (10.250.2.0/24); compute's
   default route goes via login; ``ip_forward=0`` in login, so compute and the hub
   cannot reach each other in either direction.

Processes enter a node through :func:`ns_argv` (``nsenter`` into its network, UTS and
mount namespaces). ``/etc/netns/<ns>/`` must hold every overlay before
:func:`enter_overlays` runs (after ``network_up``, when the config is written).
``network_down`` undoes all of it; it expects the namespaces' processes to be gone
already (see :func:`ns_pids`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import layout as L
from .proc import SandboxError, run, write_file


def ns_argv(lay: L.Layout, ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside node ``ns``: its network, host name and /etc overlays."""
    return [
        "nsenter",
        f"--net=/run/netns/{ns}",
        f"--uts={lay.ns_handle(ns, 'uts')}",
        f"--mount={lay.ns_handle(ns, 'mnt')}",
        "--",
        *argv,
    ]


def namespaces() -> set[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    out = run(["ip", "netns", "list"], what="listing network namespaces").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ns_pids(ns: str) -> list[int]:
    """PIDs of the processes in network namespace ``ns`` (empty if it does not exist)."""
    result = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def guard_route_present() -> bool:
    out = run(["ip", "route", "show", "type", "blackhole"], what="listing routes").stdout
    return any(line.split()[:2] == ["blackhole", L.GUARD_ROUTE] for line in out.splitlines())


def sandbox_routes() -> list[str]:
    """Root-namespace routes that belong to the sandbox (guard and veth routes)."""
    out = run(["ip", "route", "show", "table", "all"], what="listing routes").stdout
    return [line for line in out.splitlines() if "10.250." in line or "hpcg-" in line]


def nodes_complete(lay: L.Layout) -> bool:
    """True when both namespaces, their UTS and mount handles, the hub veth and the
    guard route exist."""
    present = namespaces()
    return (
        all(ns in present for ns in L.NAMESPACES)
        and all(_is_mountpoint(lay.ns_handle(ns, kind)) for ns in L.NAMESPACES for kind in ("uts", "mnt"))
        and guard_route_present()
        and link_exists(L.HUB_VETH[0])
    )


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    run(argv, what=f"ip {' '.join(args)}" + (f" in namespace {ns}" if ns else ""))


def hosts_text(ns: str) -> str:
    """``/etc/hosts`` as seen inside ``ns``: each name at the address reachable from there."""
    login = L.LOGIN_ADDR if ns == L.LOGIN_NS else L.LOGIN_INNER_ADDR
    lines = [
        "# written by hpcgate sandbox; ip netns exec mounts it over /etc/hosts",
        "127.0.0.1\tlocalhost",
        f"{login}\t{L.LOGIN_HOST}",
        f"{L.COMPUTE_ADDR}\t{L.COMPUTE_HOST}",
    ]
    if ns == L.LOGIN_NS:
        lines.append(f"{L.HUB_ADDR}\thub")
    return "\n".join(lines) + "\n"


RESOLV_CONF = """\
# written by hpcgate sandbox: the nodes have no DNS. Names are in /etc/hosts; lookups
# of anything else fail at once instead of timing out towards an unreachable server.
nameserver 127.0.0.1
options timeout:1 attempts:1
"""


def _private_handles_dir(lay: L.Layout) -> None:
    # like /run/netns: a private bind mount of itself, so namespace handles bound
    # inside do not propagate (a mount namespace handle must not see itself)
    handles = lay.handles_dir
    handles.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(handles):
        run(["mount", "--bind", str(handles), str(handles)], what=f"bind-mounting {handles}")
    run(["mount", "--make-private", str(handles)], what=f"making {handles} a private mount")


def _make_node_namespaces(lay: L.Layout, ns: str) -> None:
    uts, mnt = lay.ns_handle(ns, "uts"), lay.ns_handle(ns, "mnt")
    for handle in (uts, mnt):
        handle.touch()
    run(["unshare", f"--uts={uts}", "hostname", L.HOSTNAMES[ns]], what=f"UTS namespace of {ns}")
    run(["unshare", f"--mount={mnt}", "--propagation", "private", "true"], what=f"mount namespace of {ns}")


def enter_overlays(lay: L.Layout) -> None:
    """Bind-mount every entry of ``/etc/netns/<ns>/`` over ``/etc/<entry>`` in the node's
    mount namespace (once; entries written later need another call)."""
    for ns in L.NAMESPACES:
        etc = lay.ns_etc(ns)
        for entry in sorted(etc.iterdir()):
            target = Path("/etc") / entry.name
            if _is_mountpoint(target, mnt_handle=lay.ns_handle(ns, "mnt")):
                continue
            if not target.exists():
                raise SandboxError(f"overlay {entry}: /etc/{entry.name} does not exist to mount it over")
            run(
                [
                    "nsenter",
                    f"--mount={lay.ns_handle(ns, 'mnt')}",
                    "--",
                    "mount",
                    "--bind",
                    str(entry),
                    str(target),
                ],
                what=f"mounting {entry} over {target} in {ns}",
            )


def _is_mountpoint(path: Path, mnt_handle: Path | None = None) -> bool:
    """True when ``path`` is a mount point (in the mount namespace of handle, if given)."""
    if mnt_handle is None:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    else:
        mountinfo = run(["nsenter", f"--mount={mnt_handle}", "--", "cat", "/proc/self/mountinfo"]).stdout
    target = str(path)
    return any(line.split()[4] == target for line in mountinfo.splitlines())


def network_up(lay: L.Layout) -> None:
    """Build the namespaces, links, addresses and routes (see the module docstring)."""
    existing = namespaces()
    if any(ns in existing for ns in L.NAMESPACES) or link_exists(L.HUB_VETH[0]):
        raise SandboxError(
            "network_up: sandbox namespaces or links already exist; run `hpcgate sandbox down` first"
        )
    if not guard_route_present():
        _ip("route", "add", "blackhole", L.GUARD_ROUTE)
    for ns in L.NAMESPACES:
        etc = lay.ns_etc(ns)
        etc.mkdir(parents=True, exist_ok=True)
        for name, text in (("hosts", hosts_text(ns)), ("resolv.conf", RESOLV_CONF)):
            write_file(etc / name, text, 0o644)
        _ip("netns", "add", ns)
        _ip("link", "set", "lo", "up", ns=ns)
        _private_handles_dir(lay)
        _make_node_namespaces(lay, ns)
    hub, login_hub = L.HUB_VETH
    login_cmp, cmp = L.COMPUTE_VETH
    _ip("link", "add", hub, "type", "veth", "peer", "name", login_hub, "netns", L.LOGIN_NS)
    _ip(
        "link",
        "add",
        login_cmp,
        "netns",
        L.LOGIN_NS,
        "type",
        "veth",
        "peer",
        "name",
        cmp,
        "netns",
        L.COMPUTE_NS,
    )
    _ip("addr", "add", f"{L.HUB_ADDR}/{L.PREFIX}", "dev", hub)
    _ip("link", "set", hub, "up")
    _ip("addr", "add", f"{L.LOGIN_ADDR}/{L.PREFIX}", "dev", login_hub, ns=L.LOGIN_NS)
    _ip("addr", "add", f"{L.LOGIN_INNER_ADDR}/{L.PREFIX}", "dev", login_cmp, ns=L.LOGIN_NS)
    _ip("link", "set", login_hub, "up", ns=L.LOGIN_NS)
    _ip("link", "set", login_cmp, "up", ns=L.LOGIN_NS)
    _ip("addr", "add", f"{L.COMPUTE_ADDR}/{L.PREFIX}", "dev", cmp, ns=L.COMPUTE_NS)
    _ip("link", "set", cmp, "up", ns=L.COMPUTE_NS)
    _ip("route", "add", "default", "via", L.LOGIN_INNER_ADDR, ns=L.COMPUTE_NS)
    set_forwarding(L.LOGIN_NS, False)


def set_forwarding(ns: str, enabled: bool) -> None:
    """Set ``net.ipv4.ip_forward`` inside ``ns``."""
    run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.ip_forward={int(enabled)}"],
        what=f"setting ip_forward in {ns}",
    )


def forwarding(ns: str) -> bool:
    out = run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"], what=f"reading ip_forward in {ns}"
    )
    return out.stdout.strip() == "1"


def network_down(lay: L.Layout) -> None:
    """Remove namespaces, links, UTS handles, /etc/netns overlays and the guard route.

    Processes still inside a namespace are a caller error: raises
    :class:`SandboxError` listing them, and removes nothing.
    """
    present = namespaces()
    for ns in L.NAMESPACES:
        left = ns_pids(ns) if ns in present else []
        if left:
            raise SandboxError(f"network_down: processes still run in {ns}: {left}")
    for ns in L.NAMESPACES:
        if ns in present:
            _ip("netns", "del", ns)
        for kind in ("uts", "mnt"):
            handle = lay.ns_handle(ns, kind)
            if _is_mountpoint(handle):
                run(["umount", str(handle)], what=f"unmounting the {kind} namespace handle of {ns}")
            handle.unlink(missing_ok=True)
        shutil.rmtree(lay.ns_etc(ns), ignore_errors=True)
    if _is_mountpoint(lay.handles_dir):
        run(["umount", str(lay.handles_dir)], what=f"unmounting {lay.handles_dir}")
    if link_exists(L.HUB_VETH[0]):
        _ip("link", "del", L.HUB_VETH[0])
    if guard_route_present():
        _ip("route", "del", "blackhole", L.GUARD_ROUTE)
