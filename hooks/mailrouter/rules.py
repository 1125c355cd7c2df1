"""Per-user mail rules (issue 16): vacation replies and Sieve scripts, the rules in one place.

Exim does the work -- its ``autoreply`` transport sends the vacation reply, its
built-in Sieve interpreter runs the script (``exim/mailrouter.conf``, the
blocks marked "mail rules").  This module decides what Exim is given, and what
an admin or a user may store; it is used by the lookup hook (``vacation`` and
``sieve`` kinds), by ``mailrouter-deliver`` (folder names) and by the admin
library (validation when written).  No I/O, no LDAP.

Vacation (attributes ``mailVacation*``):

* in effect when ``mailVacationActive`` is TRUE and now is within the optional
  ``mailVacationStart`` .. ``mailVacationEnd`` (GeneralizedTime, UTC, both
  inclusive);
* one reply per sender per interval: the system-wide setting
  ``vacation_interval`` (an Exim time, ``7d`` when unset), Exim's autoreply
  ``once`` + ``once_repeat`` in a per-user file named by the canonical address;
* the subject is one line of printable characters (RFC 2047-encoded when not
  ASCII: Exim's autoreply defers on a header with other octets); the text is
  sent as UTF-8.

Sieve (attribute ``mailSieveScript``), on top of what Exim's parser checks:

* extensions: :data:`ALLOWED_EXTENSIONS` only.  ``vacation`` is refused (Exim's
  Sieve vacation keeps its own once-per-sender store per script handle, so it
  could not share the one above: the vacation attributes are the way);
  ``reject``/``ereject`` are not implemented by Exim and would only be possible
  as a bounce after the message was accepted -- backscatter -- so they are
  refused "not at all"; ``notify``/``enotify`` would send mail and are refused;
* ``redirect`` targets obey the alias-target rule (:func:`routing.redirect_target`:
  a plain ``local@domain``, never ``|cmd``, ``/file``, ``:include:``), and a
  script has at most :data:`MAX_REDIRECTS` of them (the per-user cap);
* ``fileinto`` only for Maildir users, into their own folders
  (:func:`folder_directory`: no ``..``, no leading dot, no ``/`` at either end);
* at most :data:`MAX_SCRIPT` octets.

A stored script that breaks these rules (written with a raw LDAP tool) is not
given to Exim at all: the user's mail goes to the inbox, as for a script Exim
cannot run.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from mailrouter import routing

# LDAP attributes (ldap/mailrouter.schema .1.10-.1.15).
VACATION_ACTIVE = "mailVacationActive"
VACATION_SUBJECT = "mailVacationSubject"
VACATION_TEXT = "mailVacationText"
VACATION_START = "mailVacationStart"
VACATION_END = "mailVacationEnd"
SIEVE_SCRIPT = "mailSieveScript"
VACATION_ATTRIBUTES = (VACATION_ACTIVE, VACATION_SUBJECT, VACATION_TEXT, VACATION_START, VACATION_END)
ATTRIBUTES = (*VACATION_ATTRIBUTES, SIEVE_SCRIPT)

# The mailSetting with the interval between two replies to one sender.
INTERVAL_SETTING = "vacation_interval"
DEFAULT_INTERVAL = "7d"
_INTERVAL = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_INTERVAL = 365 * 86400

DEFAULT_SUBJECT = "Out of office"
MAX_SUBJECT = 200
MAX_TEXT = 8000

MAX_SCRIPT = 32 * 1024
MAX_REDIRECTS = 5
ALLOWED_EXTENSIONS = frozenset(
    {"fileinto", "copy", "envelope", "subaddress", "comparator-i;ascii-numeric", "encoded-character"}
)
REFUSED_COMMANDS = {
    "vacation": "Sieve vacation is not available: set an out-of-office reply with 'user vacation set'"
    " (one reply per sender per interval, shared by every way of setting it)",
    "reject": "reject is not supported: a rejection after the message was accepted is a bounce"
    " (backscatter); use discard, or fileinto a folder",
    "ereject": "ereject is not supported: a rejection after the message was accepted is a bounce"
    " (backscatter); use discard, or fileinto a folder",
    "notify": "notify is not supported (it would send mail)",
}
# The first line Exim needs to read a filter as Sieve (and never as an Exim filter).
SIEVE_HEADER = "# Sieve filter\n"
INBOX = "inbox"  # the folder name Exim's Sieve gives "keep"
_FOLDER_PART = re.compile(r"[A-Za-z0-9_+=@&,' -]{1,64}")
MAX_FOLDER = 200

GENERALIZED_TIME = "%Y%m%d%H%M%SZ"


class RuleError(ValueError):
    """A vacation or Sieve value breaks a rule; the message is worded for the person acting."""


# -- vacation -----------------------------------------------------------------------

def interval(text: str | None) -> str:
    """The once-per-sender interval as an Exim time (``7d``); the default when unset.

    Raises :class:`RuleError` for anything but ``<N><s|m|h|d|w>`` up to a year."""
    if text is None or not text.strip():
        return DEFAULT_INTERVAL
    value = text.strip().lower()
    match = _INTERVAL.fullmatch(value)
    if not match or int(match.group(1)) * _UNIT_SECONDS[match.group(2)] > MAX_INTERVAL:
        raise RuleError(
            f"vacation interval {text!r}: expected a number and one of s, m, h, d, w (at most 365d)"
        )
    return value


def parse_time(text: str) -> datetime:
    """A GeneralizedTime as stored (``20261201000000Z``); :class:`RuleError` otherwise."""
    try:
        return datetime.strptime(text.strip(), GENERALIZED_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise RuleError(f"time {text!r} is not YYYYMMDDHHMMSSZ") from None


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(GENERALIZED_TIME)


@dataclass(frozen=True)
class Vacation:
    active: bool
    subject: str | None
    text: str | None
    start: datetime | None
    end: datetime | None

    def in_effect(self, now: datetime) -> bool:
        if not self.active or not self.text:
            return False
        if self.start is not None and now < self.start:
            return False
        return self.end is None or now <= self.end


def vacation_from(attributes: dict[str, str | None]) -> Vacation:
    """The vacation of a user's raw attributes (first values).  A garbled date makes the
    vacation not in effect (never a reply outside the dates someone meant to set)."""
    try:
        start = parse_time(attributes[VACATION_START] or "") if attributes.get(VACATION_START) else None
        end = parse_time(attributes[VACATION_END] or "") if attributes.get(VACATION_END) else None
        garbled = False
    except RuleError:
        start = end = None
        garbled = True
    return Vacation(
        active=(attributes.get(VACATION_ACTIVE) or "").upper() == "TRUE" and not garbled,
        subject=attributes.get(VACATION_SUBJECT),
        text=attributes.get(VACATION_TEXT),
        start=start,
        end=end,
    )


def subject_line(subject: str | None) -> str:
    """The stored subject as one clean line (controls and line breaks become spaces)."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in (subject or "")).split())
    return cleaned[:MAX_SUBJECT] or DEFAULT_SUBJECT


def check_subject(subject: str) -> str:
    if len(subject) > MAX_SUBJECT:
        raise RuleError(f"the subject is longer than {MAX_SUBJECT} characters")
    if not all(c.isprintable() for c in subject):
        raise RuleError("the subject must be one line of printable characters")
    return subject.strip()


def check_text(text: str) -> str:
    value = text.replace("\r\n", "\n").replace("\r", "\n")
    if not value.strip():
        raise RuleError("the vacation text is empty")
    if len(value) > MAX_TEXT:
        raise RuleError(f"the vacation text is longer than {MAX_TEXT} characters")
    if any(not (c.isprintable() or c in "\n\t") for c in value):
        raise RuleError("the vacation text contains control characters")
    return value


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def encoded_subject(subject: str | None) -> str:
    """The Subject header value Exim's autoreply may send: ASCII, one line."""
    line = subject_line(subject)
    if line.isascii():
        return line
    from email.header import Header  # only for a non-ASCII subject: the lookup hook starts lean

    return Header(line, "utf-8", maxlinelen=10_000).encode()


def vacation_answer(address: str, vacation: Vacation, repeat: str) -> str:
    """The lookup's one line for the vacation router (read with ``${extract}``):
    ``address=<canonical> repeat=<Exim time> subject=<base64> text=<base64>``."""
    text = (vacation.text or "").replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return (
        f"address={address} repeat={repeat} subject={_b64(encoded_subject(vacation.subject))}"
        f" text={_b64(text)}"
    )


# -- Sieve ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str  # "id", "tag", "string", "number", "punct"
    value: str
    line: int


_SIMPLE = re.compile(
    r"(?P<ws>[ \t\r\n]+)|(?P<comment>#[^\n]*)|(?P<block>/\*.*?\*/)"
    r"|(?P<tag>:[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[0-9]+[KMGkmg]?)"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[\[\](){},;])",
    re.S,
)


def tokens(script: str) -> list[Token]:
    """RFC 5228 lexical tokens; :class:`RuleError` for what no Sieve parser accepts."""
    out: list[Token] = []
    pos, line = 0, 1
    while pos < len(script):
        char = script[pos]
        if char == '"':
            value, end = _quoted(script, pos, line)
            out.append(Token("string", value, line))
        elif script.startswith("text:", pos):
            value, end = _multiline(script, pos + 5, line)
            out.append(Token("string", value, line))
        else:
            match = _SIMPLE.match(script, pos)
            if not match:
                raise RuleError(f"line {line}: unexpected character {char!r}")
            end = match.end()
            kind = match.lastgroup or ""
            if kind not in ("ws", "comment", "block"):
                out.append(Token(kind, match.group(), line))
        line += script.count("\n", pos, end)
        pos = end
    return out


def _quoted(script: str, pos: int, line: int) -> tuple[str, int]:
    chars: list[str] = []
    i = pos + 1
    while i < len(script):
        char = script[i]
        if char == "\\" and i + 1 < len(script):
            chars.append(script[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(chars), i + 1
        chars.append(char)
        i += 1
    raise RuleError(f"line {line}: unterminated string")


def _multiline(script: str, pos: int, line: int) -> tuple[str, int]:
    newline = script.find("\n", pos)
    if newline < 0:
        raise RuleError(f"line {line}: text: without a line break")
    lines: list[str] = []
    i = newline + 1
    while i <= len(script):
        end = script.find("\n", i)
        current = script[i:] if end < 0 else script[i:end]
        if current.rstrip("\r") == ".":
            return "\n".join(lines), (len(script) if end < 0 else end + 1)
        lines.append(current[1:] if current.startswith("..") else current)
        if end < 0:
            break
        i = end + 1
    raise RuleError(f"line {line}: text: block without its closing '.' line")


def folder_directory(name: str) -> str:
    """The Maildir++ directory of the folder ``name`` (``Lists/exim`` -> ``.Lists.exim``).

    :class:`RuleError` for a name that could leave the user's Maildir or name
    something else in it: ``..``, a leading dot, empty parts, characters outside
    :data:`_FOLDER_PART`, longer than :data:`MAX_FOLDER`.  ``inbox`` is not a folder.
    """
    if not name or len(name) > MAX_FOLDER:
        raise RuleError(f"folder {name[:40]!r}: 1 to {MAX_FOLDER} characters")
    if name.lower() == INBOX:
        raise RuleError("INBOX is not a folder: use keep")
    parts = re.split(r"[/.]", name)
    for part in parts:
        if not _FOLDER_PART.fullmatch(part) or part != part.strip():
            raise RuleError(
                f"folder {name!r}: parts must be letters, digits, spaces or _+=@&,'- "
                "(no '..', no leading dot, no empty part)"
            )
    return "." + ".".join(parts)


@dataclass(frozen=True)
class ScriptSummary:
    extensions: tuple[str, ...]
    redirects: tuple[str, ...]
    folders: tuple[str, ...]


def _argument(toks: list[Token], index: int) -> Token | None:
    """The first string argument after the command at ``index`` (tags skipped)."""
    i = index + 1
    while i < len(toks) and toks[i].kind == "tag":
        i += 1
    return toks[i] if i < len(toks) and toks[i].kind == "string" else None


def check_script(script: str, *, maildir: bool) -> ScriptSummary:
    """Our rules for a Sieve script (module docstring); :class:`RuleError` when broken.

    Exim's own parser is the judge of the syntax (``mailrouter.admin.rules``
    runs ``exim -bf``); this is what Exim would allow but we do not."""
    if len(script.encode("utf-8", "surrogatepass")) > MAX_SCRIPT:
        raise RuleError(f"the script is longer than {MAX_SCRIPT} octets")
    if "\x00" in script:
        raise RuleError("the script contains a NUL character")
    toks = tokens(script)
    extensions: list[str] = []
    redirects: list[str] = []
    folders: list[str] = []
    for i, tok in enumerate(toks):
        if tok.kind != "id":
            continue
        word = tok.value.lower()
        if word == "require":
            j = i + 1
            while j < len(toks) and toks[j].value != ";":
                if toks[j].kind == "string":
                    extensions.append(toks[j].value.lower())
                j += 1
        elif word in REFUSED_COMMANDS:
            raise RuleError(f"line {tok.line}: {REFUSED_COMMANDS[word]}")
        elif word == "redirect":
            arg = _argument(toks, i)
            target = routing.redirect_target(arg.value) if arg is not None else None
            if arg is None or target is None:
                shown = arg.value[:80] if arg is not None else ""
                raise RuleError(
                    f"line {tok.line}: redirect {shown!r}: a target must be a plain local@domain address"
                )
            redirects.append(target)
        elif word == "fileinto":
            arg = _argument(toks, i)
            if arg is None:
                raise RuleError(f"line {tok.line}: fileinto needs a folder name")
            if not maildir:
                raise RuleError(
                    f"line {tok.line}: fileinto needs a Maildir mailbox; this mailbox is an mbox"
                    " (one folder only): use keep or discard"
                )
            try:
                folder_directory(arg.value)
            except RuleError as exc:
                raise RuleError(f"line {tok.line}: {exc}") from None
            folders.append(arg.value)
    for name in extensions:
        if name in REFUSED_COMMANDS:
            raise RuleError(REFUSED_COMMANDS[name])
        if name not in ALLOWED_EXTENSIONS:
            raise RuleError(
                f"extension {name!r} is not available; allowed: {', '.join(sorted(ALLOWED_EXTENSIONS))}"
            )
    if len(redirects) > MAX_REDIRECTS:
        raise RuleError(f"at most {MAX_REDIRECTS} redirect commands per script, not {len(redirects)}")
    return ScriptSummary(tuple(extensions), tuple(redirects), tuple(folders))


def exim_filter_text(script: str) -> str:
    """The filter text Exim gets: the Sieve marker line first (never read as an Exim filter),
    a marker line the user wrote themself dropped, LF line ends."""
    body = script.replace("\r\n", "\n")
    first, newline, rest = body.partition("\n")
    if first.strip().lower().replace(" ", "") == "#sievefilter":
        body = rest if newline else ""
    return SIEVE_HEADER + body


def sieve_answer(script: str, address_data: str) -> str:
    """The lookup's one line for the Sieve router: ``sieve=<base64 filter> <address data>``."""
    return f"sieve={_b64(exim_filter_text(script))} {address_data}"
