"""Importers: a qmail tree (``users/assign``, ``.qmail-*``) or an /etc/aliases file.

Three stages, so a front end can show the plan before writing anything:

``plan_qmail`` / ``plan_aliases`` / ``plan_aliases_text``
    read the input into a :class:`Plan` (no LDAP): users and aliases to have, plus
    ``invalid`` ("where: why") and ``notes`` lines.  Program (``|cmd``), file
    (``/path``) and ``:include:`` deliveries are never imported: they are invalid.
``diff_plan``
    what the directory lacks: :class:`Action` s, and how many items are in place.
``run_import``
    the whole import: refuses a plan with invalid items unless ``skip_invalid``;
    with ``apply`` writes the actions (reporting each through ``progress(done,
    total, label)``) as one undoable operation, so importing twice changes
    nothing the second time.

Nothing here prints.  Functions that talk to LDAP take a bound
:class:`~mailrouter.admin.session.AdminSession` first; all raise only AdminError,
DirectoryUnavailable or TemporaryFailure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailrouter.admin import aliases, users
from mailrouter.admin.normalise import merge_targets, normalise_domain, normalise_local, normalise_target
from mailrouter.admin.session import AdminSession
from mailrouter.directory import first, values
from mailrouter.errors import AdminError

Progress = Callable[[int, int, str], None]


@dataclass
class Plan:
    domain: str
    users: list[str] = field(default_factory=list)  # local parts to create
    aliases: dict[str, list[str]] = field(default_factory=dict)  # name -> targets
    invalid: list[str] = field(default_factory=list)  # "where: why"
    notes: list[str] = field(default_factory=list)


@dataclass
class Action:
    kind: str  # "add user" | "add alias" | "update alias"
    name: str
    targets: list[str] = field(default_factory=list)
    old: list[str] = field(default_factory=list)


# -- reading the input (no LDAP) -------------------------------------------------------
def parse_assign(text: str, where: str, plan: Plan) -> None:
    """qmail users/assign: ``=local:user:uid:gid:home:dash:ext:`` lines, ended by ``.``."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line == ".":
            break
        if not line or line.startswith("#"):
            continue
        if line.startswith("+"):
            plan.notes.append(f"{where}:{number}: wildcard assignment {line.split(':', 1)[0]} not imported")
            continue
        if not line.startswith("="):
            plan.invalid.append(f"{where}:{number}: not an assign line")
            continue
        local = line[1:].split(":", 1)[0]
        try:
            name = normalise_local(local)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        if name not in plan.users:
            plan.users.append(name)


def parse_dot_qmail(name: str, text: str, where: str, plan: Plan) -> None:
    """One ``.qmail-NAME`` file: ``&addr``/``addr`` lines forward; anything else is refused."""
    # qmail-local looks up ".qmail-ext" with the address's dots turned into colons.
    raw_name = name.replace(":", ".")
    try:
        alias = normalise_local(raw_name)
    except AdminError as exc:
        plan.invalid.append(f"{where}: {exc}")
        return
    targets: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = line[1:] if line.startswith("&") else line
        try:
            target = normalise_target(item, plan.domain)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        merge_targets(targets, [target])
    if targets:
        _plan_alias(plan, alias, targets)


def _plan_alias(plan: Plan, alias: str, targets: list[str]) -> None:
    merged = plan.aliases.setdefault(alias, [])
    merge_targets(merged, targets)


def parse_aliases(text: str, where: str, plan: Plan) -> None:
    """/etc/aliases: ``name: a, b``; lines starting with white space continue the previous one."""
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and logical:
            start, previous = logical[-1]
            logical[-1] = (start, previous + " " + line.strip())
        else:
            logical.append((number, line.strip()))
    for number, line in logical:
        name, colon, rest = line.partition(":")
        if not colon:
            plan.invalid.append(f"{where}:{number}: no ':' after the alias name")
            continue
        try:
            alias = normalise_local(name)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        targets: list[str] = []
        bad = False
        for item in _split_alias_targets(rest):
            try:
                target = normalise_target(item, plan.domain)
            except AdminError as exc:
                plan.invalid.append(f"{where}:{number}: {exc}")
                bad = True
                continue
            merge_targets(targets, [target])
        if not targets and not bad:
            plan.invalid.append(f"{where}:{number}: alias {alias} has no target")
        if targets:
            _plan_alias(plan, alias, targets)


def _split_alias_targets(text: str) -> list[str]:
    """Comma-separated, honouring double quotes ("|cmd, with comma")."""
    items, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}", field="path") from None


def plan_qmail(root: Path | str, domain: str, assign: Path | str | None = None) -> Plan:
    """The plan for a qmail tree: ROOT/users/assign (or ``assign``), ROOT/alias/.qmail-*
    and ROOT/.qmail-* (``.qmail-default`` is the catch-all).  Symlinks are skipped."""
    root = Path(root)
    plan = Plan(normalise_domain(domain))
    if not root.is_dir():
        raise AdminError(f"{root} is not a directory", field="path")
    assign_path = Path(assign) if assign else root / "users" / "assign"
    if assign_path.is_file():
        parse_assign(_read_text(assign_path), str(assign_path), plan)
    directories = [d for d in (root / "alias", root) if d.is_dir()]
    if not directories and not assign_path.is_file():
        raise AdminError(f"{root}: no users/assign and no .qmail-* files", field="path")
    for directory in directories:
        for path in sorted(directory.glob(".qmail-*")):
            if path.is_symlink() or not path.is_file():
                plan.notes.append(f"{path}: not a regular file, skipped")
                continue
            parse_dot_qmail(path.name[len(".qmail-"):], _read_text(path), str(path), plan)
    return plan


def plan_aliases_text(text: str, where: str, domain: str) -> Plan:
    """The plan for /etc/aliases-style ``text``; ``where`` names it in invalid/notes lines."""
    plan = Plan(normalise_domain(domain))
    parse_aliases(text, where, plan)
    return plan


def plan_aliases(path: Path | str, domain: str) -> Plan:
    """The plan for an /etc/aliases-style file."""
    name = normalise_domain(domain)  # input errors before file errors, as everywhere
    return plan_aliases_text(_read_text(Path(path)), str(path), name)


# -- against the directory ---------------------------------------------------------------
def diff_plan(s: AdminSession, plan: Plan) -> tuple[list[Action], int]:
    """What the directory lacks; also the number of items already in place."""
    s.require_domain(plan.domain)
    dn = s.domain_dn(plan.domain)
    present_users = {first(a, "uid") for _, a in s.search(dn, "(objectClass=mailUser)", ["uid"])}
    present_aliases = {
        first(a, "mailAlias"): values(a, "mailAliasedName")
        for _, a in s.search(dn, "(objectClass=mailAlias)", ["mailAlias", "mailAliasedName"])
    }
    actions: list[Action] = []
    unchanged = 0
    for local in sorted(plan.users):
        if local in present_users:
            unchanged += 1
        else:
            actions.append(Action("add user", local))
    for name in sorted(plan.aliases):
        targets = plan.aliases[name]
        if name not in present_aliases:
            actions.append(Action("add alias", name, targets))
        elif sorted(t.lower() for t in present_aliases[name]) != sorted(t.lower() for t in targets):
            actions.append(Action("update alias", name, targets, present_aliases[name]))
        else:
            unchanged += 1
    return actions, unchanged


def apply_action(s: AdminSession, action: Action, domain: str) -> None:
    """One action, as an undoable step of the import."""
    if action.kind == "add user":
        entry = users.user_entry(s, action.name, domain, None)
        s.add(entry, f"add users in {s.domain_dn(domain)}", f"user {action.name}@{domain}")
    elif action.kind == "add alias":
        aliases.create(s, action.name, domain, action.targets, f"alias {action.name}@{domain}")
    else:
        aliases.replace_targets(s, action.name, domain, action.targets, f"alias {action.name}@{domain}",
                                old=action.old)


def run_import(
    s: AdminSession,
    plan: Plan,
    apply: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Diff ``plan`` against the directory and, with ``apply``, write it (one
    operation: a failure part-way leaves its steps pending for rollback).

    Returns ``{"domain", "apply", "actions": [{"action", "address", "targets"}],
    "applied", "unchanged", "skipped_invalid", "notes"}``."""
    if plan.invalid and not skip_invalid:
        raise AdminError(
            f"{len(plan.invalid)} invalid item(s): nothing imported (--skip-invalid to leave them out)",
            field="invalid",
        )
    actions, unchanged = diff_plan(s, plan)
    applied = 0
    if apply and actions:
        for action in actions:
            apply_action(s, action, plan.domain)
            applied += 1
            if progress is not None:
                progress(applied, len(actions), f"{action.kind} {action.name}")
        s.commit()
    return {
        "domain": plan.domain,
        "apply": apply,
        "actions": [
            {"action": a.kind, "address": f"{a.name}@{plan.domain}", "targets": a.targets} for a in actions
        ],
        "applied": applied,
        "unchanged": unchanged,
        "skipped_invalid": plan.invalid,
        "notes": plan.notes,
    }
