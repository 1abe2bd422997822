"""Reservations without a scheduler: Slurm's words read, who may use which, the catalog's
offer and its sentences, the form's field (the sandbox test runs the real scontrol)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from hpcgate.catalog import LaunchError, Reservation, UserInfo, parse_catalog
from hpcgate.hub.backends.base import SchedulerReservation, StatusUnavailable
from hpcgate.hub.backends.slurm.parse import reservations_from
from hpcgate.hub.form import render_form
from hpcgate.hub.reservations import ReservationCache, usable

#: the real clock: the offer JSON says "active" by it
NOW = float(int(time.time()))
HOUR = 3600.0

CATALOG = """
systems:
  hpc:
    kind: slurm
    hosts: [login1]
    ssh: {identity: {mode: user_key, key_path: "/keys/{account}"}}
    partitions:
      batch:
        limits: {runtime: {min: 10, default: 60, max: 600}}
      gpu:
        limits: {runtime: {min: 10, default: 60, max: 600}, gpus: {min: 0, default: 1, max: 4}}
projects: {ml: {}, physics: {}}
groups:
  all: {all_users: true, grants: [{system: hpc, projects: [ml, physics]}]}
"""

#: scontrol show reservation -o, times as epoch seconds (SLURM_TIME_FORMAT=%s)
SCONTROL = f"""ReservationName=course StartTime={int(NOW - HOUR)} EndTime={int(NOW + HOUR)} Duration=02:00:00 Nodes=c1 NodeCnt=1 CoreCnt=4 Features=(null) PartitionName=batch Flags=SPEC_NODES TRES=cpu=4 Users=hpcg-alice,hpcg-carol Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)
ReservationName=ml-deadline StartTime={int(NOW + 2 * HOUR)} EndTime={int(NOW + 5 * HOUR)} Duration=03:00:00 Nodes=c1 NodeCnt=1 CoreCnt=4 Features=(null) PartitionName=(null) Flags=SPEC_NODES TRES=cpu=4 Users=(null) Groups=(null) Accounts=ml Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)
ReservationName=maint StartTime={int(NOW)} EndTime={int(NOW + HOUR)} Duration=01:00:00 Nodes=c1 NodeCnt=1 CoreCnt=4 Features=(null) PartitionName=(null) Flags=MAINT,SPEC_NODES TRES=cpu=4 Users=root,hpcg-alice Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)
ReservationName=not-bob StartTime={int(NOW)} EndTime={int(NOW + HOUR)} Duration=01:00:00 Nodes=c1 NodeCnt=1 CoreCnt=4 Features=(null) PartitionName=gpu Flags=SPEC_NODES TRES=cpu=4 Users=-hpcg-bob Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)
ReservationName=next-week StartTime={int(NOW + 7 * 24 * HOUR)} EndTime={int(NOW + 8 * 24 * HOUR)} Duration=1-00:00:00 Nodes=c1 PartitionName=(null) Flags=(null) Users=hpcg-alice Groups=(null) Accounts=(null) State=INACTIVE
ReservationName=over StartTime={int(NOW - 2 * HOUR)} EndTime={int(NOW - HOUR)} Nodes=c1 PartitionName=(null) Flags=(null) Users=hpcg-alice Groups=(null) Accounts=(null) State=INACTIVE
ReservationName=by-group StartTime={int(NOW)} EndTime={int(NOW + HOUR)} Nodes=c1 PartitionName=(null) Flags=(null) Users=(null) Groups=staff Accounts=(null) State=ACTIVE
ReservationName=bad;name StartTime={int(NOW)} EndTime={int(NOW + HOUR)} Users=hpcg-alice Accounts=(null)
"""


def found() -> list[SchedulerReservation]:
    return reservations_from(SCONTROL)


def test_scontrol_read():
    by_name = {r.name: r for r in found()}
    assert "bad;name" not in by_name  # no launch option could carry it
    course = by_name["course"]
    assert (course.start, course.end, course.partition) == (NOW - HOUR, NOW + HOUR, "batch")
    assert course.users == ("hpcg-alice", "hpcg-carol") and course.accounts == ()
    assert by_name["ml-deadline"].partition is None and by_name["ml-deadline"].accounts == ("ml",)
    assert by_name["maint"].flags == ("MAINT", "SPEC_NODES")
    assert by_name["by-group"].groups
    assert reservations_from("No reservations in the system\n") == []


def test_who_may_use_which_now_or_soon():
    def names(account: str) -> list[str]:
        return [r.name for r in usable(found(), account, NOW, ahead=12 * HOUR)]

    # alice: by name; the ml one by account (the catalog matches projects); every but bob
    assert names("hpcg-alice") == ["course", "ml-deadline", "not-bob"]
    assert names("hpcg-bob") == ["ml-deadline"]
    # never: maintenance, over, a week ahead, Unix groups only
    assert "maint" not in names("root") and "next-week" not in names("hpcg-alice")
    assert [r.name for r in usable(found(), "hpcg-alice", NOW, ahead=8 * 24 * HOUR)][-1] == "next-week"


def _offer_names(catalog, reservations):
    offer = catalog.offer(UserInfo("alice"), reservations={"hpc": reservations})
    return offer.system("hpc").as_json()["reservations"]


def test_offer_and_validation_say_what_to_change():
    catalog = parse_catalog(CATALOG)
    mine = usable(found(), "hpcg-alice", NOW, 12 * HOUR)
    listed = {r["name"]: r for r in _offer_names(catalog, mine)}
    assert listed["course"]["active"] is True and listed["course"]["when"].startswith("active until ")
    assert listed["ml-deadline"]["projects"] == ["ml"] and listed["ml-deadline"]["when"].startswith("from ")
    assert listed["course"]["projects"] is None

    def validate(**options):
        return catalog.validate(UserInfo("alice"), {"system": "hpc", **options},
                                reservations={"hpc": mine}, now=NOW)

    assert validate(partition="batch", project="ml", reservation="course", runtime=30).reservation == "course"
    assert validate(partition="batch", project="ml").reservation is None
    sentences = {
        "foreign": (dict(project="ml", reservation="bobs-own"),
                    "You may not use reservation 'bobs-own' on hpc. Yours there, now or soon: course, ml-deadline, not-bob."),
        "hostile": (dict(project="ml", reservation="x;rm -rf"), "The reservation 'x;rm -rf' is not a valid name"),
        "partition": (dict(partition="gpu", project="ml", reservation="course"),
                      "Reservation course is for partition batch; choose that partition or no reservation."),
        "project": (dict(project="physics", reservation="ml-deadline"),
                    "Reservation ml-deadline does not take project 'physics'; choose ml, or no reservation."),
        "too long": (dict(partition="batch", project="ml", reservation="course", runtime=120),
                     "a runtime of 120 minutes does not fit in it: choose at most 60 minutes."),
    }
    for what, (options, sentence) in sentences.items():
        with pytest.raises(LaunchError) as err:
            validate(**options)
        assert sentence in str(err.value), what
    # no reservation known for the user: the same sentence for any name
    with pytest.raises(LaunchError, match="There is none you may use there now or soon"):
        catalog.validate(UserInfo("alice"), {"system": "hpc", "project": "ml", "reservation": "course"}, now=NOW)


def test_the_form_offers_them_only_where_they_fit():
    catalog = parse_catalog(CATALOG)
    mine = usable(found(), "hpcg-alice", NOW, 12 * HOUR)
    offer = catalog.offer(UserInfo("alice"), reservations={"hpc": mine})
    page = render_form(offer, {"system": "hpc", "partition": "batch", "project": "ml", "reservation": "course"})
    block = re.search(r'<div class="form-group hpcgate-reservation">(.*?)</div>', page, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)"', block) == ["", "course", "ml-deadline"]
    assert '<option value="course" selected>' in block and "Nodes the centre set aside" in block
    # without reservations the field is there (for the script) but hidden and disabled
    bare = render_form(catalog.offer(UserInfo("alice")), {})
    assert '<div class="form-group hpcgate-reservation" hidden>' in bare and "disabled" in bare


def test_one_read_per_interval_and_the_last_list_kept():
    clock = [0.0]
    calls = []

    async def query(asking):
        calls.append(asking)
        if len(calls) == 2:
            raise StatusUnavailable("scontrol: error: Unable to contact slurm controller")
        return found()

    async def main():
        cache = ReservationCache("hpc", query, 60, clock=lambda: clock[0])
        first = await asyncio.gather(*(cache.get(u) for u in ("a", "b", "c")))
        assert len(calls) == 1 and all(len(f) == len(found()) for f in first)
        clock[0] = 61
        assert len(await cache.get("a")) == len(found())  # failed: the last list kept
        assert len(calls) == 2
        assert len(await cache.get("a")) == len(found()) and len(calls) == 2

    asyncio.run(main())


def test_a_kept_reservation_reads_its_window():
    r = Reservation("x", NOW + HOUR, NOW + 2 * HOUR)
    assert not r.active(NOW) and r.when(NOW).startswith("from ")
