"""A domain's catch-all: the alias named ``default`` (the seed's "default alias").

The catchall router runs after aliases and users, so it receives every other
local part of the domain.  Functions take a bound
:class:`~mailrouter.admin.session.AdminSession` first and return JSON-ready data;
they raise only AdminError, DirectoryUnavailable or TemporaryFailure.
"""

from __future__ import annotations

from typing import Any

from mailrouter.admin import aliases
from mailrouter.admin.normalise import normalise_domain, normalise_targets
from mailrouter.admin.session import AdminSession
from mailrouter.directory import CATCHALL_NAME
from mailrouter.errors import AdminError


def set_catchall(s: AdminSession, domain: str, targets: list[str]) -> dict[str, Any]:
    """Create the catch-all, or replace its targets."""
    name = normalise_domain(domain)
    wanted = normalise_targets(targets)
    if not wanted:
        raise AdminError("a catch-all needs at least one target", field="targets")
    what = f"the catch-all of {name}"
    aliases.check_loop(s, CATCHALL_NAME, name, wanted)
    if aliases.read_targets(s, CATCHALL_NAME, name) is None:
        aliases.create(s, CATCHALL_NAME, name, wanted, what)
    else:
        aliases.replace_targets(s, CATCHALL_NAME, name, wanted, what)
    s.commit()
    return {"ok": True, "message": f"catch-all of {name} -> {', '.join(wanted)}", "domain": name,
            "targets": wanted}


def clear_catchall(s: AdminSession, domain: str) -> dict[str, Any]:
    """Remove the catch-all; ``changed`` is False when there was none."""
    name = normalise_domain(domain)
    if aliases.read_targets(s, CATCHALL_NAME, name) is None:
        return {"ok": True, "message": f"{name} has no catch-all", "domain": name, "changed": False}
    s.delete(s.alias_dn(CATCHALL_NAME, name), None, f"remove aliases in {s.domain_dn(name)}",
             f"the catch-all of {name}")
    return {"ok": True, "message": f"removed the catch-all of {name}", "domain": name, "changed": True}


def show_catchall(s: AdminSession, domain: str) -> dict[str, Any]:
    """``{"domain", "targets"}``; no targets when the domain has no catch-all
    (a domain that does not exist, or that slapd hides from this reader, is not_found)."""
    name = normalise_domain(domain)
    targets = aliases.read_targets(s, CATCHALL_NAME, name)
    if targets is None:
        s.require_domain(name)
    return {"domain": name, "targets": targets or []}
