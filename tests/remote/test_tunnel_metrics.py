"""hpcgate's tunnel and scheduler-query metrics from a real TunnelManager and StatusCache
against a real sshd on loopback: a forward, the jump host going away and coming back."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.sshd import USERS
from hpcgate.catalog import System
from hpcgate.hub.metrics import HubCollector
from hpcgate.hub.status import StatusCache
from tests.hub.backends.test_ssh import make_backend, spec_for
from tests.remote.test_tunnels import manager_for


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_tunnel_up_forwards_and_reconnects_are_exported(sshd, lab, tmp_path):
    system = System.model_validate(sshd.system_data())
    manager = manager_for(tmp_path)
    registry = CollectorRegistry()
    registry.register(HubCollector([], manager.all))
    login = (("system", "login"),)
    try:
        await manager.open_forward("login", system, "ann/", *lab, timeout=10)
        got = samples(registry)
        assert got[("hpcgate_tunnel_up", login)] == 1
        assert got[("hpcgate_tunnel_forwards", login)] == 1
        assert got[("hpcgate_tunnel_reconnects_total", login)] == 0
        tunnel = manager.get("login")
        sshd.kill()
        for _ in range(100):
            if not tunnel.connected:
                break
            await asyncio.sleep(0.05)
        assert samples(registry)[("hpcgate_tunnel_up", login)] == 0
        sshd.start()
        for _ in range(200):
            if tunnel.connected:
                break
            await asyncio.sleep(0.05)
        got = samples(registry)
        assert got[("hpcgate_tunnel_up", login)] == 1
        assert got[("hpcgate_tunnel_reconnects_total", login)] == 1
        assert got[("hpcgate_tunnel_forwards", login)] == 1
    finally:
        await manager.close()


async def test_scheduler_queries_and_their_errors_are_exported(sshd, tmp_path):
    backend, catalog = make_backend(sshd, tmp_path)
    handle = await backend.submit(spec_for(catalog, USERS[0]))
    cache = StatusCache(backend, interval=0.1, query_timeout=5)
    queries, errors = value("hpcgate_scheduler_query_seconds_count", system="login"), value(
        "hpcgate_scheduler_query_errors_total", system="login")
    try:
        await cache.get(handle, max_age=0)
        assert value("hpcgate_scheduler_query_seconds_count", system="login") >= queries + 1
        assert value("hpcgate_scheduler_query_errors_total", system="login") == errors
        sshd.kill()
        await backend.close()  # drop the pooled connection: the next query must connect
        await asyncio.sleep(0.2)
        await cache.get(handle, max_age=0)
        assert value("hpcgate_scheduler_query_errors_total", system="login") == errors + 1
    finally:
        sshd.start()
        await backend.cancel(handle)
        await backend.close()
