"""Domain and global admins: members of ``cn=admin,dc=DOMAIN,BASE`` / ``cn=admin,BASE``.

A domain's group is created with its first member and deleted with its last
(groupOfNames needs a member).  Global admins are accounts directly under the
base (``uid=NAME,BASE``): an account inside a domain could have its password
reset by that domain's admins (ldap/acl.conf).

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.
"""

from __future__ import annotations

from typing import Any

from mailrouter import entries, passwords
from mailrouter.admin.normalise import normalise_address, normalise_domain
from mailrouter.admin.session import AdminSession, resolve_login
from mailrouter.directory import MODIFY_ADD, MODIFY_DELETE, member_name, person_dn, values
from mailrouter.errors import AdminError


def add_to_domain_group(s: AdminSession, member_dn: str, domain: str) -> bool:
    """Make ``member_dn`` an admin of ``domain`` (undoable step); False when it already was."""
    group_dn = s.group_dn(domain)
    action = f"change the admins of {domain}"
    group = s.read(group_dn, "groupOfNames", ["member"])
    if group is None:
        s.require_domain(domain)  # hidden from this admin: not "already exists" (see users.add_user)
        entry = entries.admin_group_entry(domain, s.base_dn, [member_dn])
        s.add(entry, action, f"admin group of {domain}", f"no such domain {domain}")
        return True
    if member_dn.lower() in (m.lower() for m in values(group, "member")):
        return False
    s.modify(
        group_dn, {"member": (MODIFY_ADD, [member_dn])},
        {"member": (MODIFY_DELETE, [member_dn])}, action, f"admin group of {domain}",
    )
    return True


def remove_from_group(s: AdminSession, member_dn: str, group_dn: str, label: str) -> bool:
    """Remove ``member_dn`` from ``group_dn`` (undoable step); the group goes with its
    last member.  False when it was no member."""
    action = f"change the admins of {label}"
    group = s.read(group_dn, "groupOfNames", ["member", "description"])
    if group is None:
        return False
    members = values(group, "member")
    matching = [m for m in members if m.lower() == member_dn.lower()]
    if not matching:
        return False
    if len(members) == 1:
        # groupOfNames needs a member: the last one leaves with the group.
        restore = {"objectClass": ["groupOfNames"], "cn": ["admin"], "member": members}
        if values(group, "description"):
            restore["description"] = values(group, "description")
        s.delete(group_dn, restore, action, f"admin group of {label}")
    else:
        s.modify(
            group_dn, {"member": (MODIFY_DELETE, matching)},
            {"member": (MODIFY_ADD, matching)}, action, f"admin group of {label}",
        )
    return True


def _domain_member(s: AdminSession, who: str, domain: str | None) -> tuple[str, str, str, str]:
    """``(local, home domain, member DN, administered domain)`` of a domain admin."""
    local, home = normalise_address(who, field="who")
    target = normalise_domain(domain) if domain else home
    return local, home, s.user_dn(local, home), target


def grant_domain_admin(s: AdminSession, who: str, domain: str | None = None) -> dict[str, Any]:
    """Make the user ``who`` (an address) an admin of ``domain`` (default: their own)."""
    local, home, member, target = _domain_member(s, who, domain)
    if s.read(member, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{home}", kind="not_found", field="who")
    changed = add_to_domain_group(s, member, target)
    s.commit()
    verb = "is now" if changed else "is already"
    return {"ok": True, "message": f"{local}@{home} {verb} an admin of {target}", "admin": f"{local}@{home}",
            "member_dn": member, "domain": target, "changed": changed}


def revoke_domain_admin(s: AdminSession, who: str, domain: str | None = None) -> dict[str, Any]:
    local, home, member, target = _domain_member(s, who, domain)
    changed = remove_from_group(s, member, s.group_dn(target), target)
    s.commit()
    verb = "is no longer" if changed else "was not"
    return {"ok": True, "message": f"{local}@{home} {verb} an admin of {target}", "admin": f"{local}@{home}",
            "member_dn": member, "domain": target, "changed": changed}


def _global_member(s: AdminSession, name: str) -> str:
    if "@" in name:
        # acl.conf: a global admin inside dc=A could have its password reset by A's admins.
        raise AdminError("global admins are accounts directly under the base (a name, not an address)",
                         field="name")
    return resolve_login(s.config, name)


def grant_global_admin(
    s: AdminSession, name: str, create: bool = False, password: str | None = None
) -> dict[str, Any]:
    """Make the account ``name`` (``uid=NAME,BASE``, or a DN) a global admin;
    ``create`` adds the account first, with ``password``."""
    member = _global_member(s, name)
    if create:
        if not password:
            raise AdminError("a new account needs a password", field="password")
        uid = member.split(",", 1)[0].partition("=")[2]
        if person_dn(uid, s.base_dn).lower() != member.lower():
            raise AdminError(f"cannot create {member}: a new account is uid=NAME,{s.base_dn}", field="name")
        password_hash = passwords.configured_hash(password, s.config.auth)
        entry = entries.person_entry(uid, s.base_dn, password_hash)
        s.add(entry, f"add accounts under {s.base_dn}", f"account {entry.dn}")
    elif s.read(member, "top", ["1.1"]) is None:
        raise AdminError(f"no such account {member}; add --create to create it", kind="not_found",
                         field="name")
    group_dn = s.group_dn(None)
    group = s.read(group_dn, "groupOfNames", ["member"])
    changed = member.lower() not in [m.lower() for m in values(group or {}, "member")]
    if changed:
        if group is None:
            s.add(entries.admin_group_entry(None, s.base_dn, [member]),
                  "change the global admins", "the global admin group")
        else:
            s.modify(group_dn, {"member": (MODIFY_ADD, [member])},
                     {"member": (MODIFY_DELETE, [member])},
                     "change the global admins", "the global admin group")
    s.commit()
    name = member_name(member, s.base_dn)
    verb = "is now" if changed else "is already"
    return {"ok": True, "message": f"{name} {verb} a global admin", "admin": name, "member_dn": member,
            "changed": changed}


def revoke_global_admin(s: AdminSession, name: str) -> dict[str, Any]:
    member = _global_member(s, name)
    group = s.read(s.group_dn(None), "groupOfNames", ["member"])
    members = values(group or {}, "member")
    if len(members) == 1 and members[0].lower() == member.lower():
        raise AdminError("refusing to revoke the last global admin", kind="conflict")
    changed = remove_from_group(s, member, s.group_dn(None), "every domain")
    s.commit()
    name = member_name(member, s.base_dn)
    verb = "is no longer" if changed else "was not"
    return {"ok": True, "message": f"{name} {verb} a global admin", "admin": name, "member_dn": member,
            "changed": changed}


def names_of(s: AdminSession, member_dns: list[str]) -> list[str]:
    """Members as the rest of the tools name people: ``local@domain`` for a user,
    ``NAME`` for a global admin account (sorted)."""
    return sorted(member_name(dn, s.base_dn) for dn in member_dns)


def list_admins(s: AdminSession, domain: str | None = None) -> dict[str, Any]:
    """The admins of ``domain``, or the global admins for ``None``: ``admins`` as
    names (``local@domain``, or ``NAME`` for ``uid=NAME,BASE``), ``admin_dns`` as DNs."""
    name = normalise_domain(domain) if domain else None
    group = s.read(s.group_dn(name), "groupOfNames", ["member"])
    members = values(group or {}, "member")
    return {"domain": name, "admins": names_of(s, members), "admin_dns": sorted(members)}
