"""Routing and policy decisions (mailrouter.routing, the lookup table) on an in-memory directory.

The directory is ``ldap/seed.ldif`` plus the suite's data set, served by
``fake_directory.FakeDirectory`` (real typed lookups, fake LDAP reads).  The
same questions are asked of a real slapd, as Exim asks them, in
tests/integration/test_lookup.py and test_exim_routing.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from dataset import LONG_LOCAL, build
from fake_directory import FakeDirectory
from mailrouter import directory as directory_module
from mailrouter import lookup, routing
from mailrouter.config import Config, LdapConfig, SpoolConfig
from mailrouter.errors import ConfigError
from mailrouter.mailbox.usage import mailbox_usage

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def fake() -> FakeDirectory:
    data = build(Path("/nonexistent/mailrouter-pwned"), scheme="ssha")
    return FakeDirectory((ROOT / "ldap" / "seed.ldif").read_text(), data.ldif)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "fulluser@example.com").write_bytes(b"x" * 2048)  # over its 1K quota
    return tmp_path


@pytest.fixture
def config(spool: Path) -> Config:
    return Config(
        ldap=LdapConfig(uris=("ldap://fake.invalid/",)),
        spool=SpoolConfig(mbox_template=f"{spool}/{{local}}@{{domain}}"),
    )


@pytest.fixture
def ask(
    fake: FakeDirectory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., str | None]]:
    """``lookup.answer`` exactly as the hook calls it, its Directory being the fake."""
    monkeypatch.setattr(directory_module, "Directory", fake)

    def answer(kind: str, *args: str) -> str | None:
        return lookup.answer(config, kind, list(args))

    yield answer


# -- aliases -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("team", "alice@example.com, bob@example.com"),
        ("one", "alice@example.com"),
        ("nested", "team@example.com"),
        ("gone", routing.FAIL_DISABLED),  # a disabled alias refuses, it does not decline
        # Pipes, files, includes, specials and garbage are dropped, duplicates once:
        ("oddtargets", "bob@example.com, Remote.User@remote.example"),
        ("pipeonly", routing.FAIL_NO_TARGET),
        ("hostileonly", routing.FAIL_NO_TARGET),
        ("hostile", "alice@example.com"),
        ("alice", None),  # a user, not an alias
        ("nobody", None),
        ("Team", None),  # not canonical: cannot name an entry
        ("../team", None),
    ],
)
def test_alias_answer(fake: FakeDirectory, local: str, expected: str | None) -> None:
    assert routing.alias_answer(fake, local, "example.com") == expected


def test_non_canonical_keys_are_answered_without_a_query(fake: FakeDirectory) -> None:
    before = fake.reads
    for local, domain in [("Team", "example.com"), ("a/b", "example.com"), ("team", "Example.com"),
                          ("team", "example..com"), ("", "example.com")]:
        assert routing.alias_answer(fake, local, domain) is None
        assert routing.active_user(fake, local, domain) is None
    assert fake.reads == before


# -- users -------------------------------------------------------------------------------------
def test_active_user(fake: FakeDirectory) -> None:
    alice = routing.active_user(fake, "alice", "example.com")
    assert alice is not None and alice.address == "alice@example.com" and alice.quota == "10M"
    assert routing.active_user(fake, "disabled", "example.com") is None
    assert routing.active_user(fake, "alice", "example.org") is None
    assert routing.active_user(fake, "nobody", "example.com") is None
    assert routing.active_user(fake, LONG_LOCAL, "example.com") is not None


def test_address_data_takes_the_path_from_the_template_and_the_ids_of_the_storage_account(
    fake: FakeDirectory, config: Config, spool: Path
) -> None:
    fulluser = routing.active_user(fake, "fulluser", "example.com")
    # The entry's mailMessageStore says /etc/passwd and its ids 5000: neither is used.
    assert fulluser is not None and fulluser.uid_number == 5000
    assert routing.address_data(fulluser, config.spool) == (
        f"mailbox={spool}/fulluser@example.com format=mbox quota=1K uid=8 gid=8"
    )
    garbled = routing.active_user(fake, "garbled", "example.com")
    assert garbled is not None
    with pytest.raises(ConfigError):  # temporary: an admin fixes the entry
        routing.address_data(garbled, config.spool)


# -- the catch-all ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("local", "domain", "expected"),
    [
        ("whoever", "example.org", "carol@example.org"),
        ("whoever", "example.com", None),  # example.com has no catch-all
        ("whoever", "remote.example", None),
        ("disabled", "example.com", routing.FAIL_DISABLED),  # disabled is not absent
        ("dora", "example.org", routing.FAIL_DISABLED),  # ... not even where a catch-all exists
        ("loopa", "example.com", routing.FAIL_ALIAS_LOOP),  # Exim skipped the aliases router: a loop
        ("gone", "example.com", routing.FAIL_DISABLED),
        ("a/b", "example.org", routing.FAIL_BAD_LOCAL_PART),  # refused, never swallowed
        ("../carol", "example.org", routing.FAIL_BAD_LOCAL_PART),
        ("a/b", "remote.example", None),
        ("whoever", "Example.org", None),
    ],
)
def test_catchall_answer(fake: FakeDirectory, local: str, domain: str, expected: str | None) -> None:
    assert routing.catchall_answer(fake, local, domain) == expected


# -- quota at RCPT time follows aliases ------------------------------------------------------
def test_expand_follows_aliases_and_the_catchall_and_ends_loops(fake: FakeDirectory) -> None:
    def users(local: str, domain: str = "example.com") -> list[str]:
        return sorted(u.address for u in routing.expand(fake, local, domain).users)

    assert users("nested") == ["alice@example.com", "bob@example.com"]
    assert users("partlyfull") == ["alice@example.com", "fulluser@example.com"]
    assert users("fullchain") == ["fulluser@example.com"]
    assert routing.expand(fake, "fullchain", "example.com").other == ("x@remote.example",)
    assert users("whoever", "example.org") == ["carol@example.org"]
    assert users("loopa") == [] and users("gone") == [] and users("disabled") == []


@pytest.mark.parametrize(
    ("local", "size", "verdict"),
    [
        # 100 octets plus what delivery adds can never fit a 1K quota
        ("fulluser", 100, "toobig fulluser@example.com"),
        ("fullalias", -1, "full fulluser@example.com"),  # already over: full at any size
        ("fullchain", -1, "full fulluser@example.com"),  # two aliases deep
        ("partlyfull", -1, "full fulluser@example.com"),
        ("loopa", 100, None),
        ("alice", 1000, None),
        ("alice", 11 * MiB, "toobig alice@example.com"),  # larger than her whole 10M quota
        ("team", 11 * MiB, "toobig alice@example.com bob@example.com"),
        ("nobody", 11 * MiB, None),
    ],
)
def test_quota_verdict(
    fake: FakeDirectory, config: Config, local: str, size: int, verdict: str | None
) -> None:
    found = routing.quota_verdict(fake, config.spool, local, "example.com", size)
    assert (str(found) if found is not None else None) == verdict


def test_a_garbled_quota_behind_an_alias_is_temporary(fake: FakeDirectory, config: Config) -> None:
    with pytest.raises(ConfigError):
        routing.quota_verdict(fake, config.spool, "garbled", "example.com", 100)


def test_mailbox_size(tmp_path: Path) -> None:
    box = tmp_path / "box"
    assert mailbox_usage(str(box), "mbox") == 0  # absent
    box.write_bytes(b"x" * 10)
    assert mailbox_usage(str(box), "mbox") == 10
    link = tmp_path / "link"
    link.symlink_to(box)
    assert mailbox_usage(str(link), "mbox") is None  # never followed
    maildir = tmp_path / "Maildir"
    for sub, size in (("cur", 3), ("new", 4), ("tmp", 100)):
        (maildir / sub).mkdir(parents=True)
        (maildir / sub / "m").write_bytes(b"y" * size)
    assert mailbox_usage(str(maildir), "maildir") == 7  # tmp/ is not mail yet


def test_quota_arithmetic() -> None:
    assert not routing.is_over_quota(100, 10, 0)  # unlimited
    assert routing.is_over_quota(100, 1, 100)
    assert not routing.is_over_quota(90, 10, 100)
    assert not routing.is_over_quota(99, -1, 100)  # unknown size counts as 0
    assert routing.is_over_quota(101, -1, 100)


# -- redirect targets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        (" Bob.Smith@Example.COM ", "Bob.Smith@example.com"),
        ("|/bin/sh", None),
        ("/var/mail/x", None),
        (":include:/etc/aliases", None),
        (":blackhole:", None),
        ('"|cmd"@example.com', None),
        ("a,b@example.com", None),
        ("a b@example.com", None),
        ("a@b@example.com", None),
        (".alice@example.com", None),
        ("alice.@example.com", None),
        ("al..ice@example.com", None),
        ("alice@[127.0.0.1]", None),
        ("alice@localhost", None),
        ("alice", None),
        ("a" * 65 + "@example.com", None),
    ],
)
def test_redirect_target(raw: str, expected: str | None) -> None:
    assert routing.redirect_target(raw) == expected


# -- host and sender policy ----------------------------------------------------------------
def test_host_matching_ignores_names_and_garbage() -> None:
    patterns = ["localhost", "10.0.0.0/8", "garbage", "2001:db8::/32"]
    assert routing.host_matches("10.1.2.3", patterns)
    assert routing.host_matches("2001:db8::1", patterns)
    assert routing.host_matches("::ffff:10.9.9.9", patterns)  # IPv4-mapped counts as IPv4
    assert not routing.host_matches("127.0.0.1", patterns)
    assert not routing.host_matches("localhost", patterns)
    assert not routing.host_matches("", patterns)


@pytest.mark.parametrize(
    ("sender", "listed"),
    [
        ("spammer@bad.example", True),
        ("Spammer@Bad.Example", True),  # case does not matter
        ("friend@bad.example", False),  # only that sender of bad.example
        ("anyone@spam.example", True),
        ("anyone@mx.spam.example", True),  # a subdomain of a listed domain
        ("anyone@notspam.example", False),  # a suffix is not a parent domain
        ("anyone@dotted.example", True),  # listed as ".dotted.example"
        ("", False),  # the null sender
        ("no-at-sign", False),
    ],
)
def test_sender_blacklisted(sender: str, listed: bool) -> None:
    senders = ["spammer@bad.example", " "]
    domains = ["spam.example", ".dotted.example", ""]
    assert routing.sender_blacklisted(sender, senders, domains) is listed


def test_owns_sender(fake: FakeDirectory) -> None:
    assert routing.owns_sender(fake, "alice@example.com", "alice@example.com")
    assert routing.owns_sender(fake, "Team@Example.com", "alice@example.com")  # an alias to her
    assert not routing.owns_sender(fake, "bob@example.com", "alice@example.com")
    assert not routing.owns_sender(fake, "alice@example.org", "alice@example.com")
    assert not routing.owns_sender(fake, "", "alice@example.com")


# -- the lookup table, as the hook and lookupd run it --------------------------------------
def test_lookup_answers(ask: Callable[..., str | None], spool: Path) -> None:
    answer = ask
    assert answer("domain", "example.com") == "example.com"
    assert answer("domain", "example.net") is None
    assert answer("domain", "xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert answer("domain", "bücher.example") is None
    assert answer("backup-mx", "backup.example") == "backup.example"
    assert answer("backup-mx", "example.com") is None
    assert answer("user", "alice", "example.com") == (
        f"mailbox={spool}/alice@example.com format=mbox quota=10M uid=8 gid=8"
    )
    assert answer("user", "disabled", "example.com") is None
    assert answer("alias", "gone", "example.com") == routing.FAIL_DISABLED
    assert answer("catchall", "whoever", "example.org") == "carol@example.org"
    assert answer("quota", "fullchain", "example.com", "-1") == "full fulluser@example.com"
    assert answer("quota", "team", "example.com", str(11 * MiB)) == "toobig alice@example.com bob@example.com"
    assert answer("relay-host", "::ffff:127.0.0.1") == "yes"
    assert answer("relay-host", "192.0.2.10") is None
    assert answer("blacklisted-host", "192.0.2.66") == "yes"
    assert answer("blacklisted-sender", "x@deep.sub.spam.example") == "yes"
    assert answer("sender-owner", "team@example.com", "alice@example.com") == "yes"
    assert answer("sender-owner", "bob@example.com", "alice@example.com") is None


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("user", ["ALICE", "example.com"]),
        ("user", ["alice", "EXAMPLE.COM"]),
        ("alias", ["../team", "example.com"]),
        ("domain", ["*"]),
        ("catchall", ["x", "example.com)(dc=*"]),
        ("quota", ["fulluser*", "example.com", "100"]),
        ("relay-host", ["localhost"]),
        ("blacklisted-sender", [""]),
        ("user", ["a" * 2000, "example.com"]),
    ],
)
def test_impossible_keys_are_no_without_asking(
    ask: Callable[..., str | None], fake: FakeDirectory, kind: str, args: list[str]
) -> None:
    before = fake.reads
    assert ask(kind, *args) is None
    assert fake.reads == before
