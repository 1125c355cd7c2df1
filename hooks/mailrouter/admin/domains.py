"""Virtual domains: ``dc=DOMAIN,BASE`` (mailDomain) and everything below it.

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.  Changes return ``{"ok": True, "message": ..., ...}``.
"""

from __future__ import annotations

from typing import Any

from mailrouter import entries
from mailrouter.admin import ratelimits
from mailrouter.admin.admins import names_of
from mailrouter.admin.normalise import normalise_domain
from mailrouter.admin.session import AdminSession, Page
from mailrouter.directory import CATCHALL_NAME, MODIFY_REPLACE, RATE_LIMIT, first, values
from mailrouter.errors import AdminError

DOMAIN_READ = ("dc", "description", "mailAccountStatus", "mailRateLimit")


def add_domain(s: AdminSession, domain: str, description: str | None = None) -> dict[str, Any]:
    name = normalise_domain(domain)
    entry = entries.domain_entry(name, s.base_dn, description)
    s.add(entry, f"add domains under {s.base_dn}", f"domain {name}")
    s.commit()
    return {"ok": True, "message": f"added domain {name}", "domain": name, "dn": entry.dn}


def remove_domain(s: AdminSession, domain: str, recursive: bool = False) -> dict[str, Any]:
    """Remove a domain; with ``recursive`` also its users, aliases and admin group.

    Not undoable: the deleted entries' password hashes cannot be read back."""
    name = normalise_domain(domain)
    dn = s.domain_dn(name)
    action = f"remove domain {name}"
    subject = f"domain {name}"
    try:
        # slapd checks the ACL before it checks for children: a refusal here
        # (50) means nothing may be removed; "non-leaf" (66, conflict) means we may.
        s.delete(dn, None, action, subject, f"no such domain {name}")
        return {"ok": True, "message": f"removed domain {name}", "domain": name, "removed_dns": [dn]}
    except AdminError as exc:
        if exc.kind != "conflict":
            raise
    if not recursive:
        raise AdminError(
            f"domain {name} still has users, aliases or admins; remove them or use --recursive",
            kind="conflict",
        )
    below = s.search(dn, "(objectClass=*)", ["1.1"], subtree=True)
    victims = sorted((d for d, _ in below if d.lower() != dn.lower()), key=lambda d: -d.count(","))
    for victim in [*victims, dn]:
        s.delete(victim, None, action, subject)
    return {
        "ok": True,
        "message": f"removed domain {name} and {len(victims)} entries below it",
        "domain": name,
        "removed_dns": [*victims, dn],
    }


def _row(attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "domain": first(attributes, "dc"),
        "status": first(attributes, "mailAccountStatus") or "active",
        "description": first(attributes, "description"),
    }


def _counts(s: AdminSession, domain: str) -> dict[str, Any]:
    dn = s.domain_dn(domain)
    users = s.search(dn, "(objectClass=mailUser)", ["1.1"])
    aliases = s.search(dn, "(objectClass=mailAlias)", ["mailAlias", "mailAliasedName"])
    catchall = [a for _, a in aliases if first(a, "mailAlias") == CATCHALL_NAME]
    return {
        "users": len(users),
        "aliases": len(aliases) - len(catchall),
        "catchall": values(catchall[0], "mailAliasedName") if catchall else [],
    }


def list_domains(
    s: AdminSession,
    contains: str | None = None,
    offset: int = 0,
    limit: int | None = None,
    counts: bool = False,
) -> Page:
    """Domains ordered by name; ``counts`` adds users/aliases/catchall to each row of the page."""
    found, total = s.page(
        s.base_dn, "mailDomain", "dc", DOMAIN_READ,
        contains=contains, offset=offset, limit=limit, key=lambda name: name,
    )
    rows = [_row(a) for _, a in found]
    if counts:
        for row in rows:
            row.update(_counts(s, row["domain"]))
    return Page(rows, total, offset, limit)


def show_domain(s: AdminSession, domain: str) -> dict[str, Any]:
    """A domain with its user and alias counts, its catch-all targets and its admins."""
    name = normalise_domain(domain)
    dn = s.domain_dn(name)
    attributes = s.read(dn, "mailDomain", DOMAIN_READ)
    if attributes is None:
        raise AdminError(f"no such domain {name}", kind="not_found")
    group = s.read(s.group_dn(name), "groupOfNames", ["member"])
    return {
        "domain": name,
        "dn": dn,
        "description": first(attributes, "description"),
        "status": first(attributes, "mailAccountStatus") or "active",
        **_counts(s, name),
        "admins": names_of(s, values(group or {}, "member")),
        "admin_dns": sorted(values(group or {}, "member")),
        # The outbound limit of its users without their own (mailrouter.admin.ratelimits).
        "rate_limit": first(attributes, RATE_LIMIT),
        **ratelimits.effective(s, None, name),
    }


def set_domain_enabled(s: AdminSession, domain: str, enabled: bool) -> dict[str, Any]:
    """Disable a domain (``mailAccountStatus: disabled`` on ``dc=DOMAIN``) or enable it
    again.  Disabled, it stays one of ours and keeps every entry and mailbox, but
    every user and alias in it counts as disabled (:meth:`mailrouter.directory.Directory.user`):
    mail to it is refused with 550 5.2.1 at RCPT time, its users cannot log in
    (POP3, IMAP, SMTP AUTH) and their user records go.  Only global admins may
    change it (ldap/acl.conf rule 3a)."""
    name = normalise_domain(domain)
    dn = s.domain_dn(name)
    attributes = s.read(dn, "mailDomain", DOMAIN_READ)
    if attributes is None:
        raise AdminError(f"no such domain {name}", kind="not_found")
    status = "active" if enabled else "disabled"
    changed = (first(attributes, "mailAccountStatus") or "active").lower() != status
    if changed:
        verb = "enable" if enabled else "disable"
        s.modify(dn, {"mailAccountStatus": (MODIFY_REPLACE, [status])}, None, f"{verb} domain {name}",
                 f"domain {name}")
    what = ("mail to it is accepted and its users can log in" if enabled else
            "mail to it is refused (550 5.2.1) and its users cannot log in; nothing was deleted")
    message = f"{name} is {'now' if changed else 'already'} {status}: {what}"
    return {"ok": True, "message": message, "domain": name, "status": status, "changed": changed}
