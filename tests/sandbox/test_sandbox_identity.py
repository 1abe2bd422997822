"""The sandbox's directory and identity provider: up with the cluster, usable by hpcgate up."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from hpcgate.catalog import load_catalog
from hpcgate.hub.identity.settings import load_identity
from hpcgate.sandbox.catalog import catalog_data
from hpcgate.sandbox.identity import identity_dir, identity_status

pytestmark = pytest.mark.sandbox


def test_directory_and_provider_run_with_the_sandbox(sandbox, tmp_path):
    status = identity_status(sandbox.layout)
    assert status["slapd"] and status["glewlwyd"], status
    ldap = load_identity(status["identity_files"]["ldap"]).ldap
    oidc = load_identity(status["identity_files"]["oidc"]).oidc
    # a user's directory password binds; the password file is private
    passwords = json.loads(open(status["passwords"]).read())
    pw = tmp_path / "pw"
    pw.write_text(passwords["alice"])
    os.chmod(pw, 0o600)
    who = subprocess.run(
        ["ldapwhoami", "-x", "-H", ldap.url, "-D", "uid=alice,ou=people,dc=hpcgate,dc=test", "-y", str(pw)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert who.returncode == 0 and "uid=alice" in who.stdout, who.stderr
    discovery = requests.get(oidc.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == oidc.issuer
    for secret in (ldap.bind_password_file, oidc.client_secret_file, status["passwords"], status["totp_seeds"]):
        assert os.stat(secret).st_mode & 0o077 == 0, secret
    assert os.stat(identity_dir(sandbox.layout)).st_mode & 0o777 == 0o755
    # the catalog's VOs are the directory's groups (catalog_data: what every cold up writes)
    groups = set(catalog_data(sandbox.layout)["groups"])
    assert {"ml-team", "physics", "astro"} <= groups
    assert set(load_catalog(sandbox.info.catalog).model.groups) >= {"everyone"}
