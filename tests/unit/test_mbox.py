"""mbox format: pure checks of mailrouter.mailbox.mbox, then a byte comparison with real Exim appendfile.

The comparison delivers every corpus message with ONE Exim run to two
recipients: one routed to a stock appendfile transport, one to a pipe transport
running mailrouter-deliver (options as the hook's docstring requires).  Both
mailboxes must be byte-identical except for the date in the From_ lines (the
two deliveries may straddle a second).
"""

from __future__ import annotations

import mailbox
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deliver_support import (
    MiniExim,
    address_data,
    make_root,
    make_spool,
    normalise_dates,
    write_config,
)
from mailrouter.mailbox import mbox

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

PREFIX = b"From sender@example.org Tue Nov 24 20:40:45 2026\n"


@pytest.mark.parametrize(
    ("message", "escaped"),
    [
        (b"From x\n", b">From x\n"),
        (b"a\nFrom x\nFrom y\n", b"a\n>From x\n>From y\n"),
        (b">From x\n>>From y\n", b">From x\n>>From y\n"),  # mboxo: never re-escaped
        (b"from x\nFROM x\nFrom\nFromage\n From x\n", b"from x\nFROM x\nFrom\nFromage\n From x\n"),
        (b"a\rFrom x\n", b"a\rFrom x\n"),  # CR is not a line start
        (b"a\r\nFrom x\r\n", b"a\r\n>From x\r\n"),
        (b"x\0From y\nFrom \0\n", b"x\0From y\n>From \0\n"),
        (b"From " + b"f" * 10_000 + b"\n", b">From " + b"f" * 10_000 + b"\n"),
        (b"", b""),
    ],
)
def test_escape(message: bytes, escaped: bytes) -> None:
    assert mbox.escape(message) == escaped


def test_entry_adds_missing_final_newline_and_separator() -> None:
    assert mbox.entry(PREFIX, b"Subject: a\n\nbody") == PREFIX + b"Subject: a\n\nbody\n\n"
    assert mbox.entry(PREFIX, b"Subject: a\n\nbody\n") == PREFIX + b"Subject: a\n\nbody\n\n"
    assert mbox.entry(PREFIX, b"Subject: a\n\nFrom me\n") == PREFIX + b"Subject: a\n\n>From me\n\n"


@pytest.mark.parametrize(
    ("tail", "size", "separator"),
    [(b"", 0, b""), (b"\n\n", 100, b""), (b"x\n", 100, b"\n"), (b"xy", 100, b"\n\n"),
     (b"\n", 1, b""), (b"x", 1, b"\n\n")],
)
def test_separator_after_torn_mailbox(tail: bytes, size: int, separator: bytes) -> None:
    assert mbox.separator_for(tail, size) == separator


def test_split_from_line() -> None:
    assert mbox.split_from_line(PREFIX + b"Subject: x\n") == (PREFIX, b"Subject: x\n")
    bounce = b"From MAILER-DAEMON Sun Jan  4 03:05:09 2026\nX: y\n"
    assert mbox.split_from_line(bounce)[0] == bounce.split(b"\n")[0] + b"\n"
    for bad in (b"Subject: x\n\nbody\n", b"From sender@example.org\n", b"From x Tue Nov 24 2026\n",
                b"From " + PREFIX[5:-1], b"From a\x01b Tue Nov 24 20:40:45 2026\n"):
        with pytest.raises(mbox.NoFromLine):
            mbox.split_from_line(bad)


def test_from_line_like_exim() -> None:
    line = mbox.from_line("a@b.example", when=0)
    assert mbox.split_from_line(line + b"x\n")[0] == line
    assert mbox.from_line("", when=0).startswith(b"From MAILER-DAEMON ")
    assert mbox.from_line("a b@c", when=0).startswith(b"From MAILER-DAEMON ")


# Each message is what a client hands to `exim -odi -oi` on stdin.
CORPUS: list[bytes] = [
    b"Subject: plain\n\nhello\n",
    b"Subject: from lines\n\nFrom the start\nmiddle\nFrom again\nFrom\nFromage\n From indented\n",
    b"Subject: already escaped\n\n>From x\n>>From y\n>From \n",
    b"Subject: lower case\n\nfrom here\nFROM there\nfRom x\n",
    b"Subject: no final newline\n\nlast line has no newline",
    b"Subject: crlf\r\n\r\nline one\r\nFrom crlf\r\n",
    b"Subject: nul\n\nbefore\0after\nFrom \0\n\0\n",
    b"Subject: long\n\n" + b"x" * 10_000 + b"\nFrom " + b"y" * 10_000 + b"\n",
    b"Subject: empty body\n\n",
    b"Subject: only headers\n",
    b"Subject: blank lines at end\n\nbody\n\n\n",
    b"Subject: lone cr\n\na\rFrom x\n",
    b"Subject: dot\n\n.\n..\n.From\n",
]

# One SMTP session (CRLF, dot-stuffing) through `exim -bs`.
SMTP_DATA = (
    b"Subject: via smtp\r\n\r\nFrom smtp\r\n..leading dot\r\n>From kept\r\nfrom low\r\n"
    b"bare\rcr\r\n" + b"z" * 9_000 + b"\r\n"
)


@pytest.fixture(scope="module")
def exim_pair() -> Iterator[tuple[MiniExim, Path, Path]]:
    root = make_root("mr-mbox-")
    try:
        spool = make_spool(root / "spool")
        config = write_config(root / "mailrouter.toml", spool)
        ours, stock = spool / "ours@example.com", spool / "stock@example.com"
        exim = MiniExim(root / "exim", config,
                        hook_users={"ours": address_data(ours)},
                        file_users={"stock": address_data(stock)},
                        add_headers=True)
        yield exim, ours, stock
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_root
def test_byte_identical_to_appendfile(exim_pair: tuple[MiniExim, Path, Path]) -> None:
    exim, ours, stock = exim_pair
    for message in CORPUS:
        done = exim.submit(message, "ours@example.com", "stock@example.com")
        assert done.returncode == 0, (done, exim.mainlog())
    smtp = (
        b"EHLO client.test\r\nMAIL FROM:<smtp@example.org>\r\n"
        b"RCPT TO:<ours@example.com>\r\nRCPT TO:<stock@example.com>\r\nDATA\r\n"
        + SMTP_DATA + b".\r\nQUIT\r\n"
    )
    done = exim.run("-bs", "-odi", stdin=smtp)
    assert b"250 OK id=" in done.stdout, done
    assert exim.queue_size() == 0, exim.mainlog()

    mine, theirs = ours.read_bytes(), stock.read_bytes()
    assert normalise_dates(mine) == normalise_dates(theirs)
    # Not vacuous: escaping happened, and every message is one mbox entry.
    assert b"\n>From the start\n" in mine and b"\n>>From y\n" in mine
    assert b"\nfrom here\n" in mine
    parsed = mailbox.mbox(str(ours), create=False)
    try:
        subjects = [m["Subject"] for m in parsed]
    finally:
        parsed.close()
    assert len(subjects) == len(CORPUS) + 1
    assert subjects[-1] == "via smtp"
