"""Remote desktops: Xpra (HTML5 client) and TigerVNC with noVNC, both on unix sockets.

Neither opens a TCP port and neither puts a secret in a URL: the sockets live in the
user's 0700 runtime directory, so only the user (through the authenticated lab proxy)
reaches them. Several desktops per user run side by side as instances, each with its
own display (the X server picks a free one) and its own runtime directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import icon

XPRA_CONF = Path(__file__).parent / "xpra-conf"

XPRA_QUIET = [
    # Xpra 3.1 tries these services at start; on HPC nodes they are missing or unwanted.
    "--mdns=no", "--pulseaudio=no", "--notifications=no", "--webcam=no", "--printing=no",
    "--systemd-run=no", "--dbus-launch=", "--speaker=off", "--microphone=off",
]
TERMINAL = "xterm"
DESKTOP_TIMEOUT = 180.0
NOVNC_DIR = "/usr/share/novnc"  # Debian's novnc package  # first starts read X fonts and libraries from shared file systems


def _desktop(program: str, install: str, title: str, icon_name: str, **spec: Any) -> dict[str, Any]:
    """What both desktops share: unix socket, slow-node timeout, instances, requirements."""
    return {
        **spec,
        "unix_socket": True,
        "timeout": DESKTOP_TIMEOUT,
        "new_browser_tab": True,
        "instances": 4,
        "requires": [{"program": program, "install": install}, {"program": TERMINAL, "install": "the xterm package"}],
        "launcher_entry": {"title": title, "icon_path": icon(icon_name), "category": "Desktops"},
    }


def xpra() -> dict[str, Any]:
    """Xpra desktop with a terminal, served by Xpra's HTML5 client on a unix socket."""
    return _desktop(
        "xpra",
        "the xpra package (Debian/Ubuntu: apt install xpra; it includes the HTML5 client up to Xpra 3)",
        "Xpra Desktop",
        "desktop",
        command=[
            "xpra", "start", "--daemon=no",
            "--bind={unix_socket}", "--socket-dirs={app_dir}",
            "--html=on", f"--start={TERMINAL}",
            "--sharing=no", "--clipboard=yes", *XPRA_QUIET,
        ],
        # Xpra 3.1 keeps its X cookie in ~/.Xauthority; its config: see xpra-conf/xpra.conf
        environment={"XDG_RUNTIME_DIR": "{app_dir}", "XPRA_USER_CONF_DIRS": str(XPRA_CONF)},
        ready_check={"path": "/", "status": 200},
    )


def novnc() -> dict[str, Any]:
    """TigerVNC on a unix socket (no TCP port), reached by noVNC through the lab.

    The lab answers plain HTTP requests with noVNC's files (``static_files``) and
    bridges the websocket at ``<app>/websockify`` to Xvnc's unix socket
    (``raw_socket_proxy``): no websockify process, no TCP listener.
    """
    return _desktop(
        "Xvnc",
        "TigerVNC's Xvnc (Debian/Ubuntu: apt install tigervnc-standalone-server)",
        "VNC Desktop",
        "vnc",
        command=[
            sys.executable, "-m", "hpcgate.lab.apps.recipes.xsession",
            "Xvnc", "-rfbunixpath", "{unix_socket}", "-rfbunixmode", "0600", "-rfbport", "-1",
            "-SecurityTypes", "None", "-nolisten", "tcp", "-geometry", "1280x800", "-depth", "24",
            "-auth", "{app_dir}/Xauthority",
            "--", TERMINAL,
        ],
        environment={"XAUTHORITY": "{app_dir}/Xauthority"},
        raw_socket_proxy=True,
        static_files={"dir": NOVNC_DIR, "index": "vnc.html?autoconnect=1&resize=remote&reconnect=1&path={prefix}websockify"},
    )
