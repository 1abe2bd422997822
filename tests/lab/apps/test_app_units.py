"""Parts of the app machinery on their own: set-up wrapping, parameters, generic specs,
static files, isolation choice (an AppManager without a server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from harness.missing import not_installed
from hpcgate.appspec import SpecError, make_spec
from hpcgate.lab.apps.launch import ParameterError, resolve_parameters, with_setup
from hpcgate.lab.apps.manager import AppManager
from hpcgate.lab.apps.recipes.generic import command_app
from hpcgate.lab.apps.static import NotFound, index_url, static_file


def test_setup_lines_never_parse_the_command():
    argv = with_setup(["printf", "%s|", "$(touch /tmp/x)", "a b;c"], ["export A=1"], "t")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out == "$(touch /tmp/x)|a b;c|"
    assert with_setup(["true"], [], "t") == ["true"]


def test_parameters_are_validated(tmp_path):
    spec = make_spec("tb", {"command": ["x", "{logdir}"], "parameters": {"logdir": {"kind": "directory", "title": "Log directory"}}})
    (tmp_path / "runs").mkdir()
    assert resolve_parameters(spec, {"logdir": "runs"}, str(tmp_path)) == {"logdir": str(tmp_path / "runs")}
    for bad in ({"logdir": "missing"}, {"logdir": "a\nb"}, {"other": "x"}, {"logdir": 3}):
        with pytest.raises(ParameterError):
            resolve_parameters(spec, bad, str(tmp_path))
    with pytest.raises(SpecError):
        make_spec("tb", {"command": ["x"], "parameters": {"port": {}}})
    with pytest.raises(SpecError):
        make_spec("tb", {"command": ["x"], "instances": 0})


def test_generic_command_is_split_before_templates():
    spec = command_app("dask", {"command": "dask scheduler --dashboard-address '127.0.0.1:{port}'", "title": "Dask"})
    assert spec["command"] == ["dask", "scheduler", "--dashboard-address", "127.0.0.1:{port}"]
    assert spec["requires"][0]["program"] == "dask"
    assert spec["launcher_entry"]["title"] == "Dask"
    made = make_spec("dask", spec)
    assert made.managed and made.requires[0]["program"] == "dask"
    with pytest.raises(SpecError):
        command_app("bad", {"command": "unbalanced 'quote"})


def test_static_files_stay_inside_their_directory(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "vnc.html").write_text("<html>")
    (tmp_path / "secret").write_text("no")
    assert static_file(str(tmp_path / "www"), "/vnc.html") == (b"<html>", "text/html; charset=utf-8")
    for path in ("/../secret", "/%2e%2e/secret", "/", "/nothing"):
        with pytest.raises(NotFound):
            static_file(str(tmp_path / "www"), path)
    assert index_url("/user/a/novnc", "vnc.html?path={prefix}websockify") == "/user/a/novnc/vnc.html?path=user/a/novnc/websockify"


@pytest.mark.parametrize("bwrap", ["/usr/bin/bwrap", "/nonexistent/bwrap"])
async def test_auto_isolation_where_bubblewrap_works_and_plain_tcp_elsewhere(tmp_path, bwrap):
    """``isolate_network: auto`` (TensorBoard, MLflow): behind a unix socket in its own
    namespace with bubblewrap; on 127.0.0.1, said in its log, without."""
    if bwrap == "/usr/bin/bwrap" and not os.path.exists(bwrap):
        not_installed("bubblewrap is not installed (scripts/install-system-deps.sh installs it)")
    spec = make_spec("webfiles", {"command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
                               "isolate_network": "auto", "ready_check": {"path": "/", "status": 200}})
    sockets = tmp_path / "s"
    sockets.mkdir(mode=0o700)
    manager = AppManager({"webfiles": spec}, base_url="/", socket_dir=str(sockets), bwrap_path=bwrap,
                         cwd=str(tmp_path), stop_grace_period=2)
    app = manager.get("webfiles")
    await app.start()
    try:
        info = app.info()
        assert info["state"] == "running"
        if bwrap == "/nonexistent/bwrap":
            assert not info["isolated"] and info["port"] and info["unix_socket"] is None
            assert "runs without network isolation (bubblewrap ('/nonexistent/bwrap') is not installed)" in app.log.text()
            socket.create_connection(("127.0.0.1", info["port"]), timeout=5).close()
        else:
            assert info["isolated"] and info["port"] is None and info["unix_socket"].startswith(str(sockets))
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", app.port), timeout=2)
        assert await app.probe()
    finally:
        await manager.stop_all()
    assert app.info()["state"] == "stopped"


PLUGIN_MODULE = '''
def setup_mlflow():
    return {"command": ["true", "{port}"], "launcher_entry": {"title": "MLflow", "path_info": "mlflow"}}


def setup_tensorboard():
    def command(port):
        raise FileNotFoundError("Can not find tensorboard executable in $PATH")
    return {"command": command}


def setup_desktop():
    raise RuntimeError("vncserver executable not found, please install a VNC server")
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """A real installed distribution (a dist-info on sys.path) with two
    jupyter-server-proxy plugins; one has the name of hpcgate's MLflow recipe."""
    (tmp_path / "hpcgate_test_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "hpcgate_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hpcgate-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[jupyter_serverproxy_servers]\n"
        "mlflow = hpcgate_test_plugin:setup_mlflow\n"
        "tb-plugin-test = hpcgate_test_plugin:setup_tensorboard\n"
        "desktop-plugin-test = hpcgate_test_plugin:setup_desktop\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_recipe_and_a_plugin_of_one_name_are_both_kept_and_the_choice_is_stated(plugin_on_path, caplog):
    from hpcgate.appspec import collect_specs

    with caplog.at_level("WARNING", logger="hpcgate.appspec"):
        specs = collect_specs({}, {})
    recipe, plugin = specs["mlflow"], specs["mlflow-plugin"]
    assert recipe.source.startswith("entry point hpcgate_apps:mlflow")
    assert "chosen over entry point jupyter_serverproxy_servers:mlflow" in recipe.source
    assert "served as 'mlflow-plugin'" in recipe.source
    assert plugin.source.startswith("entry point jupyter_serverproxy_servers:mlflow (renamed")
    assert plugin.command == ["true", "{port}"]
    assert plugin.launcher()["path_info"] == "mlflow-plugin" and plugin.launcher()["title"] == "MLflow (plugin)"
    assert any("share the name" in r.getMessage() and "'mlflow-plugin'" in r.getMessage() for r in caplog.records)


async def test_an_app_whose_program_is_missing_is_unavailable_before_a_start(plugin_on_path, tmp_path):
    from hpcgate.appspec import collect_specs
    from hpcgate.lab.apps.launch import missing_programs

    specs = collect_specs({}, {})
    # a plugin whose command function looks its program up and raises: its message
    assert await missing_programs(specs["tb-plugin-test"], []) == [
        {"program": "the command of tb-plugin-test", "install": "Can not find tensorboard executable in $PATH"}
    ]
    # a plugin whose set-up function raises (as jupyter-remote-desktop-proxy's does
    # without vncserver): listed, unavailable, with the reason
    assert "(not loaded)" in specs["desktop-plugin-test"].source
    assert await missing_programs(specs["desktop-plugin-test"], []) == [
        {
            "program": "the command of desktop-plugin-test",
            "install": "the plugin could not be loaded: vncserver executable not found, please install a VNC server",
        }
    ]
    # a plain command whose program is not on PATH (no `requires` needed for that)
    absent = make_spec("absent", {"command": ["hpcgate-no-such-program", "--port", "{port}"]})
    assert [m["program"] for m in await missing_programs(absent, [])] == ["hpcgate-no-such-program"]
    # ... unless the app's set-up lines put it there
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "hpcgate-no-such-program"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert await missing_programs(absent, [f"PATH={bindir}:$PATH"]) == []
    # a program that is there
    assert await missing_programs(specs["mlflow-plugin"], []) == []
    manager = AppManager({"absent": absent}, "/user/x/", str(tmp_path / "sockets"))
    await manager.check_all_available()
    info = manager.get("absent").info()
    assert info["available"] is False and info["missing"][0]["install"].startswith("not found on PATH")


def test_parameters_stay_in_the_work_area_and_touch_nothing(tmp_path):
    """Directories outside the work area (also through ``..``, ``~`` or a link) are
    refused; a ``create`` directory is only checked, never made, by validation."""
    from hpcgate.lab.apps.launch import create_directories

    work = tmp_path / "work"
    work.mkdir()
    (work / "out").symlink_to(tmp_path)
    spec = make_spec("ml", {"command": ["x", "{store}"], "parameters": {"store": {"kind": "directory", "title": "Store", "create": True}}})
    for bad in ("../../..", "..", "/tmp", "~root", "out", "out/new", str(tmp_path / "new")):
        with pytest.raises(ParameterError, match="outside your work area|not a directory"):
            resolve_parameters(spec, {"store": bad}, str(work))
    values = resolve_parameters(spec, {"store": "a/b"}, str(work))
    assert values == {"store": str(work / "a" / "b")}
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing created yet
    create_directories(spec, values)
    assert (work / "a" / "b").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
