"""hpcgate.energy: the estimate, sacct's measured energy, CO2 and intensity sources;
hpcgate.hub.usage: a session's usage through the hub-wide HPCGate (a real catalog file)."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from hpcgate.catalog import parse_catalog
from hpcgate.energy import (
    ESTIMATE,
    MEASURED,
    EnergyError,
    IntensityCache,
    co2_grams,
    estimate_wh,
    parse_consumed_energy,
    read_intensity,
    session_energy,
)
from hpcgate.hub.runtime import HPCGate
from hpcgate.hub.usage import SessionUsage, usage_energy

CATALOG = """
carbon: {intensity: 50}
systems:
  hpc:
    kind: local
    power: {watts_per_cpu: 12, watts_per_gpu: 250}
    partitions:
      cpu: {}
      gpu:
        power: {watts_per_cpu: 20, watts_per_gpu: 400, pue: 1.5}
        limits: {gpus: {min: 0, default: 1, max: 4}}
  green:
    kind: local
    carbon: {source: SOURCE, max_age: 1000}
    partitions: {cpu: {}}
groups:
  all: {all_users: true, grants: [{system: hpc}, {system: green}]}
"""


def test_estimate_counts_devices_nodes_time_and_pue():
    # 4 cores * 10 W + 1 GPU * 300 W = 340 W, 2 nodes, half an hour, PUE 1.2
    assert estimate_wh(cpus=4, gpus=1, nodes=2, elapsed_s=1800, watts_per_cpu=10,
                       watts_per_gpu=300, pue=1.2) == pytest.approx(340 * 2 * 0.5 * 1.2)
    assert estimate_wh(cpus=4, gpus=0, nodes=1, elapsed_s=0, watts_per_cpu=10, watts_per_gpu=300) == 0


@pytest.mark.parametrize("bad", [{"cpus": -1}, {"elapsed_s": float("nan")}, {"pue": 0.5}])
def test_estimate_refuses_impossible_inputs(bad):
    args = dict(cpus=1, gpus=0, nodes=1, elapsed_s=60, watts_per_cpu=10, watts_per_gpu=0, pue=1.0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        estimate_wh(**args)


def test_sacct_consumed_energy_is_joules_and_zero_means_no_plugin():
    assert parse_consumed_energy("7200\n") == pytest.approx(2.0)
    assert parse_consumed_energy("0\n") is None  # no AcctGatherEnergyType: sacct prints 0
    assert parse_consumed_energy("") is None
    assert parse_consumed_energy("16.50K\n") is None  # not the Raw field: not guessed


def test_measured_wins_and_estimate_is_labelled():
    measured = session_energy(cpus=2, gpus=0, nodes=1, elapsed_s=3600, watts_per_cpu=10,
                              watts_per_gpu=0, measured_wh=5.0, intensity=100, intensity_source="catalog")
    assert measured.method == MEASURED and measured.energy_wh == 5.0
    assert measured.co2_g == pytest.approx(0.5)
    estimate = session_energy(cpus=2, gpus=0, nodes=1, elapsed_s=3600, watts_per_cpu=10, watts_per_gpu=0)
    data = estimate.as_json()
    assert data["method"] == ESTIMATE and data["estimate"] is True
    assert data["energy_wh"] == 20.0 and data["co2_g"] is None
    assert data["label"] == "20 Wh (estimate)"
    assert measured.label == "5 Wh (measured), 0.5 g CO2e"
    big = session_energy(cpus=100, gpus=0, nodes=1, elapsed_s=3600, watts_per_cpu=20, watts_per_gpu=0, intensity=500)
    assert big.label == "2 kWh (estimate), 1 kg CO2e"
    assert co2_grams(1000, 400) == 400


def test_intensity_from_a_file_and_its_errors(tmp_path):
    good = tmp_path / "intensity"
    good.write_text("123.5\n")
    assert read_intensity(str(good)) == 123.5
    good.write_text("high")
    with pytest.raises(EnergyError, match="must return one number"):
        read_intensity(str(good))
    with pytest.raises(EnergyError, match="Cannot read"):
        read_intensity(str(tmp_path / "missing"))
    good.write_text("99999")
    with pytest.raises(EnergyError, match="above 5000"):
        read_intensity(str(good))


def test_intensity_from_a_local_http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"42\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert read_intensity(f"http://127.0.0.1:{server.server_port}/now") == 42.0
    finally:
        server.shutdown()
        server.server_close()


def test_cache_keeps_the_last_good_value(tmp_path):
    source = tmp_path / "intensity"
    source.write_text("80")
    cache = IntensityCache(str(source), max_age=0)
    assert cache.get() == 80
    source.write_text("broken")
    assert cache.get() == 80 and "must return one number" in cache.last_error
    source.write_text("70")
    assert cache.get() == 70 and cache.last_error == ""


def test_catalog_power_and_carbon_through_the_hub(tmp_path):
    source = tmp_path / "grid"
    source.write_text("30\n")
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.replace("SOURCE", str(source)))
    gate = HPCGate(catalog_path=str(path), state_dir=str(tmp_path / "state"))
    catalog = gate.catalog()
    assert catalog.power_for("hpc", "cpu").watts_per_cpu == 12
    assert catalog.power_for("hpc", "gpu").pue == 1.5
    request = catalog.validate(_user(), {"system": "hpc", "partition": "gpu", "cpus": "1"})
    usage = SessionUsage.begin(request, now=1000.0)
    usage.end(now=1000.0 + 3600)
    energy = asyncio.run(usage_energy(gate, usage))
    # (1 core * 20 W + 1 GPU * 400 W) * 1 h * PUE 1.5 = 630 Wh; at 50 g/kWh: 31.5 g
    assert energy.energy_wh == pytest.approx(630)
    assert energy.co2_g == pytest.approx(31.5) and energy.intensity_source == "catalog"
    assert SessionUsage.from_state(usage.to_state()) == usage
    green = SessionUsage.begin(catalog.validate(_user(), {"system": "green"}), now=0.0)
    green.end(now=3600.0)
    result = asyncio.run(usage_energy(gate, green))
    assert result.energy_wh == pytest.approx(10) and result.intensity == 30
    assert result.intensity_source == str(source)


def test_catalog_refuses_a_relative_source_and_negative_power():
    with pytest.raises(Exception, match="carbon.source"):
        parse_catalog(CATALOG.replace("SOURCE", "grid.txt"))
    with pytest.raises(Exception, match="watts_per_cpu"):
        parse_catalog(CATALOG.replace("watts_per_cpu: 12", "watts_per_cpu: -1").replace("SOURCE", "/x"))


def _user():
    from hpcgate.catalog import UserInfo

    return UserInfo(name="ada")
