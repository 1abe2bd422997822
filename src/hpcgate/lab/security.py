"""What keeps the proxy from becoming a way around Jupyter's own protection.

* :class:`HostAllowlist` decides which ``/proxy/<host>:<port>`` targets may be reached.
* :func:`scrub_request_headers` removes hop-by-hop headers and every credential meant
  for Jupyter or JupyterHub before a request reaches an app (GHSA-q52h-2389-h4hv).
* :func:`strip_token_query` removes the ``token`` query parameter.
* :func:`tcp_peer_uid` / :func:`unix_peer_uid` name the Unix user that owns the socket
  we connected to, so a port opened by another user on a shared login node is refused.
* :func:`private_socket_dir` makes the 0700 directory that holds apps' unix sockets.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote_plus

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)

# Names of cookies that carry Jupyter's or JupyterHub's credentials.
DEFAULT_COOKIE_PATTERNS = (
    r"_xsrf",
    r"jupyterhub-.*",
    r"username-.*",
)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$")
_NUMERIC_LOOKING = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostNotAllowed(Exception):
    """The requested host is malformed or not in the allowlist (the message never echoes it)."""


def normalize_ip(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as its IPv4 address; anything else unchanged."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_host(raw: str) -> str:
    """Validate the host part of ``/proxy/<host>:<port>`` and return it normalised.

    Accepts DNS names (lower-cased), dotted-quad IPv4 and bracketed IPv6 without zone.
    Rejects percent-encoding, ``@``, userinfo, numeric shorthands such as ``2130706433``
    or ``0x7f.1`` (which resolvers would turn into addresses behind the allowlist's back)
    and anything else. Raises :class:`HostNotAllowed`.
    """
    if raw.startswith("[") and raw.endswith("]"):
        if "%" in raw:
            raise HostNotAllowed("IPv6 zone identifiers are not accepted")
        try:
            return str(normalize_ip(ipaddress.IPv6Address(raw[1:-1])))
        except ValueError:
            raise HostNotAllowed("malformed IPv6 address") from None
    if _NUMERIC_LOOKING.match(raw):
        try:
            return str(ipaddress.IPv4Address(raw))
        except ValueError:
            raise HostNotAllowed("malformed IPv4 address") from None
    if not _HOSTNAME.match(raw):
        raise HostNotAllowed("malformed host name")
    return raw.lower()


class HostAllowlist:
    """Hosts that ``/proxy/<host>:<port>`` may reach.

    Entries are host names (exact, case-insensitive), IP addresses, CIDR networks, or a
    callable ``(handler, host) -> bool``. An IP given in the URL matches an IP or network
    entry after IPv4-mapped IPv6 forms are folded to IPv4; a name matches only a name.
    """

    def __init__(self, entries: Iterable[str] | Callable[..., bool]):
        self._callable: Callable[..., bool] | None = None
        self._names: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if callable(entries):
            self._callable = entries
            return
        for entry in entries:
            try:
                net = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                self._names.add(entry.lower())
            else:
                if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
                    net = ipaddress.ip_network(normalize_ip(net.network_address))
                self._networks.append(net)

    @property
    def calls_code(self) -> bool:
        """Whether the allowlist is a callable (which gets the request handler)."""
        return self._callable is not None

    def allows(self, host: str, handler: object = None) -> bool:
        """Whether the already :func:`parse_host`-normalised ``host`` may be reached."""
        if self._callable is not None:
            return bool(self._callable(handler, host))
        try:
            addr = normalize_ip(ipaddress.ip_address(host))
        except ValueError:
            return host in self._names
        return any(addr in net for net in self._networks)


def _connection_tokens(values: Sequence[str]) -> set[str]:
    tokens = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def drop_hop_by_hop(headers: Iterable[tuple[str, str]], keep: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``headers`` without hop-by-hop fields and without fields named in ``Connection``.

    ``keep`` names (lower case) survive anyway, e.g. ``upgrade`` for a websocket handshake.
    """
    headers = list(headers)
    listed = _connection_tokens([v for k, v in headers if k.lower() == "connection"])
    drop = (HOP_BY_HOP | listed) - set(keep)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def scrub_cookie_header(value: str, patterns: Sequence[re.Pattern[str]]) -> str:
    """The ``Cookie`` header value without cookies whose name fully matches a pattern."""
    kept = []
    for part in value.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and not any(p.fullmatch(name) for p in patterns):
            kept.append(part.strip())
    return "; ".join(kept)


def scrub_request_headers(
    headers: list[tuple[str, str]],
    cookie_patterns: Sequence[re.Pattern[str]],
    keep: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Headers safe to send to an app.

    Removes hop-by-hop fields (RFC 9110 7.6.1), ``Expect`` (the proxy answers it),
    ``Authorization`` with the ``token`` or ``bearer`` scheme (Jupyter's and JupyterHub's
    API tokens; apps that need bearer tokens get them through
    ``request_headers_override``), and the credential cookies matching
    ``cookie_patterns``. Other cookies and ``Basic`` authorization pass.
    """
    out = []
    for name, value in drop_hop_by_hop(headers, keep=keep):
        lower = name.lower()
        if lower == "expect":
            continue
        if lower == "authorization" and value.split(" ", 1)[0].lower() in ("token", "bearer"):
            continue
        if lower == "cookie":
            value = scrub_cookie_header(value, cookie_patterns)
            if not value:
                continue
        out.append((name, value))
    return out


def strip_token_query(query: str) -> str:
    """The raw query string without any ``token`` parameter; other bytes stay as sent."""
    if not query:
        return query
    kept = []
    for item in query.split("&"):
        if unquote_plus(item.split("=", 1)[0]) == "token":
            continue
        kept.append(item)
    return "&".join(kept)


# ---------------------------------------------------------------- socket ownership


def _parse_proc_addr(text: str) -> tuple[IPAddress, int]:
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        addr: IPAddress = ipaddress.IPv4Address(struct.pack("<I", struct.unpack(">I", raw)[0]))
    else:
        words = struct.unpack(">4I", raw)
        addr = ipaddress.IPv6Address(b"".join(struct.pack("<I", w) for w in words))
    return normalize_ip(addr), int(port_hex, 16)


def tcp_socket_uid(local: tuple[str, int], remote: tuple[str, int], proc: str = "/proc/net") -> int | None:
    """The uid owning the TCP socket whose local end is ``local`` and peer is ``remote``.

    Reads ``/proc/net/tcp`` and ``tcp6``; IPv4-mapped addresses compare equal to IPv4.
    ``None`` if no such socket is listed (it closed meanwhile).
    """
    want_local = (normalize_ip(ipaddress.ip_address(local[0])), local[1])
    want_remote = (normalize_ip(ipaddress.ip_address(remote[0])), remote[1])
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(proc, name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            if _parse_proc_addr(fields[1]) == want_local and _parse_proc_addr(fields[2]) == want_remote:
                return int(fields[7])
    return None


def tcp_peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the server end of a connected local TCP socket, or ``None``.

    ``None`` also when the peer is on another machine (not loopback and not our own
    source address), where /proc cannot tell.
    """
    peer = sock.getpeername()[:2]
    here = sock.getsockname()[:2]
    peer_ip = normalize_ip(ipaddress.ip_address(peer[0]))
    if not (peer_ip.is_loopback or peer_ip == normalize_ip(ipaddress.ip_address(here[0]))):
        return None
    # The accepted socket's "local" end is our peer, its "remote" end is us.
    return tcp_socket_uid(peer, here)


def unix_peer_uid(sock: socket.socket) -> int:
    """The uid of the process that created the listening unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def private_socket_dir(path: str | os.PathLike[str]) -> Path:
    """Create (or verify) ``path`` as a directory owned by us with mode 0700.

    Raises ``PermissionError`` if it exists with another owner or wider permissions
    that cannot be fixed, so sockets never sit where another user could reach them.
    """
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = p.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"socket directory {p} is not a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(p, 0o700)
    return p
