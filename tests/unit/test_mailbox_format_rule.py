"""The per-user format rule (``mailbox.spool.user_format``) and what the routers make of it."""

from __future__ import annotations

import pytest

from mailrouter import routing
from mailrouter.config import SpoolConfig
from mailrouter.directory import User
from mailrouter.errors import ConfigError
from mailrouter.mailbox import spool
from mailrouter.mailbox.addressdata import parse_address_data

SPOOL = SpoolConfig(mbox_template="/srv/mail/{local}@{domain}",
                    maildir_template="/srv/mail/{domain}/{local}/Maildir")


def user(mailbox_format: str | None) -> User:
    return User(dn="uid=ann,dc=example.com,o=top", local="ann", domain="example.com", uid_number=None,
                gid_number=None, quota="5M", active=True, mailbox_format=mailbox_format)


@pytest.mark.parametrize("raw, default, expected", [
    (None, "mbox", "mbox"), ("", "maildir", "maildir"), ("  ", "mbox", "mbox"),
    ("maildir", "mbox", "maildir"), ("MailDir", "mbox", "maildir"), ("mbox", "maildir", "mbox"),
    ("maildir\n", "mbox", "maildir"),
])
def test_the_attribute_wins_absent_means_the_default(raw: str | None, default: str, expected: str) -> None:
    config = SpoolConfig(format=default)
    assert spool.user_format(raw, config) == expected


@pytest.mark.parametrize("raw", ["mh", "mbox;maildir", "mail dir", "maildir/"])
def test_anything_else_is_a_temporary_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="neither mbox nor maildir"):
        spool.user_format(raw, SPOOL)


def test_address_data_carries_each_users_format_and_template() -> None:
    maildir = parse_address_data(routing.address_data(user("maildir"), SPOOL))
    assert (maildir.format, maildir.mailbox) == ("maildir", "/srv/mail/example.com/ann/Maildir")
    mbox = parse_address_data(routing.address_data(user(None), SPOOL))
    assert (mbox.format, mbox.mailbox) == ("mbox", "/srv/mail/ann@example.com")
    with pytest.raises(ConfigError):
        routing.address_data(user("mh"), SPOOL)


def test_imap_home_and_mbox_folders() -> None:
    assert spool.imap_home(SPOOL, "ann", "example.com") == "/srv/mail/example.com/ann"
    assert spool.mbox_folders(SPOOL, "ann", "example.com") == "/srv/mail/example.com/ann/mail"
