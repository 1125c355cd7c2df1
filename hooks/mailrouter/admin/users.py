"""Mailbox users: ``uid=LOCAL,dc=DOMAIN,BASE`` (mailUser + posixAccount).

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.  Passwords arrive as strings: reading them is the caller's job.
"""

from __future__ import annotations

from typing import Any

from mailrouter import entries, passwords
from mailrouter.admin import admins
from mailrouter.admin.normalise import normalise_address, normalise_domain, normalise_quota
from mailrouter.admin.session import AdminSession, Page
from mailrouter.directory import MODIFY_REPLACE, first, values
from mailrouter.errors import AdminError, InvalidName
from mailrouter.mailbox import spool

USER_READ = ("uid", "dc", "mail", "cn", "mailQuota", "mailAccountStatus", "mailMessageStore",
             "uidNumber", "gidNumber")


def user_entry(
    s: AdminSession,
    local: str,
    domain: str,
    password: str | None,
    *,
    quota: str | None = None,
    active: bool = True,
    full_name: str | None = None,
) -> entries.Entry:
    """The entry of a new user, as ``user add`` and the importers create it."""
    try:
        mailbox = spool.mailbox_path(s.config.spool.template(), local, domain)
    except InvalidName as exc:
        raise AdminError(f"invalid address {local}@{domain}: {exc}", field="address") from None
    if password == "":
        raise AdminError("empty password refused", field="password")
    password_hash = passwords.hash_password(password, s.config.auth.password_scheme) if password else None
    return entries.user_entry(
        local, domain, s.base_dn,
        password_hash=password_hash,
        uid_number=s.config.spool.storage_uid,
        gid_number=s.config.spool.storage_gid,
        mailbox=mailbox,
        quota=quota,
        active=active,
        full_name=full_name,
    )


def add_user(
    s: AdminSession,
    address: str,
    password: str | None,
    quota: str | None = None,
    name: str | None = None,
    enabled: bool = True,
    admin: bool = False,
) -> dict[str, Any]:
    """Add a user (``password`` None: cannot log in yet); ``admin`` also makes them
    an admin of their domain -- undone together if that second step fails."""
    local, domain = normalise_address(address)
    quota_value = normalise_quota(quota) if quota is not None else None
    # A domain slapd hides from this admin is "no such domain" before anything else:
    # an add there would let slapd say "already exists" and disclose its entries.
    s.require_domain(domain)
    entry = user_entry(s, local, domain, password, quota=quota_value, active=enabled, full_name=name)
    s.add(entry, f"add users in {s.domain_dn(domain)}", f"user {local}@{domain}", f"no such domain {domain}")
    if password:
        s.stamp_password_scheme(entry.dn, passwords.scheme_label(s.config.auth.password_scheme))
    if admin:
        admins.add_to_domain_group(s, entry.dn, domain)
    s.commit()
    extra = " (domain admin)" if admin else ""
    return {"ok": True, "message": f"added user {local}@{domain}{extra}", "address": f"{local}@{domain}",
            "dn": entry.dn, "admin": admin}


def _existing(s: AdminSession, address: str) -> tuple[str, str, str]:
    """``(local, domain, dn)`` of an existing user, else AdminError ``not_found``."""
    local, domain = normalise_address(address)
    dn = s.user_dn(local, domain)
    if s.read(dn, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{domain}", kind="not_found")
    return local, domain, dn


def remove_user(s: AdminSession, address: str) -> dict[str, Any]:
    local, domain, dn = _existing(s, address)
    # Admin membership goes first (undoable); the delete, which cannot be undone
    # with its password hash, is the last step.
    revoked = admins.remove_from_group(s, dn, s.group_dn(domain), domain)
    s.delete(dn, None, f"remove users in {s.domain_dn(domain)}", f"user {local}@{domain}")
    s.commit()
    return {"ok": True, "message": f"removed user {local}@{domain}", "address": f"{local}@{domain}",
            "was_admin": revoked}


def _row(attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": first(attributes, "mail"),
        "name": first(attributes, "cn"),
        "quota": first(attributes, "mailQuota") or "0",
        "status": first(attributes, "mailAccountStatus") or "active",
    }


def list_users(
    s: AdminSession, domain: str, contains: str | None = None, offset: int = 0, limit: int | None = None
) -> Page:
    """The users of ``domain`` ordered by address; ``contains`` matches the local part."""
    name = normalise_domain(domain)
    s.require_domain(name)
    found, total = s.page(
        s.domain_dn(name), "mailUser", "uid", USER_READ,
        contains=contains, offset=offset, limit=limit, key=lambda uid: f"{uid}@{name}",
    )
    return Page([_row(a) for _, a in found], total, offset, limit)


def show_user(s: AdminSession, address: str) -> dict[str, Any]:
    local, domain = normalise_address(address)
    dn = s.user_dn(local, domain)
    attributes = s.read(dn, "mailUser", USER_READ)
    if attributes is None:
        raise AdminError(f"no such user {local}@{domain}", kind="not_found")
    group = s.read(s.group_dn(domain), "groupOfNames", ["member"])
    return {
        **_row(attributes),
        "dn": dn,
        "mailbox": first(attributes, "mailMessageStore"),
        "uid": first(attributes, "uidNumber"),
        "gid": first(attributes, "gidNumber"),
        "domain_admin": bool(group) and dn.lower() in (m.lower() for m in values(group or {}, "member")),
    }


def set_password(s: AdminSession, address: str, password: str) -> dict[str, Any]:
    """RFC 3062 Password Modify: slapd hashes with its ``password-hash`` ({ARGON2});
    self-service works through the ``by self =wx`` ACL, an admin's through the admin clauses."""
    local, domain = normalise_address(address)
    if not password:
        raise AdminError("empty password refused", field="password")
    s.password_modify(s.user_dn(local, domain), password, f"change the password of {local}@{domain}",
                      f"user {local}@{domain}", f"no such user {local}@{domain}")
    return {"ok": True, "message": f"changed the password of {local}@{domain}",
            "address": f"{local}@{domain}"}


def _replace(s: AdminSession, address: str, attribute: str, value: str, verb: str) -> str:
    local, domain, dn = _existing(s, address)
    s.modify(dn, {attribute: (MODIFY_REPLACE, [value])}, None, f"{verb} of {local}@{domain}",
             f"user {local}@{domain}")
    return f"{local}@{domain}"


def set_quota(s: AdminSession, address: str, quota: str) -> dict[str, Any]:
    value = normalise_quota(quota)
    canonical = _replace(s, address, "mailQuota", value, "change the quota")
    return {"ok": True, "message": f"quota of {canonical} is now {value}", "address": canonical,
            "quota": value}


def set_enabled(s: AdminSession, address: str, enabled: bool) -> dict[str, Any]:
    status = "active" if enabled else "disabled"
    verb = "enable" if enabled else "disable"
    canonical = _replace(s, address, "mailAccountStatus", status, f"{verb} the account")
    return {"ok": True, "message": f"{canonical} is now {status}", "address": canonical, "status": status}


def set_name(s: AdminSession, address: str, name: str) -> dict[str, Any]:
    """The full name (``cn``); empty resets it to the address, as ``user add`` does."""
    value = " ".join(name.split())
    local, domain = normalise_address(address)
    if not value.isprintable():
        raise AdminError("a name must be printable text", field="name")
    canonical = _replace(s, address, "cn", value or f"{local}@{domain}", "change the name")
    return {"ok": True, "message": f"name of {canonical} is now {value or canonical}", "address": canonical,
            "name": value or canonical}
