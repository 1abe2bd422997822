"""The backend interface: what every kind of system (local, ssh, slurm, ...) provides.

A backend is created once per catalog system by :class:`hpcgate.hub.runtime.HPCGate`
and shared by every spawner of that system. It never keeps per-user state in class
attributes; per-launch state lives in :class:`JobHandle`, which the spawner stores in its
JupyterHub state so a hub restart loses nothing.

Contract:

- :meth:`Backend.submit` starts a server (a process, a detached SSH process, a batch
  job) and returns its handle as soon as the system has accepted it -- it does not wait
  for the server to run.
- :meth:`Backend.status` answers for many handles in one query (one ``squeue`` for all
  jobs of a system, one ``ps`` per host). A handle missing from the answer has ended.
  A failed query raises :class:`StatusUnavailable`; callers treat that as UNKNOWN,
  never as "stopped".
- :meth:`Backend.cancel` ends a server; cancelling one that has already ended is no
  error. A server that could not be stopped raises :class:`CancelError`.
- :meth:`Backend.log_tail` returns the last bytes of the server's output, or ``""``.
- Errors: a backend raises only :class:`BackendError` and its subclasses defined
  here (whatever SSH, a scheduler or the hub host said is in the sentence); the
  spawner needs to know no transport.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ...catalog import LaunchRequest, Reservation, System
from ...remote import AccountName

if TYPE_CHECKING:
    from ..health import SystemHealth


class JobState(enum.Enum):
    PENDING = "pending"   # accepted, waiting for resources
    RUNNING = "running"
    DONE = "done"         # ended (any reason); exit_code says how if known
    UNKNOWN = "unknown"   # the system could not be asked; keep the server


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    #: The scheduler's reason (Resources, Priority, ...) or an error text.
    reason: str = ""
    #: Node the job runs on, once known.
    node: str | None = None
    exit_code: int | None = None
    #: Set on a PENDING job that can never start by waiting (the request does not fit
    #: the partition, a hold nobody releases): a sentence for the user. The spawner
    #: cancels such a job and fails the spawn with it.
    stuck: str = ""
    #: Epoch seconds: when a running job started, or when the scheduler expects a
    #: pending one to start (``squeue --start``); None where the system does not say.
    start_time: float | None = None
    #: Epoch seconds: when the job's wall time runs out, as the scheduler plans it;
    #: None where the system enforces none (local, ssh) or does not say.
    end_time: float | None = None


class BackendError(RuntimeError):
    """Base of every error a backend raises; the message is a sentence."""


class StatusUnavailable(BackendError):
    """The system could not be asked for status (controller down, host unreachable)."""


class SubmitError(BackendError):
    """The system refused a server; the message is shown to the user."""


class CancelError(BackendError):
    """A server could not be stopped (host unreachable, the scheduler refused).

    The job is kept: a later stop tries again.
    """


class AccountingUnavailable(BackendError):
    """The scheduler's accounting could not be asked (slurmdbd down, host unreachable)."""


@dataclass(frozen=True)
class Association:
    """One (user, account) pair the scheduler's accounting allows, and the user's default."""

    user: str
    account: str
    default: str = ""


@dataclass(frozen=True)
class SchedulerReservation:
    """A reservation as the scheduler describes it (a backend's answer).

    ``users``: accounts admitted (``-name``: every account but those); empty: the
    accounts decide. ``accounts``: as in :class:`~hpcgate.catalog.Reservation`.
    ``groups``: the reservation also names Unix groups. ``flags``: the scheduler's flags
    (``MAINT`` marks maintenance).
    """

    name: str
    start: float
    end: float
    partition: str | None = None
    users: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    groups: bool = False
    flags: tuple[str, ...] = ()

    def admits(self, account: str) -> bool:
        """Whether the reservation's users (or, without users, its accounts) admit ``account``."""
        if "MAINT" in self.flags:
            return False
        if not self.users:
            return bool(self.accounts) and not self.groups
        if all(u.startswith("-") for u in self.users):
            return f"-{account}" not in self.users
        return account in self.users

    def for_catalog(self) -> Reservation:
        return Reservation(self.name, self.start, self.end, self.partition, self.accounts)


@dataclass
class JobSpec:
    """What the spawner asks a backend to run.

    ``env`` holds secrets (the server's API token): backends pass it through a process
    environment, stdin or a 0600 file -- never through argv, a URL or a log line.
    """

    request: LaunchRequest
    hub_user: str
    #: the user's account on the system, checked by the account resolver
    account: AccountName
    server_name: str
    env: dict[str, str]
    command: list[str]
    workdir: str


@dataclass
class JobHandle:
    """A started server, as stored in the spawner state (JSON-able)."""

    job_id: str
    #: The host the backend talks to for this job (login host, or None when local).
    host: str | None = None
    #: Backend-specific details (pid start time, log path, ...), JSON-able.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict[str, Any] | None) -> JobHandle | None:
        if not data or "job_id" not in data:
            return None
        return cls(job_id=str(data["job_id"]), host=data.get("host"), extra=dict(data.get("extra") or {}))


@dataclass
class BackendContext:
    """Hub-wide facts a backend may need."""

    state_dir: str
    #: (system, account) -> hub users known to use that account (for the key ids of
    #: SSH certificates); None: unknown.
    hub_users_of: Callable[[str, str], Sequence[str]] | None = None


class Backend(ABC):
    """Base class of every backend; one instance per catalog system."""

    kind: ClassVar[str]
    #: Whether servers of this backend are reached through the TunnelManager.
    needs_tunnel: ClassVar[bool] = True

    def __init__(self, name: str, system: System, context: BackendContext):
        self.name = name
        self.system = system
        self.context = context

    @abstractmethod
    async def submit(self, spec: JobSpec) -> JobHandle: ...

    @abstractmethod
    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]: ...

    @abstractmethod
    async def cancel(self, handle: JobHandle) -> None: ...

    async def confirm_ended(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Ask once more about jobs missing from a :meth:`status` answer.

        Returns the status of those still known (e.g. from accounting, ``sacct``), and
        leaves out those that really ended. The default asks :meth:`status` again.
        """
        return await self.status(handles)

    async def associations(self, asking: str) -> list[Association]:
        """Every user's chargeable accounts on this system; raises :class:`AccountingUnavailable`.

        Asked as the system's service or tunnel account where it has one, else as
        ``asking`` (the account of the user who needs the answer). Only schedulers with
        accounting have them."""
        raise AccountingUnavailable(f"system {self.name} ({self.system.kind}) keeps no accounting")

    async def reservations(self, asking: str) -> list[SchedulerReservation]:
        """Every scheduler reservation of this system, for all users (``asking``: the
        account whose request needs them, where the backend reads as the user). May
        raise :class:`StatusUnavailable`. Default: a system without reservations."""
        return []

    async def log_tail(self, handle: JobHandle, nbytes: int = 4096) -> str:
        return ""

    def server_command(self, command: Sequence[str]) -> list[str]:
        """The argv that starts the server, from the catalog's ``singleuser_command``.

        The default runs it as it is; a backend on the hub host may run it with the
        hub's own Python instead.
        """
        return list(command)

    async def consumed_energy(self, handle: JobHandle) -> float | None:
        """Energy (Wh) the system's accounting recorded for the job (an energy plugin);
        None where it records none. May raise :class:`StatusUnavailable`."""
        return None

    async def read_connection_file(self, handle: JobHandle) -> tuple[str, int] | None:
        """The address a server wrote to its connection file, or None if not there yet.

        Used where a node cannot reach the hub API. The file is removed once read.
        """
        return None

    async def health(self) -> SystemHealth | None:
        """The scheduler's own state of the system's partitions (down, drained, free
        nodes, reservations), in one query; None: the backend cannot tell (then nothing
        is shown or refused for it). Raises StatusUnavailable when the system cannot
        be asked (the caller logs it and shows nothing)."""
        return None

    async def close(self) -> None:  # noqa: B027 (a no-op by default, not abstract)
        """Release what the backend holds; called once, when the hub stops (HPCGate.close)."""
