"""The admin operations as a library (what the web front end calls), against a real slapd.

The CLI's behaviour is tested in test_admin.py; here: the error kinds a front end
maps to HTTP codes, pagination of big lists (and that it reads only the naming
attribute of the whole level), the session's undo on close, and the operations
the CLI gained with the library (alias put, user name).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import start_slapd
from mailrouter import config as config_module
from mailrouter.admin import admins, aliases, domains, users
from mailrouter.admin.session import AdminSession, resolve_login
from mailrouter.config import Config
from mailrouter.entries import Entry
from mailrouter.errors import AdminError
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd

BIG = "big.example"
BIG_USERS = [f"u{n:02d}" for n in range(25)] + ["x.one", "x.two"]


@pytest.fixture(scope="module")
def data() -> demo.DemoDirectory:
    return demo.build(scheme="ssha")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data: demo.DemoDirectory) -> Iterator[Slapd]:
    slapd = start_slapd(tmp_path_factory.mktemp("admin-library"), data)
    try:
        yield slapd
    finally:
        slapd.stop()


@pytest.fixture(scope="module")
def config(server: Slapd, data: demo.DemoDirectory, tmp_path_factory: pytest.TempPathFactory) -> Config:
    mail = tmp_path_factory.mktemp("mail")
    return config_module.parse({
        "ldap": {"uris": [server.uri], "base_dn": data.base_dn, "connect_timeout": 2, "operation_timeout": 2},
        "spool": {"mbox_template": f"{mail}/{{local}}@{{domain}}"},
        "auth": {"password_scheme": "ssha"},
    })


def session_as(config: Config, data: demo.DemoDirectory, who: str) -> AdminSession:
    account = data.account(who)
    return AdminSession(config, resolve_login(config, account.dn), account.password)


@pytest.fixture(scope="module")
def big(config: Config, data: demo.DemoDirectory) -> str:
    with session_as(config, data, "global-admin") as s:
        domains.add_domain(s, BIG)
        for local in reversed(BIG_USERS):  # creation order must not be list order
            users.add_user(s, f"{local}@{BIG}", None)
        aliases.add_alias(s, f"team@{BIG}", [f"u00@{BIG}"])
    return BIG


def kind_of(call: Any) -> tuple[str, str | None, str]:
    with pytest.raises(AdminError) as caught:
        call()
    return caught.value.kind, caught.value.field, caught.value.message


# -- errors a front end maps to HTTP codes ---------------------------------------------------
def test_error_kinds(config: Config, data: demo.DemoDirectory, big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        assert kind_of(lambda: domains.add_domain(s, "bad_domain!.example"))[:2] == ("invalid", "domain")
        assert kind_of(lambda: users.set_quota(s, f"u00@{big}", "lots"))[:2] == ("invalid", "quota")
        command = ["|/bin/sh"]
        assert kind_of(lambda: aliases.add_alias(s, f"evil@{big}", command))[:2] == ("invalid", "targets")
        assert kind_of(lambda: domains.add_domain(s, big)) == ("exists", None, f"domain {big} already exists")
        assert kind_of(lambda: domains.remove_domain(s, big))[0] == "conflict"
        assert kind_of(lambda: users.show_user(s, f"nobody@{big}"))[0] == "not_found"
        assert kind_of(lambda: aliases.remove_targets(s, f"team@{big}", [f"u00@{big}"]))[0] == "conflict"
        assert kind_of(lambda: users.set_password(s, f"nobody@{big}", "Secret-1"))[0] == "not_found"
    with session_as(config, data, "postmaster@example.com") as s:
        # Tenants are isolated: another domain does not exist for this admin.
        kind, _, message = kind_of(lambda: users.add_user(s, "intruder@example.org", None))
        assert (kind, message) == ("not_found", "no such domain example.org")
    with session_as(config, data, "alice@example.com") as s:
        kind, _, message = kind_of(lambda: users.add_user(s, "intruder@example.com", None))
        assert kind == "refused" and message.startswith("not allowed to add users in dc=example.com")
    admin = data.account("global-admin")
    kind, _, message = kind_of(lambda: AdminSession(config, admin.dn, "wrong-password"))
    assert (kind, message) == ("refused", f"bind as {admin.dn} refused: invalid credentials")


# -- pagination -------------------------------------------------------------------------------
def test_pages_are_slices_of_the_whole_sorted_list(config: Config, data: demo.DemoDirectory,
                                                   big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        everything = users.list_users(s, big)
        addresses = [row["address"] for row in everything.items]
        assert addresses == sorted(f"{local}@{big}" for local in BIG_USERS)
        assert (everything.total, everything.offset, everything.limit) == (len(BIG_USERS), 0, None)
        page = users.list_users(s, big, offset=5, limit=10)
        assert page.items == everything.items[5:15]
        assert (page.total, page.offset, page.limit) == (len(BIG_USERS), 5, 10)
        tail = users.list_users(s, big, offset=20, limit=10)
        assert tail.items == everything.items[20:] and tail.total == len(BIG_USERS)
        assert users.list_users(s, big, offset=100, limit=10).items == []
        assert users.list_users(s, big, offset=3).items == everything.items[3:]


def test_contains_filters_on_the_name_and_is_escaped(config: Config, data: demo.DemoDirectory,
                                                     big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        found = users.list_users(s, big, contains="X.")
        assert [row["address"] for row in found.items] == [f"x.one@{big}", f"x.two@{big}"]
        assert found.total == 2
        assert users.list_users(s, big, contains="*").total == 0  # a literal '*', not a wildcard
        assert users.list_users(s, big, contains=")(uid=*").total == 0
        paged = domains.list_domains(s, contains="big", limit=5, counts=True)
        assert paged.items == [{"domain": big, "status": "active", "description": None,
                                "users": len(BIG_USERS), "aliases": 1, "catchall": []}]
        assert [row["alias"] for row in aliases.list_aliases(s, "example.org", contains="def").items] == [
            "default@example.org"
        ]


def test_a_page_reads_full_rows_for_the_page_only(config: Config, data: demo.DemoDirectory, big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        calls: list[tuple[str, list[str]]] = []
        search = s.search

        def spy(base: str, search_filter: str, attributes: Any, subtree: bool = False) -> Any:
            calls.append((search_filter, list(attributes)))
            return search(base, search_filter, attributes, subtree)

        s.search = spy  # type: ignore[method-assign]
        page = users.list_users(s, big, offset=2, limit=3)
    assert len(page.items) == 3
    whole_level, rows = calls
    assert whole_level == ("(objectClass=mailUser)", ["uid"])
    wanted = [row["address"].split("@")[0] for row in page.items]
    assert all(f"(uid={local})" in rows[0] for local in wanted)
    assert rows[0].count("(uid=") == 3 and "mailQuota" in rows[1]


def test_invalid_page_arguments(config: Config, data: demo.DemoDirectory, big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        assert kind_of(lambda: users.list_users(s, big, offset=-1))[:2] == ("invalid", "offset")
        assert kind_of(lambda: users.list_users(s, big, limit=-5))[:2] == ("invalid", "limit")


# -- undo ---------------------------------------------------------------------------------------
def test_leaving_the_session_undoes_a_failed_operation(config: Config, data: demo.DemoDirectory) -> None:
    with session_as(config, data, "global-admin") as s:
        domains.add_domain(s, "undo.example")
        s.add(_stray_admin_entry(s.base_dn), "add a stray entry", "cn=admin")
        s.commit()
        with pytest.raises(AdminError) as caught:
            users.add_user(s, "boss@undo.example", None, admin=True)
        assert caught.value.kind == "exists" and s.pending == 1
    # The front end caught the error and left the block: the user added first is gone.
    with session_as(config, data, "global-admin") as s:
        assert kind_of(lambda: users.show_user(s, "boss@undo.example"))[0] == "not_found"
        with pytest.raises(AdminError):
            users.add_user(s, "boss@undo.example", None, admin=True)
        assert s.rollback_note() == " (undid 1 earlier change(s))" and s.pending == 0


def _stray_admin_entry(base_dn: str) -> Entry:
    """A ``cn=admin`` that is no groupOfNames: granting admin rights then fails."""
    return Entry(f"cn=admin,dc=undo.example,{base_dn}",
                 {"objectClass": ["organizationalRole"], "cn": ["admin"]})


# -- the operations the library added ------------------------------------------------------------
def test_put_alias_creates_then_replaces(config: Config, data: demo.DemoDirectory, big: str) -> None:
    with session_as(config, data, "postmaster@example.com") as s:
        created = aliases.put_alias(s, "desk@example.com", ["alice@example.com"])
        assert created["created"] is True
        replaced = aliases.put_alias(s, "Desk@example.com", ["bob@example.com", "BOB@Example.com"])
        assert replaced["created"] is False and replaced["targets"] == ["bob@example.com"]
        assert aliases.show_alias(s, "desk@example.com")["targets"] == ["bob@example.com"]
        assert kind_of(lambda: aliases.put_alias(s, "desk@example.com", []))[:2] == ("invalid", "targets")
        aliases.remove_alias(s, "desk@example.com")


def test_set_name_and_the_domain_admin_listing(config: Config, data: demo.DemoDirectory, big: str) -> None:
    with session_as(config, data, "global-admin") as s:
        assert users.set_name(s, f"u01@{big}", "  Ann   Example ")["name"] == "Ann Example"
        assert users.show_user(s, f"u01@{big}")["name"] == "Ann Example"
        assert users.set_name(s, f"u01@{big}", "")["name"] == f"u01@{big}"
        assert kind_of(lambda: users.set_name(s, f"u01@{big}", "bell\x07"))[:2] == ("invalid", "name")
        admins.grant_domain_admin(s, f"u01@{big}")
        assert admins.list_admins(s, big)["admins"] == [f"u01@{big}"]
        assert admins.list_admins(s, big)["admin_dns"] == [f"uid=u01,dc={big},{s.base_dn}"]
        assert domains.show_domain(s, big)["admins"] == [f"u01@{big}"]
        admins.revoke_domain_admin(s, f"u01@{big}")
        assert admins.list_admins(s, big)["admins"] == []
