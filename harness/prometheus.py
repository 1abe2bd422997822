"""A real Prometheus server for tests (Debian's ``prometheus``), in a temporary directory.

It gets its own ``--storage.tsdb.path`` and ``--web.listen-address`` on a free loopback
port, scrapes every ``scrape_interval`` (1 s), and is stopped by its PID. Credentials
reach it only through files (``authorization.credentials_file``, mode 0600), never a URL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import requests

from harness.hub import free_port, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def prometheus_missing_reason() -> str | None:
    if not os.access(PROMETHEUS, os.X_OK):
        return f"Debian's prometheus is not installed ({PROMETHEUS}); scripts/install-system-deps.sh installs it"
    return None


def _secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return str(path)


class Prometheus:
    """``jobs``: ``{name: {"target": "127.0.0.1:PORT", "path": "/hub/metrics", "token": str | None}}``;
    a job with ``"file_sd": PATH`` instead of ``target`` and ``path`` finds its targets
    (and their paths) in that file_sd JSON file, re-read every second."""

    def __init__(self, jobs: dict[str, dict[str, Any]]):
        self.dir = Path(tempfile.mkdtemp(prefix="hpcgate-prometheus-"))
        os.chmod(self.dir, 0o700)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        scrape_configs = []
        for name, job in jobs.items():
            config: dict[str, Any] = {"job_name": name}
            if job.get("file_sd"):
                config["file_sd_configs"] = [{"files": [job["file_sd"]], "refresh_interval": "1s"}]
            else:
                config["metrics_path"] = job["path"]
                config["static_configs"] = [{"targets": [job["target"]]}]
            if job.get("token"):
                config["authorization"] = {
                    "type": "Bearer",
                    "credentials_file": _secret_file(self.dir, f"{name}.token", job["token"]),
                }
            scrape_configs.append(config)
        # JSON is YAML: no YAML writer needed
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": scrape_configs}
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "prometheus.log"

    def start(self) -> Prometheus:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        log.close()
        wait_for(lambda: self._alive() and requests.get(self.url + "/-/ready", timeout=2).ok, 60, "Prometheus to be ready")
        return self

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The vector result of an instant PromQL query (through the HTTP API)."""
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of a query (None if it returned nothing)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_value(self, promql: str, expected: float, timeout: float = 30) -> float:
        """Wait until ``promql`` returns ``expected`` (scrapes are 1 s apart)."""
        seen: list[float | None] = []

        def check():
            value = self.value(promql)
            seen.append(value)
            return value == expected

        try:
            wait_for(check, timeout, f"{promql} == {expected}", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last values {seen[-3:]}") from None
        return expected

    def targets(self) -> dict[str, dict[str, Any]]:
        r = requests.get(self.url + "/api/v1/targets", timeout=10)
        return {t["labels"]["job"]: t for t in r.json()["data"]["activeTargets"]}


def wait_scraped(prom: Prometheus, job: str, timeout: float = 30) -> dict[str, Any]:
    """The job's target once it has been scraped at least once (health up or down)."""
    def scraped():
        target = prom.targets().get(job)
        return target if target and target.get("health") in ("up", "down") else None

    return wait_for(scraped, timeout, f"Prometheus to scrape {job}")


