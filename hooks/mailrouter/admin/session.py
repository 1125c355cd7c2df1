"""The acting admin's LDAP session: bound as that person, writes remembered for undo.

Why bind as the person: slapd's ACLs (ldap/acl.conf), not this code, decide who
may do what.  Every refusal comes back as an :class:`~mailrouter.errors.AdminError`
worded for the person acting, with ``kind`` from slapd's result code
(50/49 ``refused``, 68 ``exists``, 32 ``not_found``, 66 ``conflict``).

    with AdminSession(config, dn, password) as s:     # binds now; AdminError "refused" if not
        users.add_user(s, "ann@example.org", None)

Operations and undo: ``add``/``modify``/``delete`` remember how to undo each
write.  A multi-step operation calls :meth:`AdminSession.commit` when it is
complete; when one raises part-way, its steps stay pending and the caller undoes
them with :meth:`~AdminSession.rollback` (or :meth:`~AdminSession.rollback_note`,
which also words the outcome) before the next operation.  ``close()`` -- also
leaving the ``with`` block -- undoes whatever is still pending.

Passwords and prompts are not this module's business: the caller passes strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailrouter import directory as dirmod
from mailrouter import passwords
from mailrouter.admin.normalise import normalise_address
from mailrouter.config import Config
from mailrouter.directory import Session
from mailrouter.entries import Entry
from mailrouter.errors import REFUSAL_CODES, AdminError, DirectoryUnavailable, LdapRefused, TemporaryFailure

Changes = dict[str, tuple[str, list[str]]]

# slapd's result code -> AdminError.kind; anything else slapd refuses is "refused".
_REFUSAL_KIND = {
    16: "not_found",  # no such attribute (value)
    20: "exists",  # value already present
    32: "not_found",
    49: "refused",
    50: "refused",
    66: "conflict",  # not allowed on non-leaf
    68: "exists",
}

# Full rows of a page are read this many names per search.
_PAGE_READ = 100

# A global admin's account name (``uid=NAME,BASE``).
_ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Page:
    """One page of a list: ``items`` (JSON-ready rows), out of ``total`` matches."""

    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "total": self.total, "offset": self.offset, "limit": self.limit}


@dataclass
class Step:
    """One write already made, with what undoes it."""

    description: str
    undo: Callable[[], None]


def resolve_login(config: Config, who: str) -> str:
    """The DN of ``who``: a DN as given, an address (a domain's user) or a bare
    name (``uid=NAME,BASE``, a global admin)."""
    who = who.strip()
    if "=" in who:
        return who
    if "@" in who:
        local, domain = normalise_address(who, field="who")
        return dirmod.user_dn(local, domain, config.ldap.base_dn)
    if not _ACCOUNT_NAME.fullmatch(who):
        raise AdminError(f"invalid account name {who!r}", field="who")
    return dirmod.person_dn(who, config.ldap.base_dn)


class AdminSession:
    """A connection bound as one person (or the service account), with undo."""

    def __init__(self, config: Config, dn: str, password: str) -> None:
        self._config = config
        self._dn = dn
        self._steps: list[Step] = []
        try:
            self._session = Session(config.ldap, dn, password)
            self._session.bind()
        except LdapRefused:
            raise AdminError(f"bind as {dn} refused: invalid credentials", kind="refused") from None

    @classmethod
    def service(cls, config: Config) -> AdminSession:
        """Bound as the config's read-only service account (``[ldap] bind_dn``)."""
        dn = config.ldap.bind_dn
        password = config.ldap.service_password()  # read only now: asked for
        if not dn or not password:
            raise AdminError("the config has no service account (ldap.bind_dn)", kind="refused")
        return cls(config, dn, password)

    # -- identity ----------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    @property
    def base_dn(self) -> str:
        return self._config.ldap.base_dn

    @property
    def bound_dn(self) -> str:
        return self._dn

    # -- life cycle ----------------------------------------------------------------
    def close(self) -> None:
        """Undo an operation left uncommitted (it failed), then disconnect."""
        try:
            if self._steps:
                self.rollback()
        finally:
            self._session.close()

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- refusals ------------------------------------------------------------------
    def refusal(self, exc: LdapRefused, action: str, subject: str, missing: str | None) -> AdminError:
        """slapd's ``exc`` as one line for the person acting."""
        code = exc.code
        if code == 50:
            message = f"not allowed to {action} (bound as {self._dn})"
        elif code == 68:
            message = f"{subject} already exists"
        elif code == 32:
            message = f"cannot {action}: {missing or 'no such entry ' + exc.dn}"
        elif code == 66:
            message = f"cannot {action}: {subject} still has entries below it"
        elif code == 49:
            message = f"bind as {self._dn} refused: invalid credentials"
        elif code == 19 and "non-unique" in str(exc):
            # slapo-unique (ldap/slapd.conf): an address or top-level login exists elsewhere
            message = (f"cannot {action}: another entry already has the address (or login) of "
                       f"{subject}; slapd allows each only once")
            return AdminError(message, kind="exists")
        else:
            reason = REFUSAL_CODES.get(code, f"result {code}")
            message = f"cannot {action}: {reason} ({exc.dn})"
        return AdminError(message, kind=_REFUSAL_KIND.get(code, "refused"))

    def _do(self, run: Callable[[], None], action: str, subject: str, missing: str | None) -> None:
        try:
            run()
        except LdapRefused as exc:
            raise self.refusal(exc, action, subject, missing) from None

    # -- writes, each remembering its undo ----------------------------------------------
    def add(self, entry: Entry, action: str, subject: str, missing: str | None = None) -> None:
        """Add ``entry``; undone by deleting it."""
        session = self._session
        self._do(lambda: session.add(entry.dn, entry.attributes), action, subject, missing)
        self._steps.append(Step(f"add {entry.dn}", lambda: session.delete(entry.dn)))

    def modify(
        self,
        dn: str,
        changes: Changes,
        undo: Changes | None,
        action: str,
        subject: str,
        missing: str | None = None,
    ) -> None:
        """Apply ``changes``; ``undo`` (when given) is the change that reverts them."""
        session = self._session
        self._do(lambda: session.modify(dn, changes), action, subject, missing)
        if undo is not None:
            self._steps.append(Step(f"modify {dn}", lambda: session.modify(dn, undo)))

    def delete(
        self,
        dn: str,
        restore: dict[str, list[str]] | None,
        action: str,
        subject: str,
        missing: str | None = None,
    ) -> None:
        """Delete ``dn``; ``restore`` (when given) is the entry that undoes it."""
        session = self._session
        self._do(lambda: session.delete(dn), action, subject, missing)
        if restore is not None:
            self._steps.append(Step(f"delete {dn}", lambda: session.add(dn, restore)))

    def rename(self, dn: str, new_rdn: str, old_rdn: str, action: str, subject: str) -> None:
        """Rename ``dn`` to ``new_rdn`` under the same parent; undone by renaming back."""
        session = self._session
        new_dn = f"{new_rdn},{dn.split(',', 1)[1]}"
        self._do(lambda: session.modify_dn(dn, new_rdn), action, subject, None)
        self._steps.append(Step(f"rename {dn}", lambda: session.modify_dn(new_dn, old_rdn)))

    def password_modify(
        self, dn: str, password: str, action: str, subject: str, missing: str, old_password: str | None = None
    ) -> None:
        """RFC 3062 Password Modify: slapd hashes with its ``password-hash``; not undoable.

        With ``old_password`` slapd also checks the current password (self-service).
        A mail user's ``mailPasswordScheme`` then records slapd's scheme
        (``passwords.SLAPD_SCHEME``); other accounts carry no label."""
        session = self._session
        self._do(lambda: session.password_modify(dn, password, old_password), action, subject, missing)
        # slapd hashed with its moduleload cost, which the configured one must equal.
        cost = passwords.configured_cost(self._config.auth)
        self.stamp_password_scheme(dn, passwords.scheme_label(passwords.SLAPD_SCHEME, cost))

    def stamp_password_scheme(self, dn: str, label: str) -> bool:
        """Record ``label`` as the scheme of the hash just written to ``dn`` (see
        ``mailrouter.directory.Session.stamp_password_scheme``).  Not undoable, and
        never fatal: without it the user's next login rehashes once.  True if stored."""
        try:
            self._session.stamp_password_scheme(dn, label)
        except (LdapRefused, TemporaryFailure):
            return False
        return True

    @property
    def pending(self) -> int:
        """Writes of the current operation not yet committed."""
        return len(self._steps)

    def commit(self) -> None:
        """The operation is complete: nothing to undo any more."""
        self._steps.clear()

    def rollback(self) -> list[str]:
        """Undo the steps of a failed operation, newest first; returns the ones that failed."""
        failed = []
        while self._steps:
            step = self._steps.pop()
            try:
                step.undo()
            except (LdapRefused, DirectoryUnavailable) as exc:
                failed.append(f"{step.description}: {exc}")
        return failed

    def rollback_note(self) -> str:
        """:meth:`rollback`, worded as a suffix for the failed operation's message:
        ``""`` (nothing to undo), ``" (undid N earlier change(s))"`` or
        ``"; ROLLBACK INCOMPLETE, fix by hand: ..."``."""
        count = len(self._steps)
        if not count:
            return ""
        failed = self.rollback()
        if failed:
            return f"; ROLLBACK INCOMPLETE, fix by hand: {'; '.join(failed)}"
        return f" (undid {count} earlier change(s))"

    # -- reads -------------------------------------------------------------------------
    def read(self, dn: str, object_class: str, attributes: Sequence[str]) -> dict[str, Any] | None:
        """Base-scope read of ``dn``; ``None`` when it does not exist (or is not visible)."""
        return self._session.directory.read(dn, object_class, attributes)

    @property
    def directory(self) -> dirmod.Directory:
        """The typed read lookups (``mailrouter.directory.Directory``), as this session's identity."""
        return self._session.directory

    def user(self, local: str, domain: str) -> dirmod.User | None:
        """The typed user entry (``mailrouter.directory.Directory.user``), as this session's identity."""
        return self._session.directory.user(local, domain)

    def search(
        self, base: str, search_filter: str, attributes: Sequence[str], subtree: bool = False,
        size_limit: int = 0, too_many: str = "",
    ) -> list[tuple[str, dict[str, Any]]]:
        """Search with an already-escaped filter; one level unless ``subtree``.
        More than ``size_limit`` matches (when given) is AdminError ``too_many``."""
        try:
            return self._session.search(base, search_filter, attributes, subtree, size_limit)
        except LdapRefused as exc:
            if exc.code == dirmod.RESULT_SIZE_LIMIT:
                raise AdminError(too_many or f"more than {size_limit} entries match") from None
            raise self.refusal(exc, f"search {base}", base, None) from None

    def page(
        self,
        base: str,
        object_class: str,
        naming: str,
        attributes: Sequence[str],
        *,
        contains: str | None,
        offset: int,
        limit: int | None,
        key: Callable[[str], str],
        subtree: bool = False,
    ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """One level (with ``subtree``: the whole subtree) of ``object_class``
        entries under ``base``, ordered by ``key(naming value)``, matching
        ``*contains*`` on the naming attribute: ``(entries offset..offset+limit,
        total matches)``.

        Why two reads: a domain may hold 50 000 users.  Only the naming attribute
        of the whole level is read, sorted and sliced; full rows are read for the
        page alone.  Without ``limit`` the level is read once, in full."""
        if offset < 0:
            raise AdminError(f"offset must be 0 or more, not {offset}", field="offset")
        if limit is not None and limit < 0:
            raise AdminError(f"limit must be 0 or more, not {limit}", field="limit")
        kind = f"(objectClass={dirmod.escape_filter_value(object_class)})"
        search_filter = kind
        if contains:
            search_filter = f"(&{kind}({naming}=*{dirmod.escape_filter_value(contains.strip())}*))"

        def ordered(found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
            return sorted(found, key=lambda item: key(dirmod.first(item[1], naming) or ""))

        if limit is None and offset == 0:
            found = ordered(self.search(base, search_filter, attributes, subtree))
            return found, len(found)
        everything = ordered(self.search(base, search_filter, [naming], subtree))
        end = None if limit is None else offset + limit
        window = [dirmod.first(a, naming) or "" for _, a in everything[offset:end]]
        if not window:
            return [], len(everything)
        by_name: dict[str, tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(window), _PAGE_READ):  # bounded filters, even for a huge limit
            chunk = window[start:start + _PAGE_READ]
            wanted = "".join(f"({naming}={dirmod.escape_filter_value(value)})" for value in chunk)
            for dn, a in self.search(base, f"(&{kind}(|{wanted}))", attributes, subtree):
                by_name[(dirmod.first(a, naming) or "").lower()] = (dn, a)
        page = [by_name[value.lower()] for value in window if value.lower() in by_name]
        return page, len(everything)

    # -- DNs (built and escaped by mailrouter.directory; no connection is made) ------
    def domain_dn(self, domain: str) -> str:
        return dirmod.domain_dn(domain, self.base_dn)

    def user_dn(self, local: str, domain: str) -> str:
        return dirmod.user_dn(local, domain, self.base_dn)

    def alias_dn(self, name: str, domain: str) -> str:
        return dirmod.alias_dn(name, domain, self.base_dn)

    def group_dn(self, domain: str | None) -> str:
        """``cn=admin,dc=DOMAIN,BASE``, or the global admin group for ``None``."""
        return dirmod.admin_group_dn(domain, self.base_dn)

    def setting_dn(self, name: str) -> str:
        return dirmod.setting_dn(name, self.base_dn)

    def require_domain(self, domain: str) -> None:
        """AdminError ``not_found`` unless ``domain`` exists."""
        if self.read(self.domain_dn(domain), "mailDomain", ["dc"]) is None:
            raise AdminError(f"no such domain {domain}", kind="not_found")
