"""mbox format: pure checks of mailrouter.mailbox.mbox.

The byte comparison with real Exim appendfile is tests/integration/test_mbox_exim.py.
"""

from __future__ import annotations

import pytest

from mailrouter.mailbox import mbox

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
