"""Recovery from faults: the code before the reliability work (issue 10) and now, in one run.

Both run the same scenario on the sandbox (root; brought up if it is down, taken down
again only if this run brought it up) with a real hub (`hpcgate up`) and two labs:
alice on the login node (kind ssh), bob as a Slurm job (kind slurm). For each code
version, in this order:

1. the jump host's sshd and its sessions killed for 12 s (``HPCGATE_BENCH_OUTAGE``), then started: time from
   "sshd listens again" until every lab accepts a token made after the fault, and
   how many requests failed meanwhile (the first request on each tunnel included);
2. slurmctld stopped for 8 s, then started: until every lab accepts a fresh token;
3. bob's job cancelled with scancel outside the hub: time from the scancel until
   ``scontrol`` says the job ended, and until the hub reports the server stopped
   (the system's status interval is 2 s; JupyterHub's own poll runs every 30 s; bob's
   lab is started again afterwards);
4. the hub, JupyterHub and the proxy killed with SIGKILL, `hpcgate up` started again:
   until the hub API answers, and until every lab accepts a fresh token ("never" =
   not within 90 s).

The hub of the "before" column imports hpcgate from a `git archive` of
``HPCGATE_BENCH_BASELINE`` (default 6615985, main before this work) through
PYTHONPATH; the labs and the bench itself always run this checkout's code. Timings
are printed, never asserted (tests/faults checks the behaviour).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .report import table

ROOT = Path(__file__).resolve().parents[1]

BASELINE = os.environ.get("HPCGATE_BENCH_BASELINE", "6615985")
OUTAGE = float(os.environ.get("HPCGATE_BENCH_OUTAGE", "12"))  # s without sshd
NEVER = 90.0  # faulttools waits this long for a lab


def baseline_source(tmp: Path) -> Path:
    """``src`` of the baseline commit, unpacked from git (no worktree is touched)."""
    out = tmp / "baseline"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def _worst(labs: dict) -> float | None:
    afters = [r["after"] for r in labs.values()]
    return None if any(a is None for a in afters) else max(afters)


def _failed(labs: dict) -> int:
    return sum(sum(1 for c in r["answers"] if c != 200) for r in labs.values())


def scenario(sandbox, tmp: Path, hub_source: Path | None) -> dict[str, object]:
    from harness.faults import (
        cancel_outside,
        controller_outage,
        fault_catalog,
        hub_restart,
        spawn_labs,
        sshd_outage,
        start_hub,
        stop_everything,
    )

    old = os.environ.get("PYTHONPATH")
    if hub_source is not None:
        # for every hub started in this scenario (it is started again after SIGKILL)
        os.environ["PYTHONPATH"] = str(hub_source)
    catalog = fault_catalog(sandbox, tmp / "catalog.yaml")
    hub = None
    row: dict[str, object] = {}

    def step(fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # one failed fault must not hide the others' numbers
            print(f"bench faults: {fn.__name__} failed: {exc!r}"[:2000], file=sys.stderr)
            return None

    try:
        hub = start_hub(tmp / "hub", catalog)
        spawn_labs(hub)
        sshd = step(sshd_outage, sandbox, hub, OUTAGE)
        if sshd:
            row["sshd back -> every lab takes a fresh token (s)"] = _worst(sshd["labs"])
            failed = _failed(sshd["labs"]) + sum(1 for a in sshd["first"].values() for c, _ in a if c != 200)
            row["requests failed after sshd is back"] = failed
            row["request in flight during the outage"] = ", ".join(str(c) for c, _ in sshd["in_flight"].values())
        ctld = step(controller_outage, sandbox, hub, 8)
        if ctld:
            row["slurmctld back -> every lab takes a fresh token (s)"] = _worst(ctld["labs"])
        cancel = step(cancel_outside, sandbox, hub, "bob")
        if cancel:
            row["scancel outside -> Slurm says the job ended (s)"] = cancel["scheduler_says"]
            row["scancel outside -> hub says the server stopped (s)"] = cancel["hub_says"]
            step(spawn_labs, hub, ("bob",))
        restart = step(hub_restart, hub, "sigkill")
        if restart:
            row["SIGKILL + restart -> hub API answers (s)"] = restart["hub_answers"]
            row["SIGKILL + restart -> every lab takes a fresh token (s)"] = _worst(restart["labs"])
            row["servers kept through the SIGKILL restart"] = f"{len(restart['after'])}/{len(restart['before'])}"
    finally:
        if hub is not None:
            stop_everything(hub, sandbox)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return row


def _cell(value: object) -> object:
    if value is None:
        return f"never (>{NEVER:.0f})"
    return value


def run() -> None:
    from harness.sandbox import sandbox_missing
    from hpcgate.sandbox import Sandbox

    why = sandbox_missing()
    if why:
        print(f"bench faults: skipped, {why}")
        return
    sandbox = Sandbox()
    sandbox.hold()
    try:
        with tempfile.TemporaryDirectory(prefix="hpcgate-bench-faults-") as tmp:
            tmp_path = Path(tmp)
            os.chmod(tmp_path, 0o755)
            try:
                source = baseline_source(tmp_path)
            except subprocess.CalledProcessError as exc:
                # e.g. a shallow clone without that commit: measure this checkout only
                print(f"bench faults: baseline {BASELINE} not available ({exc.stderr.decode().strip()}); "
                      "set HPCGATE_BENCH_BASELINE to a commit this clone has", file=sys.stderr)
                before = {}
            else:
                before = scenario(sandbox, _mkdir(tmp_path / "before"), source)
            after = scenario(sandbox, _mkdir(tmp_path / "after"), None)
    finally:
        sandbox.release()
    rows = []
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key, "failed"), after.get(key, "failed")
        ratio = f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b else "n/a"
        rows.append((key, _cell(b), _cell(a), ratio))
    table(f"Recovery from faults: {BASELINE} (before) vs this checkout (after)", ["measure", "before", "after", "after/before"], rows)


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=0o755)
    return path
