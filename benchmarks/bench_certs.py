"""SSH logins: a short-lived certificate (identity ``certificate``) vs a stored key (``user_key``).

The same real OpenSSH sshd (the tests' loopback sshd, harness/sshd.py, which trusts
a CA made by ``hpcgate ca init``'s code), the same account, hpcgate's own connect
(:func:`hpcgate.remote.pool.connect`). One row per way, N connection set-ups each
(interleaved, so both see the same machine load), until the connection is authenticated
and one command (``true``) has run; then it is closed. The certificate row includes
what only it does: reading the CA key, a fresh ed25519 key pair and the signature.
A pooled connection pays this once per (host, account), not per command.
"""

from __future__ import annotations

import asyncio
import os
import time

from harness.sshd import USERS, running_sshd
from hpcgate.catalog import System
from hpcgate.remote.pool import connect
from hpcgate.remote.targets import SystemRemote

from .report import median, percentile, ratio, table

N = int(os.environ.get("HPCGATE_BENCH_CONNECTS", "40"))


async def _one(target) -> float:
    started = time.perf_counter()
    conn = await connect(target)
    try:
        await conn.run("true", check=True)
        return (time.perf_counter() - started) * 1000
    finally:
        conn.close()
        await conn.wait_closed()


async def run() -> None:
    if os.geteuid() != 0:
        print("bench_certs: skipped: the loopback sshd creates Unix accounts and needs root")
        return
    with running_sshd("hpcgate-bench-certs-") as sshd:
        keyed = SystemRemote("bench", System.model_validate(sshd.system_data()), None)
        certified = SystemRemote(
            "bench",
            System.model_validate(sshd.system_data(ssh={"identity": sshd.certificate_identity()})),
            None,
        )
        key_target = keyed.target("127.0.0.1", USERS[0])
        cert_target = certified.target("127.0.0.1", USERS[0])
        for _ in range(3):  # warm up: imports, sshd's first forks
            await _one(key_target)
            await _one(cert_target)
        times: dict[str, list[float]] = {"key": [], "cert": []}
        for _ in range(N):
            times["key"].append(await _one(key_target))
            times["cert"].append(await _one(cert_target))
        signing = []
        assert cert_target.certificate is not None
        for _ in range(N):
            started = time.perf_counter()
            cert_target.certificate.credentials(USERS[0])
            signing.append((time.perf_counter() - started) * 1000)
    key_ms, cert_ms = median(times["key"]), median(times["cert"])
    table(
        f"SSH connection set-up until one command ran (ms, N={N} each, same sshd and account)",
        ["login", "median", "p90", "vs stored key"],
        [
            ["stored key file (user_key)", key_ms, percentile(times["key"], 90), "1.00x"],
            ["fresh key + certificate (certificate)", cert_ms, percentile(times["cert"], 90), ratio(cert_ms, key_ms)],
        ],
    )
    table(
        "of which: reading the CA, a new ed25519 key pair and its certificate (ms)",
        ["step", "median", "p90"],
        [["CertificateLogin.credentials()", median(signing), percentile(signing, 90)]],
    )


if __name__ == "__main__":
    asyncio.run(run())
