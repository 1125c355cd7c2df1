"""The directory layer against a real slapd: exact lookups, hostile keys, outages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import service_config, start_slapd
from dataset import ODD_UIDS, Dataset
from mailrouter import entries
from mailrouter.directory import Directory, LdapRefused, Session
from mailrouter.errors import BindRefused, DirectoryUnavailable, TemporaryFailure, WriteOutcomeUnknown
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd, free_port

DOMAIN = "example.com"

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


def test_typed_lookups(directory: Directory) -> None:
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
    # Every alias of the data set that lists alice (the disabled one too: a plain read).
    assert directory.aliases_delivering_to("alice@example.com", "example.com") == [
        "gone", "hostile", "one", "partlyfull", "team"
    ]
    assert directory.aliases_delivering_to("dave@example.org", "example.org") == ["info"]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_never_match_another_entry(directory: Directory, key: str) -> None:
    assert directory.user(key, DOMAIN) is None
    assert directory.alias(key, DOMAIN) is None
    assert not directory.is_local_domain(key)
    assert directory.setting(key) == ()
    assert directory.user("alice", key) is None
    assert directory.aliases_delivering_to(key, DOMAIN) == []


@pytest.mark.parametrize("uid", ODD_UIDS)
def test_escaped_names_find_exactly_their_entry(directory: Directory, uid: str) -> None:
    found = directory.user(uid, DOMAIN)
    assert found is not None and found.local == uid
    assert directory.user(uid.upper() if uid.upper() != uid else uid + "x", DOMAIN) is None
    assert directory.user(uid + " ", DOMAIN) is None


def test_disabled_user_is_reported_inactive(directory: Directory) -> None:
    user = directory.user("disabled", DOMAIN)
    assert user is not None and not user.active
    alias = directory.alias("gone", DOMAIN)
    assert alias is not None and not alias.active


def test_stopped_slapd_is_a_temporary_error(tmp_path: Path, dataset: Dataset) -> None:
    data = dataset
    server = start_slapd(tmp_path, data)
    config = service_config(server, data, connect_timeout=1.0, operation_timeout=1.0)
    server.stop()
    with Directory(config) as directory, pytest.raises(DirectoryUnavailable):
        directory.user("alice", DOMAIN)
    with pytest.raises(DirectoryUnavailable):
        Directory(config).check_password("uid=alice,dc=example.com,o=top", "whatever")


@pytest.mark.slow
def test_frozen_slapd_times_out_within_the_configured_bound(tmp_path: Path, dataset: Dataset) -> None:
    data = dataset
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


def test_failover_to_the_next_uri(slapd: Slapd, dataset: Dataset) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}/"
    config = service_config(slapd, dataset, uris=(dead, slapd.uri), connect_timeout=1.0)
    with Directory(config) as directory:
        assert directory.is_local_domain(DOMAIN)


def test_wrong_service_password_is_temporary(slapd: Slapd, dataset: Dataset) -> None:
    config = service_config(slapd, dataset, bind_password="wrong")
    with Directory(config) as directory, pytest.raises(BindRefused) as refused:
        directory.is_local_domain(DOMAIN)
    assert isinstance(refused.value, TemporaryFailure)


@pytest.fixture
def two_slapds(tmp_path: Path) -> Iterator[tuple[Slapd, Slapd, demo.DemoDirectory]]:
    """Two independent servers with the same data: a failover pair."""
    data = demo.build(scheme="ssha")
    first = start_slapd(tmp_path / "first", data)
    try:
        second = start_slapd(tmp_path / "second", data)
        try:
            yield first, second, data
        finally:
            second.stop()
    finally:
        first.stop()


def test_write_to_a_frozen_server_is_unknown_and_never_sent_to_the_next(
    two_slapds: tuple[Slapd, Slapd, demo.DemoDirectory],
) -> None:
    first, second, data = two_slapds
    admin = data.account("global-admin")
    config = service_config(first, data, uris=(first.uri, second.uri), operation_timeout=1.0)
    entry = entries.alias_entry("written", DOMAIN, data.base_dn, ["alice@example.com"])
    with Session(config, admin.dn, admin.password) as session:
        session.bind()  # bound on the first server, which then freezes mid-request
        first.freeze()
        started = time.monotonic()
        with pytest.raises(WriteOutcomeUnknown) as unknown:
            session.add(entry.dn, entry.attributes)
        assert time.monotonic() - started < 10
    assert isinstance(unknown.value, DirectoryUnavailable)  # temporary for every caller
    assert "outcome is unknown" in str(unknown.value)
    with Directory(service_config(second, data)) as on_second:
        assert on_second.alias("written", DOMAIN) is None
    # A fresh session whose first server does not even connect: nothing was
    # sent there, so the write goes to the next URI.
    dead = f"ldap://127.0.0.1:{free_port()}/"
    config = service_config(first, data, uris=(dead, second.uri), connect_timeout=1.0)
    with Session(config, admin.dn, admin.password) as session:
        session.add(entry.dn, entry.attributes)
    with Directory(service_config(second, data)) as on_second:
        assert on_second.alias("written", DOMAIN) is not None


def test_read_from_a_frozen_server_fails_over(
    two_slapds: tuple[Slapd, Slapd, demo.DemoDirectory],
) -> None:
    first, second, data = two_slapds
    admin = data.account("global-admin")
    config = service_config(first, data, uris=(first.uri, second.uri), operation_timeout=1.0)
    with Session(config, admin.dn, admin.password) as session:
        session.bind()
        first.freeze()
        assert session.directory.user("alice", DOMAIN) is not None  # answered by the second
        found = session.search(session.directory.domain_dn(DOMAIN), "(uid=bob)", ["uid"])
        assert [dn for dn, _ in found] == [f"uid=bob,dc={DOMAIN},o=top"]


def test_check_password(directory: Directory, dataset: Dataset) -> None:
    alice = dataset.account("alice@example.com")
    assert directory.check_password(alice.dn, alice.password)
    assert not directory.check_password(alice.dn, alice.password + "x")
    assert not directory.check_password(alice.dn, "")
    assert not directory.check_password("uid=nobody,dc=example.com,o=top", alice.password)


def test_session_turns_refusals_into_codes(slapd: Slapd, dataset: Dataset) -> None:
    alice = dataset.account("alice@example.com")
    config = service_config(slapd, dataset)
    with Session(config, alice.dn, alice.password) as session:
        with pytest.raises(LdapRefused) as refused:
            session.modify(alice.dn, {"mailQuota": ("replace", ["10G"])})
        assert refused.value.code == 50
        assert "insufficient access" in str(refused.value)
    with Session(config, alice.dn, "wrong") as session, pytest.raises(LdapRefused) as refused:
        session.bind()
    assert refused.value.code == 49
