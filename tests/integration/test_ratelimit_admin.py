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
from test_web import HTTPS, Web
from test_web import A as WEB_A
from test_web import web as web  # noqa: F401 - the fixture, shared

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


# -- the web pages and the API (the role x route cells are in test_web.py) ---------------------
def test_pages_show_and_edit_the_limit(web: Web) -> None:
    admin = web.login("postmaster_a")
    page = admin.get(f"/domains/{WEB_A}/users/alice").get_data(as_text=True)
    assert '<td id="rate-limit">unlimited (set nowhere: unlimited)</td>' in page
    response = admin.post(f"/domains/{WEB_A}/users/alice/ratelimit", {"rate_limit": "40 / 1H"})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    page = admin.get(f"/domains/{WEB_A}/users/alice").get_data(as_text=True)
    assert '<td id="rate-limit">40 / 1h (the user&#39;s own)</td>' in page
    assert 'value="40 / 1h"' in page  # the form starts from the stored value
    # The user sees her own limit, and cannot change it.
    alice = web.login("user_a")
    assert "40 / 1h (the user&#39;s own)" in alice.get("/me").get_data(as_text=True)
    refused = alice.post(f"/domains/{WEB_A}/users/alice/ratelimit", {"rate_limit": "unlimited"})
    assert refused.status_code == 403
    # A bad value: 422 naming the field, nothing written.
    bad = admin.post(f"/domains/{WEB_A}/users/alice/ratelimit", {"rate_limit": "40 an hour"})
    assert bad.status_code == 422 and "COUNT / PERIOD" in bad.get_data(as_text=True)
    # The domain page.
    assert admin.post(f"/domains/{WEB_A}/ratelimit", {"rate_limit": "300/1d"}).status_code == 302
    domain_page = admin.get(f"/domains/{WEB_A}").get_data(as_text=True)
    assert "Users without a limit of their own: 300 / 1d (the domain&#39;s)" in domain_page
    assert admin.post(f"/domains/{WEB_A}/ratelimit", {"rate_limit": "inherit"}).status_code == 302
    assert admin.post(f"/domains/{WEB_A}/users/alice/ratelimit", {"rate_limit": "inherit"}).status_code == 302


def test_api_reads_and_changes_the_limit(web: Web) -> None:
    headers = web.basic("postmaster_a")
    client = web.client()
    path = f"/api/v1/domains/{WEB_A}/users/bob"
    changed = client.patch(path, base_url=HTTPS, headers=headers, json={"rate_limit": "7/1m"})
    assert changed.status_code == 200 and changed.json["rate_limit"] == "7 / 1m"
    assert changed.json["effective_rate_limit"] == "7 / 1m" and changed.json["rate_limit_source"] == "user"
    body = {"rate_limit": "7 per minute", "quota": "5M"}
    bad = client.patch(path, base_url=HTTPS, headers=headers, json=body)
    assert bad.status_code == 422 and set(bad.json["fields"]) == {"rate_limit"}
    assert client.get(path, base_url=HTTPS, headers=headers).json["quota"]["limit"] != "5M"  # nothing written
    domain = client.patch(f"/api/v1/domains/{WEB_A}", base_url=HTTPS, headers=headers,
                          json={"rate_limit": "unlimited"})
    assert domain.status_code == 200 and domain.json["rate_limit"] == "unlimited"
    inherit = client.patch(path, base_url=HTTPS, headers=headers, json={"rate_limit": "inherit"})
    assert inherit.json["rate_limit"] is None and inherit.json["rate_limit_source"] == "domain"
    client.patch(f"/api/v1/domains/{WEB_A}", base_url=HTTPS, headers=headers, json={"rate_limit": "inherit"})
