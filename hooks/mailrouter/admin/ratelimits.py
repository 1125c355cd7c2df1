"""Outbound rate limits: ``mailRateLimit`` on a user or a domain entry.

What a value means and how Exim enforces it: :mod:`mailrouter.ratelimit` (the
stored syntax) and :func:`mailrouter.routing.effective_rate_limit` (user, then
domain, then the setting ``default_rate_limit``, then unlimited).  A limit is
set by the domain's admins and global admins, never by the user
(ldap/acl.conf rule 4: slapd refuses, and the refusal is the answer).

A limit as typed: ``COUNT / PERIOD`` (``100/1h`` is stored ``100 / 1h``),
``unlimited`` (a value: it overrides the next level), or ``inherit`` (remove
the entry's own value: the next level applies).  Functions take a bound
:class:`~mailrouter.admin.session.AdminSession` first and return JSON-ready
data; they raise only AdminError, DirectoryUnavailable or TemporaryFailure.
"""

from __future__ import annotations

from typing import Any

from mailrouter import routing
from mailrouter.admin.normalise import normalise_address, normalise_domain, normalise_rate_limit
from mailrouter.admin.session import AdminSession
from mailrouter.directory import MODIFY_REPLACE, RATE_LIMIT, first
from mailrouter.errors import AdminError, ConfigError

INHERIT = "inherit"
HELP = "COUNT / PERIOD (100/1h: recipients per period; s, m, h, d, w), unlimited, or inherit"

_SOURCES = {
    "user": "the user's own",
    "domain": "the domain's",
    "default": "the system default (setting default_rate_limit)",
    "none": "set nowhere: unlimited",
}


def typed_limit(text: str) -> str | None:
    """The value to store for ``text``; ``None`` for ``inherit`` (remove it)."""
    if text.strip().lower() == INHERIT:
        return None
    return normalise_rate_limit(text)


def effective(s: AdminSession, local: str | None, domain: str) -> dict[str, Any]:
    """``effective_rate_limit`` (the limit Exim applies), ``rate_limit_source``
    (user, domain, default, none) and ``rate_limit_problem`` (why a stored
    value cannot be read: then submissions are deferred until it is fixed)."""
    try:
        choice = routing.effective_rate_limit(s.directory, local, domain)
    except ConfigError as exc:
        return {"effective_rate_limit": None, "rate_limit_source": None,
                "rate_limit_problem": f"{exc}: authenticated submissions are deferred until it is fixed"}
    return {"effective_rate_limit": choice.text, "rate_limit_source": choice.source,
            "rate_limit_problem": None}


def describe(info: dict[str, Any]) -> str:
    """One line for people: ``100 / 1h (the domain's)``."""
    if info.get("rate_limit_problem"):
        return f"unreadable: {info['rate_limit_problem']}"
    return f"{info['effective_rate_limit']} ({_SOURCES[info['rate_limit_source']]})"


def _change(s: AdminSession, dn: str, current: str | None, text: str, what: str,
            subject: str) -> tuple[str | None, bool]:
    """Store ``text``'s value on ``dn`` unless it is already there; ``(stored, changed)``."""
    wanted = typed_limit(text)
    if wanted == current:
        return wanted, False
    # A replace with no values removes the attribute (and is no error when it is absent).
    change = {RATE_LIMIT: (MODIFY_REPLACE, [wanted] if wanted is not None else [])}
    undo = {RATE_LIMIT: (MODIFY_REPLACE, [current] if current is not None else [])}
    s.modify(dn, change, undo, f"change the rate limit of {what}", subject)
    s.commit()
    return wanted, True


def set_user_rate_limit(s: AdminSession, address: str, limit: str) -> dict[str, Any]:
    """Set (or with ``inherit`` remove) the user's own limit; answers the limit that applies now."""
    local, domain = normalise_address(address)
    dn = s.user_dn(local, domain)
    attributes = s.read(dn, "mailUser", ["uid", RATE_LIMIT])
    if attributes is None:
        raise AdminError(f"no such user {local}@{domain}", kind="not_found")
    stored, changed = _change(s, dn, first(attributes, RATE_LIMIT), limit, f"{local}@{domain}",
                              f"user {local}@{domain}")
    info = {"rate_limit": stored, **effective(s, local, domain)}
    verb = "is now" if changed else "is already"
    return {"ok": True, "message": f"rate limit of {local}@{domain} {verb} {describe(info)}",
            "address": f"{local}@{domain}", "changed": changed, **info}


def set_domain_rate_limit(s: AdminSession, domain: str, limit: str) -> dict[str, Any]:
    """Set (or with ``inherit`` remove) the domain's limit, which applies to its
    users without one of their own; answers the limit that applies to them now."""
    name = normalise_domain(domain)
    dn = s.domain_dn(name)
    attributes = s.read(dn, "mailDomain", ["dc", RATE_LIMIT])
    if attributes is None:
        raise AdminError(f"no such domain {name}", kind="not_found")
    stored, changed = _change(s, dn, first(attributes, RATE_LIMIT), limit, f"domain {name}",
                              f"domain {name}")
    info = {"rate_limit": stored, **effective(s, None, name)}
    verb = "is now" if changed else "is already"
    return {"ok": True, "message": f"rate limit of {name}'s users {verb} {describe(info)}",
            "domain": name, "changed": changed, **info}
