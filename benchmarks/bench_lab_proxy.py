"""hpcgate.lab's proxy side by side with direct access and jupyter-server-proxy 4.6.

One run starts: an upstream app (raw asyncio HTTP server + tornado websocket echo),
a Jupyter server with hpcgate.lab (jupyter_server_proxy disabled), and a Jupyter server
with jupyter_server_proxy (hpcgate.lab disabled). Each row is measured against all
three. Run: ``make bench ARGS=lab_proxy``; ``HPCGATE_BENCH_SECTIONS=small`` (a comma-separated
subset of ``download,small,websocket``) runs only those tables (``small`` measures with
Python's http.client and, if Debian's ``wrk`` is installed, with that C client); ``HPCGATE_BENCH_BASELINE=DIR``
adds a row for the hpcgate in ``DIR/src`` (before/after in one run); ``HPCGATE_BENCH_HUB_LOG=1``
gives every Jupyter server the log function jupyterhub-singleuser installs. The machine's load average
is printed beside the numbers: the machine may be shared.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import median, percentile, ratio, table
from hpcgate.net import free_port

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent

UPSTREAM = textwrap.dedent(
    """
    import asyncio, sys
    from tornado import web, websocket, httpserver

    BLOCK = memoryview(bytes(range(256)) * 4096)

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/bytes/") or "/bytes/" in path:
                    size = int(path.rsplit("/", 1)[1])
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\nContent-Length: %d\\r\\n\\r\\n" % size)
                    while size:
                        n = min(size, len(BLOCK))
                        writer.write(BLOCK[:n])
                        size -= n
                        await writer.drain()
                else:
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 13\\r\\n\\r\\nhello, world\\n")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    class Echo(websocket.WebSocketHandler):
        def check_origin(self, origin):
            return True
        async def on_message(self, message):
            await self.write_message(message, binary=isinstance(message, bytes))

    async def main():
        http_port, ws_port = int(sys.argv[1]), int(sys.argv[2])
        await asyncio.start_server(handle, "127.0.0.1", http_port, limit=1 << 20)
        app = web.Application([(r".*", Echo)], websocket_max_message_size=1 << 30)
        httpserver.HTTPServer(app).listen(ws_port, "127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


# The ceiling for any proxy that copies bytes in user space: two threads per
# connection moving bytes with recv_into/sendall and a 1 MiB buffer, no HTTP at all.
# On loopback every such relay adds two copies per byte to the two of direct access.
BARE_RELAY = textwrap.dedent(
    """
    import socket, sys, threading

    def pump(src, dst):
        buf = memoryview(bytearray(1 << 20))
        try:
            while n := src.recv_into(buf):
                dst.sendall(buf[:n])
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    listen = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        client, _ = listen.accept()
        app = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        for a, b in ((client, app), (app, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
    """
)


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port}")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Peak:
    def __init__(self, pid: int | None):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        if self.pid:
            self.peak = _rss_kib(self.pid)
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()


class Target:
    """One way to reach the upstream: directly, through hpcgate, through jsp."""

    def __init__(self, name: str, port: int, prefix: str, token: str | None, pid: int | None):
        self.name, self.port, self.prefix, self.token, self.pid = name, port, prefix, token, pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}


#: HPCGATE_BENCH_HUB_LOG=1: every Jupyter server logs as under jupyterhub-singleuser
HUB_LOG = "import jupyterhub.log\nc.ServerApp.tornado_settings = {'log_function': jupyterhub.log.log_request}\n"


def _start_jupyter(
    tmp: Path, name: str, extensions: dict[str, bool], token: str, extra_config: str = "", pythonpath: str = ""
) -> tuple[subprocess.Popen, int]:
    """A Jupyter server with ``extensions`` and the token ``token``; ``extra_config`` lines
    appended; ``pythonpath`` first on its module path (another checkout's ``src``)."""
    port = free_port()
    root = tmp / name
    root.mkdir()
    cfg = root / "config.py"
    if os.environ.get("HPCGATE_BENCH_HUB_LOG"):
        # as jupyterhub-singleuser sets it: an INFO line and JupyterHub's histogram per request
        extra_config = HUB_LOG + extra_config
    cfg.write_text(
        f"c.ServerApp.port = {port}\nc.ServerApp.ip = '127.0.0.1'\nc.ServerApp.open_browser = False\n"
        f"c.ServerApp.allow_root = True\nc.ServerApp.root_dir = {str(root)!r}\n"
        f"c.ServerApp.jpserver_extensions = {extensions!r}\n" + extra_config
    )
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(root / "cfg"), JUPYTER_RUNTIME_DIR=str(root / "rt"))
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "server", f"--config={cfg}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return proc, port


def _download(t: Target, path: str, expect: int) -> float:
    """Seconds to download ``expect`` bytes with a raw socket, or raise."""
    s = socket.create_connection(("127.0.0.1", t.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    auth = "".join(f"{k}: {v}\r\n" for k, v in t.headers().items())
    start = time.perf_counter()
    s.sendall(f"GET {t.prefix}{path} HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\n{auth}Connection: close\r\n\r\n".encode())
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        n = s.recv_into(buf)
        if not n:
            raise RuntimeError("closed before headers")
        head += bytes(view[:n])
    header, _, rest = head.partition(b"\r\n\r\n")
    status = header.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()}")
    got = len(rest)
    while got < expect:
        n = s.recv_into(buf)
        if not n:
            raise RuntimeError(f"closed after {got} bytes")
        got += n
    elapsed = time.perf_counter() - start
    s.close()
    return elapsed


def _login_cookie(t: Target, path: str | None = None) -> str:
    """The cookie a browser holds after its first token-authenticated request ("" for direct)."""
    if not t.token:
        return ""
    conn = http.client.HTTPConnection("127.0.0.1", t.port)
    conn.request("GET", path or t.prefix + "/small", headers=t.headers())
    r = conn.getresponse()
    r.read()
    conn.close()
    cookies = [c.split(";", 1)[0] for c in r.headers.get_all("Set-Cookie") or [] if not c.startswith("_xsrf")]
    if r.status != 200 or not cookies:
        raise RuntimeError(f"no login cookie from {t.name} (HTTP {r.status})")
    return "; ".join(cookies)


def _small(t: Target, n: int, cookie: str | None = None, path: str | None = None) -> list[float]:
    """Latencies of ``n`` GETs on one keep-alive connection: with the token header, or
    with ``cookie`` only (as a browser sends them once logged in)."""
    conn = http.client.HTTPConnection("127.0.0.1", t.port)
    headers = {"Cookie": cookie} if cookie else t.headers()
    url = path or t.prefix + "/small"
    lat = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", url, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
        lat.append(time.perf_counter() - start)
    conn.close()
    return lat


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 without a pid). Unlike
    req/s, CPU per request hardly moves when the machine is shared."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def small_requests(targets: list[Target], ceilings: dict[str, Target], rounds: int = 7, n: int = 400) -> None:
    """Small GETs, interleaved rounds (median of the rounds' req/s; p50/p99 over all).

    Two clients: a browser (the login cookie only) and an API client (token header,
    no cookie jar: Jupyter then signs a new login cookie on every request). Beside
    each proxy, its Jupyter server's own authenticated ``/api/me`` with the same
    client: the ceiling of any proxy that runs inside a Jupyter server.
    """
    cookies = {t.name: _login_cookie(t) for t in targets}
    for t in ceilings.values():
        cookies[t.name] = _login_cookie(t, "/api/me")
    for client in ("browser (login cookie)", "API client (token header)"):
        runs = [(t, None) for t in targets] + [(c, "/api/me") for c in ceilings.values()]
        def measure(t: Target, path: str | None, count: int = n, browser: bool = client.startswith("browser")) -> tuple[float, list[float]]:
            lat = _small(t, count, cookies[t.name] if browser else None, path)
            return count / sum(lat), lat

        for t, path in runs:  # warm up
            measure(t, path, 50)
        table(
            f"small requests, {client}: one keep-alive connection, {rounds} interleaved rounds of {n} GETs "
            f"(req/s: median of rounds; {_load()})",
            SMALL_COLUMNS, _small_rows(runs, rounds, measure),
        )


SMALL_COLUMNS = ["via", "req/s", "p50 ms", "p99 ms", "vs jupyter-server-proxy", "server CPU us/req", "jsp CPU / this"]


def _small_rows(
    runs: list[tuple[Target, str | None]], rounds: int, measure: Callable[[Target, str | None], tuple[float, list[float]]]
) -> list[list[str]]:
    """Interleaved ``rounds`` of ``measure(target, path)`` (req/s, latencies in s) over
    ``runs``: per run req/s (median of rounds), p50/p99 (over all latencies), req/s
    against jupyter-server-proxy's, the server's CPU per request and jsp's against it."""
    rates: dict[str, list[float]] = {t.name: [] for t, _ in runs}
    lats: dict[str, list[float]] = {t.name: [] for t, _ in runs}
    cpu: dict[str, float] = {t.name: 0.0 for t, _ in runs}  # the server's CPU seconds
    for _ in range(rounds):
        for t, path in runs:
            c0 = _cpu_seconds(t.pid)
            rate, lat = measure(t, path)
            cpu[t.name] += _cpu_seconds(t.pid) - c0
            rates[t.name].append(rate)
            lats[t.name] += lat
    rate = {name: median(r) for name, r in rates.items()}
    jsp = "jupyter-server-proxy"
    jsp_per_request = cpu[jsp] / len(lats[jsp])
    rows = []
    for t, _ in runs:
        per_request = cpu[t.name] / len(lats[t.name])
        rows.append([
            t.name, f"{rate[t.name]:.0f}", f"{percentile(lats[t.name], 50) * 1e3:.2f}",
            f"{percentile(lats[t.name], 99) * 1e3:.2f}",
            ratio(rate[t.name], rate[jsp]) if t.token else "-",
            f"{per_request * 1e6:.0f}" if t.pid else "-",
            ratio(jsp_per_request, per_request) if t.pid and per_request else "-",
        ])
    return rows


# wrk's script: the cookie read from a file (never in argv: other users see argv), and
# the time between consecutive answers on the one connection written per answer (wrk's
# own percentiles "correct" for coordinated omission with made-up samples, wrong for a
# closed loop). ffi.C.clock_gettime(CLOCK_MONOTONIC) is LuaJIT's, as wrk embeds it.
WRK_SCRIPT = textwrap.dedent(
    """
    local ffi = require("ffi")
    ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
    ]]
    local ts = ffi.new("bench_timespec")
    local out, last
    function init(args)
      local f = assert(io.open(args[1]))
      wrk.headers["Cookie"] = f:read("*l")
      f:close()
      out = assert(io.open(args[2], "w"))
    end
    function response(status, headers, body)
      ffi.C.clock_gettime(1, ts)
      local now = tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
      if last then out:write(status, " ", string.format("%.1f", now - last), "\\n") end
      last = now
    end
    """
)


def _wrk(t: Target, seconds: int, cookie: str, path: str | None = None) -> tuple[float, list[float]]:
    """``wrk`` (C, Debian's package) on one keep-alive connection, one request at a time,
    for ``seconds``: (req/s, per answer the seconds since the previous answer, i.e. the
    request's latency plus the C client's own few microseconds). Raises on a non-2xx."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script, secret, log = Path(tmp, "latency.lua"), Path(tmp, "cookie"), Path(tmp, "latency.log")
        script.write_text(WRK_SCRIPT)
        secret.touch(mode=0o600)
        secret.write_text(cookie + "\n")
        out = subprocess.run(
            ["wrk", "-t1", "-c1", f"-d{seconds}s", "--timeout", "30s", "-s", str(script),
             f"http://127.0.0.1:{t.port}{path or t.prefix + '/small'}", "--", str(secret), str(log)],
            capture_output=True, text=True, check=True,
        ).stdout
        rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not rows:
        raise RuntimeError(f"wrk: no answer in {seconds} s")
    if not rate or "Non-2xx" in out or "Socket errors" in out or any(not r[0].startswith("2") for r in rows):
        raise RuntimeError(f"wrk: {out.strip().splitlines()[-4:]}")
    return float(rate.group(1)), [float(r[1]) / 1e6 for r in rows]


def small_requests_c(targets: list[Target], ceilings: dict[str, Target], rounds: int = 5, seconds: int = 2) -> None:
    """The browser's small GETs (login cookie) with a C client, ``wrk``: the Python
    client of :func:`small_requests` spends tens of microseconds per request itself,
    on both sides of the ratio; a browser's own cost per request is far smaller.
    Interleaved rounds; req/s the median of the rounds', p50/p99 over all answers."""
    title = "small requests, browser (login cookie), C client (wrk -t1 -c1): one keep-alive connection"
    if shutil.which("wrk") is None:
        print(f"\n## {title}\nnot measured: wrk not installed (Debian package wrk; scripts/install-system-deps.sh)", flush=True)
        return
    runs = [(t, None) for t in targets if t.token] + [(c, "/api/me") for c in ceilings.values()]
    cookies = {t.name: _login_cookie(t, path) for t, path in runs}
    try:
        for t, path in runs:  # warm up
            _wrk(t, 1, cookies[t.name], path)
        rows = _small_rows(runs, rounds, lambda t, path: _wrk(t, seconds, cookies[t.name], path))
    except RuntimeError as exc:  # e.g. a machine so loaded that a round saw no answer: the other tables stand
        print(f"\n## {title}\nnot measured: {exc}", flush=True)
        return
    table(
        f"{title}, {rounds} interleaved rounds of {seconds} s (req/s: median of rounds; latency: time between answers; {_load()})",
        SMALL_COLUMNS, rows,
    )


async def _ws(t: Target, ws_prefix: str, small: int, big: int) -> tuple[list[float], float]:
    from tornado.httpclient import HTTPRequest
    from tornado.httputil import HTTPHeaders
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{t.port}{ws_prefix}/echo"
    ws = await websocket_connect(HTTPRequest(url, headers=HTTPHeaders(t.headers())), max_message_size=1 << 30)
    lat = []
    for _ in range(small):
        start = time.perf_counter()
        await ws.write_message("ping")
        await ws.read_message()
        lat.append(time.perf_counter() - start)
    payload = b"m" * MiB
    start = time.perf_counter()
    for _ in range(big):
        await ws.write_message(payload, binary=True)
        msg = await ws.read_message()
        if msg is None or len(msg) != MiB:
            raise RuntimeError(f"websocket closed (code {ws.close_code})")
    mib_s = big / (time.perf_counter() - start)
    ws.close()
    return lat, mib_s


def run() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    http_port, ws_port = free_port(), free_port()
    token = secrets.token_hex(16)
    procs = [subprocess.Popen([sys.executable, "-c", UPSTREAM, str(http_port), str(ws_port)])]
    try:
        _wait_port(http_port)
        _wait_port(ws_port)
        common = {"jupyterlab": False, "jupyter_lsp": False, "notebook_shim": False, "jupyter_server_terminals": False}
        ours, ours_port = _start_jupyter(tmp, "hpcgate", {**common, "hpcgate.lab": True, "jupyter_server_proxy": False}, token)
        jsp, jsp_port = _start_jupyter(tmp, "jsp", {**common, "hpcgate.lab": False, "jupyter_server_proxy": True}, token)
        # the same lab without the auth cache (hpcgate.lab.authcache): before/after in one run
        uncached, uncached_port = _start_jupyter(
            tmp, "hpcgate-nocache", {**common, "hpcgate.lab": True, "jupyter_server_proxy": False}, token,
            "c.HPCGateLab.auth_cache_ttl = 0\n",
        )
        relay_port = free_port()
        relay = subprocess.Popen([sys.executable, "-c", BARE_RELAY, str(relay_port), str(http_port)])
        procs += [ours, jsp, uncached, relay]
        extra_targets = [Target("hpcgate, auth cache off", uncached_port, f"/proxy/{http_port}", token, uncached.pid)]
        baseline = os.environ.get("HPCGATE_BENCH_BASELINE", "")
        if baseline:
            # another checkout of hpcgate (e.g. `git archive main src | tar -x -C DIR`): before/after in one run
            old, old_port = _start_jupyter(
                tmp, "hpcgate-baseline", {**common, "hpcgate.lab": True, "jupyter_server_proxy": False}, token,
                pythonpath=str(Path(baseline) / "src"),
            )
            procs.append(old)
            extra_targets.append(Target(f"hpcgate from {baseline}", old_port, f"/proxy/{http_port}", token, old.pid))
        _wait_port(relay_port)
        targets = [
            Target("direct", http_port, "", None, None),
            Target("hpcgate", ours_port, f"/proxy/{http_port}", token, ours.pid),
            Target("jupyter-server-proxy", jsp_port, f"/proxy/{http_port}", token, jsp.pid),
        ]
        ws_prefix = {"direct": "", "hpcgate": f"/proxy/{ws_port}", "jupyter-server-proxy": f"/proxy/{ws_port}"}
        ws_port_of = {"direct": ws_port}
        _small(targets[1], 5)  # warm up (imports, pools)
        _small(targets[2], 5)

        print(f"# {_load()} at the start ({os.cpu_count()} CPUs, shared)", flush=True)
        rows = []
        results: dict[tuple[str, str], float | None] = {}
        bare = Target("bare relay (ceiling)", relay_port, "", None, None)
        order = [targets[0], bare, *targets[1:]]
        sections = os.environ.get("HPCGATE_BENCH_SECTIONS", "download,small,websocket").split(",")
        for size_name, size, rounds in () if "download" not in sections else (("10 MiB", 10 * MiB, 5), ("500 MiB", 500 * MiB, 3), ("2 GiB", 2048 * MiB, 3)):
            # rounds interleave the targets, so drift of the machine hits all alike;
            # each target's best round counts
            best: dict[str, float] = {}
            errors: dict[str, str] = {}
            peaks: dict[str, int] = {}
            for _ in range(rounds):
                for t in order:
                    if t.name in errors:
                        continue
                    with _Peak(t.pid) as peak:
                        try:
                            best[t.name] = max(best.get(t.name, 0.0), size / MiB / _download(t, f"/bytes/{size}", size))
                        except (RuntimeError, OSError) as exc:
                            errors[t.name] = str(exc)[:30]
                    peaks[t.name] = max(peaks.get(t.name, 0), peak.peak)
            for t in order:
                mib_s = best.get(t.name) if t.name not in errors else None
                results[(size_name, t.name)] = mib_s
                rows.append([
                    size_name, t.name,
                    f"{mib_s:.0f}" if mib_s else f"failed ({errors[t.name]})",
                    ratio(mib_s, results[(size_name, "direct")] or 0) if mib_s else "-",
                    ratio(mib_s, results[(size_name, bare.name)] or 0) if mib_s and t is not targets[0] else "-",
                    f"{peaks[t.name] / 1024:.0f}" if t.pid else "-",
                ])
        if rows:
            table(
                "download throughput (MiB/s) and server peak RSS (MiB); the bare relay is the ceiling of any "
                f"proxy that copies in user space on this machine ({os.cpu_count()} CPUs)",
                ["size", "via", "MiB/s", "vs direct", "vs bare relay", "peak RSS"], rows,
            )

        if "small" in sections:
            ceilings = {
                "hpcgate": Target("(ceiling) hpcgate's Jupyter server /api/me", ours_port, "", token, ours.pid),
                "jsp": Target("(ceiling) jsp's Jupyter server /api/me", jsp_port, "", token, jsp.pid),
            }
            small_requests([*targets, *extra_targets], ceilings)
            small_requests_c([*targets, *extra_targets], ceilings)

        rows = []
        for t in targets if "websocket" in sections else []:
            wt = Target(t.name, ws_port_of.get(t.name, t.port), "", t.token, t.pid)
            try:
                lat, mib_s = asyncio.run(_ws(wt, ws_prefix[t.name], 1000, 50))
                rows.append([t.name, f"{percentile(lat, 50) * 1e3:.2f}", f"{percentile(lat, 99) * 1e3:.2f}", f"{mib_s:.0f}"])
            except Exception as exc:  # a failing peer is a result, not a crash
                rows.append([t.name, "-", "-", f"failed ({str(exc)[:40]})"])
        if rows:
            table("websocket echo: round trip and 1 MiB-message echo throughput", ["via", "p50 ms", "p99 ms", "1 MiB msgs MiB/s"], rows)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
