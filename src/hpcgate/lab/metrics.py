"""The lab's Prometheus metrics, on ``<base_url>hpcgate/metrics`` (the server's own auth).

A registry of the lab's own (not prometheus_client's default one, which carries the
Jupyter server's metrics on ``<base_url>metrics``):

- ``hpcgate_lab_apps_running{app}``: 1 per app running now (read at scrape time);
- ``hpcgate_lab_app_starts_total{app}`` and ``hpcgate_lab_app_failures_total{app}``:
  start attempts and the ones that failed (could not start, never became ready);
- ``hpcgate_lab_proxy_requests_total{app}``: requests and websockets proxied to the app;
- ``hpcgate_lab_proxy_bytes_total{app, direction}``: bytes proxied, ``direction`` ``in``
  (browser to app: request bodies, websocket frames) or ``out`` (app to browser).

``app`` is the app's name, or ``port`` for ``proxy/<port>`` requests that name no app.
Scraping does not count as user activity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.prometheus.metrics import HTTP_REQUEST_DURATION_SECONDS
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tornado import web

#: label of proxied traffic that names no app (``proxy/<port>``)
PORT_LABEL = "port"
#: at most this many label combinations of the Jupyter server's request-duration
#: histogram are remembered per lab (methods x statuses x handler classes: a few)
_DURATION_CHILDREN_MAX = 256

#: every metric name the lab exports (the Grafana dashboard may use only these)
METRIC_NAMES = (
    "hpcgate_lab_apps_running",
    "hpcgate_lab_app_starts_total",
    "hpcgate_lab_app_failures_total",
    "hpcgate_lab_proxy_requests_total",
    "hpcgate_lab_proxy_bytes_total",
    "hpcgate_lab_proxy_lean_answers_total",
)


class _RunningApps(Collector):
    def __init__(self, running: Callable[[], list[str]]):
        self._running = running

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("hpcgate_lab_apps_running", "Apps running now (1 per app).", labels=["app"])
        for name in sorted(self._running()):
            family.add_metric([name], 1)
        yield family


class LabMetrics:
    """One lab's metrics. ``running``: the names of the apps running now."""

    def __init__(self, running: Callable[[], list[str]]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.app_starts = Counter(
            "hpcgate_lab_app_starts", "App start attempts.", ["app"], registry=self.registry
        )
        self.app_failures = Counter(
            "hpcgate_lab_app_failures", "App starts that failed.", ["app"], registry=self.registry
        )
        self.requests = Counter(
            "hpcgate_lab_proxy_requests", "Requests and websockets proxied to an app.", ["app"], registry=self.registry
        )
        self.bytes = Counter(
            "hpcgate_lab_proxy_bytes",
            "Bytes proxied (in: browser to app, out: app to browser).",
            ["app", "direction"],
            registry=self.registry,
        )
        self.lean_answers = Counter(
            "hpcgate_lab_proxy_lean_answers",
            "Requests among hpcgate_lab_proxy_requests answered without a tornado handler (hpcgate.lab.proxy.lean).",
            ["app"],
            registry=self.registry,
        )
        self.registry.register(_RunningApps(running))
        self._lean_counters: dict[str, Callable[[], None]] = {}
        self._app_counters: dict[str, tuple[Callable[[], None], Callable[[float], None], Callable[[float], None]]] = {}
        self._duration_children: dict[tuple[str, str, int], Any] = {}

    def byte_counters(self, app: str) -> tuple[Callable[[float], None], Callable[[float], None]]:
        """The ``inc`` of the app's ``in`` and ``out`` byte counters (cheap to call per chunk)."""
        return self.bytes.labels(app, "in").inc, self.bytes.labels(app, "out").inc

    def app_counters(self, app: str) -> tuple[Callable[[], None], Callable[[float], None], Callable[[float], None]]:
        """``(count a request, count bytes in, count bytes out)`` of ``app`` (a configured
        app's name or :data:`PORT_LABEL`), looked up once per app: ``labels()`` takes a
        lock and checks its values on every call, three times per proxied request."""
        counters = self._app_counters.get(app)
        if counters is None:
            counters = (self.requests.labels(app).inc, *self.byte_counters(app))
            self._app_counters[app] = counters
        return counters

    def lean_counter(self, app: str) -> Callable[[], None]:
        """The ``inc`` of ``app``'s lean-answer counter, looked up once per app."""
        count = self._lean_counters.get(app)
        if count is None:
            count = self._lean_counters[app] = self.lean_answers.labels(app).inc
        return count

    def observe_request_duration(self, handler: str, method: str, status: int, seconds: float) -> None:
        """What the Jupyter server's ``prometheus_log_method`` records for a request:
        ``http_request_duration_seconds{method, handler, status_code}``, the same histogram
        and labels, with the labelled child looked up once per combination."""
        key = (handler, method, status)
        child = self._duration_children.get(key)
        if child is None:
            child = HTTP_REQUEST_DURATION_SECONDS.labels(method=method, handler=handler, status_code=status)
            if len(self._duration_children) < _DURATION_CHILDREN_MAX:
                self._duration_children[key] = child
        child.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LabMetricsHandler(APIHandler):
    """``GET <base_url>hpcgate/metrics``: the lab's metrics, Prometheus text format."""

    _track_activity = False  # a scrape is not user activity

    def initialize(self, metrics: LabMetrics) -> None:  # type: ignore[override]
        self.metrics = metrics

    @web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.exposition())


def metrics_handlers(metrics: LabMetrics) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"hpcgate/metrics", LabMetricsHandler, {"metrics": metrics})]
