"""HPCGate: the hub-wide owner of shared things (catalog, backends, status caches, tunnels).

One instance per JupyterHub process (:meth:`HPCGate.instance`). Spawners and handlers
reach shared objects only through it; nothing per-user lives here and nothing shared
lives in class attributes of the spawner.

At hub shutdown it closes what it owns (:meth:`HPCGate.close`: backends, tunnels, the
SSH pool). JupyterHub has no shutdown hook for spawners; what it does on SIGTERM,
SIGINT or ``JupyterHub.stop()`` (``shutdown_cancel_tasks``) is run ``cleanup()`` --
which stops the servers when ``cleanup_servers`` is set, through the backends, still
open -- and then cancel every other task of the event loop and wait for them. A task
of ours that waits for that cancellation closes everything while JupyterHub waits.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from pathlib import Path
from typing import Any

from traitlets import Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import SingletonConfigurable

from ..catalog import Catalog, CatalogStore, Charges, Reservation, System, UserInfo
from ..energy import IntensityCache
from ..files import private_dir
from ..remote.pool import SSHPool
from ..remote.tunnels import TunnelManager
from .accounting import AccountingCache
from .backends import backend_class
from .backends.base import Backend, BackendContext
from .client import Network, parse_networks
from .file_sd import FileSDWriter
from .health import HealthCache, SystemHealth
from .identity.accounts import AccountError, AccountResolver
from .metrics import register_hub_collector
from .reservations import ReservationCache, usable
from .status import StatusCache


class HPCGate(SingletonConfigurable):
    """Hub-wide hpcgate settings and the shared objects built from them."""

    catalog_path = Unicode(
        "",
        help="""Path of the catalog YAML (systems, partitions, projects, groups).

        Empty: hpcgate's built-in default catalog (this machine only). The file is
        re-read when it changes; a broken new version keeps the last good catalog and
        logs why.
        """,
    ).tag(config=True)

    catalog_check_interval = Float(
        2.0,
        help="Seconds between checks whether the catalog file changed.",
    ).tag(config=True)

    state_dir = Unicode(
        help="""Directory for hpcgate's hub-side state: server logs and (for the local
        backend) users' working directories. Created 0700.""",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(base, "hpcgate")

    ssh_max_sessions = Integer(
        8,
        help="""Commands run at once on one pooled SSH connection (status queries, starts,
        stops); more wait. Keep it below the hosts' sshd MaxSessions (10 by default).""",
    ).tag(config=True)

    ssh_idle_timeout = Float(
        300.0,
        help="""Seconds after which a pooled SSH connection that ran no command is closed
        (the next command opens it again). 0 keeps connections open until the hub stops.
        Tunnel connections are not affected: they stay up while they carry forwards.""",
    ).tag(config=True)

    trusted_proxies = List(
        Unicode(),
        ["127.0.0.1", "::1"],
        help="""Addresses or networks (CIDR) of the proxies in front of the hub whose
        X-Forwarded-For header is believed when hpcgate decides a client's address (catalog
        grants with ``networks``). Default: loopback, where configurable-http-proxy runs. Add
        the address of a load balancer or nginx in front only if it sets the header itself;
        a request from any other peer is judged by its own address, whatever it sends.""",
    ).tag(config=True)

    reservations_interval = Float(
        60.0,
        help="""Seconds a system's list of scheduler reservations (Slurm: ``scontrol show
        reservation``) is used before it is read again; one read per system per interval
        serves every user's form and launch.""",
    ).tag(config=True)

    reservations_ahead = Float(
        12 * 3600.0,
        help="""Seconds ahead in which a reservation that has not begun yet is offered
        (with its start and end); reservations under way are always offered until they
        end.""",
    ).tag(config=True)

    @validate("trusted_proxies")
    def _check_proxies(self, proposal):
        try:
            parse_networks(proposal.value)
        except ValueError as exc:
            raise TraitError(f"HPCGate.trusted_proxies: {exc}") from None
        return proposal.value

    @property
    def trusted_proxy_networks(self) -> list[Network]:
        return parse_networks(self.trusted_proxies)

    cull_every = Integer(
        60,
        help="""Seconds between two rounds of the idle culler (jupyterhub-idle-culler's
        --cull-every) that ``hpcgate up`` and ``hpcgate.hub.culling.enable`` start. Each
        partition's ``idle_timeout`` and ``max_age`` (catalog) are then honoured within
        this many seconds.""",
    ).tag(config=True)

    health_interval = Float(
        60.0,
        help="""Seconds between two queries of a system's scheduler state (partitions
        down or drained, free nodes, reservations): one query per system per interval,
        shared by every user's form and offer.""",
    ).tag(config=True)

    prometheus_sd_file = Unicode(
        "",
        help="""Path of a Prometheus file_sd JSON file the hub keeps listing the running
        labs' metrics endpoints (hpcgate.hub.file_sd): one target group per ready
        server, with ``__metrics_path__``, ``user``, ``server``, ``system`` and
        ``partition`` labels. Empty: no file. The file holds no secret (mode 0644).""",
    ).tag(config=True)

    prometheus_sd_address = Unicode(
        "",
        help="""``host:port`` Prometheus reaches the labs through (the proxy in front of
        the hub), the target of every group in ``prometheus_sd_file``. Empty: the
        hub's public ``JupyterHub.ip`` (127.0.0.1 when it listens on all addresses) and
        ``JupyterHub.port``.""",
    ).tag(config=True)

    prometheus_sd_interval = Float(
        10.0,
        help="""Seconds between two refreshes of ``prometheus_sd_file`` (rewritten only
        when a lab started or stopped): a lab appears to Prometheus within this time
        plus Prometheus's own file_sd refresh.""",
    ).tag(config=True)

    def _sd_address(self) -> str:
        if self.prometheus_sd_address:
            return self.prometheus_sd_address
        hub = self.config.JupyterHub
        ip = hub.get("ip", "") or "127.0.0.1"
        ip = "127.0.0.1" if ip in ("0.0.0.0", "::") else ip
        return f"[{ip}]:{hub.get('port', 8000)}" if ":" in ip else f"{ip}:{hub.get('port', 8000)}"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._health: dict[str, HealthCache] = {}
        self._store: CatalogStore | None = None
        self._backends: dict[str, tuple[System, Backend, StatusCache]] = {}
        self._accounts: dict[str, AccountResolver] = {}
        self._accounting: dict[str, tuple[System, AccountingCache]] = {}
        self._reservations: dict[str, tuple[System, ReservationCache]] = {}
        #: (system, account) -> hub users whose servers use it: the key ids of SSH
        #: certificates name them (noted by the spawners, see note_account)
        self._account_users: dict[tuple[str, str], set[str]] = {}
        #: SSH connections of every system's backend, one per (host, login).
        self.ssh_pool = SSHPool(self.ssh_max_sessions, idle_timeout=self.ssh_idle_timeout)
        #: The tunnels of every system, one SSH connection per jump host.
        self.tunnels = TunnelManager(parent=self, state_dir=self.state_dir)
        #: carbon intensity sources, one cache per (source, max_age)
        self._intensity: dict[tuple, IntensityCache] = {}
        #: every HPCSpawner of the hub that started or loaded a server (for the metrics)
        self.spawners: weakref.WeakSet = weakref.WeakSet()
        register_hub_collector(self.spawners, self.tunnels.all, self.catalog)
        #: the running labs for Prometheus's file_sd (None: prometheus_sd_file not set)
        self.file_sd: FileSDWriter | None = None
        if self.prometheus_sd_file:
            self.file_sd = FileSDWriter(
                self.prometheus_sd_file, self._sd_address(), self.prometheus_sd_interval, self.spawners
            )
        self._file_sd_task: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None
        #: user name -> the lock of their session-limit check (session_lock); weak: a
        #: lock nobody holds or waits for goes away with its last user
        self._session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._close_at_shutdown()

    def session_lock(self, user_name: str) -> asyncio.Lock:
        """The lock that makes one user's session-limit check and the admission of the
        new server one step (``HPCSpawner.start``); the same lock for every call with
        the same name while anyone holds or waits for it."""
        lock = self._session_locks.get(user_name)
        if lock is None:
            lock = asyncio.Lock()
            self._session_locks[user_name] = lock
        return lock

    def _close_at_shutdown(self) -> None:
        """Start (once, in the hub's event loop) the task that closes all at shutdown,
        and the writer of ``prometheus_sd_file`` if it is set."""
        if self._closer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the event loop yet: the next use of a backend starts it
        self._closer = loop.create_task(self._wait_for_shutdown())
        if self.file_sd is not None:
            self._file_sd_task = loop.create_task(self.file_sd.run())

    async def _wait_for_shutdown(self) -> None:
        try:
            await asyncio.Event().wait()  # until JupyterHub cancels every task
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every backend, every tunnel and the SSH pool (hub shutdown).

        Servers keep running (their jobs are not cancelled here); a restarted hub finds
        them again from the spawner state.
        """
        entries, self._backends = list(self._backends.values()), {}
        for _system, backend, _cache in entries:
            await backend.close()
        await self.tunnels.close()
        await self.ssh_pool.close()
        self.log.info("Closed hpcgate's backends, tunnels and SSH connections")

    @classmethod
    def for_hub(cls) -> HPCGate:
        """The instance, built with the running JupyterHub's config if it is not yet
        (a page or handler may need it before any spawner did)."""
        if cls.initialized():
            return cls.instance()
        from jupyterhub.app import JupyterHub

        return cls.instance(config=JupyterHub.instance().config if JupyterHub.initialized() else None)

    @property
    def store(self) -> CatalogStore:
        if self._store is None:
            private_dir(self.state_dir)
            self._store = CatalogStore(self.catalog_path or None, self.catalog_check_interval, logger=self.log)
        return self._store

    def catalog(self) -> Catalog:
        return self.store.get()

    def _entry(self, system_name: str, system: System | None = None) -> tuple[System, Backend, StatusCache]:
        self._close_at_shutdown()
        system = system or self.catalog().systems.get(system_name)
        entry = self._backends.get(system_name)
        if system is None:
            if entry is None:
                raise KeyError(f"system '{system_name}' is not in the catalog")
            # removed from the catalog: keep serving the servers that still run there
            return entry
        if entry is None or entry[0] != system:
            # a changed system definition gets a new backend; servers started on the old
            # one are still answered by the handle they stored, not by backend state
            cls = backend_class(system.kind)
            # backends that run commands over SSH share the hub's connection pool
            extra = {"pool": self.ssh_pool} if getattr(cls, "uses_ssh_pool", False) else {}
            backend = cls(
                system_name,
                system,
                BackendContext(state_dir=str(Path(self.state_dir)), hub_users_of=self.hub_users_of),
                **extra,
            )
            cache = StatusCache(backend, system.status_interval, logger=self.log)
            if entry is not None:
                cache.take_over(entry[2])
                # the tunnel follows the new definition (jump host, login, hub API forward)
                self.tunnels.update(system_name, system)
            entry = (system, backend, cache)
            self._backends[system_name] = entry
        return entry

    def backend(self, system_name: str) -> Backend:
        return self._entry(system_name)[1]

    def status_cache(self, system_name: str) -> StatusCache:
        return self._entry(system_name)[2]

    def accounts(self, system_name: str) -> AccountResolver:
        """The account resolver of a system (re-built when its ``accounts:`` change)."""
        system = self._entry(system_name)[0]
        resolver = self._accounts.get(system_name)
        if resolver is None or resolver.mapping != system.accounts:
            resolver = self._accounts[system_name] = AccountResolver(system_name, system.accounts)
        return resolver

    def note_account(self, system_name: str, account: str, hub_user: str) -> None:
        """Remember that ``hub_user`` uses ``account`` on the system (certificate key ids)."""
        self._account_users.setdefault((system_name, account), set()).add(hub_user)

    def hub_users_of(self, system_name: str, account: str) -> list[str]:
        """The hub users noted for ``account`` on the system (sorted; may be empty)."""
        return sorted(self._account_users.get((system_name, account), ()))

    def health_cache(self, system_name: str) -> HealthCache:
        """The system's scheduler-state cache (re-built with its backend)."""
        backend = self.backend(system_name)
        cache = self._health.get(system_name)
        if cache is None or cache.backend is not backend:
            cache = HealthCache(system_name, backend.health, self.health_interval)
            cache.backend = backend
            self._health[system_name] = cache
        return cache

    async def health(self, system_names: list[str]) -> dict[str, SystemHealth | None]:
        """The scheduler state of each system (queried at most once per interval each)."""
        names = [n for n in system_names if n in self.catalog().systems]
        answers = await asyncio.gather(*(self.health_cache(n).get() for n in names))
        return dict(zip(names, answers, strict=True))

    def system(self, system_name: str) -> System:
        """The system's definition (the last known one if it left the catalog)."""
        return self._entry(system_name)[0]

    def _per_system(self, caches: dict[str, tuple[System, Any]], system_name: str, build: Any) -> Any:
        """The cache of ``system_name`` in ``caches``, built by ``build(system, backend,
        query_timeout)`` when missing or when the system's definition changed."""
        system, backend, _ = self._entry(system_name)
        entry = caches.get(system_name)
        if entry is None or entry[0] != system:
            # a form render waits for it: shorter than a command's usual timeout
            timeout = min(system.ssh.command_timeout if system.ssh else 10.0, 10.0)
            entry = caches[system_name] = (system, build(system, backend, timeout))
        return entry[1]

    def accounting(self, system_name: str) -> AccountingCache:
        """The association cache of a system (re-built, empty, when the system changes)."""
        return self._per_system(
            self._accounting, system_name,
            lambda system, backend, timeout: AccountingCache(
                system_name, backend.associations, system.projects.ttl, query_timeout=timeout, logger=self.log
            ),
        )

    async def charges_for(self, user: UserInfo, get_auth_state: Any) -> dict[str, Charges]:
        """The user's charges on every system granted to them that takes projects from
        Slurm. ``get_auth_state``: coroutine function giving the user's auth_state (only
        awaited when a system's account comes from it)."""
        catalog = self.catalog()
        granted = {g.system for _, group in catalog.groups_of(user) for g in group.grants}
        out: dict[str, Charges] = {}
        for name in granted:
            system = catalog.systems[name]
            if system.projects.source != "slurm":
                continue
            resolver = self.accounts(name)
            auth_state = await get_auth_state() if resolver.needs_auth_state else None
            try:
                account = resolver.account(user.name, auth_state)
            except AccountError as exc:
                out[name] = Charges(None, None, f"Your account on {name} is not known: {exc}")
                continue
            # the query may run as this account: its certificate names this hub user
            self.note_account(name, account, user.name)
            out[name] = await self.accounting(name).charges(account)
        return out

    def reservation_cache(self, system_name: str) -> ReservationCache:
        """The reservation list of a system (re-built, empty, when the system changes)."""
        return self._per_system(
            self._reservations, system_name,
            lambda system, backend, timeout: ReservationCache(
                system_name, backend.reservations, self.reservations_interval, query_timeout=timeout, logger=self.log
            ),
        )

    async def reservations_for(self, user: UserInfo, get_auth_state: Any) -> dict[str, tuple[Reservation, ...]]:
        """The reservations ``user`` may start in on every Slurm system granted to them,
        now or within :attr:`reservations_ahead` (:func:`~.reservations.usable`); the
        catalog matches them with partitions and projects. ``get_auth_state`` as for
        :meth:`charges_for`."""
        catalog = self.catalog()
        granted = {g.system for _, group in catalog.groups_of(user) for g in group.grants}
        out: dict[str, tuple[Reservation, ...]] = {}
        for name in sorted(granted):
            if catalog.systems[name].kind != "slurm":
                continue
            resolver = self.accounts(name)
            auth_state = await get_auth_state() if resolver.needs_auth_state else None
            try:
                account = resolver.account(user.name, auth_state)
            except AccountError:
                continue  # the form says so through the projects (charges_for)
            # the query may run as this account: its certificate names this hub user
            self.note_account(name, account, user.name)
            found = await self.reservation_cache(name).get(account)
            out[name] = usable(found, account, time.time(), self.reservations_ahead)
        return out

    async def carbon_intensity(self, system_name: str) -> tuple[float | None, str | None]:
        """gCO2e/kWh of ``system_name``'s electricity and where it came from ("catalog",
        or the source's path/URL); (None, None) when the catalog sets neither. A source
        that fails keeps its last good value, else the catalog's fixed figure."""
        catalog = self.catalog()
        if system_name not in catalog.systems:
            return None, None
        carbon = catalog.carbon_for(system_name)
        if carbon.source:
            key = (carbon.source, carbon.max_age)
            cache = self._intensity.get(key)
            if cache is None:
                cache = self._intensity[key] = IntensityCache(carbon.source, carbon.max_age)
            value = await asyncio.to_thread(cache.get)  # a URL read must not block the hub
            if cache.last_error:
                self.log.warning("%s", cache.last_error)
            if value is not None:
                return value, carbon.source
        if carbon.intensity is not None:
            return carbon.intensity, "catalog"
        return None, None
