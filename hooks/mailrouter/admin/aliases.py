"""Aliases: ``mailAlias=NAME,dc=DOMAIN,BASE`` with one or more ``mailAliasedName`` targets.

Targets are plain addresses only (see :mod:`mailrouter.admin.normalise`): never a
command, file or include.  The alias named ``default`` is the domain's catch-all
(:mod:`mailrouter.admin.catchall`).  An address is either a user or an alias:
creating an alias where a user of that name exists is refused (``conflict``),
as slapd's slapo-unique refuses a second entry with the same ``mail``.  For
entries written by other tools without ``mail``, the aliases router runs before
the users router, so such an alias hides the user.  A change
that would make an alias reach itself again -- directly, through other aliases
or through a catch-all -- is refused (``conflict``, :func:`check_loop`): Exim
would bounce every message sent to it.

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from mailrouter import entries
from mailrouter.admin.normalise import normalise_address, normalise_domain, normalise_targets
from mailrouter.admin.session import AdminSession, Page
from mailrouter.admin.users import address_taken
from mailrouter.directory import CATCHALL_NAME, MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, first, values
from mailrouter.errors import AdminError

ALIAS_READ = ("mailAlias", "mailAliasedName", "mailAccountStatus")


def read_targets(s: AdminSession, name: str, domain: str) -> list[str] | None:
    """The targets of the alias ``name@domain``; None when there is no such alias."""
    attributes = s.read(s.alias_dn(name, domain), "mailAlias", ["mailAlias", "mailAliasedName"])
    if attributes is None:
        return None
    return values(attributes, "mailAliasedName")


def create(s: AdminSession, name: str, domain: str, targets: list[str], what: str) -> entries.Entry:
    """Add the alias entry (an undoable step); ``what`` names it in messages."""
    if not targets:
        raise AdminError(f"{what} needs at least one target", field="targets")
    entry = entries.alias_entry(name, domain, s.base_dn, targets)
    # As for users: a hidden domain must not answer "already exists" (see users.add_user).
    s.require_domain(domain)
    if _shadows(s, name, domain):
        raise AdminError(address_taken(f"{name}@{domain}", "a user"), kind="conflict", field="address")
    s.add(entry, f"add aliases in {s.domain_dn(domain)}", what, f"no such domain {domain}")
    return entry


def replace_targets(s: AdminSession, name: str, domain: str, targets: list[str], what: str,
                    old: list[str] | None = None) -> None:
    """Replace every target (an undoable step when ``old`` is given)."""
    s.modify(s.alias_dn(name, domain), {"mailAliasedName": (MODIFY_REPLACE, targets)},
             {"mailAliasedName": (MODIFY_REPLACE, old)} if old else None,
             f"change aliases in {s.domain_dn(domain)}", what)


# How many addresses a loop check follows at most (each costs up to three reads).
MAX_LOOP_WALK = 200


def check_loop(s: AdminSession, name: str, domain: str, targets: list[str]) -> None:
    """AdminError ``conflict`` when ``name@domain`` with ``targets`` would reach
    itself again, the way Exim routes: an alias expands to its targets, a user
    ends the walk, any other local part of a domain with a catch-all goes to the
    catch-all (``default@domain``).  Domains this admin cannot see are remote."""
    start = f"{name}@{domain}".lower()
    parent: dict[str, str] = {}
    queue: deque[str] = deque()
    local_domains: dict[str, bool] = {}

    def visit(address: str, came_from: str) -> None:
        key = address.lower()
        if key not in parent and len(parent) < MAX_LOOP_WALK:
            parent[key] = came_from
            queue.append(key)

    def ours(dom: str) -> bool:
        if dom not in local_domains:
            local_domains[dom] = s.read(s.domain_dn(dom), "mailDomain", ["dc"]) is not None
        return local_domains[dom]

    def next_hops(address: str) -> list[str]:
        local, _, dom = address.rpartition("@")
        if address == start:
            return targets
        if not ours(dom):
            return []
        found = read_targets(s, local, dom)
        if found is not None:
            return found
        if s.read(s.user_dn(local, dom), "mailUser", ["uid"]) is not None:
            return []
        being_written = name == CATCHALL_NAME and dom == domain
        if local != CATCHALL_NAME and (being_written or read_targets(s, CATCHALL_NAME, dom) is not None):
            return [f"{CATCHALL_NAME}@{dom}"]
        return []

    for target in targets:
        visit(target, start)
    while queue:
        address = queue.popleft()
        if address == start:
            path = [start]
            hop = parent[start]
            while hop != start:
                path.append(hop)
                hop = parent[hop]
            path.append(start)
            raise AdminError(f"alias loop: {' -> '.join(reversed(path))}; Exim would bounce every message "
                             f"sent to {start}", kind="conflict", field="targets")
        for hop in next_hops(address):
            visit(hop, address)


def _shadows(s: AdminSession, name: str, domain: str) -> bool:
    return s.read(s.user_dn(name, domain), "mailUser", ["uid"]) is not None


def add_alias(s: AdminSession, address: str, targets: list[str]) -> dict[str, Any]:
    name, domain = normalise_address(address)
    wanted = normalise_targets(targets)
    check_loop(s, name, domain, wanted)
    entry = create(s, name, domain, wanted, f"alias {name}@{domain}")
    s.commit()
    shadows = _shadows(s, name, domain)
    note = f" (note: it takes precedence over the user {name}@{domain})" if shadows else ""
    return {"ok": True, "message": f"added alias {name}@{domain} -> {', '.join(wanted)}{note}",
            "address": f"{name}@{domain}", "dn": entry.dn, "targets": wanted, "shadows_user": shadows}


def put_alias(s: AdminSession, address: str, targets: list[str]) -> dict[str, Any]:
    """Create the alias, or replace all its targets when it exists."""
    name, domain = normalise_address(address)
    wanted = normalise_targets(targets)
    what = f"alias {name}@{domain}"
    current = read_targets(s, name, domain)
    check_loop(s, name, domain, wanted)
    if current is None:
        create(s, name, domain, wanted, what)
    elif not wanted:
        raise AdminError(f"{what} needs at least one target", field="targets")
    else:
        replace_targets(s, name, domain, wanted, what)
    s.commit()
    shadows = _shadows(s, name, domain)
    note = f" (note: it takes precedence over the user {name}@{domain})" if shadows else ""
    verb = "added" if current is None else "replaced"
    return {"ok": True, "message": f"{verb} alias {name}@{domain} -> {', '.join(wanted)}{note}",
            "address": f"{name}@{domain}", "dn": s.alias_dn(name, domain), "targets": wanted,
            "created": current is None, "shadows_user": shadows}


def remove_alias(s: AdminSession, address: str) -> dict[str, Any]:
    name, domain = normalise_address(address)
    s.delete(s.alias_dn(name, domain), None, f"remove aliases in {s.domain_dn(domain)}",
             f"alias {name}@{domain}", f"no such alias {name}@{domain}")
    return {"ok": True, "message": f"removed alias {name}@{domain}", "address": f"{name}@{domain}"}


def list_aliases(
    s: AdminSession, domain: str, contains: str | None = None, offset: int = 0, limit: int | None = None
) -> Page:
    """The aliases of ``domain`` (the catch-all included) ordered by address;
    ``contains`` matches the alias name."""
    dom = normalise_domain(domain)
    s.require_domain(dom)
    found, total = s.page(
        s.domain_dn(dom), "mailAlias", "mailAlias", ALIAS_READ,
        contains=contains, offset=offset, limit=limit, key=lambda name: f"{name}@{dom}",
    )
    rows = [
        {
            "alias": f"{first(a, 'mailAlias')}@{dom}",
            "catchall": first(a, "mailAlias") == CATCHALL_NAME,
            "status": first(a, "mailAccountStatus") or "active",
            "targets": values(a, "mailAliasedName"),
        }
        for _, a in found
    ]
    return Page(rows, total, offset, limit)


def show_alias(s: AdminSession, address: str) -> dict[str, Any]:
    name, domain = normalise_address(address)
    targets = read_targets(s, name, domain)
    if targets is None:
        raise AdminError(f"no such alias {name}@{domain}", kind="not_found")
    return {"alias": f"{name}@{domain}", "dn": s.alias_dn(name, domain), "catchall": name == CATCHALL_NAME,
            "targets": targets}


def _change_targets(s: AdminSession, address: str, targets: list[str], adding: bool) -> dict[str, Any]:
    name, domain = normalise_address(address)
    wanted = normalise_targets(targets)
    current = read_targets(s, name, domain)
    if current is None:
        raise AdminError(f"no such alias {name}@{domain}", kind="not_found")
    lowered = {t.lower(): t for t in current}
    if adding:
        change = [t for t in wanted if t.lower() not in lowered]
        check_loop(s, name, domain, current + change)
    else:
        missing = [t for t in wanted if t.lower() not in lowered]
        if missing:
            raise AdminError(f"alias {name}@{domain} has no target {', '.join(missing)}", kind="not_found",
                             field="targets")
        change = [lowered[t.lower()] for t in wanted]
        if len(change) == len(current):
            raise AdminError(f"alias {name}@{domain} would have no target left; use 'alias remove'",
                             kind="conflict", field="targets")
    if change:
        kind = MODIFY_ADD if adding else MODIFY_DELETE
        s.modify(s.alias_dn(name, domain), {"mailAliasedName": (kind, change)}, None,
                 f"change aliases in {s.domain_dn(domain)}", f"alias {name}@{domain}")
    verb = "added" if adding else "removed"
    return {"ok": True, "message": f"{verb} {len(change)} target(s) of {name}@{domain}",
            "address": f"{name}@{domain}", "changed": change}


def add_targets(s: AdminSession, address: str, targets: list[str]) -> dict[str, Any]:
    """Add targets the alias lacks (case-insensitively); the others are left alone."""
    return _change_targets(s, address, targets, adding=True)


def remove_targets(s: AdminSession, address: str, targets: list[str]) -> dict[str, Any]:
    """Remove targets; each must be there, and one must stay."""
    return _change_targets(s, address, targets, adding=False)
