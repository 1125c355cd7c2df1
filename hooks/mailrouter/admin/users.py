"""Mailbox users: ``uid=LOCAL,dc=DOMAIN,BASE`` (mailUser + posixAccount).

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.  Passwords arrive as strings: reading them is the caller's job.

Shapes every answer shares: ``quota`` is an object ``{"limit", "limit_bytes",
"used_bytes"}`` (:func:`mailrouter.admin.probes.quota_object`), ``mailbox`` is
the path delivery really writes (built from the configured template; the
``mailMessageStore`` attribute, which delivery ignores, is shown apart as
``mail_message_store``), ``format`` is the format delivery really uses (the
user's ``mailMessageFormat``, else the hub's ``spool.format``:
:func:`mailrouter.mailbox.spool.user_format`), ids are numbers.  ``show_user`` also gives the
outbound limit: ``rate_limit`` (the user's own ``mailRateLimit`` or null) and
what applies (:func:`mailrouter.admin.ratelimits.effective`).  A change that finds the value
already in place answers ``changed: false`` and writes nothing.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from mailrouter import entries, passwords
from mailrouter.admin import admins, ratelimits
from mailrouter.admin.normalise import normalise_address, normalise_domain, normalise_format, normalise_quota
from mailrouter.admin.probes import quota_object
from mailrouter.admin.session import AdminSession, Page
from mailrouter.directory import (
    MODIFY_ADD,
    MODIFY_DELETE,
    MODIFY_REPLACE,
    RATE_LIMIT,
    escape_filter_value,
    first,
    user_rdn,
    values,
)
from mailrouter.errors import AdminError, ConfigError, InvalidName
from mailrouter.mailbox import maildir, spool
from mailrouter.mailbox.usage import mailbox_usage

USER_READ = ("uid", "dc", "mail", "cn", "mailQuota", "mailAccountStatus", "mailMessageStore",
             "uidNumber", "gidNumber", "mailRateLimit", "mailMessageFormat")
FORMAT = "mailMessageFormat"


def user_entry(
    s: AdminSession,
    local: str,
    domain: str,
    password: str | None,
    *,
    quota: str | None = None,
    active: bool = True,
    full_name: str | None = None,
    mailbox_format: str | None = None,
) -> entries.Entry:
    """The entry of a new user, as ``user add`` and the importers create it
    (``mailbox_format`` None: no ``mailMessageFormat``, the hub's default applies)."""
    try:
        mailbox = spool.mailbox_path(s.config.spool.template_for(mailbox_format or s.config.spool.format),
                                     local, domain)
    except InvalidName as exc:
        raise AdminError(f"invalid address {local}@{domain}: {exc}", field="address") from None
    if password == "":
        raise AdminError("empty password refused", field="password")
    password_hash = passwords.configured_hash(password, s.config.auth) if password else None
    return entries.user_entry(
        local, domain, s.base_dn,
        password_hash=password_hash,
        uid_number=s.config.spool.storage_uid,
        gid_number=s.config.spool.storage_gid,
        mailbox=mailbox,
        quota=quota,
        active=active,
        full_name=full_name,
        mailbox_format=mailbox_format,
    )


def format_of(s: AdminSession, raw_format: str | None) -> str | None:
    """The format delivery uses for a user with this ``mailMessageFormat`` (``None``: garbled,
    the user's mail waits until an admin sets mbox or maildir)."""
    try:
        return spool.user_format(raw_format, s.config.spool)
    except ConfigError:
        return None


def mailbox_of(s: AdminSession, local: str, domain: str, mailbox_format: str | None) -> str | None:
    """The mailbox delivery writes for ``local@domain`` in ``mailbox_format``
    (``None``: the name cannot have one, or the format is garbled)."""
    if mailbox_format is None:
        return None
    try:
        return spool.mailbox_path(s.config.spool.template_for(mailbox_format), local, domain)
    except InvalidName:
        return None


def usage_of(s: AdminSession, local: str, domain: str, mailbox_format: str | None) -> int | None:
    """Bytes in the mailbox, 0 when there is none yet, ``None`` when it cannot be read here."""
    path = mailbox_of(s, local, domain, mailbox_format)
    return None if path is None or mailbox_format is None else mailbox_usage(path, mailbox_format)


def address_taken(address: str, by: str) -> str:
    """The one refusal of a second entry for ``address`` (``by``: "an alias", "a user")."""
    return (f"{address} is already {by}: an address is either a user or an alias, not both "
            f"(remove {by.split()[-1]} {address} first)")


def _alias_exists(s: AdminSession, local: str, domain: str) -> bool:
    return s.read(s.alias_dn(local, domain), "mailAlias", ["mailAlias"]) is not None


def add_user(
    s: AdminSession,
    address: str,
    password: str | None,
    quota: str | None = None,
    name: str | None = None,
    enabled: bool = True,
    admin: bool = False,
    mailbox_format: str | None = None,
) -> dict[str, Any]:
    """Add a user (``password`` None: cannot log in yet); ``mailbox_format`` (mbox or
    maildir) is stored as ``mailMessageFormat`` (None: the hub's default); ``admin`` also makes them
    an admin of their domain -- undone together if that second step fails.
    An address is either a user or an alias: with an alias of the same name
    this is refused (``conflict``; slapd's slapo-unique refuses it too)."""
    local, domain = normalise_address(address)
    quota_value = normalise_quota(quota) if quota is not None else None
    format_value = normalise_format(mailbox_format) if mailbox_format else None
    # A domain slapd hides from this admin is "no such domain" before anything else:
    # an add there would let slapd say "already exists" and disclose its entries.
    s.require_domain(domain)
    if _alias_exists(s, local, domain):
        raise AdminError(address_taken(f"{local}@{domain}", "an alias"), kind="conflict", field="address")
    entry = user_entry(s, local, domain, password, quota=quota_value, active=enabled, full_name=name,
                       mailbox_format=format_value)
    s.add(entry, f"add users in {s.domain_dn(domain)}", f"user {local}@{domain}", f"no such domain {domain}")
    if password:
        s.stamp_password_scheme(entry.dn, passwords.configured_label(s.config.auth))
    if admin:
        admins.add_to_domain_group(s, entry.dn, domain)
    s.commit()
    extra = " (domain admin)" if admin else ""
    mailbox_format = format_value or s.config.spool.format
    return {"ok": True, "message": f"added user {local}@{domain}{extra}", "address": f"{local}@{domain}",
            "dn": entry.dn, "admin": admin, "hidden_by_alias": False, "format": mailbox_format}


def _existing(s: AdminSession, address: str) -> tuple[str, str, str]:
    """``(local, domain, dn)`` of an existing user, else AdminError ``not_found``."""
    local, domain = normalise_address(address)
    dn = s.user_dn(local, domain)
    if s.read(dn, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{domain}", kind="not_found")
    return local, domain, dn


def remove_user(s: AdminSession, address: str) -> dict[str, Any]:
    """Remove the entry (and its admin membership).  The mailbox stays on disk --
    mail is data, and this may not run on the mail host -- and the answer says
    where it is (``mailbox``, ``mailbox_bytes``: ``None`` when it cannot be seen here)."""
    local, domain, dn = _existing(s, address)
    mailbox_format = format_of(s, first(_read_user(s, local, domain), FORMAT))
    # Admin membership goes first (undoable); the delete, which cannot be undone
    # with its password hash, is the last step.
    revoked = admins.remove_from_group(s, dn, s.group_dn(domain), domain)
    s.delete(dn, None, f"remove users in {s.domain_dn(domain)}", f"user {local}@{domain}")
    s.commit()
    path = mailbox_of(s, local, domain, mailbox_format)
    used = usage_of(s, local, domain, mailbox_format)
    message = f"removed user {local}@{domain}"
    if used:
        message += (f"; its mailbox {path} ({used} bytes) was left on disk: delete it when it is "
                    "no longer needed")
    elif used is None:
        message += f"; its mailbox {path}, if any, was left on disk (not readable here)"
    return {"ok": True, "message": message, "address": f"{local}@{domain}", "was_admin": revoked,
            "mailbox": path, "mailbox_bytes": used}


def _row(s: AdminSession, attributes: dict[str, Any]) -> dict[str, Any]:
    local = first(attributes, "uid") or ""
    domain = first(attributes, "dc") or ""
    mailbox_format = format_of(s, first(attributes, FORMAT))
    return {
        "address": first(attributes, "mail"),
        "name": first(attributes, "cn"),
        "quota": quota_object(first(attributes, "mailQuota"), usage_of(s, local, domain, mailbox_format)),
        "status": first(attributes, "mailAccountStatus") or "active",
        "format": mailbox_format,
    }


def list_users(
    s: AdminSession,
    domain: str | None,
    contains: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> Page:
    """The users of ``domain`` ordered by address (``contains`` matches the local
    part); without a domain, the users of every domain this admin can see
    (``contains`` matches the address)."""
    if domain is None:
        found, total = s.page(
            s.base_dn, "mailUser", "mail", USER_READ,
            contains=contains, offset=offset, limit=limit, key=lambda mail: mail.lower(), subtree=True,
        )
        return Page([_row(s, a) for _, a in found], total, offset, limit)
    name = normalise_domain(domain)
    s.require_domain(name)
    found, total = s.page(
        s.domain_dn(name), "mailUser", "uid", USER_READ,
        contains=contains, offset=offset, limit=limit, key=lambda uid: f"{uid}@{name}",
    )
    return Page([_row(s, a) for _, a in found], total, offset, limit)


def _read_user(s: AdminSession, local: str, domain: str) -> dict[str, Any]:
    attributes = s.read(s.user_dn(local, domain), "mailUser", USER_READ)
    if attributes is None:
        raise AdminError(f"no such user {local}@{domain}", kind="not_found")
    return attributes


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def show_user(s: AdminSession, address: str) -> dict[str, Any]:
    local, domain = normalise_address(address)
    dn = s.user_dn(local, domain)
    attributes = _read_user(s, local, domain)
    group = s.read(s.group_dn(domain), "groupOfNames", ["member"])
    return {
        **_row(s, attributes),
        "dn": dn,
        "mailbox": mailbox_of(s, local, domain, format_of(s, first(attributes, FORMAT))),
        "mailbox_format": format_of(s, first(attributes, FORMAT)),
        "mail_message_format": first(attributes, FORMAT),  # as stored; None: the hub's default
        "mail_message_store": first(attributes, "mailMessageStore"),
        "uid": _number(first(attributes, "uidNumber")),
        "gid": _number(first(attributes, "gidNumber")),
        "domain_admin": bool(group) and dn.lower() in (m.lower() for m in values(group or {}, "member")),
        "hidden_by_alias": _alias_exists(s, local, domain),
        "rate_limit": first(attributes, RATE_LIMIT),
        **ratelimits.effective(s, local, domain),
    }


def set_password(s: AdminSession, address: str, password: str) -> dict[str, Any]:
    """Replace ``userPassword`` with a hash made with the config's
    ``auth.password_scheme`` -- the scheme ``user add`` and ``mailrouter-passwd`` use,
    so every password this project writes is hashed by one rule
    (:func:`mailrouter.passwords.hash_password`).  Self-service works through the
    ``by self =wx`` ACL, an admin's through the admin clauses.  Not undoable."""
    local, domain = normalise_address(address)
    if not password:
        raise AdminError("empty password refused", field="password")
    password_hash = passwords.configured_hash(password, s.config.auth)
    dn = s.user_dn(local, domain)
    s.modify(dn, {"userPassword": (MODIFY_REPLACE, [password_hash])}, None,
             f"change the password of {local}@{domain}", f"user {local}@{domain}",
             f"no such user {local}@{domain}")
    s.stamp_password_scheme(dn, passwords.configured_label(s.config.auth))
    return {"ok": True, "message": f"changed the password of {local}@{domain}",
            "address": f"{local}@{domain}"}


def _replace(s: AdminSession, address: str, attribute: str, value: str, verb: str) -> tuple[str, bool]:
    """Replace one attribute; ``(address, changed)`` -- no write when it already holds ``value``."""
    local, domain = normalise_address(address)
    attributes = _read_user(s, local, domain)
    if first(attributes, attribute) == value or (
        attribute == "mailAccountStatus" and (first(attributes, attribute) or "active") == value
    ):
        return f"{local}@{domain}", False
    s.modify(s.user_dn(local, domain), {attribute: (MODIFY_REPLACE, [value])}, None,
             f"{verb} of {local}@{domain}", f"user {local}@{domain}")
    return f"{local}@{domain}", True


def set_quota(s: AdminSession, address: str, quota: str) -> dict[str, Any]:
    value = normalise_quota(quota)
    canonical, changed = _replace(s, address, "mailQuota", value, "change the quota")
    local, _, domain = canonical.partition("@")
    mailbox_format = format_of(s, first(_read_user(s, local, domain), FORMAT))
    verb = "is now" if changed else "is already"
    return {"ok": True, "message": f"quota of {canonical} {verb} {value}", "address": canonical,
            "quota": quota_object(value, usage_of(s, local, domain, mailbox_format)), "changed": changed}


def set_enabled(s: AdminSession, address: str, enabled: bool) -> dict[str, Any]:
    status = "active" if enabled else "disabled"
    verb = "enable" if enabled else "disable"
    canonical, changed = _replace(s, address, "mailAccountStatus", status, f"{verb} the account")
    return {"ok": True, "message": f"{canonical} is {'now' if changed else 'already'} {status}",
            "address": canonical, "status": status, "changed": changed}


def set_name(s: AdminSession, address: str, name: str) -> dict[str, Any]:
    """The full name (``cn``); empty resets it to the address, as ``user add`` does."""
    value = " ".join(name.split())
    local, domain = normalise_address(address)
    if not value.isprintable():
        raise AdminError("a name must be printable text", field="name")
    canonical, changed = _replace(s, address, "cn", value or f"{local}@{domain}", "change the name")
    return {"ok": True, "message": f"name of {canonical} is {'now' if changed else 'already'} "
            f"{value or canonical}", "address": canonical, "name": value or canonical, "changed": changed}


# -- rename -------------------------------------------------------------------------------
def rename_user(s: AdminSession, address: str, new_address: str) -> dict[str, Any]:
    """Rename a user within their domain: the entry (``uid``, ``mail``, ``cn`` when it
    was the address, ``mailMessageStore``), their admin membership and every alias
    target naming the old address (in the domains this admin can see) follow, each
    step undone if a later one fails.  Then the mailbox is moved to the new
    address's path when it can be done safely here (``mailbox.moved``); otherwise
    ``mailbox.note`` says what to move by hand.  The old address stops receiving
    mail (add an alias for it to keep it); mail already routed to it may still
    arrive at the old path."""
    old_local, domain, old_dn = _existing(s, address)
    new_local, new_domain = normalise_address(new_address, field="new_address")
    if new_domain != domain:
        raise AdminError(f"a rename keeps the domain ({domain}); to move a user to {new_domain}, add a new "
                         "user there and remove this one", field="new_address")
    old, new = f"{old_local}@{domain}", f"{new_local}@{domain}"
    if new_local == old_local:
        raise AdminError(f"{old} already has that name", field="new_address")
    if s.read(s.user_dn(new_local, domain), "mailUser", ["uid"]) is not None:
        raise AdminError(f"user {new} already exists", kind="exists", field="new_address")
    if _alias_exists(s, new_local, domain):
        raise AdminError(address_taken(new, "an alias"), kind="conflict", field="new_address")
    attributes = _read_user(s, old_local, domain)
    action = f"rename users in {s.domain_dn(domain)}"
    new_dn = s.user_dn(new_local, domain)
    group = s.group_dn(domain)

    def admin_entries() -> list[str]:
        members = values(s.read(group, "groupOfNames", ["member"]) or {}, "member")
        return [m for m in members if m.lower() == old_dn.lower()]

    was_admin = bool(admin_entries())
    s.rename(old_dn, user_rdn(new_local), user_rdn(old_local), action, f"user {new}")
    changes: dict[str, tuple[str, list[str]]] = {"mail": (MODIFY_REPLACE, [new])}
    undo: dict[str, tuple[str, list[str]]] = {"mail": (MODIFY_REPLACE, values(attributes, "mail") or [old])}
    if first(attributes, "cn") == old:
        changes["cn"], undo["cn"] = (MODIFY_REPLACE, [new]), (MODIFY_REPLACE, [old])
    mailbox_format = format_of(s, first(attributes, FORMAT))
    store = mailbox_of(s, new_local, domain, mailbox_format)
    if store and values(attributes, "mailMessageStore"):
        changes["mailMessageStore"] = (MODIFY_REPLACE, [store])
        undo["mailMessageStore"] = (MODIFY_REPLACE, values(attributes, "mailMessageStore"))
    s.modify(new_dn, changes, undo, action, f"user {new}")
    # slapd's slapo-refint renames the member value with the entry (ldap/slapd.conf);
    # a slapd without it still holds the old DN, which is replaced here.
    stale = admin_entries()
    if stale:
        s.modify(group, {"member": (MODIFY_ADD, [new_dn])}, {"member": (MODIFY_DELETE, [new_dn])},
                 f"change the admins of {domain}", f"admin group of {domain}")
        s.modify(group, {"member": (MODIFY_DELETE, stale)}, {"member": (MODIFY_ADD, stale)},
                 f"change the admins of {domain}", f"admin group of {domain}")
    retargeted = []
    naming_old = f"(&(objectClass=mailAlias)(mailAliasedName={escape_filter_value(old)}))"
    for dn, alias in s.search(s.base_dn, naming_old, ["mailAlias", "dc", "mailAliasedName"], subtree=True):
        targets = values(alias, "mailAliasedName")
        replaced = [new if t.lower() == old else t for t in targets]
        s.modify(dn, {"mailAliasedName": (MODIFY_REPLACE, list(dict.fromkeys(replaced)))},
                 {"mailAliasedName": (MODIFY_REPLACE, targets)},
                 f"change aliases in {dn.split(',', 1)[1]}", f"alias {first(alias, 'mailAlias')}")
        retargeted.append(f"{first(alias, 'mailAlias')}@{first(alias, 'dc')}")
    s.commit()
    mailbox = move_mailbox(s, old_local, new_local, domain, mailbox_format)
    message = f"renamed {old} to {new}"
    if retargeted:
        message += f"; alias targets updated in {', '.join(sorted(retargeted))}"
    message += f"; mailbox: {mailbox['note']}"
    return {"ok": True, "message": message, "address": new, "old_address": old, "dn": new_dn,
            "admin": was_admin, "aliases_updated": sorted(retargeted), "mailbox": mailbox}


def move_mailbox(
    s: AdminSession, old_local: str, new_local: str, domain: str, mailbox_format: str | None
) -> dict[str, Any]:
    """Move the mailbox of ``old_local@domain`` to the path of ``new_local@domain``.

    The same rules as delivery: below the spool root no symlink is followed (each
    directory opened ``O_NOFOLLOW``), a symlinked mailbox is left alone; nothing
    is overwritten; an mbox with a dotlock (a delivery or POP3 session at work) is
    left alone.  What is renamed is the first path element that differs (the
    mbox file, or a per-user directory of a Maildir template)."""
    source = mailbox_of(s, old_local, domain, mailbox_format)
    target = mailbox_of(s, new_local, domain, mailbox_format)
    result: dict[str, Any] = {"from": source, "to": target, "moved": False}
    if source is None or target is None or mailbox_format is None:
        return {**result, "note": "the names cannot have a mailbox under the configured template"}
    root = spool.spool_root(s.config.spool.template_for(mailbox_format))
    old_parts, new_parts = source[len(root):].split("/"), target[len(root):].split("/")
    index = next(i for i, (a, b) in enumerate(zip(old_parts, new_parts, strict=True)) if a != b)
    parents, old_name, new_name = old_parts[:index], old_parts[index], new_parts[index]
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return {**result, "note": f"spool {root} not reachable here ({exc.strerror}): move {source} to "
                f"{target} on the mail host"}
    try:
        for part in parents:
            next_fd = maildir.open_dir(part, fd, create=False)
            os.close(fd)
            fd = next_fd
        before = os.stat(old_name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(before.st_mode):
            return {**result, "note": f"{source} is a symlink: left alone"}
        for name in (new_name, new_name + ".lock", old_name + ".lock"):
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if name.startswith(old_name):
                return {**result, "note": f"{source} is locked (a delivery or a POP3 session): move it to "
                        f"{target} by hand later"}
            return {**result, "note": f"{target} already exists: {source} left alone, merge them by hand"}
        os.rename(old_name, new_name, src_dir_fd=fd, dst_dir_fd=fd)
    except FileNotFoundError:
        return {**result, "note": "no mailbox yet, nothing to move"}
    except OSError as exc:
        return {**result, "note": f"not moved ({exc.strerror}): move {source} to {target} on the mail host"}
    finally:
        os.close(fd)
    return {**result, "moved": True, "note": f"moved {source} to {target}"}


# -- mailbox format -----------------------------------------------------------------------
def _mail_held(s: AdminSession, local: str, domain: str, mailbox_format: str) -> str | None:
    """Why the ``mailbox_format`` store of ``local@domain`` is not empty, or cannot be
    known to be empty here (``None``: empty).  The store is the mailbox delivery writes
    plus the user's IMAP folders (Maildir++ folders inside a Maildir, counted by
    ``mailbox_usage``; the mbox files in ``spool.mbox_folders`` for mbox)."""
    path = mailbox_of(s, local, domain, mailbox_format)
    if path is None:
        return "the address cannot have a mailbox under the configured template"
    used = mailbox_usage(path, mailbox_format)
    if used is None:
        return f"its {mailbox_format} mailbox {path} cannot be read here (run this as root on the mail host)"
    if used:
        return f"its {mailbox_format} mailbox {path} holds {used} bytes"
    if mailbox_format == "mbox":
        for name in (path + ".lock",):
            if os.path.lexists(name):
                return f"its mbox {path} is locked (a delivery or a POP3 session): try again"
        folders = spool.mbox_folders(s.config.spool, local, domain)
        try:
            held = _mbox_folders_with_mail(folders)
        except OSError as exc:
            return f"its IMAP folders {folders} cannot be read here ({exc.strerror})"
        if held:
            return f"its IMAP folders in {folders} are not empty ({', '.join(held[:5])})"
    return None


def _mbox_folders_with_mail(folders: str) -> list[str]:
    """The folders (mbox files, relative paths) below ``folders`` that hold any byte.

    Hidden entries are Dovecot's own (``.imap`` indexes, ``.subscriptions``), not
    mail; empty files are the folders a client made (Sent, Trash); a symlink
    is never followed and counts as mail (its target cannot be vouched for)."""
    held: list[str] = []

    def fail(exc: OSError) -> None:
        raise exc

    if not os.path.lexists(folders):
        return held
    if not os.path.isdir(folders) or os.path.islink(folders):
        return [os.path.basename(folders)]
    for top, dirs, files in os.walk(folders, onerror=fail, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = os.path.join(top, name)
            if name.startswith("."):
                continue
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > 0:
                held.append(os.path.relpath(path, folders))
    return sorted(held)


def set_format(s: AdminSession, address: str, mailbox_format: str) -> dict[str, Any]:
    """Switch the user's mailbox format (``mailMessageFormat``: mbox or maildir).

    Never loses mail, by refusing rather than converting: refused (``conflict``)
    while the store of the current format holds any mail -- the mailbox delivery
    writes and the user's IMAP folders (:func:`_mail_held`) -- or cannot be read
    here, or its mbox is locked.  The user empties it first (fetch over POP3,
    move over IMAP, or an admin moves the files).  Then the attribute is written,
    and the old store is checked once more: a message routed before the write
    and stored after the check would land in the old format, so then the write
    is undone and the switch refused ("try again").  Setting the format the
    user already has (e.g. pinning the hub's default) moves nothing and is
    always allowed.
    """
    value = normalise_format(mailbox_format)
    local, domain = normalise_address(address)
    canonical = f"{local}@{domain}"
    dn = s.user_dn(local, domain)
    raw = first(_read_user(s, local, domain), FORMAT)
    if raw == value:
        return {"ok": True, "message": f"mailbox format of {canonical} is already {value}",
                "address": canonical, "format": value, "changed": False}
    current = format_of(s, raw)  # None: garbled, nothing was ever delivered under it
    moving = current is not None and current != value
    if moving:
        assert current is not None
        why = _mail_held(s, local, domain, current)
        if why:
            raise AdminError(f"not switching {canonical} to {value}: {why}; empty it first "
                             "(a switch never leaves mail behind in the old format)", kind="conflict",
                             field="format")
    undo = {FORMAT: (MODIFY_REPLACE, [raw])} if raw else {FORMAT: (MODIFY_DELETE, [])}
    s.modify(dn, {FORMAT: (MODIFY_REPLACE, [value])}, undo, f"change the mailbox format of {canonical}",
             f"user {canonical}", f"no such user {canonical}")
    if moving:
        assert current is not None
        why = _mail_held(s, local, domain, current)
        if why:
            raise AdminError(f"not switching {canonical} to {value}: mail arrived meanwhile ({why}); "
                             "try again once it is empty", kind="conflict", field="format")
    s.commit()
    return {"ok": True, "message": f"mailbox format of {canonical} is now {value}", "address": canonical,
            "format": value, "changed": True,
            "mailbox": mailbox_of(s, local, domain, value)}
