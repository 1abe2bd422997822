"""AccountingCache's rules with a scripted association source and a hand-moved clock.

The real thing (sacctmgr against the sandbox's slurmdbd, an outage included) is in
tests/slurm/test_projects_from_slurm.py; this checks the timing rules, which need a
clock the test moves.
"""

from __future__ import annotations

import asyncio

from hpcgate.hub.accounting import AccountingCache
from hpcgate.hub.backends.base import AccountingUnavailable, Association

TABLE = [
    Association("hpcg-alice", "ml", "ml"),
    Association("hpcg-alice", "physics", "ml"),
    Association("hpcg-bob", "physics", "physics"),
]


class Source:
    """Answers with TABLE, or fails while ``down``; counts the calls and who asked."""

    def __init__(self):
        self.down = False
        self.slow = False
        self.asked_as: list[str] = []

    async def __call__(self, asking: str) -> list[Association]:
        self.asked_as.append(asking)
        await asyncio.sleep(0.3 if self.slow else 0.01)
        if self.down:
            raise AccountingUnavailable("sacctmgr: Connection refused")
        return list(TABLE)


def make(ttl: float = 60):
    now = [1000.0]
    source = Source()
    cache = AccountingCache("jureca", source, ttl, clock=lambda: now[0], wall_clock=lambda: 1_700_000_000 + now[0])
    return cache, source, now


def test_concurrent_renders_share_one_query_per_ttl():
    cache, source, now = make(ttl=60)

    async def main():
        answers = await asyncio.gather(*(cache.charges("hpcg-alice" if i % 2 else "hpcg-bob") for i in range(50)))
        assert len(source.asked_as) == 1
        assert answers[1].accounts == ("ml", "physics") and answers[1].default == "ml"
        assert answers[0].accounts == ("physics",) and answers[0].notice == ""
        now[0] += 59
        await cache.charges("hpcg-bob")
        assert len(source.asked_as) == 1
        now[0] += 2
        await cache.charges("carol")
        assert len(source.asked_as) == 2
        assert (await cache.charges("carol")).accounts == ()  # known table, no association
        # a refresh in flight: the others answer from memory at once, still one query
        now[0] += 61
        source.slow = True
        answers = await asyncio.gather(*(cache.charges("hpcg-bob") for _ in range(20)))
        assert len(source.asked_as) == 3 and all(a.accounts == ("physics",) for a in answers)

    asyncio.run(main())


def test_outage_keeps_the_last_table_and_says_so_then_recovers():
    cache, source, now = make(ttl=60)

    async def main():
        await cache.charges("hpcg-alice")
        source.down = True
        now[0] += 61
        kept = await cache.charges("hpcg-alice")
        assert kept.accounts == ("ml", "physics")
        assert "did not answer at" in kept.notice and "shown as of" in kept.notice
        calls = len(source.asked_as)
        for _ in range(20):  # renders during the backoff do not ask again
            await cache.charges("hpcg-bob")
        assert len(source.asked_as) == calls
        source.down = False
        now[0] += cache.retry_after
        back = await cache.charges("hpcg-alice")
        assert back.notice == "" and back.accounts == ("ml", "physics")

    asyncio.run(main())


def test_never_known_is_not_empty():
    cache, source, now = make()
    source.down = True
    first = asyncio.run(cache.charges("hpcg-alice"))
    assert first.accounts is None and "not known yet" in first.notice and "Connection refused" in first.notice
