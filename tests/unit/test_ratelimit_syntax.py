"""Outbound rate limits: the stored syntax, the admin's lenient input, and the
precedence user > domain > setting ``default_rate_limit`` > unlimited.

Decision logic only, on the in-memory directory (``fake_directory``); Exim
enforcing the answer is proven in ``tests/integration/test_ratelimit.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from dataset import build
from fake_directory import FakeDirectory
from mailrouter import directory as directory_module
from mailrouter import lookup, ratelimit, routing
from mailrouter.admin.normalise import normalise_rate_limit, normalise_setting_value
from mailrouter.config import Config, LdapConfig
from mailrouter.errors import AdminError, ConfigError, GarbledRateLimit

# example.com limited as a domain; alice limited herself, bob "unlimited";
# example.org has no limit: its users get the system default.
EXTRA = """
dn: dc=ratelimited.example,o=top
objectClass: mailDomain
dc: ratelimited.example
mailRateLimit: 50 / 1h

dn: uid=own,dc=ratelimited.example,o=top
objectClass: mailUser
uid: own
dc: ratelimited.example
mail: own@ratelimited.example
mailRateLimit: 3 / 2s

dn: uid=free,dc=ratelimited.example,o=top
objectClass: mailUser
uid: free
dc: ratelimited.example
mail: free@ratelimited.example
mailRateLimit: unlimited

dn: uid=plain,dc=ratelimited.example,o=top
objectClass: mailUser
uid: plain
dc: ratelimited.example
mail: plain@ratelimited.example

dn: uid=garbled,dc=ratelimited.example,o=top
objectClass: mailUser
uid: garbled
dc: ratelimited.example
mail: garbled@ratelimited.example
mailRateLimit: 100/1h

dn: dc=open.example,o=top
objectClass: mailDomain
dc: open.example
mailRateLimit: unlimited

dn: uid=someone,dc=open.example,o=top
objectClass: mailUser
uid: someone
dc: open.example
mail: someone@open.example
"""

DEFAULT = """
dn: mailSetting=default_rate_limit,o=top
objectClass: mailSetting
mailSetting: default_rate_limit
mailSettingValue: 200 / 1d
"""


def fake(*extra: str) -> FakeDirectory:
    data = build(Path("/nonexistent/mailrouter-pwned"), scheme="ssha")
    return FakeDirectory((ROOT / "ldap" / "seed.ldif").read_text(), data.ldif, EXTRA, *extra)


# -- the stored syntax --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [("100 / 1h", "100 / 1h"), ("3 / 2s", "3 / 2s"), ("2 / 31d", "2 / 31d"), ("1000000 / 1w", "1000000 / 1w"),
     ("5 / 90m", "5 / 90m")],
)
def test_stored_values(raw: str, expected: str) -> None:
    limit = ratelimit.parse(raw)
    assert limit is not None and str(limit) == expected


def test_unlimited_is_a_value() -> None:
    assert ratelimit.parse("unlimited") is None


@pytest.mark.parametrize(
    "raw",
    ["100/1h", "100 /1h", "100  / 1h", "100 / 1H", "100 / h", "0100 / 1h", "100 / 01h", "0 / 1h", "1 / 1h",
     "100 / 0s",
     "1000001 / 1h", "1 / 32d", "1 / 5w", "100 / 1h / per_mail", "100 / 1h30m", "-1 / 1h", "1.5 / 1h",
     "100 / 1y", "Unlimited", "", " 100 / 1h", "100 / 1h\n", "100\t/ 1h", "none", "100 / 1h ; x"],
)
def test_everything_else_is_garbled(raw: str) -> None:
    with pytest.raises(GarbledRateLimit):
        ratelimit.parse(raw)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [("100/1h", "100 / 1h"), (" 100 / 1H ", "100 / 1h"), ("3/2S", "3 / 2s"), ("UNLIMITED", "unlimited"),
     ("007 / 01d", "7 / 1d"), ("2000 /1w", "2000 / 1w")],
)
def test_admins_type_leniently_and_the_canonical_form_is_stored(typed: str, stored: str) -> None:
    assert ratelimit.canonical(typed) == stored
    assert normalise_rate_limit(typed) == stored
    assert ratelimit.parse(stored) is None or str(ratelimit.parse(stored)) == stored


@pytest.mark.parametrize("typed", ["", "100", "100 per hour", "0 / 1h", "1/1h", "1 / 0h", "1 / 40d",
                                   "10 / 1y", "2000000 / 1h", "100 / 1h / strict", "1e3 / 1h", "inherit"])
def test_admins_get_a_clear_error(typed: str) -> None:
    with pytest.raises(AdminError) as caught:
        normalise_rate_limit(typed)
    assert caught.value.field == "rate_limit"
    assert "use COUNT / PERIOD" in str(caught.value)


def test_the_setting_takes_the_same_syntax() -> None:
    assert normalise_setting_value("default_rate_limit", "500/1h") == "500 / 1h"
    with pytest.raises(AdminError):
        normalise_setting_value("default_rate_limit", "500 an hour")


# -- precedence ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("auth_id", "text", "source"),
    [
        ("own@ratelimited.example", "3 / 2s", "user"),  # the user's own value wins
        ("free@ratelimited.example", "unlimited", "user"),  # also "unlimited" over the domain's
        ("plain@ratelimited.example", "50 / 1h", "domain"),
        ("nobody@ratelimited.example", "50 / 1h", "domain"),  # gone since AUTH: still the domain's
        ("someone@open.example", "unlimited", "domain"),  # the domain lifts the default
        ("alice@example.com", "200 / 1d", "default"),
        ("Alice@Example.com", "200 / 1d", "default"),  # not canonical: never a login; the default
    ],
)
def test_precedence_with_a_default(auth_id: str, text: str, source: str) -> None:
    choice = routing.rate_limit(fake(DEFAULT), auth_id)
    assert (choice.text, choice.source) == (text, source)


def test_absent_everywhere_is_unlimited() -> None:
    choice = routing.rate_limit(fake(), "alice@example.com")
    assert (choice.limit, choice.text, choice.source) == (None, "unlimited", "none")


def test_a_garbled_value_is_temporary_never_unlimited() -> None:
    with pytest.raises(ConfigError, match="garbled@ratelimited.example"):
        routing.rate_limit(fake(), "garbled@ratelimited.example")
    with pytest.raises(ConfigError, match="default_rate_limit"):
        routing.rate_limit(fake(DEFAULT.replace("200 / 1d", "lots")), "alice@example.com")
    two = DEFAULT + "mailSettingValue: 300 / 1d\n"
    with pytest.raises(ConfigError, match="2 values"):
        routing.rate_limit(fake(two), "alice@example.com")


def test_the_lookup_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake(DEFAULT)
    monkeypatch.setattr(directory_module, "Directory", directory)
    config = Config(ldap=LdapConfig(uris=("ldap://fake.invalid/",)))
    assert lookup.answer(config, "ratelimit", ["own@ratelimited.example"]) == "3 / 2s"
    assert lookup.answer(config, "ratelimit", ["free@ratelimited.example"]) == "unlimited"
    assert lookup.answer(config, "ratelimit", ["bob@example.com"]) == "200 / 1d"
    # An over-long id cannot be a login: answered without asking, and "no" is
    # what Exim's config turns into a deferral (never "no limit").
    assert lookup.answer(config, "ratelimit", ["a" * 2000]) is None
