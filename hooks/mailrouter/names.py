"""Canonical names: the only local parts, domains and logins the project accepts.

Why this is strict: these strings become LDAP DNs, file names under the spool
and popa3d logins (popa3d opens ``/var/mail/<login exactly as typed>`` with no
check at all).  So a name is accepted only in the one spelling the directory
stores -- lower case ASCII, no ``/``, no leading ``.``, no ``..``, no control
characters, within RFC 5321 lengths -- and everything else is refused before it
reaches LDAP or the file system.  Callers that want to be lenient (Exim already
lower-cases local parts) normalise *before* calling these functions.

Envelope addresses (a sender, a blacklist entry) are compared in one form,
:func:`envelope_address`: the one Exim's routing itself uses, so that no
spelling -- quoting, backslash escapes, case -- reaches a mailbox while
escaping a check.
"""

from __future__ import annotations

import re

from mailrouter.errors import InvalidName

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # RFC 1035 textual form, without the trailing dot
MAX_ADDRESS = 254  # RFC 5321 path limit minus the angle brackets

# Our allowed set is a subset of RFC 5321 atext: no '/', no quotes, no shell or
# Exim expansion metacharacters, nothing LDAP needs to escape except what ldap3
# escapes anyway.  '.' may separate atoms but not start, end or double.
_LOCAL_PART = re.compile(r"[a-z0-9_+=-]+(?:\.[a-z0-9_+=-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# The local part of an alias (redirect) target: the same conservative atext
# subset as our own names, but with upper case kept (a remote server may care).
# Nothing Exim's redirect router could read as a file, pipe, include, comment or
# list syntax: the first character is a letter, digit or one of ``_+=-``.
# The one definition, used where targets are written (admin) and where they are
# handed to Exim (routing).
TARGET_LOCAL_PART = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def envelope_address(value: str) -> tuple[str, str] | None:
    """``(local part, domain)`` of an envelope address, as routing compares them.

    ``value`` is an address as Exim holds it (``$sender_address``, a recipient,
    an entry of ``blacklisted_senders``): Exim keeps the client's spelling, so
    ``"spammer"@Bad.Example``, ``spam\\mer@bad.example`` and
    ``spammer@bad.example`` are three strings for one mailbox.  The rule is
    Exim's own (``deliver_split_address`` + routing's ``lc_local_part``):

    * the domain is everything after the *last* ``@``, lower-cased; trailing
      dots (the DNS root) are dropped;
    * in the local part every ``\\x`` becomes ``x`` and every other ``"`` is
      removed, then it is lower-cased (``caseful_local_part`` is off).

    Lower-casing is ASCII only, as Exim's (C locale) is.  ``None`` when there is
    no ``@`` or either side is empty: nothing routes there.  The result is
    *not* a canonical name (``"a b"@x`` gives ``a b``); callers that need one
    check it with :func:`local_part`/:func:`domain`.
    """
    raw_local, at, raw_domain = value.rpartition("@")
    if not at:
        return None
    domain_part = raw_domain.translate(_ASCII_LOWER).rstrip(".")
    chars: list[str] = []
    escaped = False
    for char in raw_local:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char != '"':
            chars.append(char)
    local = "".join(chars).translate(_ASCII_LOWER)
    if not local or not domain_part:
        return None
    return local, domain_part


def local_part(value: str) -> str:
    """Return ``value`` if it is a canonical local part, else raise :class:`InvalidName`."""
    if not value or len(value.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise InvalidName(f"local part must be 1..{MAX_LOCAL_PART} octets")
    if not _LOCAL_PART.fullmatch(value):
        raise InvalidName("local part has characters outside [a-z0-9._+=-] or a misplaced dot")
    return value


def domain(value: str) -> str:
    """Return ``value`` if it is a canonical (lower-case, ASCII/A-label) domain."""
    if not value or len(value) > MAX_DOMAIN:
        raise InvalidName(f"domain must be 1..{MAX_DOMAIN} characters")
    labels = value.split(".")
    if len(labels) < 2:
        raise InvalidName("domain needs at least two labels")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidName("domain labels must be lower-case letters, digits and inner hyphens")
    return value


def address(value: str) -> tuple[str, str]:
    """Split a canonical ``local@domain`` into its checked parts."""
    if len(value) > MAX_ADDRESS:
        raise InvalidName(f"address longer than {MAX_ADDRESS} characters")
    local, at, dom = value.rpartition("@")
    if not at:
        raise InvalidName("address needs an @")
    return local_part(local), domain(dom)


def is_local_part(value: str) -> bool:
    try:
        local_part(value)
    except InvalidName:
        return False
    return True


def is_domain(value: str) -> bool:
    try:
        domain(value)
    except InvalidName:
        return False
    return True


NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def is_node_name(value: str) -> bool:
    """True for a cluster node's name (``mailHost``): a lower-case host name, one label
    or more -- what Exim's ``${extract}`` can use as a key and never mistakes for syntax."""
    return len(value) <= 253 and NODE_NAME.fullmatch(value) is not None


def is_target_local_part(value: str) -> bool:
    """True if ``value`` may be the local part of an alias target (1..64 octets)."""
    return (
        0 < len(value.encode("utf-8", "surrogatepass")) <= MAX_LOCAL_PART
        and TARGET_LOCAL_PART.fullmatch(value) is not None
    )
