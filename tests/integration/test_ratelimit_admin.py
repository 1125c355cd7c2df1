"""Setting outbound rate limits with mailrouter-admin, against a real slapd and the shipped ACLs.

Who may (slapd decides, the tool reports): the domain's admins and global
admins set a user's or a domain's ``mailRateLimit``; the user may not, nor
may another domain's admin.  Input is checked before anything is written,
and ``user show``/``domain show`` report the limit that applies and where it
comes from.  (Exim enforcing it: ``test_ratelimit.py``; the ACL cells with
raw LDAP: ``test_acl_matrix.py``.)
"""

from __future__ import annotations

import pytest

from conftest import service_config
from mailrouter import exitcodes
from mailrouter.directory import MODIFY_REPLACE, Session
from test_admin import GLOBAL, PM_COM, PM_ORG, Hub, assert_refused
from test_admin import hub as hub  # noqa: F401 - the fixture, shared

ALICE = "alice@example.com"


def stored(hub: Hub, dn: str, object_class: str) -> str | None:
    with hub.directory() as directory:
        attributes = directory.read(dn, object_class, ["mailRateLimit"])
    assert attributes is not None
    values = attributes.get("mailRateLimit") or []
    return str(values[0]) if values else None


def show(hub: Hub, actor: str, *what: str) -> dict[str, object]:
    result = hub.run(actor, "--json", *what)
    assert result.rc == 0, result
    data = result.json()
    assert isinstance(data, dict)
    return data


def test_domain_admins_set_a_users_limit_the_user_may_not(hub: Hub) -> None:
    alice_dn = hub.who(ALICE).dn
    done = hub.run(PM_COM, "user", "ratelimit", ALICE, "100/1H")
    assert done.rc == 0, done
    assert "rate limit of alice@example.com is now 100 / 1h (the user's own)" in done.out
    assert stored(hub, alice_dn, "mailUser") == "100 / 1h"
    info = show(hub, ALICE, "user", "show", ALICE)  # she reads her own limit
    assert (info["rate_limit"], info["effective_rate_limit"], info["rate_limit_source"]) == (
        "100 / 1h", "100 / 1h", "user")
    # The user herself: slapd refuses, one line, nothing written.
    before = hub.snapshot()
    assert_refused(hub.run(ALICE, "user", "ratelimit", ALICE, "unlimited"), "not allowed")
    # Another domain's admin: that user does not exist for them.
    assert_refused(hub.run(PM_ORG, "user", "ratelimit", ALICE, "unlimited"), "no such user")
    assert hub.snapshot() == before
    # The same value again writes nothing.
    again = hub.run(PM_COM, "--json", "user", "ratelimit", ALICE, "100", "/", "1h")
    assert again.rc == 0 and again.json()["changed"] is False  # type: ignore[index]


def test_precedence_as_shown_user_domain_default_none(hub: Hub) -> None:
    bob = "bob@example.com"
    assert show(hub, PM_COM, "user", "show", bob)["rate_limit_source"] == "none"
    assert hub.run(GLOBAL, "setting", "set", "default_rate_limit", "2000/1d").rc == 0
    info = show(hub, PM_COM, "user", "show", bob)
    assert (info["rate_limit"], info["effective_rate_limit"], info["rate_limit_source"]) == (
        None, "2000 / 1d", "default")
    assert hub.run(PM_COM, "domain", "ratelimit", "example.com", "500", "/", "1h").rc == 0
    assert stored(hub, "dc=example.com,o=top", "mailDomain") == "500 / 1h"
    assert show(hub, PM_COM, "user", "show", bob)["effective_rate_limit"] == "500 / 1h"
    domain = show(hub, PM_COM, "domain", "show", "example.com")
    assert (domain["rate_limit"], domain["rate_limit_source"]) == ("500 / 1h", "domain")
    assert hub.run(PM_COM, "user", "ratelimit", bob, "unlimited").rc == 0
    assert show(hub, PM_COM, "user", "show", bob)["effective_rate_limit"] == "unlimited"
    # inherit removes the user's own value, then the domain's.
    assert hub.run(PM_COM, "user", "ratelimit", bob, "inherit").rc == 0
    assert stored(hub, hub.who(bob).dn, "mailUser") is None
    assert hub.run(PM_COM, "domain", "ratelimit", "example.com", "inherit").rc == 0
    assert show(hub, PM_COM, "user", "show", bob)["rate_limit_source"] == "default"
    # The default holds one value.
    assert_refused(hub.run(GLOBAL, "setting", "add", "default_rate_limit", "10/1h"), "holds one value")
    two = hub.run(GLOBAL, "setting", "set", "default_rate_limit", "10/1h", "20/1h")
    assert_refused(two, "holds one value")
    assert hub.run(GLOBAL, "setting", "remove", "default_rate_limit", "2000 / 1d").rc == 0


def test_only_the_domains_own_admins_set_its_limit(hub: Hub) -> None:
    before = hub.snapshot()
    assert_refused(hub.run(PM_ORG, "domain", "ratelimit", "example.com", "1/1h"), "no such domain")
    assert_refused(hub.run(ALICE, "domain", "ratelimit", "example.com", "unlimited"), "not allowed")
    assert_refused(hub.run(PM_COM, "setting", "set", "default_rate_limit", "unlimited"), "not allowed")
    assert hub.snapshot() == before


@pytest.mark.parametrize("bad", ["100 per hour", "0/1h", "100/0s", "100/1y", "100/40d", "2000000/1h",
                                 "100/1h/strict", "lots"])
def test_invalid_limits_are_refused_before_anything_is_written(hub: Hub, bad: str) -> None:
    before = hub.snapshot()
    result = hub.run(PM_COM, "user", "ratelimit", ALICE, bad)
    assert result.rc == exitcodes.EX_REFUSED, result
    assert "invalid rate limit" in result.err and "COUNT / PERIOD" in result.err
    assert hub.run(PM_COM, "domain", "ratelimit", "example.com", bad).rc == exitcodes.EX_REFUSED
    assert hub.run(GLOBAL, "setting", "set", "default_rate_limit", bad).rc == exitcodes.EX_REFUSED
    assert hub.snapshot() == before


def test_a_garbled_stored_value_is_reported_not_hidden(hub: Hub) -> None:
    dn = hub.who("carol@example.org").dn
    account = hub.who(GLOBAL)
    with Session(service_config(hub.slapd, hub.data), account.dn, account.password) as session:
        session.modify(dn, {"mailRateLimit": (MODIFY_REPLACE, ["100/1h"])})  # past the admin tools
    info = show(hub, PM_ORG, "user", "show", "carol@example.org")
    assert info["effective_rate_limit"] is None
    assert "unreadable mailRateLimit '100/1h'" in str(info["rate_limit_problem"])
    assert "deferred" in str(info["rate_limit_problem"])
    assert hub.run(PM_ORG, "user", "ratelimit", "carol@example.org", "inherit").rc == 0
    assert show(hub, PM_ORG, "user", "show", "carol@example.org")["rate_limit_problem"] is None
