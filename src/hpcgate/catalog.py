"""The resource catalog: systems, partitions, projects, groups (VOs) and defaults.

An admin writes the catalog as YAML. :func:`parse_catalog` validates it with pydantic and
returns a :class:`Catalog`; every error names the file, the key path and what is wrong.
:class:`CatalogStore` reloads the file when it changes and keeps the last good catalog
when a new version is broken.

The catalog answers two questions and knows nothing of JupyterHub:

- :meth:`Catalog.offer` -- what may this user launch where (systems, partitions with
  their limits after group caps, projects);
- :meth:`Catalog.validate` -- turn raw launch options (a form post or REST
  ``user_options``) into a :class:`LaunchRequest`, or raise :class:`LaunchError` with a
  sentence the user can act on. Nothing a user typed reaches a script or a command line
  before it passed through here.

Units: ``memory`` is in GiB, ``runtime`` in minutes.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator

log = logging.getLogger("hpcgate.catalog")

#: Names of systems, partitions, projects and groups: safe in a URL, a shell word, a
#: Slurm option and an HTML attribute without escaping (we escape anyway).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
#: Host names and addresses as they may appear in a catalog.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"
Host = Annotated[str, Field(pattern=HOST_PATTERN)]

RESOURCES = ("nodes", "cpus", "memory", "gpus", "runtime")
#: The options every launch has (a launch kept with all of them is complete).
BASE_KEYS = ("system", "partition", "project", *RESOURCES)
#: Every launch option: the base ones and the scheduler reservation to start in.
OPTION_KEYS = (*BASE_KEYS, "reservation")
UNITS = {"nodes": "", "cpus": "", "memory": " GiB", "gpus": "", "runtime": " min"}
#: Anything above this is rejected before it is compared with a limit.
ABSOLUTE_MAX = 10**7


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Model):
    """Bounds of one resource in a partition: ``min <= default <= max``."""

    min: int = Field(0, ge=0, le=ABSOLUTE_MAX)
    default: int = Field(ge=0, le=ABSOLUTE_MAX)
    max: int = Field(ge=0, le=ABSOLUTE_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min <= self.default <= self.max:
            raise ValueError(
                f"needs min <= default <= max, got min={self.min}, "
                f"default={self.default}, max={self.max}"
            )
        return self

    def capped(self, cap: int | None) -> Range:
        if cap is None or cap >= self.max:
            return self
        top = max(cap, self.min)
        return Range(min=self.min, default=min(self.default, top), max=top)


def _fixed(value: int) -> Range:
    return Range(min=value, default=value, max=value)


class Limits(_Model):
    """What one launch may ask for in a partition. Memory in GiB, runtime in minutes."""

    nodes: Range = _fixed(1)
    cpus: Range = Range(min=1, default=1, max=1)
    memory: Range = Range(min=1, default=1, max=1)
    gpus: Range = _fixed(0)
    runtime: Range = Range(min=1, default=60, max=60)


#: A web app beside the lab (see :mod:`hpcgate.lab.apps.recipes.generic`): ``command``
#: as one string or a list, with ``{port}``/``{unix_socket}``/``{base_url}``/
#: ``{app_dir}``/``{app_name}`` templates; ``title``, ``icon``, ``category``,
#: ``install``, ``setup`` (module loads), ``environment``, ``ready_check``,
#: ``timeout``, ``unix_socket``, ``new_browser_tab``... The lab validates it the same
#: way; a catalog whose apps it would refuse does not load.
AppEntry = Annotated[
    dict[str, Any],
    Field(
        description="A web app beside the lab: command (string or list) with {port}, {unix_socket}, "
        "{base_url}, {app_dir}, {app_name} templates, title, icon, category, install, setup, "
        "environment, ready_check, timeout, unix_socket, new_browser_tab, idle_timeout, ..."
    ),
]


def _check_apps(apps: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any] | None]:
    """``apps`` unchanged; ValueError naming the app if the lab would refuse one."""
    from .appspec import SpecError, catalog_app

    for name, raw in apps.items():
        if raw is None:
            continue
        try:
            catalog_app(name, raw)
        except (SpecError, TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
    return apps


#: Environment module names as Lmod knows them: ``gcc``, ``python/3.11``, ``cuda/12.2+x``.
MODULE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+/-]{0,127}$"


class Kernel(_Model):
    """A Jupyter kernel started with a set of environment modules loaded.

    The lab writes a kernelspec whose argv is ``argv`` (``{connection_file}`` is
    Jupyter's own placeholder) and whose provisioner loads ``modules`` with Lmod before
    the kernel starts (:mod:`hpcgate.lab.kernels`); no shell runs."""

    display_name: str = Field(min_length=1, max_length=100, description="Name shown in the launcher.")
    modules: list[Annotated[str, Field(pattern=MODULE_PATTERN)]] = Field(
        min_length=1, max_length=50, description="Modules loaded, in order, before the kernel starts."
    )
    argv: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        min_length=1,
        description="The kernel command, found on the PATH the modules set; must contain {connection_file}.",
    )
    language: str = Field("python", pattern=r"^[A-Za-z0-9_+#-]{1,40}$", description="The kernel's language.")

    @model_validator(mode="after")
    def _connection_file(self) -> Kernel:
        if not any("{connection_file}" in arg for arg in self.argv):
            raise ValueError("argv must pass {connection_file} to the kernel")
        return self


class Power(_Model):
    """Power drawn per allocated device, for the energy estimate (:mod:`hpcgate.energy`).

    Generic defaults; an admin sets the figures of the real hardware (a node's power
    under load divided by its cores, a GPU's board power)."""

    watts_per_cpu: float = Field(10.0, ge=0, le=10000, description="Watts per allocated CPU core.")
    watts_per_gpu: float = Field(300.0, ge=0, le=10000, description="Watts per allocated GPU.")
    pue: float = Field(1.0, ge=1, le=10, description="Power usage effectiveness: facility overhead factor (>= 1).")


class Carbon(_Model):
    """Carbon intensity of the electricity (gCO2e/kWh): a fixed figure and/or a source
    (a file or an http(s) URL whose body is one number), re-read every ``max_age`` s."""

    intensity: float | None = Field(None, ge=0, le=5000, description="Fixed gCO2e/kWh; the fallback when a source is set.")
    source: str | None = Field(
        None, pattern=r"^(https?://|/)\S{1,500}$", description="Absolute file path or http(s) URL returning one number (gCO2e/kWh)."
    )
    max_age: float = Field(900, gt=0, description="Seconds a value read from source is used before it is read again.")
class Maintenance(_Model):
    """A system or partition closed for new servers until ``until`` (running ones stay)."""

    #: End of the maintenance, ISO 8601 with a time zone (e.g. 2026-12-02T08:00:00Z).
    until: datetime.datetime
    #: What users read (plain text), e.g. why and where to follow the work.
    message: str = Field("", max_length=500)

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime.datetime) -> datetime.datetime:
        if value.tzinfo is None:
            raise ValueError("until needs a time zone, e.g. 2026-12-02T08:00:00Z")
        return value

    def active(self, now: datetime.datetime) -> bool:
        return now < self.until

    def sentence(self, what: str) -> str:
        """"<what> is in maintenance until <time> UTC: <message>."""
        until = self.until.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        message = self.message.strip().rstrip(".")
        return f"{what} is in maintenance until {until}" + (f": {message}." if message else ".")


class Announcement(_Model):
    """A message shown on the hub's pages and in every lab until ``until``."""

    message: str = Field(min_length=1, max_length=500)
    until: datetime.datetime | None = None

    def active(self, now: datetime.datetime) -> bool:
        return self.until is None or now < self.until


class Partition(_Model):
    description: str = ""
    limits: Limits = Limits()
    #: Power per device for the energy estimate; default: the system's.
    power: Power | None = None
    #: Shell lines run before the lab starts (module loads), after the system's.
    setup: list[str] = []
    #: Job script template overriding the system's (slurm), a path.
    template: str | None = None
    #: Closed for new servers until a time (running servers are not touched).
    maintenance: Maintenance | None = None
    #: Minutes without activity after which the idle culler stops a server (none: never).
    idle_timeout: float | None = Field(None, gt=0)
    #: Minutes after which a server is stopped even if in use (none: only its runtime
    #: ends it). Never longer than the partition's longest runtime.
    max_age: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _max_age_within_runtime(self) -> Partition:
        if self.max_age is not None and self.max_age > self.limits.runtime.max:
            raise ValueError(
                f"max_age ({self.max_age:g} min) is longer than the longest runtime of the partition "
                f"({self.limits.runtime.max} min): the job ends before; lower max_age or raise limits.runtime.max"
            )
        return self


class Identity(_Model):
    """How the hub authenticates on a system's hosts.

    ``user_key``: per-user key (and certificate) files found through a path template
    with ``{account}``. ``service_account``: one account whose key the hub holds, which
    runs each user's commands through ``runuser -u``/``sudo -u`` (``switch_user``).
    ``certificate``: the hub's SSH CA (``hpcgate ca init``) signs, for every connection,
    a fresh in-memory key with a certificate for exactly the user's account, valid
    ``certificate_minutes``, from ``source_addresses`` only when they are given; the
    hosts' sshd trusts the CA (``TrustedUserCAKeys``) and no user key is stored.
    """

    mode: Literal["user_key", "service_account", "certificate"] = "user_key"
    key_path: str | None = None
    cert_path: str | None = None
    service_account: Name | None = None
    service_key: str | None = None
    switch_user: list[str] = ["sudo", "-n", "-u", "{account}", "--"]
    #: The CA's private key (mode ``certificate``); ``{state_dir}`` is the hub's.
    ca_key: str = "{state_dir}/ssh-ca/ca_key"
    #: Minutes a certificate is valid (only new connections need one: an open
    #: connection stays usable after its certificate expired).
    certificate_minutes: float = Field(5, gt=0, le=24 * 60)
    #: The hub's addresses as the hosts see them (IPs or CIDRs): certificates carry
    #: them as ``source-address``, so a stolen one is useless elsewhere. Empty: any.
    source_addresses: list[str] = []

    @field_validator("source_addresses")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or network (CIDR)") from exc
        return out

    @model_validator(mode="after")
    def _complete(self) -> Identity:
        if self.mode == "user_key" and not self.key_path:
            raise ValueError("mode 'user_key' needs key_path (a template with {account})")
        if self.mode == "service_account" and not (self.service_account and self.service_key):
            raise ValueError("mode 'service_account' needs service_account and service_key")
        return self


class AccountMapping(_Model):
    """Where a hub user's account name on the system comes from."""

    source: Literal["hub_name", "auth_state", "map_file", "ldap"] = "hub_name"
    #: ``auth_state`` key holding the account name (source ``auth_state``).
    key: str | None = None
    #: directory attribute holding the account name (source ``ldap``), as read at the
    #: user's login and refreshes (the authenticator's ``auth_state_attributes``).
    attribute: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    #: YAML/JSON file mapping hub names to account names (source ``map_file``).
    map_file: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> AccountMapping:
        if self.source == "auth_state" and not self.key:
            raise ValueError("source 'auth_state' needs key")
        if self.source == "map_file" and not self.map_file:
            raise ValueError("source 'map_file' needs map_file")
        if self.source == "ldap" and not self.attribute:
            raise ValueError("source 'ldap' needs attribute (e.g. uid)")
        return self


class SSHSettings(_Model):
    port: int = Field(22, ge=1, le=65535)
    #: known_hosts file checked for every host; ``null`` disables host key checks.
    known_hosts: str | None = None
    identity: Identity
    #: Account and key of the connection that carries the tunnels (one per system).
    tunnel_account: Name | None = None
    tunnel_key: str | None = None
    keepalive_interval: float = Field(15, gt=0)
    connect_timeout: float = Field(10, gt=0)
    command_timeout: float = Field(30, gt=0)
    #: Login hosts per partition (ssh kind): the user picks a login node by picking the
    #: partition. Partitions not named here use all ``hosts``, round robin.
    partition_hosts: dict[Name, list[Host]] = {}
    #: Servers also write their address to a 0600 connection file that the hub reads
    #: (and removes) over SSH: for nodes whose callback to the hub API cannot get through.
    connection_file: bool = False
    #: Address on the jump host where the hub API's remote forward listens
    #: (``hub_api_forward``): ``localhost`` serves jobs on the jump host itself; an
    #: address of the jump host, or ``""`` for all, serves compute nodes (sshd needs
    #: ``GatewayPorts clientspecified``).
    hub_api_bind: str = Field("localhost", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
    #: Host name or address jobs use to reach that forward; default: 127.0.0.1 when
    #: ``hub_api_bind`` is localhost, else that address, else the jump host.
    hub_api_host: Host | None = None
    #: Port of that forward on the jump host; 0: picked by sshd once, then kept in the
    #: hub's state directory so that running servers keep their hub API address.
    hub_api_port: int = Field(0, ge=0, le=65535)


class ProjectSource(_Model):
    """Where a system's projects come from.

    ``catalog``: the grants' ``projects``. ``slurm``: the Slurm accounts the user has an
    association with on that system (``sacctmgr show assoc``, asked once per ``ttl``
    seconds for all users); the catalog's ``projects`` filter them (unless ``unlisted``)
    and describe them, and a grant's ``projects``, if given, restrict them further. The
    user's default account is preselected and the job is submitted with ``--account``.
    """

    source: Literal["catalog", "slurm"] = "catalog"
    #: Seconds an accounting answer is used before the next query (source ``slurm``).
    ttl: float = Field(300, gt=0)
    #: Also offer Slurm accounts that the catalog's ``projects`` do not list.
    unlisted: bool = False
    #: Slurm cluster name whose associations count (a slurmdbd serving several).
    cluster: Name | None = None
    #: Account that runs ``sacctmgr`` (one that may read every association, e.g. a Slurm
    #: operator); default: the service account, else the user who needs the answer.
    query_as: Name | None = None


class System(_Model):
    kind: Literal["local", "ssh", "slurm"]
    description: str = ""
    #: Login hosts: where labs run (ssh) or where jobs are submitted (slurm).
    hosts: list[Host] = []
    #: Host the tunnels go through; default: the first of ``hosts``.
    jump_host: Host | None = None
    ssh: SSHSettings | None = None
    accounts: AccountMapping = AccountMapping()
    #: Carry a remote forward so jobs reach the hub API through the jump host.
    hub_api_forward: bool = True
    #: argv that starts hpcgate-singleuser on the system's hosts.
    singleuser_command: list[str] = ["hpcgate-singleuser"]
    #: Working directory of a server; ``{account}`` is replaced. ``~`` = home.
    workdir: str = "~"
    #: Shell lines run before the lab starts (module loads, venv activation).
    setup: list[str] = []
    #: Job script template (slurm), a path; default: hpcgate's built-in one.
    template: str | None = None
    #: Closed for new servers until a time (running servers are not touched).
    maintenance: Maintenance | None = None
    #: Seconds between status queries for this system's jobs (StatusCache).
    status_interval: float = Field(10, gt=0)
    #: Sessions one user may have active (starting or running) on this system at once;
    #: ``null``: only the catalog-wide ``sessions.per_user`` applies.
    sessions_per_user: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Sessions one user may have active (starting or running) on this system at once; "
        "null: only the catalog-wide sessions.per_user applies.",
    )
    #: Where the projects users may charge come from (see :class:`ProjectSource`).
    projects: ProjectSource = ProjectSource()
    #: Web apps offered beside the lab on this system, added to (or, by name,
    #: replacing) the catalog's top-level ``apps``; ``null`` withdraws a top-level app.
    apps: dict[Name, AppEntry | None] = {}
    #: Jupyter kernels from environment modules offered in this system's labs.
    kernels: dict[Name, Kernel] = {}
    #: Power per device for the energy estimate (partitions may override).
    power: Power = Power()
    #: Carbon intensity of this system's electricity; default: the catalog's ``carbon``.
    carbon: Carbon | None = None
    partitions: dict[Name, Partition]

    _apps_valid = field_validator("apps")(_check_apps)

    @model_validator(mode="after")
    def _complete(self) -> System:
        if not self.partitions:
            raise ValueError("a system needs at least one partition")
        if self.kind in ("ssh", "slurm"):
            if not self.hosts:
                raise ValueError(f"kind '{self.kind}' needs hosts (its login hosts)")
            if self.ssh is None:
                raise ValueError(f"kind '{self.kind}' needs an ssh section")
        if self.projects.source == "slurm" and self.kind != "slurm":
            raise ValueError(f"projects.source 'slurm' needs kind 'slurm', not '{self.kind}'")
        if self.ssh is not None:
            unknown = sorted(set(self.ssh.partition_hosts) - set(self.partitions))
            if unknown:
                raise ValueError(f"ssh.partition_hosts names unknown partition(s): {', '.join(unknown)}")
        return self

    @property
    def tunnel_host(self) -> str | None:
        return self.jump_host or (self.hosts[0] if self.hosts else None)


class Project(_Model):
    description: str = ""


class Caps(_Model):
    """Upper bounds a group puts on top of the partition limits."""

    nodes: int | None = Field(None, ge=0)
    cpus: int | None = Field(None, ge=0)
    memory: int | None = Field(None, ge=0)
    gpus: int | None = Field(None, ge=0)
    runtime: int | None = Field(None, ge=0)


class Grant(_Model):
    system: Name
    #: Allowed partitions; omitted: all of the system's.
    partitions: list[Name] | None = None
    #: Projects the group may charge on this system; omitted or empty: none needed
    #: (a system with ``projects: {source: slurm}``: the user's Slurm accounts, and if
    #: given, only these of them).
    projects: list[Name] = []
    caps: Caps = Caps()
    #: Only usable by a login with a second factor (the IdP's ``amr``/``acr``).
    mfa: bool = False
    #: Only usable from these client networks (CIDR); omitted: from anywhere. The
    #: client address is the one seen behind the hub's trusted proxies.
    networks: list[IPvAnyNetwork] | None = None


class Group(_Model):
    description: str = ""
    #: Applies to every logged-in user, whatever their JupyterHub groups.
    all_users: bool = False
    grants: list[Grant] = []


class Defaults(_Model):
    system: Name | None = None


class Sessions(_Model):
    """How many sessions (JupyterHub named servers) a user may have."""

    per_user: int = Field(
        4,
        ge=1,
        le=1000,
        description="Sessions one user may have active (starting or running) at once, on all systems together.",
    )
    remembered: int = Field(
        10,
        ge=1,
        le=1000,
        description="Sessions a user may keep, running or stopped, with their options "
        "(JupyterHub's named_server_limit_per_user; stopped ones can be relaunched).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Sessions:
        if self.remembered < self.per_user:
            raise ValueError(
                f"remembered ({self.remembered}) must be at least per_user ({self.per_user})"
            )
        return self


class CatalogModel(_Model):
    """The whole catalog file."""

    systems: dict[Name, System]
    projects: dict[Name, Project] = {}
    groups: dict[Name, Group] = {}
    defaults: Defaults = Defaults()
    #: How many sessions a user may have (see also ``System.sessions_per_user``).
    sessions: Sessions = Sessions()
    #: Web apps offered beside the lab on every system (see ``System.apps``).
    apps: dict[Name, AppEntry] = {}
    #: Carbon intensity of the electricity, for every system without its own.
    carbon: Carbon = Carbon()
    #: Messages shown on the hub's pages and in every lab (until their ``until``).
    announcements: list[Announcement] = []

    _apps_valid = field_validator("apps")(_check_apps)

    @model_validator(mode="after")
    def _references(self) -> CatalogModel:
        problems = []
        for gname, group in self.groups.items():
            for i, grant in enumerate(group.grants):
                where = f"groups.{gname}.grants.{i}"
                system = self.systems.get(grant.system)
                if system is None:
                    problems.append(f"{where}.system: unknown system '{grant.system}'")
                    continue
                for p in grant.partitions or []:
                    if p not in system.partitions:
                        problems.append(
                            f"{where}.partitions: system '{grant.system}' has no partition '{p}'"
                        )
                for p in grant.projects:
                    if p not in self.projects:
                        problems.append(f"{where}.projects: unknown project '{p}'")
        if self.defaults.system and self.defaults.system not in self.systems:
            problems.append(f"defaults.system: unknown system '{self.defaults.system}'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names file, key path and problem."""


class LaunchError(ValueError):
    """Launch options the user must change; the message is a sentence for the user."""


@dataclass(frozen=True)
class UserInfo:
    """Who asks: the hub name and the JupyterHub groups the user belongs to."""

    name: str
    groups: frozenset[str] = frozenset()


def core_hours(nodes: int, cpus: int, runtime: int) -> float:
    """What a launch may cost at most: nodes x CPUs per node x runtime (minutes) / 60."""
    return nodes * cpus * runtime / 60


@dataclass(frozen=True)
class LoginContext:
    """What the hub knows of the login and the request that asks (grant conditions).

    ``mfa``: the login used a second factor (from the IdP's ``amr``/``acr``, as
    recorded by hpcgate's authenticator). ``address``: the client's address as seen
    behind the hub's trusted proxies; ``None`` if unknown (then no ``networks`` grant
    applies). ``unconditional`` treats every condition as met (``hpcgate check``).
    """

    mfa: bool = False
    address: str | None = None
    unconditional: bool = False

    def unmet(self, grant: Grant) -> str | None:
        """Why ``grant`` does not apply to this login (a phrase), or ``None`` if it does."""
        if self.unconditional:
            return None
        if grant.mfa and not self.mfa:
            return "log in with a second factor"
        if grant.networks is not None:
            try:
                ip = ipaddress.ip_address(self.address or "")
            except ValueError:
                return "connect from an allowed network (your address is unknown)"
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not any(ip.version == net.version and ip in net for net in grant.networks):
                nets = ", ".join(str(n) for n in grant.networks)
                return f"connect from an allowed network ({nets}; you connect from {ip})"
        return None


@dataclass(frozen=True)
class Charges:
    """What the scheduler's accounting says one user may charge on one system.

    ``accounts``: the user's Slurm accounts there (``None``: never learned, the
    accounting has not answered yet). ``default``: the user's default account.
    ``notice``: a sentence for the form (e.g. the accounting did not answer and the
    list is the last known one).
    """

    accounts: tuple[str, ...] | None
    default: str | None = None
    notice: str = ""


def _utc(epoch: float, with_date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC" if with_date else "%H:%M UTC", time.gmtime(epoch))


@dataclass(frozen=True)
class Reservation:
    """A scheduler reservation this user may start in (Slurm: ``scontrol show reservation``).

    The hub hands the catalog only reservations whose users admit the user's account
    on the system and whose time is now or soon (:mod:`hpcgate.hub.reservations`);
    the catalog matches them with partitions and projects. ``partition`` None: any
    partition of the system. ``accounts``: projects allowed (``-name`` entries: every
    project but those); empty: any project.
    """

    name: str
    start: float
    end: float
    partition: str | None = None
    accounts: tuple[str, ...] = ()

    def active(self, now: float) -> bool:
        return self.start <= now < self.end

    def allows_project(self, project: str | None) -> bool:
        """Whether a job charged to ``project`` may use it (None: the user's default
        account, unknown here: only a reservation without a positive account list)."""
        if not self.accounts:
            return True
        if all(a.startswith("-") for a in self.accounts):
            return project is None or f"-{project}" not in self.accounts
        return project is not None and project in self.accounts

    def when(self, now: float) -> str:
        """``active until 17:40 UTC`` or ``from 2026-12-01 18:00 UTC to 19:00 UTC``."""
        same_day = time.gmtime(self.start)[:3] == time.gmtime(self.end)[:3]
        if self.active(now):
            return f"active until {_utc(self.end, not same_day or time.gmtime(now)[:3] != time.gmtime(self.end)[:3])}"
        return f"from {_utc(self.start)} to {_utc(self.end, not same_day)}"


@dataclass(frozen=True)
class PartitionOffer:
    name: str
    description: str
    limits: dict[str, Range]

    @property
    def has_gpus(self) -> bool:
        """Whether a launch here may ask for GPUs (the form shows the field only then)."""
        return self.limits["gpus"].max > 0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "limits": {k: r.model_dump() for k, r in self.limits.items()},
            "has_gpus": self.has_gpus,
        }


@dataclass(frozen=True)
class SystemOffer:
    name: str
    kind: str
    description: str
    partitions: list[PartitionOffer]
    projects: list[tuple[str, str]]
    #: Sessions one user may have active here at once (None: only the catalog-wide limit).
    sessions_per_user: int | None = None
    #: Hook for the system's health (up, draining, maintenance) from other work; None: not known.
    state: str | None = None
    #: The scheduler reservations this user may start in here, now or soon (each
    #: usable in its partition, or any when None, with the projects it allows).
    reservations: tuple[Reservation, ...] = ()
    #: The project preselected in the form and used when none is given (Slurm's
    #: default account of the user, if offered).
    default_project: str | None = None
    #: Sentences about this system's projects (e.g. the accounting did not answer).
    notices: list[str] = field(default_factory=list)

    def partition(self, name: str) -> PartitionOffer | None:
        return next((p for p in self.partitions if p.name == name), None)

    def reservation(self, name: str) -> Reservation | None:
        return next((r for r in self.reservations if r.name == name), None)

    def reservation_json(self, r: Reservation, now: float | None = None) -> dict[str, Any]:
        """A reservation as the form and the offer API show it: ``projects`` are the
        offered projects a job in it may charge (None: any)."""
        now = time.time() if now is None else now
        names = [n for n, _ in self.projects]
        return {
            "name": r.name,
            "start": r.start,
            "end": r.end,
            "active": r.active(now),
            "when": r.when(now),
            "partition": r.partition,
            "projects": None if not r.accounts else [n for n in names if r.allows_project(n)],
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "partitions": [p.as_json() for p in self.partitions],
            "projects": [{"name": n, "description": d} for n, d in self.projects],
            "sessions_per_user": self.sessions_per_user,
            "state": self.state,
            "reservations": [self.reservation_json(r) for r in self.reservations],
            "default_project": self.default_project,
            "notices": list(self.notices),
        }


@dataclass(frozen=True)
class Withheld:
    """Partitions a grant would add but its conditions keep from this login."""

    system: str
    partitions: tuple[str, ...]
    reason: str

    @property
    def sentence(self) -> str:
        what = (
            f"{self.system}'s {self.partitions[0]} partition"
            if len(self.partitions) == 1
            else f"{self.system}'s partitions {', '.join(self.partitions)}"
        )
        return f"{self.reason[0].upper()}{self.reason[1:]} to use {what}."


@dataclass(frozen=True)
class Offer:
    systems: list[SystemOffer]
    default_system: str | None = None
    #: Sessions one user may have active at once, on all systems together.
    sessions_per_user: int = 4
    #: Partitions granted on conditions this login does not meet, with the reason.
    withheld: list[Withheld] = field(default_factory=list)

    def system(self, name: str) -> SystemOffer | None:
        return next((s for s in self.systems if s.name == name), None)

    @property
    def notices(self) -> list[str]:
        """Sentences for the user: withheld partitions, then the systems' notices."""
        return [w.sentence for w in self.withheld] + [n for s in self.systems for n in s.notices]

    def withheld_reason(self, system: str, partition: str | None = None) -> str | None:
        for w in self.withheld:
            if w.system == system and (partition is None or partition in w.partitions):
                return w.sentence
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "systems": [s.as_json() for s in self.systems],
            "default_system": self.default_system,
            "sessions_per_user": self.sessions_per_user,
            "withheld": [
                {"system": w.system, "partitions": list(w.partitions), "reason": w.sentence} for w in self.withheld
            ],
            "notices": self.notices,
        }


@dataclass(frozen=True)
class LaunchRequest:
    """A validated launch: every value is within what the user's groups allow."""

    system: str
    partition: str
    project: str | None
    nodes: int
    cpus: int
    memory: int
    gpus: int
    runtime: int
    system_config: System = field(repr=False, compare=False)
    partition_config: Partition = field(repr=False, compare=False)
    #: The catalog's apps for this system, by name, in the catalog's short form.
    apps: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    #: The scheduler reservation the job starts in (``sbatch --reservation``), or None.
    reservation: str | None = None

    @property
    def kernels(self) -> dict[str, dict[str, Any]]:
        """The system's kernels from module sets, JSON-able (``$HPCGATE_KERNELS``)."""
        return {name: k.model_dump() for name, k in self.system_config.kernels.items()}

    def as_options(self) -> dict[str, Any]:
        """The request as JSON-able ``user_options``."""
        return {k: getattr(self, k) for k in OPTION_KEYS}

    @property
    def core_hours(self) -> float:
        """The most this launch may cost: nodes x CPUs per node x runtime in hours."""
        return core_hours(self.nodes, self.cpus, self.runtime)


class Catalog:
    """A validated catalog and the questions it answers."""

    def __init__(self, model: CatalogModel, source: str = "<memory>"):
        self.model = model
        self.source = source

    @property
    def systems(self) -> dict[str, System]:
        return self.model.systems

    def groups_of(self, user: UserInfo) -> list[tuple[str, Group]]:
        return [
            (name, g)
            for name, g in self.model.groups.items()
            if g.all_users or name in user.groups
        ]

    def offer(
        self,
        user: UserInfo,
        context: LoginContext | None = None,
        charges: Mapping[str, Charges] | None = None,
        reservations: Mapping[str, Iterable[Reservation]] | None = None,
    ) -> Offer:
        """What ``user`` may launch: the union over the user's catalog groups.

        Where several groups grant the same partition, the most generous cap wins.
        Systems and partitions keep the catalog's order. Grants whose conditions
        (``mfa``, ``networks``) ``context`` does not meet are left out and listed in
        :attr:`Offer.withheld` (``context`` None: no second factor, address unknown).
        ``charges``: per system with ``projects: {source: slurm}``, the user's accounts
        from the accounting (missing: not known, no project can be offered there).
        ``reservations``: per system, the scheduler reservations whose users admit this
        user, now or soon (:mod:`hpcgate.hub.reservations`); offered where one of the
        user's partitions and projects may use them.
        """
        context = context or LoginContext()
        reservations = reservations or {}
        charges = charges or {}
        partitions: dict[str, dict[str, dict[str, int | None]]] = {}
        projects: dict[str, set[str]] = {}
        # slurm-sourced systems: grants that name no projects allow all the user's accounts
        any_project: set[str] = set()
        withheld: list[tuple[str, list[str], str]] = []
        for _, group in self.groups_of(user):
            for grant in group.grants:
                system = self.systems[grant.system]
                names = grant.partitions if grant.partitions is not None else list(system.partitions)
                reason = context.unmet(grant)
                if reason is not None:
                    withheld.append((grant.system, names, reason))
                    continue
                for pname in names:
                    caps = partitions.setdefault(grant.system, {}).setdefault(pname, {})
                    for res in RESOURCES:
                        cap = getattr(grant.caps, res)
                        if res not in caps:
                            caps[res] = cap
                        elif caps[res] is not None:
                            caps[res] = None if cap is None else max(caps[res], cap)
                projects.setdefault(grant.system, set()).update(grant.projects)
                if not grant.projects:
                    any_project.add(grant.system)
        systems = []
        for sname, system in self.systems.items():
            if sname not in partitions:
                continue
            allowed = partitions[sname]
            offers = [
                PartitionOffer(
                    name=pname,
                    description=part.description,
                    limits={
                        res: getattr(part.limits, res).capped(allowed[pname][res])
                        for res in RESOURCES
                    },
                )
                for pname, part in system.partitions.items()
                if pname in allowed
            ]
            notices: list[str] = []
            default_project = None
            if system.projects.source == "slurm":
                known = charges.get(sname)
                granted = None if sname in any_project else projects.get(sname, set())
                offered = self._slurm_projects(system, known, granted)
                if known is not None:
                    if known.notice:
                        notices.append(known.notice)
                    if known.default in {n for n, _ in offered}:
                        default_project = known.default
                if known is None or known.accounts is None:
                    if not (known and known.notice):
                        notices.append(
                            f"The accounting of {sname} has not told hpcgate your projects yet; "
                            "try again in a minute."
                        )
                elif not offered:
                    notices.append(
                        f"You may not charge any project on {sname}: ask your centre's support "
                        "to add you to a Slurm account there."
                    )
            else:
                offered = [
                    (p, self.model.projects[p].description)
                    for p in self.model.projects
                    if p in projects.get(sname, ())
                ]
            names = {p.name for p in offers}
            usable = tuple(
                r
                for r in reservations.get(sname, ())
                if (r.partition is None or r.partition in names)
                and (any(r.allows_project(n) for n, _ in offered) or (not offered and r.allows_project(None)))
            )
            systems.append(
                SystemOffer(
                    name=sname,
                    kind=system.kind,
                    description=system.description,
                    partitions=offers,
                    projects=offered,
                    default_project=default_project,
                    notices=notices,
                    sessions_per_user=system.sessions_per_user,
                    reservations=usable,
                )
            )
        # a withheld grant is only news if it would add a partition not offered anyway
        news: list[Withheld] = []
        for sname, names, reason in withheld:
            missing = tuple(n for n in names if n not in partitions.get(sname, {}))
            seen = {n for w in news if w.system == sname for n in w.partitions}
            missing = tuple(n for n in missing if n not in seen)
            if missing:
                news.append(Withheld(sname, missing, reason))
        default = self.model.defaults.system
        if default not in {s.name for s in systems}:
            default = systems[0].name if systems else None
        return Offer(
            systems=systems,
            default_system=default,
            sessions_per_user=self.model.sessions.per_user,
            withheld=news,
        )

    def check_sessions(self, system: str, active: Iterable[str]) -> None:
        """Raise :class:`LaunchError` if one more session on ``system`` is too many.

        ``active``: the systems of the user's other sessions that are starting or
        running (one entry per session). The same sentence serves the form and the
        REST API.
        """
        active = list(active)
        most = self.model.sessions.per_user
        if len(active) >= most:
            raise LaunchError(
                f"You have {len(active)} session(s) starting or running, the most you may have at once "
                f"({most}). Stop one of them on your home page, then launch again."
            )
        config = self.systems.get(system)
        here = sum(1 for s in active if s == system)
        if config is not None and config.sessions_per_user is not None and here >= config.sessions_per_user:
            raise LaunchError(
                f"You have {here} session(s) starting or running on {system}, the most it allows per user "
                f"({config.sessions_per_user}). Stop one there, or launch on another system."
            )

    def _slurm_projects(
        self, system: System, known: Charges | None, granted: set[str] | None
    ) -> list[tuple[str, str]]:
        """The user's Slurm accounts on ``system`` that the catalog lets them charge,
        described by the catalog's ``projects`` (catalog order, then unlisted ones)."""
        if known is None or known.accounts is None:
            return []
        accounts = [a for a in known.accounts if granted is None or a in granted]
        listed = [(p, self.model.projects[p].description) for p in self.model.projects if p in accounts]
        if system.projects.unlisted:
            listed += [(a, "") for a in sorted(accounts) if a not in self.model.projects]
        return listed

    def validate(
        self,
        user: UserInfo,
        options: Mapping[str, Any] | None,
        context: LoginContext | None = None,
        charges: Mapping[str, Charges] | None = None,
        reservations: Mapping[str, Iterable[Reservation]] | None = None,
        now: float | None = None,
    ) -> LaunchRequest:
        """Turn raw options into a :class:`LaunchRequest` or raise :class:`LaunchError`.

        ``options`` may come from the form (strings, or lists of one string) or from the
        REST API (JSON values). Missing keys take the offer's defaults. ``context`` and
        ``charges`` as for :meth:`offer`: a partition withheld by a grant's condition is
        refused with the condition's sentence. ``reservations`` as for :meth:`offer`: a
        ``reservation`` must be one offered, fit the partition and project, and end
        after the runtime asked for (from ``now`` or its start, whichever is later).
        """
        options = dict(options or {})
        unknown = sorted(k for k in options if k not in OPTION_KEYS)
        if unknown:
            shown = ", ".join(_show(k) for k in unknown[:5])
            raise LaunchError(
                f"Unknown option {shown}. Allowed options are: {', '.join(OPTION_KEYS)}."
            )
        offer = self.offer(user, context, charges, reservations)
        if not offer.systems:
            if offer.withheld:
                raise LaunchError(" ".join(w.sentence for w in offer.withheld))
            raise LaunchError(
                "Your account may not launch on any system. "
                "Ask your centre's support to add you to a project group."
            )
        sname = _text(options, "system") or offer.default_system
        system = offer.system(sname)
        if system is None:
            why = offer.withheld_reason(sname or "")
            if why:
                raise LaunchError(why)
            names = ", ".join(s.name for s in offer.systems)
            raise LaunchError(f"You may not launch on system {_show(sname)}. Choose one of: {names}.")
        pname = _text(options, "partition") or system.partitions[0].name
        partition = system.partition(pname)
        if partition is None:
            why = offer.withheld_reason(system.name, pname)
            if why:
                raise LaunchError(why)
            names = ", ".join(p.name for p in system.partitions)
            raise LaunchError(
                f"You may not use partition {_show(pname)} on {system.name}. Choose one of: {names}."
            )
        project = _text(options, "project")
        project_names = [n for n, _ in system.projects]
        if self.systems[system.name].projects.source == "slurm" and not project_names:
            raise LaunchError(" ".join(system.notices) or f"You may not charge any project on {system.name}.")
        if project_names:
            if project is None and system.default_project:
                project = system.default_project
            if project is None and len(project_names) == 1:
                project = project_names[0]
            if project not in project_names:
                what = "Choose a project" if project is None else f"You may not charge project {_show(project)}"
                raise LaunchError(
                    f"{what} on {system.name}. Your projects there are: {', '.join(project_names)}."
                )
        elif project is not None:
            raise LaunchError(f"System {system.name} takes no project; leave the project empty.")
        values = {
            res: _bounded(res, options.get(res), partition.limits[res], partition.name)
            for res in RESOURCES
        }
        reservation = _reservation(system, _text(options, "reservation"), partition.name, project,
                                   values["runtime"], time.time() if now is None else now)
        full = self.systems[system.name]
        return LaunchRequest(
            system=system.name,
            partition=partition.name,
            project=project,
            system_config=full,
            partition_config=full.partitions[partition.name],
            apps=self.apps_for(system.name),
            reservation=reservation,
            **values,
        )

    def apps_for(self, system: str) -> dict[str, dict[str, Any]]:
        """The web apps offered beside the lab on ``system``: the top-level ``apps``
        with the system's own added, replaced or (``null``) withdrawn by name."""
        apps = {name: dict(raw) for name, raw in self.model.apps.items()}
        for name, raw in self.systems[system].apps.items():
            if raw is None:
                apps.pop(name, None)
            else:
                apps[name] = dict(raw)
        return apps

    def power_for(self, system: str, partition: str) -> Power:
        """Power per device of ``partition`` on ``system`` (the system's if not set)."""
        sys_conf = self.systems[system]
        part = sys_conf.partitions.get(partition)
        return (part.power if part is not None and part.power is not None else None) or sys_conf.power

    def carbon_for(self, system: str) -> Carbon:
        """Carbon settings of ``system``: its own, else the catalog's."""
        return self.systems[system].carbon or self.model.carbon

    def describe(self) -> str:
        """Human-readable summary: what each group may launch (``hpcgate check``)."""
        sessions = self.model.sessions
        lines = [
            f"catalog {self.source}: {len(self.systems)} system(s), {len(self.model.groups)} group(s)",
            f"sessions per user: {sessions.per_user} at once, {sessions.remembered} kept"
            + "".join(
                f"; {name}: {s.sessions_per_user} at once"
                for name, s in self.systems.items()
                if s.sessions_per_user is not None
            ),
        ]
        for gname, group in self.model.groups.items():
            who = "every user" if group.all_users else f"members of JupyterHub group '{gname}'"
            lines.append(f"group {gname} ({who}):")
            # only this group's grants, not those of all_users groups as well
            offer = _only_group(self, gname)
            if not offer.systems:
                lines.append("  nothing")
            for s in offer.systems:
                projects = ", ".join(n for n, _ in s.projects) or "no project needed"
                if self.systems[s.name].projects.source == "slurm":
                    projects = "the user's Slurm accounts there (sacctmgr)"
                lines.append(f"  {s.name} ({s.kind}) -- projects: {projects}")
                for grant in group.grants:
                    if grant.system == s.name and (grant.mfa or grant.networks is not None):
                        conditions = (["with a second factor"] if grant.mfa else []) + (
                            [f"from {', '.join(str(n) for n in grant.networks)}"] if grant.networks is not None else []
                        )
                        which = ", ".join(grant.partitions) if grant.partitions is not None else "all partitions"
                        lines.append(f"    {which}: only {' and '.join(conditions)}")
                apps = ", ".join(self.apps_for(s.name))
                if apps:
                    lines.append(f"    apps beside the lab: {apps}")
                kernels = self.systems[s.name].kernels
                if kernels:
                    shown = "; ".join(f"{n} ({' '.join(k.modules)})" for n, k in kernels.items())
                    lines.append(f"    kernels from modules: {shown}")
                for p in s.partitions:
                    limits = ", ".join(
                        f"{res} {r.min}-{r.max}{UNITS[res]} (default {r.default})"
                        for res, r in p.limits.items()
                    )
                    lines.append(f"    {p.name}: {limits}")
        return "\n".join(lines)


def _only_group(catalog: Catalog, gname: str) -> Offer:
    group = catalog.model.groups[gname]
    solo = catalog.model.model_copy(
        update={"groups": {gname: group.model_copy(update={"all_users": True})}}
    )
    return Catalog(solo).offer(UserInfo(name="-"), LoginContext(unconditional=True))


def _reservation(
    system: SystemOffer, name: str | None, partition: str, project: str | None, runtime: int, now: float
) -> str | None:
    """The reservation ``name`` checked for this launch (None: none asked for); a
    :class:`LaunchError` with what to change otherwise."""
    if name is None:
        return None
    found = system.reservation(name)
    if found is None:
        # a reservation of someone else and one that does not exist read the same
        yours = ", ".join(r.name for r in system.reservations)
        raise LaunchError(
            f"You may not use reservation {_show(name)} on {system.name}. "
            + (f"Yours there, now or soon: {yours}." if yours else
               "There is none you may use there now or soon; leave the reservation empty.")
        )
    if found.partition is not None and found.partition != partition:
        raise LaunchError(
            f"Reservation {name} is for partition {found.partition}; choose that partition or no reservation."
        )
    if not found.allows_project(project):
        allowed = [n for n, _ in system.projects if found.allows_project(n)]
        raise LaunchError(
            f"Reservation {name} does not take project {_show(project or 'none')}; "
            + (f"choose {' or '.join(allowed)}, or no reservation." if allowed else "choose no reservation.")
        )
    begins = max(now, found.start)
    if begins + runtime * 60 > found.end:
        fits = int((found.end - begins) // 60)
        raise LaunchError(
            f"Reservation {name} ends at {_utc(found.end)}; a runtime of {runtime} minutes "
            + (f"does not fit in it: choose at most {fits} minutes." if fits > 0 else "does not fit: choose no reservation.")
        )
    return name


def _show(value: object) -> str:
    """A user value quoted for an error message, shortened and made printable."""
    text = str(value)
    if len(text) > 40:
        text = text[:40] + "..."
    return repr(text)


def _single(options: Mapping[str, Any], key: str) -> Any:
    value = options.get(key)
    if isinstance(value, list):
        if len(value) != 1:
            raise LaunchError(f"Give exactly one value for {key}.")
        value = value[0]
    return value


def _no_padding(key: str, value: str) -> None:
    """Refuse a value with spaces, tabs or line breaks around it: values are taken
    exactly as sent, never trimmed into something the user did not type."""
    if value != value.strip():
        raise LaunchError(
            f"The {key} {_show(value)} has spaces or line breaks around it; send the value alone."
        )


def _text(options: Mapping[str, Any], key: str) -> str | None:
    value = _single(options, key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise LaunchError(f"The {key} must be a name, not {_show(value)}.")
    _no_padding(key, value)
    if not re.fullmatch(NAME_PATTERN, value):
        raise LaunchError(
            f"The {key} {_show(value)} is not a valid name: use letters, digits, '.', '_' and '-'."
        )
    return value


def _bounded(res: str, raw: Any, limit: Range, partition: str) -> int:
    if isinstance(raw, list):
        raw = _single({res: raw}, res)
    if raw is None or raw == "":
        return limit.default
    if isinstance(raw, bool):
        raise LaunchError(f"The {res} must be a whole number, not {_show(raw)}.")
    if isinstance(raw, float):
        # 4.0 is not taken for 4: a value is used exactly as sent or refused
        raise LaunchError(f"The {res} must be a whole number, not {_show(raw)}.")
    if isinstance(raw, str):
        _no_padding(res, raw)
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise LaunchError(f"The {res} must be a whole number, not {_show(raw)}.")
        raw = int(raw)
    if not isinstance(raw, int):
        raise LaunchError(f"The {res} must be a whole number, not {_show(raw)}.")
    if not limit.min <= raw <= limit.max:
        unit = UNITS[res]
        raise LaunchError(
            f"Partition {partition} allows {res} from {limit.min} to {limit.max}{unit}; "
            f"you asked for {raw}{unit}."
        )
    return raw


# --- loading -------------------------------------------------------------------------


def _key_path(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_catalog(text: str, source: str = "<memory>") -> Catalog:
    """Parse and validate catalog YAML; raise :class:`CatalogError` naming the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(f"{source}:{where}: not valid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: the catalog must be a mapping with a 'systems' key")
    try:
        model = CatalogModel.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_key_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise CatalogError(f"{source}: " + "; ".join(problems)) from exc
    return Catalog(model, source)


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from exc
    return parse_catalog(text, str(path))


def default_catalog_text() -> str:
    return resources.files("hpcgate.data").joinpath("default-catalog.yaml").read_text("utf-8")


def default_catalog() -> Catalog:
    """The built-in catalog of ``hpcgate up``: this machine, two partitions."""
    return parse_catalog(default_catalog_text(), "<built-in default catalog>")


def json_schema() -> dict[str, Any]:
    """JSON Schema of the catalog file, for editors (yaml-language-server)."""
    schema = CatalogModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hpcgate catalog"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


class CatalogStore:
    """The current catalog of a file, reloaded when the file changes.

    :meth:`get` stats the file at most once per ``check_interval`` seconds and reparses
    it when its modification time, size or inode changed. A broken new version is logged
    with the reason and the last good catalog stays in use. ``path=None`` serves the
    built-in default catalog.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        check_interval: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ):
        self.path = Path(path) if path else None
        self.check_interval = check_interval
        #: where reloads are logged: the hub passes its own logger (timestamp, level)
        self.log = logger or log
        self.last_error: str | None = None
        # one lock: reload swaps catalog and fingerprint together
        self._lock = threading.Lock()
        self._checked = 0.0
        if self.path is None:
            self._catalog = default_catalog()
            self._fingerprint: tuple[int, int, int] | None = None
        else:
            self._fingerprint = self._stat()
            self._catalog = load_catalog(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()  # type: ignore[union-attr]
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self) -> Catalog:
        if self.path is None:
            return self._catalog
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.check_interval:
                return self._catalog
            self._checked = now
            fingerprint = self._stat()
            if fingerprint == self._fingerprint:
                return self._catalog
            self._fingerprint = fingerprint
            try:
                self._catalog = load_catalog(self.path)
            except CatalogError as exc:
                self.last_error = str(exc)
                self.log.error("Keeping the last good catalog: %s", exc)
            else:
                self.last_error = None
                self.log.info(
                    "Reloaded catalog %s: %d system(s), %d group(s)",
                    self.path, len(self._catalog.systems), len(self._catalog.model.groups),
                )
            return self._catalog
