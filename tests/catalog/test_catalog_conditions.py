"""Grant conditions (second factor, client networks) and projects from Slurm accounting,
as the catalog answers them (the hub's side is in tests/integration/test_grant_conditions.py)."""

from __future__ import annotations

import json

import pytest

from hpcgate.catalog import CatalogError, Charges, LaunchError, LoginContext, UserInfo, parse_catalog

SITE = """
systems:
  jureca:
    kind: slurm
    hosts: [login.example.org]
    ssh: {identity: {mode: user_key, key_path: "/k/{account}"}}
    projects: {source: slurm, ttl: 60}
    partitions: {dc-cpu: {}, booster: {}, secure: {}}
projects:
  ml: {description: Machine learning}
  physics: {description: Physics}
groups:
  users:
    all_users: true
    grants:
      - {system: jureca, partitions: [dc-cpu]}
      - {system: jureca, partitions: [booster], mfa: true}
      - {system: jureca, partitions: [secure], networks: [10.0.0.0/8, "2001:db8::/32"]}
"""
ALICE = UserInfo("alice")


@pytest.fixture
def catalog():
    return parse_catalog(SITE)


def partitions(offer):
    return [p.name for p in offer.system("jureca").partitions]


def test_second_factor_and_networks_withhold_with_a_sentence(catalog):
    offer = catalog.offer(ALICE, LoginContext(mfa=False, address="192.0.2.7"))
    assert partitions(offer) == ["dc-cpu"]
    assert offer.notices[0] == "Log in with a second factor to use jureca's booster partition."
    assert "connect from an allowed network (10.0.0.0/8, 2001:db8::/32; you connect from 192.0.2.7)" in offer.notices[1].lower()
    assert partitions(catalog.offer(ALICE, LoginContext(mfa=True, address="10.1.2.3"))) == ["dc-cpu", "booster", "secure"]
    assert partitions(catalog.offer(ALICE, LoginContext(address="2001:db8::1"))) == ["dc-cpu", "secure"]
    # an IPv4 client seen as IPv4-mapped IPv6 is the IPv4 address
    assert "secure" in partitions(catalog.offer(ALICE, LoginContext(address="::ffff:10.0.0.1")))
    # unknown address or no context: no network grant
    assert partitions(catalog.offer(ALICE)) == ["dc-cpu"]


def test_validate_refuses_a_withheld_partition_with_the_condition(catalog):
    charges = {"jureca": Charges(("ml",), "ml")}
    with pytest.raises(LaunchError, match="^Log in with a second factor to use jureca's booster partition.$"):
        catalog.validate(ALICE, {"system": "jureca", "partition": "booster"}, LoginContext(), charges)
    req = catalog.validate(ALICE, {"partition": "booster"}, LoginContext(mfa=True), charges)
    assert (req.partition, req.project) == ("booster", "ml")
    with pytest.raises(LaunchError, match="allowed network"):
        catalog.validate(ALICE, {"partition": "secure"}, LoginContext(address="192.0.2.1"), charges)


def test_slurm_projects_filtered_described_and_default(catalog):
    charges = {"jureca": Charges(("physics", "ml", "other"), default="physics")}
    system = catalog.offer(ALICE, None, charges).system("jureca")
    # the catalog's list filters (no 'other') and describes, in the catalog's order
    assert system.projects == [("ml", "Machine learning"), ("physics", "Physics")]
    assert system.default_project == "physics"
    assert catalog.validate(ALICE, {}, None, charges).project == "physics"
    assert catalog.validate(ALICE, {"project": "ml"}, None, charges).project == "ml"
    with pytest.raises(LaunchError, match="may not charge project 'other'"):
        catalog.validate(ALICE, {"project": "other"}, None, charges)


def test_slurm_projects_unknown_or_stale(catalog):
    offer = catalog.offer(ALICE, None, {})
    assert offer.system("jureca").projects == []
    assert "has not told hpcgate your projects yet" in offer.system("jureca").notices[0]
    with pytest.raises(LaunchError, match="has not told hpcgate"):
        catalog.validate(ALICE, {}, None, {})
    stale = {"jureca": Charges(("ml",), "ml", notice="The accounting did not answer; kept.")}
    offer = catalog.offer(ALICE, None, stale)
    assert offer.system("jureca").projects == [("ml", "Machine learning")]
    assert offer.system("jureca").notices == ["The accounting did not answer; kept."]
    assert offer.notices[-1] == "The accounting did not answer; kept."
    none = {"jureca": Charges(())}
    with pytest.raises(LaunchError, match="may not charge any project on jureca"):
        catalog.validate(ALICE, {}, None, none)


def test_grant_projects_restrict_slurm_accounts_and_unlisted():
    site = SITE.replace("- {system: jureca, partitions: [dc-cpu]}", "- {system: jureca, partitions: [dc-cpu], projects: [physics]}")
    charges = {"jureca": Charges(("ml", "physics", "zz"), "ml")}
    system = parse_catalog(site).offer(ALICE, None, charges).system("jureca")
    assert [n for n, _ in system.projects] == ["physics"] and system.default_project is None
    site = SITE.replace("projects: {source: slurm, ttl: 60}", "projects: {source: slurm, unlisted: true}")
    system = parse_catalog(site).offer(ALICE, None, charges).system("jureca")
    assert system.projects == [("ml", "Machine learning"), ("physics", "Physics"), ("zz", "")]


def test_bad_conditions_are_named():
    with pytest.raises(CatalogError, match="networks.0"):
        parse_catalog(SITE.replace("10.0.0.0/8", "10.0.0.300/8"))
    with pytest.raises(CatalogError, match="needs kind 'slurm'"):
        parse_catalog("systems: {l: {kind: local, projects: {source: slurm}, partitions: {p: {}}}}")


def test_describe_names_conditions(catalog):
    text = catalog.describe()
    assert "booster: only with a second factor" in text
    assert "secure: only from 10.0.0.0/8, 2001:db8::/32" in text
    assert "Slurm accounts" in text


def test_oidc_records_second_factor_claims():
    """The amr/acr reading itself (the live TOTP login is in tests/identity)."""
    import base64

    from hpcgate.hub.identity.factors import SECOND_FACTOR_AMR, id_token_claims, login_record, used_second_factor
    from hpcgate.hub.identity.stamp import stamp

    payload = base64.urlsafe_b64encode(json.dumps({"amr": ["password", "otp"]}).encode()).decode().rstrip("=")
    claims = id_token_claims(f"e30.{payload}.sig")
    record = login_record((claims, {}), SECOND_FACTOR_AMR, [])
    assert record == {"amr": ["password", "otp"], "acr": "", "mfa": True}
    assert not login_record(({"amr": ["pwd"]},), SECOND_FACTOR_AMR, [])["mfa"]
    assert login_record(({"acr": "https://refeds.org/profile/mfa"},), (), ["https://refeds.org/profile/mfa"])["mfa"]
    assert id_token_claims("not-a-jwt") == {} and id_token_claims("a.!!!.c") == {}
    state = {"hpcgate_login": record, "hpcgate": stamp("oidc", 60)}
    assert used_second_factor(state)
    assert not used_second_factor({**state, "hpcgate": stamp("oidc", -1)})  # expired login
    assert not used_second_factor({"hpcgate_login": record})  # not written by hpcgate
