"""Run every ``benchmarks/bench_*.py`` (or those named on the command line).

Each module defines ``run() -> None`` (sync or async) that measures hpcgate and its
alternative in one run and prints tables through :mod:`benchmarks.report`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted or names:
        print(f"\n# {name}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            result = module.run()
            if inspect.isawaitable(result):
                asyncio.run(result)
        except Exception as exc:  # a benchmark failing must not hide the others' numbers
            failed.append(name)
            print(f"{name} failed: {exc!r}", file=sys.stderr)
        print(f"({name}: {time.monotonic() - started:.1f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
