"""mailrouter-lmtpd's pure parts: LMTP paths, DATA decoding, the per-recipient header, the reply codes."""

from __future__ import annotations

import pytest

from mailrouter.cmd.lmtpd import decode_data, failure_reply, parse_path, split_recipient, with_envelope_to
from mailrouter.errors import (
    ConfigError,
    DirectoryUnavailable,
    LockTimeout,
    MailboxRefused,
    OverQuota,
    TooBigForQuota,
)


@pytest.mark.parametrize(("argument", "path"), [
    (b"<a@b.example>", "a@b.example"),
    (b" <a@b.example> SIZE=12 BODY=8BITMIME", "a@b.example"),
    (b"<>", ""),
    (b'<"x>y"@b.example>', '"x>y"@b.example'),
    (b"<\xff@b.example>", "\udcff@b.example"),
    (b"a@b.example", None),
    (b"<a@b.example", None),
    (b"<a@b.example>junk", None),
])
def test_parse_path(argument: bytes, path: str | None) -> None:
    assert parse_path(argument) == path


def test_split_recipient_takes_only_canonical_addresses() -> None:
    assert split_recipient("alice@Example.COM") == ("alice", "example.com")
    for bad in ["alice", "../x@example.com", "a b@example.com", "\udcff@example.com", "a@-bad-"]:
        assert split_recipient(bad) is None, bad


@pytest.mark.parametrize(("wire", "message"), [
    (b"a\r\n.b\r\n..c\r\n", b"a\nb\n.c\n"),  # one stuffed dot comes off, at line starts only
    (b"..\r\nx.\r\n", b".\nx.\n"),
    (b"bare\rcr\r\n", b"bare\rcr\n"),
    (b"cr before lf\r\r\n", b"cr before lf\r\n"),  # Exim's spool held "\r\n": it comes back
    (b"\r\n", b"\n"),
])
def test_decode_data(wire: bytes, message: bytes) -> None:
    assert decode_data(wire) == message


def test_envelope_to_goes_where_appendfile_writes_it() -> None:
    added = b"Return-path: <s@x.example>\nDelivery-date: now\nSubject: s\n\nbody\n"
    assert with_envelope_to(added, "a@b.example") == (
        b"Return-path: <s@x.example>\nEnvelope-to: a@b.example\nDelivery-date: now\nSubject: s\n\nbody\n")
    assert with_envelope_to(b"Subject: s\n\n", "a@b.example") == b"Envelope-to: a@b.example\nSubject: s\n\n"


def test_only_a_message_that_can_never_fit_is_permanent() -> None:
    assert failure_reply(TooBigForQuota("m")).startswith("552 5.2.2 ")
    assert failure_reply(OverQuota("m")).startswith("452 4.2.2 ")
    assert failure_reply(LockTimeout("m")).startswith("451 4.2.0 ")
    assert failure_reply(DirectoryUnavailable("m")).startswith("451 4.4.3 ")
    for other in [MailboxRefused("m"), ConfigError("m"), OSError("m"), ValueError("m\r\nx")]:
        reply = failure_reply(other)
        assert reply.startswith("451 4.3.0 ") and "\r" not in reply and "\n" not in reply
