"""The sandbox's catalog and account map, written into the state directory.

Systems: ``login`` (kind ssh: labs run on the login node) and ``cluster`` (kind slurm:
jobs submitted on the login node run on compute1), both reached at 10.250.1.2 with
short-lived certificates of the sandbox's SSH CA (identity ``certificate``, only from
the hub's address 10.250.1.1; ``identity="user_key"`` gives the per-user key files
instead), tunnels through ``hpcg-tunnel``, the hub API forwarded through the jump
host. Hub users ``alice``/``bob`` map to ``hpcg-alice``/``hpcg-bob`` through a YAML map
file. One group grants both systems to every user; the groups ``ml-team``, ``physics``
and ``astro`` are the sandbox directory's groups (the VOs of directory and IdP logins).
"""

from __future__ import annotations

from typing import Any

import yaml

from ..catalog import Catalog, load_catalog
from . import layout as L
from .modules import LMOD_CMD, kernels, module_dir
from .proc import write_file


def _limits(cpus: int, memory: int, runtime: int) -> dict[str, Any]:
    return {
        "nodes": {"min": 1, "default": 1, "max": 1},
        "cpus": {"min": 1, "default": 1, "max": cpus},
        "memory": {"min": 1, "default": 1, "max": memory},
        "gpus": {"min": 0, "default": 0, "max": 0},
        "runtime": {"min": 1, "default": min(30, runtime), "max": runtime},
    }


#: The catalog's identity modes the sandbox can write.
IDENTITIES = ("certificate", "user_key")


def _ssh(lay: L.Layout, hub_api_bind: str, identity: str) -> dict[str, Any]:
    if identity == "certificate":
        logins: dict[str, Any] = {
            "identity": {
                "mode": "certificate",
                "ca_key": str(lay.ca_key),
                "certificate_minutes": 5,
                "source_addresses": [L.HUB_ADDR],
            },
        }
    elif identity == "user_key":
        logins = {
            "identity": {"mode": "user_key", "key_path": lay.key_path_template},
            "tunnel_key": str(lay.key_path(L.TUNNEL_ACCOUNT)),
        }
    else:
        raise ValueError(f"identity {identity!r}: the sandbox writes one of {', '.join(IDENTITIES)}")
    return {
        "port": L.SSH_PORT,
        "known_hosts": str(lay.known_hosts),
        **logins,
        "tunnel_account": L.TUNNEL_ACCOUNT,
        "hub_api_bind": hub_api_bind,
    }


def catalog_data(lay: L.Layout, identity: str = "certificate") -> dict[str, Any]:
    """The catalog as plain data (what :func:`write_catalog` dumps as YAML).

    The hub API's remote forward listens on ``localhost`` of login1 for ``login`` (labs
    run there) and on login1's compute-facing address 10.250.2.1 for ``cluster`` (jobs
    on compute1 reach it there; the tunnel account may listen on both, see users.py).
    """
    common = {
        "hosts": [L.LOGIN_ADDR],
        "jump_host": L.LOGIN_ADDR,
        "accounts": {"source": "map_file", "map_file": str(lay.account_map)},
        "hub_api_forward": True,
        "singleuser_command": [str(lay.venv_dir / "bin" / "hpcgate-singleuser")],
        "setup": [
            f"export PATH={lay.venv_dir / 'bin'}:$PATH",
            # the sandbox's module tree (sandbox/modules.py) for module kernels and jupyterlmod
            f"export MODULEPATH={module_dir(lay)} LMOD_CMD={LMOD_CMD}",
        ],
        "kernels": kernels(),
    }
    slurm_partitions = {
        name: {
            "description": f"Slurm partition {name} on {L.COMPUTE_HOST}",
            "limits": _limits(cpus=2 if i == 0 else L.NODE_CPUS, memory=2 if i == 0 else 4, runtime=minutes),
        }
        for i, (name, minutes) in enumerate(L.PARTITIONS.items())
    }
    return {
        "systems": {
            "login": {
                "kind": "ssh",
                "description": f"The sandbox login node {L.LOGIN_HOST}",
                **common,
                "ssh": _ssh(lay, "localhost", identity),
                "partitions": {
                    "interactive": {
                        "description": "A lab on the login node",
                        "limits": _limits(cpus=1, memory=1, runtime=120),
                    }
                },
            },
            "cluster": {
                "kind": "slurm",
                "description": f"The sandbox Slurm cluster ({L.COMPUTE_HOST})",
                **common,
                "ssh": _ssh(lay, L.LOGIN_INNER_ADDR, identity),
                "status_interval": 2,
                "partitions": slurm_partitions,
            },
        },
        "projects": {},
        "groups": {
            "everyone": {
                "description": "Every sandbox user",
                "all_users": True,
                "grants": [{"system": "login"}, {"system": "cluster"}],
            },
            # the directory's groups (sandbox/directory.py), the VOs of LDAP and OIDC logins
            "ml-team": {
                "description": "Machine learning VO (directory group ml-team)",
                "grants": [{"system": "cluster"}],
            },
            "physics": {
                "description": "Physics VO (directory group physics)",
                "grants": [{"system": "cluster", "partitions": [next(iter(L.PARTITIONS))]}],
            },
            "astro": {
                "description": "Astronomy VO (directory group astro)",
                "grants": [{"system": "login"}],
            },
        },
        "defaults": {"system": "cluster"},
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors/aliases for the values both systems share."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(data: Any) -> str:
    # leaf mappings and lists in flow style: `cpus: {min: 1, default: 1, max: 2}`
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None)


def write_catalog(lay: L.Layout) -> Catalog:
    """Write the account map and the catalog (0644); return the catalog as loaded back."""
    header = "# written by `hpcgate sandbox up`; regenerated on every up\n"
    write_file(
        lay.account_map,
        header
        + "# hub user name: account on the sandbox\n"
        + yaml.safe_dump(dict(L.HUB_USERS), default_flow_style=False),
        0o644,
    )
    write_file(lay.catalog, header + _yaml(catalog_data(lay)), 0o644)
    return load_catalog(lay.catalog)
