"""Mailbox locations and the storage ids: built from the configuration, never taken from LDAP.

Why: a domain admin can write any attribute of their users, including
``mailMessageStore``; trusting it would let them point delivery at any file
the storage account can write.  The path is built from the template and the
*canonical* local part and domain only, and checked to stay inside the
template's fixed directory prefix.

The storage-id rule (:func:`storage_ids` for the side that reads LDAP,
:func:`check_ids` for the side that delivers; one rule, stated once):

* mail is never stored as root: uid 0 and gid 0 are refused;
* with ``spool.per_user_ids`` off (the default, as the seed mandates) every
  mailbox belongs to the one storage account (``spool.storage_user``);
* with it on, to the user's own ``uidNumber``/``gidNumber``, both at or
  above ``spool.min_uid``.  Only global admins can give an account such ids
  (``ldap/acl.conf`` rule 3: domain admins add accounts with the storage
  account's ids only, which this rule then refuses -- the mail waits until a
  global admin has chosen the account's uid).

The format rule (:func:`user_format`, one rule for routing, the quota checks,
Dovecot's mail location and the admin tools): a user's ``mailMessageFormat``
(``mbox`` or ``maildir``, case-insensitive) when set, else the hub's
``spool.format``.  Each format has its own template (``spool.mbox_template``,
``spool.maildir_template``), so the two never share a path.

Errors are :class:`~mailrouter.errors.ConfigError` (temporary: an admin fixes
the entry or the configuration and the queued mail goes through).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from mailrouter import names
from mailrouter.errors import ConfigError, InvalidName, TemporaryFailure
from mailrouter.mailbox.addressdata import FORMATS

if TYPE_CHECKING:
    from mailrouter.config import SpoolConfig


def user_format(raw: str | None, spool_config: SpoolConfig, *, who: str = "user") -> str:
    """The format ``who``'s mail is stored in, given their raw ``mailMessageFormat``.

    Absent or empty: the hub's ``spool.format``.  Anything but mbox/maildir is a
    :class:`ConfigError`: the mail waits (451/defer) until an admin fixes the entry,
    rather than being stored where the user's IMAP server does not look.
    """
    if raw is None or not raw.strip():
        return spool_config.format
    value = raw.strip().lower()
    if value not in FORMATS:
        raise ConfigError(f"{who}: mailMessageFormat {raw[:20]!r} is neither mbox nor maildir")
    return value


def user_mailbox(
    local: str, domain: str, raw_format: str | None, spool_config: SpoolConfig
) -> tuple[str, str]:
    """``(path, format)`` of the mailbox of ``local@domain`` with that ``mailMessageFormat``."""
    mailbox_format = user_format(raw_format, spool_config, who=f"{local}@{domain}")
    return mailbox_path(spool_config.template_for(mailbox_format), local, domain), mailbox_format


def imap_home(spool_config: SpoolConfig, local: str, domain: str) -> str:
    """The user's home for IMAP (Dovecot's ``~``): the parent of their Maildir path.

    A Maildir user's IMAP folders are Maildir++ folders inside the Maildir; an
    mbox user's are mbox files in :func:`mbox_folders` (``~/mail``), the INBOX
    being the mbox delivery writes.
    """
    return os.path.dirname(mailbox_path(spool_config.maildir_template, local, domain).rstrip("/"))


def mbox_folders(spool_config: SpoolConfig, local: str, domain: str) -> str:
    """Where an mbox user's IMAP folders live (Dovecot: ``mbox:~/mail:INBOX=<mbox>``)."""
    return os.path.join(imap_home(spool_config, local, domain), "mail")


def spool_root(template: str) -> str:
    """The fixed directory part of a template: everything before the first field."""
    head = template.split("{", 1)[0]
    return head if head.endswith("/") else os.path.dirname(head) + "/"


def mailbox_path(template: str, local: str, domain: str) -> str:
    """The mailbox (mbox file or Maildir directory) of ``local@domain``."""
    names.local_part(local)
    names.domain(domain)
    path = template.format(local=local, domain=domain)
    root = spool_root(template)
    normal = os.path.normpath(path)
    if normal != path or not normal.startswith(root) or "/." in normal[len(root) - 1 :]:
        raise InvalidName(f"mailbox path for {local}@{domain} leaves the spool {root}")
    return path


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = ""
    seen: set[str] = set()
    for literal, field in re.findall(r"([^{]*)(\{local\}|\{domain\}|$)", template):
        pattern += re.escape(literal)
        if field:
            name = field[1:-1]
            pattern += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)"
            seen.add(name)
    return re.compile(pattern)


def check_mailbox_path(spool_config: SpoolConfig, path: str, mailbox_format: str) -> str:
    """The template of ``mailbox_format`` must produce exactly ``path``; return the template.

    The inverse of :func:`mailbox_path`, for the delivery side, which trusts no
    path it is given.  A mismatch or a non-canonical name is a
    :class:`TemporaryFailure` (a broken router, never a definite "no such user").
    """
    template = spool_config.template_for(mailbox_format)
    match = _template_regex(template).fullmatch(path)
    if not match:
        raise TemporaryFailure("mailbox path does not match the configured template")
    try:
        if mailbox_path(template, match.group("local"), match.group("domain")) != path:
            raise TemporaryFailure("mailbox path is not the canonical one")
    except InvalidName as exc:
        raise TemporaryFailure(f"mailbox path: {exc}") from exc
    return template


def check_ids(uid: int, gid: int, spool_config: SpoolConfig) -> None:
    """Refuse ``uid``/``gid`` unless the storage-id rule (module docstring) allows them."""
    if uid <= 0 or gid <= 0:
        raise ConfigError(f"uid/gid {uid}/{gid}: mail is never stored as root")
    if spool_config.per_user_ids:
        if uid < spool_config.min_uid or gid < spool_config.min_uid:
            raise ConfigError(f"uid/gid {uid}/{gid} below spool.min_uid {spool_config.min_uid}")
    elif (uid, gid) != (spool_config.storage_uid, spool_config.storage_gid):
        raise ConfigError(
            f"uid/gid {uid}/{gid} are not the storage account's ({spool_config.storage_user})"
        )


def become(uid: int, gid: int, spool_config: SpoolConfig) -> None:
    """Run as ``uid``/``gid`` from now on, if they pass :func:`check_ids` (never as root).

    The one privilege switch of every delivery front end: the pipe hook calls it
    when Exim ran it as root by mistake, ``mailrouter-lmtpd`` once at start (the
    storage account) or in a forked child per delivery (per-user ids).  As root
    it drops every supplementary group, then the gid, then the uid (for good:
    real, effective and saved ids).  As anyone else it changes nothing, and
    :func:`mailrouter.mailbox.store.deliver` refuses a uid that is not the target's.
    """
    check_ids(uid, gid, spool_config)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def storage_ids(
    uid_number: int | None, gid_number: int | None, spool_config: SpoolConfig, *, who: str = "user"
) -> tuple[int, int]:
    """uid/gid the mail of a user with these LDAP ids is stored under.

    ``uid_number``/``gid_number`` are the user's ``uidNumber``/``gidNumber``
    (``None`` when absent); they matter only with ``spool.per_user_ids``.
    ``who`` names the user in the error message.
    """
    if not spool_config.per_user_ids:
        uid, gid = spool_config.storage_uid, spool_config.storage_gid
    elif uid_number is None or gid_number is None:
        raise ConfigError(f"{who} has no usable uidNumber/gidNumber")
    else:
        uid, gid = uid_number, gid_number
    try:
        check_ids(uid, gid, spool_config)
    except ConfigError as exc:
        raise ConfigError(f"{who}: {exc}") from exc
    return uid, gid
