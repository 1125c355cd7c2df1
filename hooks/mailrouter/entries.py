"""The shapes of mailrouter's LDAP entries, built in one place.

Used by the admin tool (ldap3 adds), the sandbox and the tests (LDIF for
slapadd), so that every writer produces exactly the DIT of the seed:
``dc=DOMAIN,BASE``, ``uid=LOCAL,dc=DOMAIN,BASE``, ``mailAlias=NAME,dc=DOMAIN,BASE``,
``cn=admin,dc=DOMAIN,BASE``.  Values are validated as canonical names here too.
Nothing here talks to LDAP or hashes passwords: callers pass hashes in.
DNs come from :mod:`mailrouter.directory` (the one place they are built).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from mailrouter import names
from mailrouter.directory import admin_group_dn, alias_dn, domain_dn, no_lockout_policy_dn, person_dn, user_dn

Attributes = dict[str, list[str]]


@dataclass(frozen=True)
class Entry:
    dn: str
    attributes: Attributes = field(default_factory=dict)


def domain_entry(domain: str, base_dn: str, description: str | None = None) -> Entry:
    names.domain(domain)
    attributes: Attributes = {"objectClass": ["mailDomain"], "dc": [domain]}
    if description:
        attributes["description"] = [description]
    return Entry(domain_dn(domain, base_dn), attributes)


def user_entry(
    local: str,
    domain: str,
    base_dn: str,
    *,
    password_hash: str | None,
    uid_number: int,
    gid_number: int,
    mailbox: str,
    quota: str | None = None,
    active: bool = True,
    full_name: str | None = None,
    password_stamp: str | None = None,
    mailbox_format: str | None = None,
) -> Entry:
    """``mailbox_format``: ``mailMessageFormat`` (mbox/maildir; None: the hub's default).
    ``password_stamp``: the ``mailPasswordScheme`` value (``directory.password_stamp``),
    for entries loaded with slapadd; an LDAP add stamps after the add instead, since
    slapd's ppolicy gives the add its own ``pwdChangedTime``."""
    names.local_part(local)
    names.domain(domain)
    address = f"{local}@{domain}"
    attributes: Attributes = {
        "objectClass": ["mailUser", "posixAccount"],
        "uid": [local],
        "dc": [domain],
        "mail": [address],
        "cn": [full_name or address],
        "uidNumber": [str(uid_number)],
        "gidNumber": [str(gid_number)],
        "homeDirectory": ["/nonexistent"],
        "loginShell": ["/usr/sbin/nologin"],
        "mailMessageStore": [mailbox],
        "mailAccountStatus": ["active" if active else "disabled"],
    }
    if password_hash:
        attributes["userPassword"] = [password_hash]
        if password_stamp:
            attributes["mailPasswordScheme"] = [password_stamp]
    if quota:
        attributes["mailQuota"] = [quota]
    if mailbox_format:
        attributes["mailMessageFormat"] = [mailbox_format]
    return Entry(user_dn(local, domain, base_dn), attributes)


def alias_entry(name: str, domain: str, base_dn: str, targets: list[str]) -> Entry:
    names.local_part(name)
    names.domain(domain)
    attributes: Attributes = {
        "objectClass": ["mailAlias"],
        "mailAlias": [name],
        "dc": [domain],
        "mail": [f"{name}@{domain}"],
    }
    if targets:
        attributes["mailAliasedName"] = list(targets)
    return Entry(alias_dn(name, domain, base_dn), attributes)


def admin_group_entry(domain: str | None, base_dn: str, members: list[str]) -> Entry:
    """``cn=admin,dc=DOMAIN,BASE`` (or the global ``cn=admin,BASE`` for ``None``)."""
    return Entry(
        admin_group_dn(domain, base_dn),
        {
            "objectClass": ["groupOfNames"],
            "cn": ["admin"],
            "description": [f"Administrators of {domain or 'every domain'}"],
            "member": list(members),
        },
    )


def person_entry(uid: str, base_dn: str, password_hash: str | None) -> Entry:
    """A top-level account such as a global admin: ``uid=NAME,BASE``, exempt from
    the lockout like the seed's admin (an attacker must not lock the admins out)."""
    attributes: Attributes = {
        "objectClass": ["inetOrgPerson"],
        "uid": [uid],
        "cn": [uid],
        "sn": [uid],
        "pwdPolicySubentry": [no_lockout_policy_dn(base_dn)],
    }
    if password_hash:
        attributes["userPassword"] = [password_hash]
    return Entry(person_dn(uid, base_dn), attributes)


def _ldif_line(name: str, value: str) -> str:
    safe = (
        value.isascii()
        and value.isprintable()
        and not value.startswith((" ", ":", "<"))
        and not value.endswith(" ")
    )
    if safe:
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def to_ldif(entries: list[Entry]) -> str:
    """RFC 2849 LDIF for slapadd/ldapadd; unsafe values are base64-encoded."""
    blocks = []
    for entry in entries:
        lines = [_ldif_line("dn", entry.dn)]
        for name, values in entry.attributes.items():
            lines.extend(_ldif_line(name, value) for value in values)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
