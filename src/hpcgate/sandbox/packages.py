"""The Debian packages the sandbox runs on: which are missing, and installing them.

``hpcgate sandbox up`` runs as root, so it installs what is missing with apt-get
(:func:`install`); ``--no-install`` makes it name the packages and the command instead.
The test fixture uses :func:`missing` to skip with the same list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from .proc import SandboxError

#: Debian package -> what the sandbox uses it for.
PACKAGES = {
    "openssh-server": "sshd on the login node",
    "openssh-client": "ssh and ssh-keygen (keys, the hub's connections)",
    "munge": "Slurm's authentication",
    "slurm-wlm": "slurmctld and slurmd",
    "python3-venv": "the job environment (/usr/bin/python3 -m venv)",
    "iproute2": "network namespaces (ip netns)",
    "util-linux": "nsenter, runuser",
    "procps": "process checks (ps)",
    "slapd": "the directory (LDAP logins)",
    "ldap-utils": "ldapmodify, ldapwhoami (changes to the directory)",
    "glewlwyd": "the OpenID Connect provider with TOTP (OIDC logins)",
    "slurmdbd": "Slurm's accounting daemon (projects from Slurm associations)",
    "mariadb-server": "slurmdbd's database",
    "lmod": "environment modules (kernels from module sets, jupyterlmod)",
}

#: Seconds apt-get may take (a download on a slow mirror).
APT_TIMEOUT = 1800


def install_command(packages: list[str]) -> str:
    """The shell command that installs ``packages`` (for messages)."""
    return "apt-get update && apt-get install -y --no-install-recommends " + " ".join(packages)


def missing() -> list[str]:
    """The packages of :data:`PACKAGES` that dpkg does not list as installed.

    Without dpkg (not Debian) every package whose main program is absent counts.
    """
    if shutil.which("dpkg-query") is None:
        programs = {"openssh-server": "/usr/sbin/sshd", "munge": "/usr/sbin/munged", "slurm-wlm": "/usr/sbin/slurmd"}
        return [pkg for pkg, path in programs.items() if not os.path.exists(path)]
    absent = []
    for pkg in PACKAGES:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in result.stdout:
            absent.append(pkg)
    return absent


def install(packages: list[str], log: Callable[[str], None]) -> None:
    """Install ``packages`` with apt-get (root); :class:`SandboxError` names them on failure."""
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise SandboxError(
            f"the sandbox needs the Debian packages {', '.join(packages)} and apt-get is not here; "
            f"install them with your package manager (on Debian: {install_command(packages)})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing Debian packages: {' '.join(packages)}")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(f"{' '.join(argv)} did not finish within {APT_TIMEOUT} s") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise SandboxError(
                f"installing the Debian packages failed ({' '.join(argv[:2])}, exit status {result.returncode}): "
                f"{tail}\nInstall them yourself: {install_command(packages)}"
            )
