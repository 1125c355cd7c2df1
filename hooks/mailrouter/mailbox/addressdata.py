"""The ``$address_data`` contract: one line from the ``user`` router to every delivery front end.

The line is five ``key=value`` items separated by spaces, each key exactly once::

    mailbox=<absolute path> format=<mbox|maildir> quota=<raw mailQuota or 0> uid=<int> gid=<int>

``mailrouter-lookup user`` (and lookupd) print it, built by
:func:`format_address_data` from ``routing.mailbox_target``; Exim keeps it as
``$address_data``, reads the transport's ``user``/``group`` with
``${extract{uid}{$address_data}}`` and hands the whole line to
``mailrouter-deliver --address-data`` as ONE argument; :func:`parse_address_data`
reads it back.

Why this shape: it is what Exim's ``${extract{key}{...}}`` reads without any
quoting, so no value may contain white space (the writer refuses one, rather
than emit a line the reader would split differently).

The reader checks the syntax only.  Nothing in the line is trusted by the
delivery side: :mod:`mailrouter.mailbox.store` checks the path against the
configured template, the ids against :func:`mailrouter.mailbox.spool.check_ids`
and the quota's syntax before it touches anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailrouter.errors import ConfigError, TemporaryFailure

KEYS = ("mailbox", "format", "quota", "uid", "gid")
FORMATS = ("mbox", "maildir")


@dataclass(frozen=True)
class AddressData:
    """Where and as whom one recipient's mail is stored."""

    mailbox: str  # the mbox file or Maildir directory
    format: str  # "mbox" or "maildir"
    quota_raw: str  # mailQuota as stored ("32M", "0" = unlimited); parsed by the store
    uid: int
    gid: int


def _decimal(text: str) -> bool:
    # ASCII only: str.isdigit() also accepts "²" and "١", which int() reads or rejects.
    return text.isascii() and text.isdigit()


def format_address_data(data: AddressData) -> str:
    """The one-line form of ``data``; :class:`ConfigError` if it could not be read back."""
    items = (
        ("mailbox", data.mailbox),
        ("format", data.format),
        ("quota", data.quota_raw),
        ("uid", str(data.uid)),
        ("gid", str(data.gid)),
    )
    for key, value in items:
        if not value or any(char.isspace() for char in value):
            raise ConfigError(f"address data {key} {value[:80]!r} is empty or contains white space")
    if data.format not in FORMATS:
        raise ConfigError(f"address data format {data.format[:20]!r} is not mbox or maildir")
    if not (_decimal(str(data.uid)) and _decimal(str(data.gid))):
        raise ConfigError("address data uid/gid must be non-negative numbers")
    return " ".join(f"{key}={value}" for key, value in items)


def parse_address_data(text: str) -> AddressData:
    """Read the line back; :class:`TemporaryFailure` for anything but exactly the five keys."""
    fields: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS or key in fields:
            raise TemporaryFailure(f"bad address data item {item[:40]!r}")
        fields[key] = value
    missing = [key for key in KEYS if key not in fields]
    if missing:
        raise TemporaryFailure(f"address data lacks {', '.join(missing)}")
    if fields["format"] not in FORMATS:
        raise TemporaryFailure("address data format must be mbox or maildir")
    if not (_decimal(fields["uid"]) and _decimal(fields["gid"])):
        raise TemporaryFailure("address data uid/gid must be decimal numbers")
    return AddressData(
        mailbox=fields["mailbox"],
        format=fields["format"],
        quota_raw=fields["quota"],
        uid=int(fields["uid"]),
        gid=int(fields["gid"]),
    )
