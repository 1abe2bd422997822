"""jupyter-server-proxy's own test suite (its 4.6.0 release), run against hpcgate.lab.

Their tests are not in this repository: they come from the release's sdist on PyPI at
run time (``pip download``, cached under ``$XDG_CACHE_HOME/hpcgate``). They run in a
separate pytest with their conftest and their server config (``jupyter lab`` and
``jupyter notebook`` with ``tests/resources/jupyter_server_config.py``), but the name
``jupyter_server_proxy`` is mapped onto :mod:`hpcgate.lab.serverproxy` and the real
extension stays disabled (hpcgate's ``zz-hpcgate-replaces-jupyter-server-proxy.json``):
everything their tests reach is served by hpcgate.lab.

``jsp_compat_expected.yaml`` lists the tests that fail on purpose, each with its reason
(also in the README). This test fails if any other test fails or errors, and if a listed
one passes (the list must stay true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

JSP_VERSION = "4.6.0"
EXPECTED = Path(__file__).with_name("jsp_compat_expected.yaml")
SHIM = '''"""Written by hpcgate's tests/lab/test_jsp_compat.py: jupyter-server-proxy's import
names, served by hpcgate.lab.serverproxy (not jupyter-server-proxy's code)."""
import importlib
import sys

from hpcgate.lab.serverproxy import *  # noqa: F401,F403

for _name in ("api", "config", "handlers", "utils"):
    _module = importlib.import_module("hpcgate.lab.serverproxy." + _name)
    sys.modules[__name__ + "." + _name] = _module
    globals()[_name] = _module
'''


def jsp_sdist() -> Path:
    """The release's sdist, downloaded once into the cache directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpcgate" / "jsp-sdist"
    found = sorted(cache.glob(f"jupyter_server_proxy-{JSP_VERSION}.tar.gz"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    # --no-binary for this package only: the sdist (with tests/); its build tools may be wheels.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "jupyter-server-proxy",
         "-d", str(cache), f"jupyter-server-proxy=={JSP_VERSION}"],
        capture_output=True, text=True, timeout=600,
    )
    found = sorted(cache.glob(f"jupyter_server_proxy-{JSP_VERSION}.tar.gz"))
    if proc.returncode or not found:
        pytest.fail(f"could not download jupyter-server-proxy {JSP_VERSION}'s sdist from PyPI (pip said: {proc.stderr[-2000:]})")
    return found[0]


def extract_tests(sdist: Path, dest: Path) -> Path:
    """Their ``tests/`` and ``pyproject.toml`` (pytest settings) under ``dest``; the root."""
    root = dest / f"jupyter_server_proxy-{JSP_VERSION}"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{root.name}/tests/") or m.name == f"{root.name}/pyproject.toml"]
        tar.extractall(dest, members=members, filter="data")
    if not (root / "tests" / "test_proxies.py").is_file():
        pytest.fail(f"the sdist {sdist.name} has no tests/test_proxies.py: their tests must come from elsewhere")
    return root


def outcomes(report: Path) -> dict[str, str]:
    """``{"tests.test_x::test_name[param]": "passed" | "failed" | "error" | "skipped"}`` from JUnit XML."""
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[test_id] = "failed" if "failure" in kinds else "error" if "error" in kinds else "skipped" if "skipped" in kinds else "passed"
    return result


class Suite:
    """Their suite running once, with ``lab_config`` as ``c.HPCGateLab`` (started by the
    constructor; :meth:`result` waits for it). ``own_network``: in a network namespace of
    its own (root only), so that two runs at once can both bind the fixed ports of their
    server config (54321, 54323)."""

    def __init__(self, root: Path, tmp_path: Path, name: str, lab_config: dict[str, object], own_network: bool = False):
        shim = tmp_path / "shim" / "jupyter_server_proxy"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text(SHIM)
        # Their CI runs as a user; tests here may run as root, which the server refuses
        # without allow_root. A config dir of its own also keeps the user's config out.
        # (jupyter_config.json: their --config replaces the jupyter_server_config files.)
        config_dir = tmp_path / f"jupyter-config-{name}"
        config_dir.mkdir()
        config = {"ServerApp": {"allow_root": os.geteuid() == 0}, "HPCGateLab": lab_config}
        (config_dir / "jupyter_config.json").write_text(json.dumps(config))
        self.report = tmp_path / f"report-{name}.xml"
        self.output = tmp_path / f"output-{name}.txt"
        env = dict(os.environ, PYTHONPATH=str(shim.parent), JUPYTER_PLATFORM_DIRS="1", JUPYTER_CONFIG_DIR=str(config_dir))
        argv = [sys.executable, "-m", "pytest", "tests", "--ignore=tests/acceptance", "-o", "addopts=",
                "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short", "--continue-on-collection-errors",
                f"--junitxml={self.report}"]
        if own_network:
            argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)

    def result(self) -> tuple[dict[str, str], str]:
        """Outcomes and pytest's output, once the run ended."""
        try:
            self.proc.wait(900)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        output = self.output.read_text(errors="replace")
        assert self.report.is_file(), f"their suite did not run:\n{output[-8000:]}"
        return outcomes(self.report), output


def own_network_possible() -> bool:
    """A second run can have a network namespace of its own (root, unshare and ip here)."""
    return os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("ip"))


def check(got: dict[str, str], expected_failures: set[str], output: str, label: str, timing: set[str]) -> None:
    """Exactly ``expected_failures`` fail; ``timing`` tests are reported, not judged."""
    for test_id in sorted(timing & set(got)):
        print(f"\n{label}: {test_id} (a wall-clock window, not judged): {got[test_id]}")
    got = {t: o for t, o in got.items() if t not in timing}
    passed = [t for t, o in got.items() if o == "passed"]
    failed = {t for t, o in got.items() if o in ("failed", "error")}
    skipped = [t for t, o in got.items() if o == "skipped"]
    print(
        f"\njupyter-server-proxy {JSP_VERSION} suite on hpcgate.lab ({label}): {len(got)} tests, "
        f"{len(passed)} passed, {len(failed)} failed ({len(failed & expected_failures)} deliberate), {len(skipped)} skipped"
    )
    assert got, output[-4000:]
    unexpected = sorted(failed - expected_failures)
    assert not unexpected, f"{label}: failed, not listed as deliberate:\n" + "\n".join(unexpected) + "\n\n" + output[-12000:]
    stale = sorted(t for t in expected_failures if got.get(t) != "failed" and got.get(t) != "error")
    assert not stale, f"{label}: listed as deliberate but did not fail (update {EXPECTED.name}):\n" + "\n".join(stale)


def test_jupyter_server_proxy_suite_passes_on_hpcgate_lab(tmp_path: Path) -> None:
    root = extract_tests(jsp_sdist(), tmp_path)
    listed = yaml.safe_load(EXPECTED.read_text())
    deliberate: dict[str, str] = listed["deliberate"]
    assert set(deliberate.values()) <= set(listed["reasons"]), "every entry names one of the reasons"
    timing = set(listed["timing"])
    # The token tests must fail for the token alone: with it forwarded they pass. Both
    # runs at once where the second can have its own network (their fixed ports).
    parallel = own_network_possible()
    defaults = Suite(root, tmp_path, "defaults", {})
    if not parallel:
        defaults_result = defaults.result()
    forwarded = Suite(root, tmp_path, "token-forwarded", {"forward_token_query": True}, own_network=parallel)
    got, output = defaults.result() if parallel else defaults_result
    check(got, set(deliberate), output, "defaults", timing)
    got, output = forwarded.result()
    check(got, {t for t, why in deliberate.items() if why != "token"}, output, "forward_token_query=True", timing)
