"""HPCSpawner: the only JupyterHub-facing class of hpcgate.

It is thin on purpose: the catalog validates, a backend submits/queries/cancels, the
StatusCache answers ``poll()``, the TunnelManager connects. The spawner strings them
together, keeps the state JupyterHub persists, and tells the user what is happening.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from jupyterhub.spawner import Spawner
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Float, Integer, Unicode, default

from .. import protocol
from ..catalog import Charges, LaunchError, LaunchRequest, LoginContext, Reservation, UserInfo
from ..logs import watch_start
from ..remote import AccountName
from ..remote.tunnels import TunnelError
from . import metrics
from .backends.base import (
    BackendError,
    CancelError,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    StatusUnavailable,
    SubmitError,
)
from .client import request_client_address
from .culling import limits_state
from .form import render_form
from .health import offer_status, refuse_if_closed, status_html
from .identity.accounts import AccountError
from .identity.factors import used_second_factor
from .metrics import SpawnTimer, watch_start_metrics
from .runtime import HPCGate
from .sessions import active_systems, last_choices
from .sessions import end_time as session_end_time
from .stops import admin_stop_sentence, stopped_by_someone_else
from .usage import SessionUsage, usage_energy

T = TypeVar("T")

#: Version of the state layout written by :meth:`HPCSpawner.get_state`.
STATE_VERSION = 1


class SpawnFailed(Exception):
    """A spawn that failed for a reason the user should read, with the log tail."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.jupyterhub_message = message
        tail = f"<pre class='hpcgate-log'>{html.escape(log_tail)}</pre>" if log_tail.strip() else ""
        self.jupyterhub_html_message = f"<p>{html.escape(message)}</p>{tail}"
        self.log_tail = log_tail


def migrate_state(state: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored state of any earlier layout to :data:`STATE_VERSION`.

    Layout 0 (no ``hpcgate_state_version``) kept the job fields at the top level:
    ``{"job_id", "host", "system"}``.
    """
    version = state.get("hpcgate_state_version", 0)
    if version == 0 and "job_id" in state:
        state = {
            "hpcgate_state_version": 1,
            "system": state.get("system"),
            "job": {"job_id": state["job_id"], "host": state.get("host"), "extra": {}},
        }
    return state


class HPCSpawner(Spawner):
    """Launch JupyterLab on the systems of the hpcgate catalog.

    ``start()`` validates the user's options against the catalog, submits through the
    system's backend, waits for the server to report its address and returns the
    address JupyterHub routes to. ``poll()`` returns None while the job is pending,
    running or of unknown status (a scheduler error never stops a server), and an exit
    status once the job has really ended.
    """

    progress_poll_interval = Float(
        1.0,
        help="Seconds between status checks while a server is starting.",
    ).tag(config=True)

    log_tail_bytes = Integer(
        4096,
        help="How much of a failed server's output to show the user, in bytes.",
    ).tag(config=True)

    account_source_note = Unicode(
        "",
        help="Extra sentence shown under the form (e.g. where to apply for a project).",
    ).tag(config=True)

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        # batch queues and cold nodes are slow; JupyterHub's 60 s is not enough
        return 600

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 120

    @default("default_url")
    def _default_default_url(self) -> str:
        return "/lab"

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._options_from_form_checked

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # user_options are validated against the catalog in start(), every time
        return _options_validated_in_start

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.system: str | None = None
        #: the server's partition (for the metrics; kept in the state)
        self.partition = ""
        self.job: JobHandle | None = None
        #: the server's forward: {"local_port", "host", "port"} (tunnelled systems only)
        self.tunnel: dict[str, Any] | None = None
        self.last_log = ""
        self._events: list[dict[str, Any]] = []
        self._event_added = asyncio.Event()
        self._address: asyncio.Future[tuple[str, int]] | None = None
        #: the node's name the server reported with its address ("": it did not say)
        self._reported_node = ""
        #: set when the lab reports activity (it runs): its forward's probe tries at once
        self._lab_running = asyncio.Event()
        self._started_at = 0.0
        #: the task of a start (or of a start resumed after a hub restart) under way
        self._start_task: asyncio.Task | None = None
        #: SHA-256 of the server's API token, from the state (after a hub restart)
        self._api_token_sha256 = ""
        #: the system of the last request validated (the JSON logs' context)
        self.validated_system = ""
        #: why the last server ended without the user stopping it (home page); kept
        #: across stops, cleared by the next start
        self.stop_reason = ""
        #: this hub process opened (start) or re-opened (first poll after a restart) the
        #: system's hub API forward for this server; later polls do not wait for it
        self._hub_api_restored = False
        #: the running (or last) session's allocation and times, for its energy
        self.usage: SessionUsage | None = None
        #: a stop() is under way (its job's end is not one behind the hub's back)
        self._stopping = False
        #: the phase clock of the start under way (hpcgate.hub.metrics)
        self._timer: SpawnTimer | None = None
        #: the idle culler's limits for this server, seconds (hpcgate.hub.culling)
        self.cull_limits: dict[str, float] = {}
        #: this server counts against the user's session limits: True for a server
        #: restored from the database; a new start sets it only once it passed the
        #: check (:meth:`start`, :func:`~.sessions.active_systems`)
        self.admitted = True

    # --- shared objects -------------------------------------------------------------

    @property
    def hpcgate(self) -> HPCGate:
        return HPCGate.instance(config=self.config)

    def user_info(self) -> UserInfo:
        groups = frozenset(g.name for g in getattr(self.user, "groups", []) or [])
        return UserInfo(name=self.user.name, groups=groups)

    async def login_context(self, handler: Any = None) -> LoginContext:
        """What grant conditions see: the second factor from the user's auth_state, the
        client address of ``handler``'s request (default: the handler JupyterHub gave the
        spawner for the form page or the spawn; none: address unknown)."""
        handler = handler if handler is not None else getattr(self, "handler", None)
        address = None
        if handler is not None and getattr(handler, "request", None) is not None:
            address = request_client_address(handler.request, self.hpcgate.trusted_proxy_networks)
        auth_state = await self.user.get_auth_state()
        return LoginContext(mfa=used_second_factor(auth_state), address=address)

    async def charges(self) -> dict[str, Charges]:
        """The user's Slurm accounts on the systems that take projects from Slurm (cached
        for all users: :class:`~.accounting.AccountingCache`; never a query per call)."""
        return await self.hpcgate.charges_for(self.user_info(), self.user.get_auth_state)

    async def reservations(self) -> dict[str, tuple[Reservation, ...]]:
        """The scheduler reservations this user may start in, per system (read once per
        interval for all users: :class:`~.reservations.ReservationCache`)."""
        return await self.hpcgate.reservations_for(self.user_info(), self.user.get_auth_state)

    # --- form -----------------------------------------------------------------------

    async def _render_options_form(self, spawner: Spawner) -> str:
        """The form, pre-filled with this session's options, else the user's last
        launch (its system), and per system with the last choice made there; each
        system's state (maintenance, degraded) above it."""
        gate = self.hpcgate
        catalog = gate.catalog()
        offer = catalog.offer(
            self.user_info(), await self.login_context(), await self.charges(), await self.reservations()
        )
        health = await gate.health([s.name for s in offer.systems])
        status = status_html(offer_status(catalog, offer, health.get))
        remembered = last_choices(self.user)
        previous = dict(self.user_options or {})
        if not previous and remembered:
            previous = list(remembered.values())[-1]
        return status + render_form(
            offer,
            previous,
            note=self.account_source_note,
            remembered=remembered,
            active=active_systems(self.user, exclude=self.name),
            session=self.name,
        )

    async def _options_from_form_checked(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Form fields to ``user_options``; invalid choices come back on the form page.

        JupyterHub gives the spawner no handler here, so the client address (a grant's
        ``networks``) is judged in :meth:`start`, which refuses a withheld partition with
        the condition's sentence; the form never offers one.
        """
        options = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in formdata.items()}
        # _xsrf is JupyterHub's own form field, not a launch option
        options = {k: v for k, v in options.items() if v not in ("", None) and k != "_xsrf"}
        try:
            catalog = self.hpcgate.catalog()
            request = catalog.validate(
                self.user_info(), options, LoginContext(unconditional=True), await self.charges(),
                await self.reservations(),
            )
            self.check_sessions(request)
            # the last known scheduler state: this is a synchronous hook (start() asks afresh)
            refuse_if_closed(catalog, request, self.hpcgate.health_cache(request.system).last())
        except LaunchError as exc:
            raise web.HTTPError(400, str(exc), reason="Invalid launch options") from exc
        return request.as_options()

    def check_sessions(self, request: LaunchRequest) -> None:
        """LaunchError if this session would exceed the catalog's session limits."""
        self.hpcgate.catalog().check_sessions(request.system, active_systems(self.user, exclude=self.name))

    def _keep_options(self, request: LaunchRequest) -> None:
        """Keep the options this session launches with, complete (defaults filled in):
        a relaunch (a start without options) and the home page's card use them.

        Not committed here: the next commit carries them (the state saved once the
        system accepted the job, :meth:`_adopt`, or JupyterHub's own when the start
        fails), so a start costs one database sync less; before the job exists there
        is nothing a hub restart could lose by it.
        """
        self.user_options = request.as_options()
        orm = getattr(self, "orm_spawner", None)
        if orm is not None:
            orm.user_options = dict(self.user_options)

    async def _refuse_if_closed(self, request: LaunchRequest) -> None:
        """A new server only where the system and partition take new ones (maintenance,
        a partition down at the scheduler); servers already running are never touched."""
        gate = self.hpcgate
        try:
            refuse_if_closed(gate.catalog(), request, await gate.health_cache(request.system).get())
        except LaunchError as exc:
            raise _bad_request(str(exc)) from exc

    async def validated_request(self, resumed: bool = False) -> LaunchRequest:
        """``user_options`` checked against the catalog for this login and request.

        ``resumed`` (a start taken up again after a hub restart): the job already runs,
        so grant conditions count as met and its project as chargeable; the system and
        limits are checked again.
        """
        options = self.user_options or {}
        if resumed:
            context = LoginContext(unconditional=True)
            project = options.get("project") if isinstance(options.get("project"), str) else None
            charges = {str(options.get("system")): Charges((project,) if project else (), project)}
            # the job was submitted in its reservation already: it counts as usable
            name = options.get("reservation")
            reservations: dict[str, tuple[Reservation, ...]] = (
                {str(options.get("system")): (Reservation(name, 0.0, float("inf")),)} if isinstance(name, str) else {}
            )
        else:
            context, charges, reservations = await self.login_context(), await self.charges(), await self.reservations()
        try:
            request = self.hpcgate.catalog().validate(self.user_info(), options, context, charges, reservations)
        except LaunchError as exc:
            raise _bad_request(str(exc)) from exc
        self.validated_system = request.system
        return request

    # --- state ----------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["hpcgate_state_version"] = STATE_VERSION
        if self.system:
            state["system"] = self.system
        if self.partition:
            state["partition"] = self.partition
        if self.job:
            state["job"] = self.job.to_state()
        if self.tunnel:
            state["tunnel"] = dict(self.tunnel)
        if self.last_log:
            state["last_log"] = self.last_log
        if self.stop_reason:
            state["stop_reason"] = self.stop_reason
        if self.usage:
            state["usage"] = self.usage.to_state()
        if self.cull_limits and self.job:
            state["cull"] = dict(self.cull_limits)
        token_hash = _token_hash(self.api_token) if self.api_token else self._api_token_sha256
        if token_hash and self.job:
            # JupyterHub does not keep the server's token across a restart; its hash lets
            # a job that reports after a restart prove it is this server (owns_token)
            state["api_token_sha256"] = token_hash
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        state = migrate_state(dict(state or {}))
        self.system = state.get("system")
        self.partition = state.get("partition", "")
        self.job = JobHandle.from_state(state.get("job"))
        self.tunnel = state.get("tunnel") or None
        self.last_log = state.get("last_log", "")
        self.stop_reason = state.get("stop_reason", "")
        self.usage = SessionUsage.from_state(state.get("usage"))
        self.cull_limits = dict(state.get("cull") or {})
        self._api_token_sha256 = state.get("api_token_sha256", "")
        self.hpcgate.spawners.add(self)
        if self.job and self.system:
            account = self.job.extra.get("account")
            if account:
                self.hpcgate.note_account(self.system, str(account), self.user.name)
            try:
                self.hpcgate.status_cache(self.system).follow(self.job, self._job_ended)
            except KeyError:
                self.log.warning("System %s of %s is no longer in the catalog", self.system, self._log_name)

    def clear_state(self) -> None:
        super().clear_state()
        # JupyterHub clears the state before every start, before the start counts as
        # pending: from here until start() passed the session-limit check this server
        # does not count against the user's limits
        self.admitted = False
        self.system = None
        self.partition = ""
        self.job = None
        self.tunnel = None

    def _save_state(self) -> None:
        """Persist the state now (mid-start), so a hub restart loses no job."""
        orm = getattr(self, "orm_spawner", None)
        if orm is None:
            return
        orm.state = self.get_state()
        # the session the server's row belongs to (JupyterHub's own), not Spawner.db:
        # that attribute is deprecated and logs a 7-line warning for every spawner
        session = object_session(orm)
        if session is not None:
            session.commit()

    # --- progress -------------------------------------------------------------------

    def _emit(self, progress: int, message: str, html_message: str | None = None) -> None:
        elapsed = time.monotonic() - self._started_at if self._started_at else 0.0
        event: dict[str, Any] = {"progress": progress, "message": f"[{elapsed:5.1f} s] {message}"}
        if html_message:
            event["html_message"] = f"[{elapsed:5.1f} s] {html_message}"
        self._events.append(event)
        self._event_added.set()
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Events of the current start: submitted, queued, running, address, tunnel."""
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._spawn_done():
                break
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), 1.0)
            except TimeoutError:
                pass

    def _end_usage(self) -> bool:
        """End the session's usage now; True if it was running until now."""
        if self.usage is None or self.usage.ended is not None:
            return False
        self.usage.end()
        return True

    async def _record_energy(self) -> None:
        """The energy the scheduler's accounting recorded for the ended job, where it
        records one (:meth:`Backend.consumed_energy`), into the usage."""
        if self.usage is not None and self.job and self.system:
            try:
                measured = await asyncio.wait_for(self.hpcgate.backend(self.system).consumed_energy(self.job), 30)
            except (TimeoutError, StatusUnavailable, KeyError) as exc:
                self.log.info("No recorded energy for %s: %s", self._log_name, exc or "timed out")
            else:
                self.usage.measured_wh = measured
            await self._count_energy()
        self._save_state()

    async def _count_energy(self) -> None:
        """The ended session's energy into the hub's metrics (never raises)."""
        assert self.usage is not None
        try:
            energy = await usage_energy(self.hpcgate, self.usage)
        except Exception as exc:  # a metric must not break a stop
            self.log.warning("Energy of %s not counted in the metrics: %s", self._log_name, exc)
            return
        metrics.session_ended(self.usage.system, self.usage.partition, energy)

    async def energy(self) -> dict[str, Any] | None:
        """Energy and CO2 of the running or last session (:mod:`hpcgate.energy`), as
        JSON; None before the first session ran."""
        if self.usage is None:
            return None
        data = (await usage_energy(self.hpcgate, self.usage)).as_json()
        data["running"] = self.usage.ended is None
        return data

    def _spawn_done(self) -> bool:
        future = getattr(self, "_spawn_future", None)
        return future is not None and future.done()

    # --- start ----------------------------------------------------------------------

    def account_for(self, request: LaunchRequest, auth_state: dict[str, Any] | None = None) -> AccountName:
        """The user's account name on the request's system (validated).

        The system's ``accounts:`` mapping decides: the hub name, a key of
        ``auth_state``, or the admins' map file.
        """
        try:
            account = self.hpcgate.accounts(request.system).account(self.user.name, auth_state)
        except AccountError as exc:
            raise _bad_request(str(exc)) from exc
        self.hpcgate.note_account(request.system, account, self.user.name)
        return account

    @property
    def tunnel_key(self) -> str:
        """This server's key in the TunnelManager: unique per user and server name."""
        return f"{self.user.name}/{self.name}"

    def owns_token(self, token: str) -> bool:
        """Whether ``token`` is this server's API token (also after a hub restart)."""
        if self.api_token:
            return hmac.compare_digest(self.api_token.encode(), token.encode())
        if self._api_token_sha256:
            return hmac.compare_digest(self._api_token_sha256, _token_hash(token))
        return False

    def report_address(self, host: str, port: int, node: str = "") -> None:
        """Called by the ready handler when the server reported where it listens (and
        the name of its node, if it said)."""
        if self._address is not None and not self._address.done():
            self._reported_node = node
            self._address.set_result((host, port))

    def lab_active(self) -> None:
        """The lab reported activity to the hub (:mod:`hpcgate.hub.activity`): it runs, so
        a start waiting for it to answer through its tunnel tries now, not at its next
        probe."""
        self._lab_running.set()

    async def start(self) -> tuple[str, int]:
        self._events = []
        self._lab_running.clear()
        self._started_at = time.monotonic()
        self._start_task = asyncio.current_task()
        watch_start(self, self._start_task)  # one log line with the user's reason if this start fails
        self.last_log = ""
        self.stop_reason = ""
        request = await self.validated_request()
        # One lock per user, held from the limit check until this server counts as
        # admitted (active_systems counts it from then on): two starts at once (two
        # REST calls, two browser tabs) must not both pass a limit that has room for one.
        # Nothing may await between the check and the admission without this lock.
        async with self.hpcgate.session_lock(self.user.name):
            try:
                # the same limits and sentence as the form (a REST start, a relaunch)
                self.check_sessions(request)
            except LaunchError as exc:
                raise _bad_request(str(exc)) from exc
            self.admitted = True
        await self._refuse_if_closed(request)
        self._keep_options(request)
        partition = request.partition_config
        self.cull_limits = limits_state(partition.idle_timeout, partition.max_age, request.runtime)
        gate = self.hpcgate
        gate.spawners.add(self)
        self._timer = SpawnTimer(request.system, request.partition)
        watch_start_metrics(self, self._timer, self._start_task)
        backend = gate.backend(request.system)
        auth_state = None
        if gate.accounts(request.system).needs_auth_state:
            auth_state = await self.user.get_auth_state()
        account = self.account_for(request, auth_state)
        self._address = asyncio.get_running_loop().create_future()
        self._reported_node = ""
        env = self.get_env()
        # the allocation, for the lab's resource display (hpcgate.lab.allocation)
        env["MEM_LIMIT"] = str(request.memory * 1024**3)
        env["CPU_LIMIT"] = str(request.cpus)
        if request.apps:
            # the catalog's apps for this system, read by hpcgate.lab (HPCGateLab.catalog_apps)
            env[protocol.APPS] = json.dumps(request.apps, separators=(",", ":"))
        if request.kernels:
            # the system's kernels from module sets, read by hpcgate.lab.kernels
            env[protocol.KERNELS] = json.dumps(request.kernels, separators=(",", ":"))
        if backend.needs_tunnel and request.system_config.hub_api_forward:
            await self._route_hub_api(request, env)
        command = backend.server_command(request.system_config.singleuser_command)
        spec = JobSpec(
            request=request,
            hub_user=self.user.name,
            account=account,
            server_name=self.name,
            env=env,
            command=command + list(self.get_args()),
            workdir=request.system_config.workdir,
        )
        where = request.system_config.description or request.system
        in_reservation = f", reservation {request.reservation}" if request.reservation else ""
        self._emit(5, f"Submitting to {where}, partition {request.partition}{in_reservation}")
        submitting = asyncio.ensure_future(backend.submit(spec))
        try:
            handle = await asyncio.shield(submitting)
        except asyncio.CancelledError:
            # cancelled (the user's cancel, the hub stopping) while the system accepted
            # the job: keep its handle, so that stop() cancels it and a restarted hub
            # finds it; never leave a job nobody knows about
            try:
                self.partition = request.partition
                self._adopt(request.system, await submitting)
            except BackendError:
                pass
            raise
        except SubmitError as exc:
            raise SpawnFailed(str(exc)) from exc
        self.partition = request.partition
        self._adopt(request.system, handle)
        self._mark("submitted")
        self._emit(20, f"Submitted: job {handle.job_id}")
        host, port = await self._wait_for_address(handle)
        self.usage = SessionUsage.begin(request)
        self._save_state()
        self._mark("address")
        self._emit(80, f"Server started on {host}, port {port}")
        if backend.needs_tunnel:
            host, port = await self._open_tunnel(request, host, port)
            self._mark("tunnel")
        self._emit(90, "Waiting for JupyterLab to answer")
        return host, port

    def _mark(self, boundary: str) -> None:
        """A phase boundary of the start under way (for hpcgate_spawn_phase_seconds)."""
        if self._timer is not None:
            self._timer.mark(boundary)

    def _adopt(self, system: str, handle: JobHandle) -> None:
        """A job the system accepted: into the state (saved now) and the status cache."""
        self.system, self.job = system, handle
        self._save_state()
        self.hpcgate.status_cache(system).follow(handle, self._job_ended)

    async def _cancel_job(self) -> None:
        """Cancel this server's job during a start that cannot succeed."""
        if self.job and self.system:
            backend = self.hpcgate.backend(self.system)
            try:
                await backend.cancel(self.job)
            except CancelError as exc:
                self.log.error("Cannot cancel job %s of %s: %s", self.job.job_id, self._log_name, exc)
                return
            self.hpcgate.status_cache(self.system).forget(self.job.job_id)
            self.job = None
            self._save_state()

    async def _route_hub_api(self, request: LaunchRequest, env: dict[str, str]) -> None:
        """Point the job's hub API URLs at the system's remote forward on the jump host."""
        self._emit(3, f"Connecting to {request.system_config.tunnel_host}")
        try:
            api = await self.hpcgate.tunnels.hub_api_url(request.system, request.system_config, self.hub.api_url)
        except TunnelError as exc:
            raise SpawnFailed(f"{_sentence(str(exc))} Try again later; if it persists, tell the hub's admins.") from exc
        for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
            if env.get(name, "").startswith(self.hub.api_url):
                env[name] = api + env[name][len(self.hub.api_url) :]

    async def _open_tunnel(self, request: LaunchRequest, host: str, port: int) -> tuple[str, int]:
        """Open the server's forward; on failure stop the server and fail the spawn."""
        assert self.job is not None
        remaining = self.start_timeout - (time.monotonic() - self._started_at)
        try:
            local_port = await self.hpcgate.tunnels.open_forward(
                request.system,
                request.system_config,
                self.tunnel_key,
                host,
                port,
                timeout=max(remaining - 5, 5),
                wake=self._lab_running,
            )
        except TunnelError as exc:
            self.last_log = await self.hpcgate.backend(request.system).log_tail(self.job, self.log_tail_bytes)
            await self.stop()
            raise SpawnFailed(f"{_sentence(str(exc))} The server was stopped; start it again.", self.last_log) from exc
        self.tunnel = {"local_port": local_port, "host": host, "port": port}
        self._hub_api_restored = True  # opened by this start (_route_hub_api)
        # not saved here: JupyterHub saves the state as soon as start() returns, with
        # no await in between (a hub restart cannot fall between the two)
        self._emit(85, f"Tunnel up: 127.0.0.1:{local_port} -> {host}:{port}")
        return "127.0.0.1", local_port

    async def _unless_reported(self, step: Awaitable[T]) -> T | None:
        """``step``'s result, or None as soon as the server reports its address first.

        Under a storm of spawns a status query (or a connection file read) waits its turn
        behind the submissions on the account's SSH connection for seconds; the report
        must not wait for it. The step is not cancelled then: a status query is shared
        with other spawners waiting for the same answer, and it ends by itself.
        """
        assert self._address is not None
        task: asyncio.Future[Any] = asyncio.ensure_future(step)
        address: asyncio.Future[Any] = self._address
        await asyncio.wait({task, address}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.add_done_callback(_retrieved)
        return None

    async def _wait_for_address(self, handle: JobHandle) -> tuple[str, int]:
        assert self.system and self._address is not None
        gate = self.hpcgate
        cache = gate.status_cache(self.system)
        backend = gate.backend(self.system)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self.start_timeout - 5, 1)
        last_shown = None
        while True:
            found: tuple[str, int] | None
            try:
                found = await asyncio.wait_for(asyncio.shield(self._address), self.progress_poll_interval)
            except TimeoutError:
                found = await self._unless_reported(backend.read_connection_file(handle))
                if found is None and self._address.done():
                    continue  # reported while the file was read: taken at the top
            if found:
                self._mark("running")
                if last_shown is None or last_shown[0] is not JobState.RUNNING:
                    # the server reported before a status query saw it run: say where.
                    # The node it named, else the node from a scheduler query begun
                    # after the report (under a storm of spawns that query waits its
                    # turn behind every submission: seconds), else its address.
                    node = self._reported_node
                    if not node:
                        status = await cache.get_fresh(handle)
                        node = status.node if status.state is JobState.RUNNING and status.node else found[0]
                    self._emit(50, f"Running on {node}")
                return found
            asked = await self._unless_reported(cache.get(handle, max_age=self.progress_poll_interval))
            if asked is None:
                continue  # reported while the status query ran (or waited its turn)
            status = asked
            shown = (status.state, status.reason, status.node)
            if status.state is JobState.PENDING and status.stuck:
                self.last_log = await backend.log_tail(handle, self.log_tail_bytes)
                await self._cancel_job()
                raise SpawnFailed(f"Job {handle.job_id} was cancelled. {status.stuck}", self.last_log)
            if status.state is JobState.DONE:
                self.last_log = await backend.log_tail(handle, self.log_tail_bytes)
                code = f" (exit code {status.exit_code})" if status.exit_code is not None else ""
                reason = f": {status.reason}" if status.reason else ""
                raise SpawnFailed(
                    f"The server ended before it reported its address{code}{reason}. "
                    "Check the log below, fix the cause and start again.",
                    self.last_log,
                )
            if shown != last_shown:
                last_shown = shown
                if status.state is JobState.PENDING:
                    why = f" ({status.reason})" if status.reason else ""
                    self._emit(30, f"Queued{why}")
                elif status.state is JobState.RUNNING:
                    self._mark("running")
                    node = f" on {status.node}" if status.node else ""
                    self._emit(50, f"Running{node}; starting JupyterLab")
                elif status.state is JobState.UNKNOWN:
                    self._emit(40, f"Status unknown for now ({status.reason}); still waiting")
            if loop.time() > deadline:
                self.last_log = await backend.log_tail(handle, self.log_tail_bytes)
                await self._cancel_job()
                raise SpawnFailed(
                    f"The server did not report its address within {self.start_timeout} s. "
                    "The system may be busy: try again later or choose a smaller request.",
                    self.last_log,
                )

    # --- poll and stop ----------------------------------------------------------------

    async def poll(self) -> int | None:
        """None while the job is pending, running or unknown; its exit status once ended.

        Also None while a start is under way, even before the system gave a job id:
        JupyterHub then calls :meth:`stop`, which ends the start and cancels its job.
        """
        if self._starting():
            return None
        if not self.job or not self.system:
            return 0
        try:
            cache = self.hpcgate.status_cache(self.system)
        except KeyError:
            return None
        status = await cache.get(self.job)
        if status.state is JobState.DONE:
            if not self.stop_reason:
                self.stop_reason = self._ended_sentence(status)
            if self._end_usage():
                await self._record_energy()
            await self._close_tunnel()
            return status.exit_code if status.exit_code is not None else 1
        if await self._runtime_ended(status):
            return 0
        await self._restore_tunnel()
        return None

    async def _runtime_ended(self, status: JobStatus) -> bool:
        """On systems without a scheduler's wall time (local, ssh) the hub ends a
        server when the runtime asked for is over; True if it did so now."""
        if status.end_time is not None or status.state is not JobState.RUNNING:
            return False
        end = session_end_time(self, status)
        if end is None or time.time() < end:
            return False
        runtime = (self.user_options or {}).get("runtime")
        self.log.info("%s: its runtime of %s min is over; stopping it", self._log_name, runtime)
        await self.stop()
        self.stop_reason = (
            f"Your session ended at {time.strftime('%H:%M UTC', time.gmtime(end))}: "
            f"its runtime of {runtime} minutes was over. Relaunch it to go on."
        )
        self._save_state()
        return True

    async def job_status(self) -> JobStatus | None:
        """This server's job status from the shared cache (None without a job)."""
        if not self.job or not self.system:
            return None
        try:
            cache = self.hpcgate.status_cache(self.system)
        except KeyError:
            return None
        return await cache.get(self.job)

    def _ended_sentence(self, status: JobStatus) -> str:
        """What the home page says about a server whose job ended on its own."""
        assert self.job is not None
        return ended_sentence(self.job.job_id, self.system or "its system", status)

    def _job_ended(self, status: JobStatus) -> None:
        """The status cache saw this server's job end (also behind the hub's back).

        During a start, the start reports it itself. Otherwise the reason is kept for
        the home page and JupyterHub's own stop path runs now (its poll callbacks: the
        route is removed and the server marked stopped) instead of at its next poll.
        """
        if self._starting() or self._stopping or self.job is None:
            return
        self.stop_reason = self._ended_sentence(status)
        self.log.warning("%s: %s", self._log_name, self.stop_reason)
        # JupyterHub registers its callbacks (user_stopped) once the server runs; with
        # none registered yet (a hub starting up), its own check polls and stops it
        if getattr(self, "_callbacks", None):
            asyncio.ensure_future(self.poll_and_notify())

    async def _restore_tunnel(self) -> None:
        """After a hub restart, re-create every forward this server needs from its state,
        before JupyterHub routes it: its own forward on the port JupyterHub routes to,
        and its system's hub API forward (a lab checks each new token with the hub
        through it). The TunnelManager logs each forward restored or not."""
        if not self.tunnel or not self.system:
            return
        tunnels = self.hpcgate.tunnels
        if self._hub_api_restored and tunnels.has_forward(self.system, self.tunnel_key):
            return
        try:
            system = self.hpcgate.system(self.system)
        except KeyError as exc:
            self.log.error("Cannot restore the forwards of %s: %s", self._log_name, exc)
            return
        if not tunnels.has_forward(self.system, self.tunnel_key):
            try:
                await tunnels.restore_forward(
                    self.system,
                    system,
                    self.tunnel_key,
                    self.tunnel["host"],
                    int(self.tunnel["port"]),
                    int(self.tunnel["local_port"]),
                )
            except (TunnelError, KeyError, ValueError):
                pass  # logged by the manager; the server's URL does not answer
        if system.hub_api_forward and not self._hub_api_restored:
            # once: later polls must not wait out an outage (the tunnel re-requests the
            # forward on every reconnect by itself once it knows it)
            self._hub_api_restored = True
            try:
                await tunnels.restore_hub_api(self.system, system, self.hub.api_url, tunnels.connect_wait)
            except TunnelError:
                pass  # logged by the manager; re-requested on every reconnect

    async def _close_tunnel(self) -> None:
        if self.tunnel and self.system:
            await self.hpcgate.tunnels.close_forward(self.system, self.tunnel_key)
        self.tunnel = None

    async def get_url(self) -> str:
        """The server's URL; after a hub restart during a start, finish that start first.

        JupyterHub asks this of servers whose ``poll()`` says they run. A job submitted
        before the restart that has not got its tunnel yet (pending in the queue, or the
        lab still starting) is waited for as in :meth:`start` -- address, tunnel -- and
        its URL returned. A start that cannot finish cancels the job; JupyterHub then
        finds no server at the old URL and cleans up.
        """
        if not (self.job and self.system and not self.tunnel and self._start_task is None):
            return await super().get_url()
        try:
            backend = self.hpcgate.backend(self.system)
        except KeyError:
            return await super().get_url()
        if not backend.needs_tunnel:
            return await super().get_url()
        # its own task: stop() may cancel it (the user's cancel) without cancelling
        # JupyterHub's start-up check that called us
        task = self._start_task = asyncio.ensure_future(self._resume())
        try:
            await asyncio.wait([task])
        finally:
            self._start_task = None
        if task.cancelled() or task.exception() is not None:
            return await super().get_url()
        return task.result()

    async def _resume(self) -> str:
        assert self.job and self.system
        self._started_at = time.monotonic()
        self._address = asyncio.get_running_loop().create_future()
        self._reported_node = ""
        self.log.info("Resuming the start of %s (job %s) after a hub restart", self._log_name, self.job.job_id)
        try:
            request = await self.validated_request(resumed=True)
            if request.system != self.system:
                raise SpawnFailed(f"The server's system {self.system} is no longer offered to you.")
            if request.system_config.hub_api_forward:
                # the job reports to the hub API through the jump host: that forward must be up
                await self.hpcgate.tunnels.hub_api_url(request.system, request.system_config, self.hub.api_url)
            host, port = await self._wait_for_address(self.job)
            host, port = await self._open_tunnel(request, host, port)
            # JupyterHub saves no state after get_url(): the forward's port, for the next restart
            self._save_state()
        except (SpawnFailed, TunnelError, web.HTTPError) as exc:
            self.log.error("Cannot resume the start of %s: %s", self._log_name, exc)
            await self._cancel_job()
            raise
        return f"http://{host}:{port}"

    def _starting(self) -> bool:
        task = self._start_task
        return task is not None and not task.done() and task is not asyncio.current_task()

    async def _end_start(self) -> None:
        """Cancel a start under way and wait until it let go (its job, if any, is kept)."""
        task = self._start_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        self.log.info("Cancelling the start of %s", self._log_name)
        task.cancel()
        await asyncio.wait([task])

    async def stop(self, now: bool = False) -> None:
        """Stop the server: end a start under way, close the tunnel, cancel the job.

        Works at any point of a start (the user's cancel on the progress page): a job
        submitted in the meantime is cancelled too. Stopped through JupyterHub's API by
        a user other than the owner (an admin), the home page says so
        (:mod:`hpcgate.hub.stops`).
        """
        if stopped_by_someone_else(self.user.name):
            self.stop_reason = admin_stop_sentence()
            self.log.info("%s: stopped by an admin", self._log_name)
        # while this stop runs, the status cache may see the job end (it is being
        # cancelled): that end is this stop's, not one "without a stop from this hub"
        self._stopping = True
        try:
            await self._stop()
        finally:
            self._stopping = False

    async def _stop(self) -> None:
        """:meth:`stop`'s work, while ``_stopping`` is set."""
        await self._end_start()
        ending = self._end_usage()
        if not self.job or not self.system:
            return
        try:
            backend = self.hpcgate.backend(self.system)
        except KeyError:
            self.log.warning("Cannot stop %s: system %s is gone from the catalog", self._log_name, self.system)
            return
        await self._close_tunnel()
        cache = self.hpcgate.status_cache(self.system)
        known = cache.known(self.job.job_id)
        try:
            if known is None or known.state is not JobState.DONE:
                # a job that already ended (behind the hub's back) needs no cancel
                await backend.cancel(self.job)
        except CancelError as exc:
            # keep the job: a later stop (or the culler) tries again
            self.log.error("Cannot stop %s: %s", self._log_name, exc)
            raise
        if ending:
            await self._record_energy()
        tail = await backend.log_tail(self.job, self.log_tail_bytes)
        if tail:
            self.last_log = tail
        cache.forget(self.job.job_id)
        self.job = None


def ended_sentence(job_id: str, system: str, status: JobStatus, when: float | None = None) -> str:
    """The home page's sentence for a server whose job ended without a stop from the hub:
    its walltime reached (the scheduler's ``TIMEOUT``), or ended otherwise (with the
    scheduler's reason and exit code)."""
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    if status.reason.split(",")[0].strip().upper() == "TIMEOUT":
        return (
            f"Your server stopped at {at}: job {job_id} on {system} reached its walltime "
            "(the runtime you asked for). Start a new one to go on working."
        )
    with_code = f" with exit code {status.exit_code}" if status.exit_code is not None else ""
    why = f" ({status.reason})" if status.reason else ""
    return (
        f"Your server stopped: job {job_id} on {system} ended{with_code}{why}, "
        f"seen at {at}, without a stop from this hub. Start it again when you are ready."
    )


def _retrieved(task: asyncio.Future) -> None:
    """Done callback of a step nobody awaits any more: its failure is only logged."""
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("hpcgate.spawner").info("A step no longer awaited failed: %s", task.exception())


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _options_validated_in_start(spawner: Spawner, user_options: dict[str, Any]) -> None:
    """HPCSpawner reads user_options itself (:meth:`HPCSpawner.validated_request`)."""


def _sentence(text: str) -> str:
    """``text`` ending with a full stop, to be followed by another sentence."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _bad_request(message: str) -> web.HTTPError:
    error = web.HTTPError(400, message, reason="Invalid launch options")
    error.jupyterhub_message = message  # type: ignore[attr-defined]
    return error
