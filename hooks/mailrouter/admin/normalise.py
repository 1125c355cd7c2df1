"""The input rules of the admin operations: what an admin may type, in its canonical form.

Every value an operation writes passes through one of these functions first, so
invalid input is refused before anything reaches LDAP.  Each raises
:class:`~mailrouter.errors.AdminError` (kind ``"invalid"``) whose ``field`` names
the input, worded for the person acting.  The syntax of our own names lives in
:mod:`mailrouter.names`; this module adds the lenient front (case folding, IDNA,
``<...>`` and quotes around targets) and the admin's wording.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from mailrouter import names, quota, ratelimit, rules
from mailrouter.errors import AdminError, GarbledQuota, GarbledRateLimit, InvalidName
from mailrouter.mailbox.addressdata import FORMATS

SETTINGS = (
    "host_accept_relay",
    "blacklisted_hosts",
    "blacklisted_domains",
    "blacklisted_senders",
    "backup_mx_domains",
    "default_rate_limit",
    "vacation_interval",  # issue 16: one reply per sender per this long (mailrouter.rules)
)
# Settings that hold at most one value (read as one value: a second one is refused when written).
SINGLE_VALUED_SETTINGS = ("default_rate_limit", "vacation_interval")


def normalise_domain(text: str, field: str = "domain") -> str:
    """The canonical A-label form of a domain typed by an admin (U-labels accepted)."""
    value = text.strip().rstrip(".").lower()
    if not value:
        raise AdminError("invalid domain '': empty", field=field)
    try:
        if not value.isascii():
            # Python's codec implements IDNA 2003 (nameprep + punycode).
            value = value.encode("idna").decode("ascii").lower()
        else:
            # An A-label must decode, or it is not IDNA at all.
            for label in value.split("."):
                if label.startswith("xn--"):
                    label.encode("ascii").decode("idna")
    except (UnicodeError, ValueError) as exc:
        raise AdminError(f"invalid domain {text!r}: not a valid IDNA name ({exc})", field=field) from None
    try:
        return names.domain(value)
    except InvalidName as exc:
        raise AdminError(f"invalid domain {text!r}: {exc}", field=field) from None


def normalise_local(text: str, field: str = "local") -> str:
    value = text.strip().lower()
    try:
        return names.local_part(value)
    except InvalidName as exc:
        raise AdminError(f"invalid local part {text!r}: {exc}", field=field) from None


def normalise_address(text: str, field: str = "address") -> tuple[str, str]:
    """``(local, domain)`` of one of *our* addresses (a user or alias to create)."""
    local, at, dom = text.strip().rpartition("@")
    if not at or not local:
        raise AdminError(f"invalid address {text!r}: expected local@domain", field=field)
    return normalise_local(local, field), normalise_domain(dom, field)


def normalise_target(text: str, default_domain: str | None = None, field: str = "targets") -> str:
    """An alias target: a plain address, never a command, file or include."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    bare = value.lstrip('"').lstrip()
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        value = value[1:-1].strip()
    if bare.startswith("|"):
        raise AdminError(f"alias target {text!r} is a command: only addresses are allowed", field=field)
    if bare.startswith(("/", "./", "~")):
        raise AdminError(f"alias target {text!r} is a file: only addresses are allowed", field=field)
    if bare.lower().startswith(":include:"):
        raise AdminError(
            f"alias target {text!r} is an :include: list: only addresses are allowed", field=field
        )
    if bare.startswith(":"):
        raise AdminError(f"alias target {text!r} is a special item: only addresses are allowed", field=field)
    local, at, dom = value.rpartition("@")
    if not at:
        if default_domain is None:
            raise AdminError(f"alias target {text!r} is not an address (local@domain)", field=field)
        local, dom = value, default_domain
    if not names.is_target_local_part(local):
        raise AdminError(
            f"alias target {text!r}: local part must be 1..64 characters of "
            "[A-Za-z0-9._+=-] without a leading, trailing or double dot",
            field=field,
        )
    try:
        domain = normalise_domain(dom, field)
    except AdminError as exc:
        raise AdminError(f"alias target {text!r}: {exc}", field=field) from None
    result = f"{local}@{domain}"
    if len(result) > names.MAX_ADDRESS:
        raise AdminError(f"alias target {text!r} is longer than {names.MAX_ADDRESS} characters", field=field)
    return result


def merge_targets(into: list[str], targets: Iterable[str]) -> None:
    """Append the ``targets`` that ``into`` lacks.  Compared case-insensitively, as
    LDAP compares ``mailAliasedName`` values: it refuses a second spelling of one."""
    seen = {t.lower() for t in into}
    for target in targets:
        if target.lower() not in seen:
            seen.add(target.lower())
            into.append(target)


def normalise_targets(
    values: Iterable[str], default_domain: str | None = None, field: str = "targets"
) -> list[str]:
    """Each target normalised, duplicates dropped (the first spelling kept), order kept."""
    result: list[str] = []
    merge_targets(result, (normalise_target(value, default_domain, field) for value in values))
    return result


def normalise_quota(text: str, field: str = "quota") -> str:
    """``32M``, ``1G``, ``500K``, a byte count, or ``0`` (also ``unlimited``/``none``)."""
    value = text.strip().upper()
    if not value:
        raise AdminError("invalid quota '': empty", field=field)
    if value in ("UNLIMITED", "NONE"):
        return "0"
    try:
        quota.parse_quota(value)
    except GarbledQuota:
        raise AdminError(
            f"invalid quota {text!r}: use a byte count or a number with K, M or G (32M, 1G); 0 = unlimited",
            field=field,
        ) from None
    return value[:-1] if value.endswith("B") and len(value) > 1 and value[-2] in "KMG" else value


def normalise_rate_limit(text: str, field: str = "rate_limit") -> str:
    """An outbound limit as stored in ``mailRateLimit``: ``100/1H`` -> ``100 / 1h``,
    or ``unlimited`` (syntax: :mod:`mailrouter.ratelimit`)."""
    try:
        return ratelimit.canonical(text)
    except GarbledRateLimit as exc:
        raise AdminError(f"invalid rate limit: {exc}; use {ratelimit.SYNTAX_HELP}", field=field) from None


def normalise_setting_value(name: str, text: str, field: str = "values") -> str:
    """One value of the setting ``name``: an IP or network, a domain, an address,
    a rate limit, or (``vacation_interval``) an Exim time such as ``7d``."""
    value = text.strip()
    if name in ("host_accept_relay", "blacklisted_hosts"):
        try:
            if "/" in value:
                return str(ipaddress.ip_network(value, strict=True))
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise AdminError(
                f"invalid {name} value {text!r}: expected an IP address or network/bits", field=field
            ) from None
    if name == "default_rate_limit":
        return normalise_rate_limit(value, field)
    if name in ("blacklisted_domains", "backup_mx_domains"):
        return normalise_domain(value, field)
    if name == rules.INTERVAL_SETTING:
        try:
            if not value:
                raise rules.RuleError("vacation_interval: empty (expected an Exim time such as 7d)")
            return rules.interval(value)
        except rules.RuleError as exc:
            raise AdminError(f"invalid vacation_interval value: {exc}", field=field) from None
    return normalise_target(value, field=field)


def setting_name(text: str, field: str = "name") -> str:
    """``text`` if it names one of :data:`SETTINGS`."""
    if text not in SETTINGS:
        raise AdminError(f"unknown setting {text!r}; known: {', '.join(SETTINGS)}", field=field)
    return text


def normalise_format(text: str, field: str = "format") -> str:
    """A mailbox format: ``mbox`` or ``maildir`` (any case)."""
    value = text.strip().lower()
    if value not in FORMATS:
        raise AdminError(f"invalid mailbox format {text[:40]!r}: use mbox or maildir", field=field)
    return value
