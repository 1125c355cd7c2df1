"""The mbox format exactly as Exim's appendfile transport writes it.

Exim's appendfile, with a ``file`` option (Debian's ``mail_spool`` transport)
and no ``use_bsmtp``, writes for each message::

    message_prefix   "From ${if def:return_path{$return_path}{MAILER-DAEMON}} ${tod_bsdinbox}\\n"
    the message      every line beginning with check_string "From " (case-sensitive,
                     only at the very start of a line) has those five bytes replaced
                     by escape_string ">From "; nothing else is touched: ">From ",
                     "from ", CR, NUL and long lines pass unchanged ("mboxo")
    message_suffix   "\\n"  -- the blank line that separates messages

Messages inside Exim always end with a newline; a message handed to us without
one gets it added, so the suffix still makes a blank line and the next ``From ``
line starts a line of its own (this is what makes popa3d and mail clients split
the file correctly).

The pipe transport's defaults differ: it sends the same ``From `` line as
message_prefix but does *no* escaping (check_string unset) -- so the hook
escapes here, and ``message_suffix`` must be set empty in the pipe transport
because the hook writes the separator itself.

These functions are pure (bytes in, bytes out); :mod:`mailrouter.mailbox.store` does the I/O.
"""

from __future__ import annotations

import re
import time

from mailrouter.errors import NoFromLine

CHECK_STRING = b"From "
ESCAPE_STRING = b">From "
SUFFIX = b"\n"

_LINE_START_FROM = re.compile(rb"^From ", re.MULTILINE)
# What Exim's tod_bsdinbox looks like: "Tue Nov 24 20:40:45 2026".
_BSD_DATE = (
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" [ 0-9]\d \d\d:\d\d:\d\d \d{4}"
)
_FROM_LINE = re.compile(rb"From [^\x00-\x1f\x7f]{1,998} " + _BSD_DATE + rb"\n")
_SENDER_OK = re.compile(r"[\x21-\x7e]{1,512}")


def escape(message: bytes) -> bytes:
    """Replace ``From `` at the start of every line by ``>From `` (appendfile's check_string)."""
    return _LINE_START_FROM.sub(ESCAPE_STRING, message)


def bsd_date(when: float | None = None) -> str:
    """Exim's ``$tod_bsdinbox`` (local time, day of month space-padded)."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(when))


def from_line(sender: str | None, when: float | None = None) -> bytes:
    """The message_prefix Exim would write for ``sender`` (empty/None: a bounce)."""
    envelope = sender if sender and _SENDER_OK.fullmatch(sender) else "MAILER-DAEMON"
    return f"From {envelope} {bsd_date(when)}\n".encode("ascii")


def split_from_line(data: bytes) -> tuple[bytes, bytes]:
    """Split the pipe transport's input into (``From `` line, message).

    Raises :class:`NoFromLine` when the first line is not a well-formed
    ``From <sender> <bsd date>`` line: with Exim's pipe transport that only
    happens when message_prefix was changed, and guessing would corrupt the mbox.
    """
    end = data.find(b"\n")
    if end < 0 or not is_from_line(data[: end + 1]):
        raise NoFromLine("input does not start with Exim's 'From <sender> <date>' line")
    return data[: end + 1], data[end + 1 :]


def is_from_line(line: bytes) -> bool:
    """Whether ``line`` is one well-formed ``From <sender> <bsd date>\\n`` line."""
    return _FROM_LINE.fullmatch(line) is not None


def entry(prefix: bytes, message: bytes) -> bytes:
    """One mbox entry: ``prefix`` + escaped message (+ missing final newline) + suffix."""
    body = escape(message)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return prefix + body + SUFFIX


def separator_for(tail: bytes, size: int) -> bytes:
    """Bytes to write before a new entry so its ``From `` line follows a blank line.

    ``tail`` is the last two bytes of a mailbox of ``size`` bytes.  A mailbox that
    appendfile (or we) wrote ends in ``\\n\\n``; one cut short by a crash of some
    writer may not, and then the new entry must not be glued onto the torn one.
    """
    if size == 0 or tail.endswith(b"\n\n") or (size == 1 and tail == b"\n"):
        return b""
    if tail.endswith(b"\n"):
        return b"\n"
    return b"\n\n"
