"""The audit log: who added, changed, renamed or removed what, as slapd recorded it.

slapd writes the log itself (slapo-accesslog, ``ldap/slapd.conf``) into the
database ``cn=accesslog``: one record per successful add, delete, modify or
modrdn on the mail directory, by any client -- this library, the web, the API,
``ldapmodify`` -- with the DN that was bound (the actor), the target DN, the
time and the changed attributes.  Password values never reach it (the
``logscrub`` overlay stores ``<withheld>`` instead); records older than 180
days are purged by slapd.

Who sees which records is slapd's decision (the log database's ACLs): global
admins every record, a domain's admins the records whose target is that domain
or below it, everyone else nothing.  This module only asks.

    with AdminSession(config, dn, password) as s:
        audit.records(s, domain="example.org", since="7d", actor="admin")

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from mailrouter import directory as dirmod
from mailrouter.admin.normalise import normalise_domain
from mailrouter.admin.session import AdminSession, resolve_login
from mailrouter.errors import AdminError

# The log database's suffix (ldap/slapd.conf, "logdb").
AUDIT_BASE = "cn=accesslog"
# At most this many records per query: slapd's own sizelimit is 1000.
MAX_RECORDS = 1000

RECORD_READ = ("reqStart", "reqType", "reqAuthzID", "reqDN", "reqMod", "reqNewRDN",
               "reqNewSuperior", "reqDeleteOldRDN")

# Bookkeeping slapd adds to every write: not what anyone changed.
_NOISE = frozenset(a.lower() for a in (
    "entryCSN", "entryUUID", "modifiersName", "modifyTimestamp", "creatorsName", "createTimestamp",
    "structuralObjectClass", "pwdChangedTime",
))
_OPS = {"+": "add", "-": "delete", "=": "replace", "#": "increment"}
_RELATIVE = re.compile(r"(\d{1,5})([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m`` (ago), or an ISO date/time (``2026-11-30``,
    ``2026-11-30T08:00``, UTC unless it names a zone)."""
    value = text.strip()
    now = now or datetime.now(UTC)
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise AdminError(f"since: {text!r} is neither 7d/12h/30m nor an ISO date or time",
                         field="since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _generalized(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def _iso(generalized: str | None) -> str | None:
    """``20261130080739.000005Z`` -> ``2026-11-30T08:07:39Z``."""
    if not generalized or len(generalized) < 14:
        return generalized
    g = generalized
    return f"{g[0:4]}-{g[4:6]}-{g[6:8]}T{g[8:10]}:{g[10:12]}:{g[12:14]}Z"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def parse_changes(mods: list[Any]) -> list[dict[str, Any]]:
    """reqMod values (``attr:OP value``, ``attr:OP``) as ``[{"attribute", "op",
    "values"}]``, one item per attribute and operation, bookkeeping left out."""
    changes: list[dict[str, Any]] = []
    for raw in mods:
        text = _text(raw)
        attribute, sep, rest = text.partition(":")
        if not sep or not attribute or not rest or rest[0] not in _OPS:
            continue  # ":" separates two changes of one attribute; nothing to show
        if attribute.split(";", 1)[0].lower() in _NOISE:
            continue
        op = _OPS[rest[0]]
        value = rest[2:] if rest[1:2] == " " else None
        last = changes[-1] if changes else None
        if last is not None and last["attribute"] == attribute and last["op"] == op:
            item = last
        else:
            item = {"attribute": attribute, "op": op, "values": []}
            changes.append(item)
        if value is not None:
            item["values"].append(value)
    return changes


def _record(s: AdminSession, dn: str, a: dict[str, Any]) -> dict[str, Any]:
    actor_dn = dirmod.first(a, "reqAuthzID") or ""
    target_dn = dirmod.first(a, "reqDN") or ""
    record: dict[str, Any] = {
        "id": dn,
        "time": _iso(dirmod.first(a, "reqStart")),
        "actor": dirmod.member_name(actor_dn, s.base_dn) if actor_dn else None,
        "actor_dn": actor_dn or None,
        "operation": (dirmod.first(a, "reqType") or "").lower(),
        "target": dirmod.member_name(target_dn, s.base_dn),
        "target_dn": target_dn,
        "changes": parse_changes(dirmod.values(a, "reqMod")),
    }
    if record["operation"] == "modrdn":
        new_rdn = dirmod.first(a, "reqNewRDN") or ""
        parent = dirmod.first(a, "reqNewSuperior") or target_dn.split(",", 1)[-1]
        record["new_dn"] = f"{new_rdn},{parent}"
    return record


def records(
    s: AdminSession,
    domain: str | None = None,
    since: str | None = None,
    actor: str | None = None,
) -> list[dict[str, Any]]:
    """The records this admin may see, oldest first, filtered by target
    ``domain`` (the domain entry and everything below it), ``since`` (see
    :func:`parse_since`) and ``actor`` (a DN, an address or a global admin's
    name, as ``--bind-dn`` takes them).  More than :data:`MAX_RECORDS`
    matches is an error that says how to narrow the query."""
    parts = ["(objectClass=auditWriteObject)"]
    if domain is not None:
        name = normalise_domain(domain)
        s.require_domain(name)  # a domain slapd hides from this admin: "no such domain"
        parts.append(f"(reqDN:dnSubtreeMatch:={dirmod.escape_filter_value(s.domain_dn(name))})")
    if since is not None:
        parts.append(f"(reqStart>={_generalized(parse_since(since))})")
    if actor is not None:
        actor_dn = resolve_login(s.config, actor)
        parts.append(f"(reqAuthzID={dirmod.escape_filter_value(actor_dn)})")
    found = s.search(AUDIT_BASE, f"(&{''.join(parts)})", RECORD_READ, size_limit=MAX_RECORDS,
                     too_many=f"more than {MAX_RECORDS} audit records match: narrow the query "
                              "(--since, --domain, --actor)")
    rows = [_record(s, dn, a) for dn, a in found]
    rows.sort(key=lambda row: row["id"])  # reqStart=...: the time, with a per-second serial
    return rows
