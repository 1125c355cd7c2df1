"""The directory layer against a real slapd: exact lookups, hostile keys, outages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ldap3.utils.dn import escape_rdn

from conftest import service_config, start_slapd
from mailrouter import entries
from mailrouter.directory import Directory, LdapRefused, Session
from mailrouter.errors import DirectoryUnavailable, TemporaryFailure
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd, free_port

DOMAIN = "example.com"

# Stored uid values that need DN escaping; each must be found exactly, and only itself.
ODD_UIDS = [
    "a,b", "x+y", 'q"uote', "back\\slash", "<angle>", "semi;colon", "eq=ual", "#hash", "star*", "par(en)",
]

HOSTILE_KEYS = [
    "*",
    "(",
    ")",
    "\\",
    "\x00",
    "alice\x00",
    "alice*",
    "*)(uid=*",
    "alice)(|(uid=*",
    ",+\"\\<>;=#",
    " alice",
    "alice ",
    "ALICE",
    "Alice",
    "alice,dc=example.org",
    "alice,dc=example.com,o=top",
    "a" * 300,
    "a" * 5000,
    "",
    "alice\n",
]


def odd_user(uid: str) -> entries.Entry:
    return entries.Entry(
        f"uid={escape_rdn(uid)},dc={DOMAIN},o=top",
        {
            "objectClass": ["mailUser", "posixAccount"],
            "uid": [uid],
            "dc": [DOMAIN],
            "mail": ["odd@example.com"],
            "cn": [uid],
            "uidNumber": ["8"],
            "gidNumber": ["8"],
            "homeDirectory": ["/nonexistent"],
        },
    )


@pytest.fixture(scope="module")
def odd_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Slapd, demo.DemoDirectory]]:
    data = demo.build(scheme="ssha")
    server = start_slapd(
        Path(tmp_path_factory.mktemp("odd")), data, entries.to_ldif([odd_user(u) for u in ODD_UIDS])
    )
    try:
        yield server, data
    finally:
        server.stop()


def test_typed_lookups(directory: Directory, demo_data: demo.DemoDirectory) -> None:
    assert directory.is_local_domain("example.com")
    assert directory.is_local_domain("example.org")
    assert not directory.is_local_domain("example.net")
    alice = directory.user("alice", "example.com")
    assert alice is not None
    assert alice.address == "alice@example.com"
    assert alice.dn == "uid=alice,dc=example.com,o=top"
    assert alice.quota == "10M"
    assert alice.active
    assert directory.user("alice", "example.org") is None
    team = directory.alias("team", "example.com")
    assert team is not None and sorted(team.targets) == ["alice@example.com", "bob@example.com"]
    catchall = directory.catchall("example.org")
    assert catchall is not None and catchall.targets == ("carol@example.org",)
    assert directory.catchall("example.com") is None
    assert directory.setting("host_accept_relay") == ("127.0.0.1", "::1")
    assert directory.setting("no_such_setting") == ()
    assert directory.aliases_delivering_to("alice@example.com", "example.com") == ["team"]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_never_match_another_entry(directory: Directory, key: str) -> None:
    assert directory.user(key, DOMAIN) is None
    assert directory.alias(key, DOMAIN) is None
    assert not directory.is_local_domain(key)
    assert directory.setting(key) == ()
    assert directory.user("alice", key) is None
    assert directory.aliases_delivering_to(key, DOMAIN) == []


@pytest.mark.parametrize("uid", ODD_UIDS)
def test_escaped_names_find_exactly_their_entry(
    odd_slapd: tuple[Slapd, demo.DemoDirectory], uid: str
) -> None:
    server, data = odd_slapd
    with Directory(service_config(server, data)) as directory:
        found = directory.user(uid, DOMAIN)
        assert found is not None and found.local == uid
        assert directory.user(uid.upper() if uid.upper() != uid else uid + "x", DOMAIN) is None
        assert directory.user(uid + " ", DOMAIN) is None


def test_disabled_user_is_reported_inactive(tmp_path: Path) -> None:
    data = demo.build(scheme="ssha")
    disabled = entries.user_entry(
        "gone", DOMAIN, "o=top", password_hash=None, uid_number=8, gid_number=8,
        mailbox="/var/mail/gone@example.com", active=False,
    )
    server = start_slapd(tmp_path, data, entries.to_ldif([disabled]))
    try:
        with Directory(service_config(server, data)) as directory:
            user = directory.user("gone", DOMAIN)
            assert user is not None and not user.active
    finally:
        server.stop()


def test_stopped_slapd_is_a_temporary_error(tmp_path: Path) -> None:
    data = demo.build(scheme="ssha")
    server = start_slapd(tmp_path, data)
    config = service_config(server, data, connect_timeout=1.0, operation_timeout=1.0)
    server.stop()
    with Directory(config) as directory, pytest.raises(DirectoryUnavailable):
        directory.user("alice", DOMAIN)
    with pytest.raises(DirectoryUnavailable):
        Directory(config).check_password("uid=alice,dc=example.com,o=top", "whatever")


def test_frozen_slapd_times_out_within_the_configured_bound(tmp_path: Path) -> None:
    data = demo.build(scheme="ssha")
    server = start_slapd(tmp_path, data)
    try:
        config = service_config(server, data, connect_timeout=1.0, operation_timeout=1.0)
        with Directory(config) as directory:
            assert directory.is_local_domain(DOMAIN)  # connected and bound
            server.freeze()
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable):
                directory.user("alice", DOMAIN)
            # One reused connection + one fresh attempt per URI, each bounded by the
            # operation timeout: far below Exim's 60 s whatever the machine's speed.
            assert time.monotonic() - started < 10
        with pytest.raises(DirectoryUnavailable):
            Directory(config).check_password("uid=alice,dc=example.com,o=top", "pw")
    finally:
        server.stop()


def test_failover_to_the_next_uri(slapd: Slapd, demo_data: demo.DemoDirectory) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}/"
    config = service_config(slapd, demo_data, uris=(dead, slapd.uri), connect_timeout=1.0)
    with Directory(config) as directory:
        assert directory.is_local_domain(DOMAIN)


def test_wrong_service_password_is_temporary(slapd: Slapd, demo_data: demo.DemoDirectory) -> None:
    config = service_config(slapd, demo_data, bind_password="wrong")
    with Directory(config) as directory, pytest.raises(TemporaryFailure):
        directory.is_local_domain(DOMAIN)


def test_check_password(directory: Directory, demo_data: demo.DemoDirectory) -> None:
    alice = demo_data.account("alice@example.com")
    assert directory.check_password(alice.dn, alice.password)
    assert not directory.check_password(alice.dn, alice.password + "x")
    assert not directory.check_password(alice.dn, "")
    assert not directory.check_password("uid=nobody,dc=example.com,o=top", alice.password)


def test_session_turns_refusals_into_codes(slapd: Slapd, demo_data: demo.DemoDirectory) -> None:
    alice = demo_data.account("alice@example.com")
    config = service_config(slapd, demo_data)
    with Session(config, alice.dn, alice.password) as session:
        with pytest.raises(LdapRefused) as refused:
            session.modify(alice.dn, {"mailQuota": ("replace", ["10G"])})
        assert refused.value.code == 50
        assert "insufficient access" in str(refused.value)
    with Session(config, alice.dn, "wrong") as session, pytest.raises(LdapRefused) as refused:
        session.bind()
    assert refused.value.code == 49
