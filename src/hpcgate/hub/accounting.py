"""AccountingCache: one association query per system per TTL, shared by every user.

Systems with ``projects: {source: slurm}`` offer the Slurm accounts a user may charge.
Asking ``sacctmgr`` at every form render would put one slurmdbd RPC (and one SSH
command) behind every page view; instead the whole association table of a system is
fetched once per ``projects.ttl`` seconds (the StatusCache idea) and every user's
answer comes from memory.

Rules:

- Whoever asks when the table is older than the TTL triggers one refresh; nobody sends
  a second one meanwhile (one lock). Concurrent askers get the table in memory; only
  before the first answer do they wait for that same query.
- A failed or timed-out query keeps the last known table and says so:
  :meth:`AccountingCache.charges` then carries a notice naming the time of the last
  good answer. A failing accounting is asked again only after ``retry_after`` seconds
  (at most the TTL), not at every render.
- Before the first good answer a user's accounts are unknown (``Charges.accounts`` is
  None): the catalog then offers no project on that system and says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..catalog import Charges
from .backends.base import AccountingUnavailable, Association

log = logging.getLogger("hpcgate.accounting")


def _clock_text(wall: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(wall))


class AccountingCache:
    """The association table of one system, refreshed at most once per TTL."""

    def __init__(
        self,
        system: str,
        query: Callable[[str], Awaitable[list[Association]]],
        ttl: float,
        *,
        query_timeout: float = 30.0,
        retry_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ):
        self.log = logger or log
        self.system = system
        self.query = query
        self.ttl = ttl
        self.query_timeout = query_timeout
        self.retry_after = min(ttl, 30.0) if retry_after is None else retry_after
        self._clock = clock
        self._wall = wall_clock
        #: user -> (accounts in the accounting's order, default account)
        self._table: dict[str, tuple[tuple[str, ...], str | None]] | None = None
        self._fetched_at: float | None = None
        self._fetched_wall: float | None = None
        self._error: str | None = None
        self._failed_wall: float | None = None
        self._next_try = 0.0
        #: Number of queries sent (tests and benchmarks).
        self.queries = 0
        self._lock = asyncio.Lock()

    def _due(self) -> bool:
        now = self._clock()
        if now < self._next_try:
            return False
        return self._fetched_at is None or now - self._fetched_at >= self.ttl

    async def refresh_if_due(self, asking: str) -> None:
        """Query once if the table is older than the TTL (and no failure backoff runs)."""
        if not self._due():
            return
        if self._lock.locked() and self._table is not None:
            # a refresh is under way: answer from the table in memory rather than make a
            # render wait for it (it may be a slow or failing slurmdbd)
            return
        async with self._lock:
            if self._due():
                await self._refresh(asking)

    async def _refresh(self, asking: str) -> None:
        self.queries += 1
        try:
            answer = await asyncio.wait_for(self.query(asking), self.query_timeout)
        except TimeoutError:
            self._failed(f"no answer within {self.query_timeout:.0f} s")
            return
        except (AccountingUnavailable, OSError) as exc:
            self._failed(str(exc))
            return
        table: dict[str, tuple[list[str], str | None]] = {}
        for assoc in answer:
            accounts, default = table.setdefault(assoc.user, ([], assoc.default or None))
            if assoc.account not in accounts:
                accounts.append(assoc.account)
        self._table = {u: (tuple(a), d) for u, (a, d) in table.items()}
        self._fetched_at = self._clock()
        self._fetched_wall = self._wall()
        self._error = None
        self._failed_wall = None
        self._next_try = 0.0
        self.log.info(
            "Accounting of %s asked (query %d): %d associations of %d users",
            self.system, self.queries, len(answer), len(self._table),
        )  # fmt: skip

    def _failed(self, reason: str) -> None:
        self._error = reason
        self._failed_wall = self._wall()
        self._next_try = self._clock() + self.retry_after
        self.log.warning(
            "Accounting of %s did not answer (%s); %s; next try in %.0f s",
            self.system, reason,
            "keeping the last known associations" if self._table is not None else "no associations known yet",
            self.retry_after,
        )  # fmt: skip

    def known(self, account: str) -> Charges:
        """``account``'s charges from the table in memory (no query)."""
        notice = ""
        if self._error is not None and self._failed_wall is not None:
            if self._table is not None and self._fetched_wall is not None:
                notice = (
                    f"The accounting of {self.system} did not answer at {_clock_text(self._failed_wall)}; "
                    f"your projects there are shown as of {_clock_text(self._fetched_wall)}."
                )
            else:
                notice = (
                    f"The accounting of {self.system} did not answer ({self._error}); your projects "
                    "there are not known yet: try again in a minute."
                )
        if self._table is None:
            return Charges(None, None, notice)
        accounts, default = self._table.get(account, ((), None))
        return Charges(accounts, default, notice)

    async def charges(self, account: str) -> Charges:
        """``account``'s Slurm accounts and default, refreshing the table if it is due."""
        await self.refresh_if_due(account)
        return self.known(account)
