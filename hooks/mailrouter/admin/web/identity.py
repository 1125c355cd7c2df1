"""Who is logged in: the login check and the roles shown in the navigation.

The roles here only decide what the pages *offer*.  They never decide what a
person may do: every read and write is made by binding as that person, and
slapd's ACLs (ldap/acl.conf) answer.  A forged request for something the page
did not offer is refused by slapd, and shown as a 403.

Logins are the full mail address (``alice@example.com``) or, for global admins
living directly under the base, their bare name (``admin``).  DNs are never
accepted as a login: the DN is built from the name (escaped), never typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailrouter import auth, directory, names
from mailrouter.admin.session import AdminSession
from mailrouter.config import Config
from mailrouter.errors import AdminError, InvalidName, LdapRefused

# A global admin's name: the RDN value of uid=NAME,BASE (the CLI's rule too).
_ADMIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_LOGIN = 320


@dataclass(frozen=True)
class Person:
    dn: str
    login: str
    address: str | None  # set for mail users (uid=LOCAL,dc=DOMAIN,BASE)
    domain: str | None
    global_admin: bool = False
    admin_of: tuple[str, ...] = field(default_factory=tuple)

    @property
    def role(self) -> str:
        if self.global_admin:
            return "global-admin"
        return "domain-admin" if self.admin_of else "user"

    def may_manage(self, domain: str) -> bool:
        """Whether the pages should offer ``domain``'s management (slapd still decides)."""
        return self.global_admin or domain in self.admin_of


def login_dn(config: Config, login: str) -> tuple[str, str | None, str | None]:
    """``(dn, address, domain)`` for a typed login; :class:`InvalidName` if it cannot be one."""
    text = login.strip()
    if not text or len(text) > MAX_LOGIN or not text.isprintable():
        raise InvalidName("not a login")
    base = config.ldap.base_dn
    if "@" in text:
        local, domain = names.address(text.lower())
        return directory.user_dn(local, domain, base), f"{local}@{domain}", domain
    if not _ADMIN_NAME.fullmatch(text):
        raise InvalidName("not a login")
    return directory.person_dn(text, base), None, None


def authenticate(config: Config, login: str, password: str) -> Person | None:
    """The logged-in :class:`Person`, or ``None`` for any refusal (one answer for all).

    Raises :class:`~mailrouter.errors.DirectoryUnavailable` when LDAP does not answer.
    """
    try:
        dn, address, domain = login_dn(config, login)
    except InvalidName:
        return None
    if auth.password_problem(password):
        return None  # the rule of every login front end; the caller's floor pays for it
    try:
        with AdminSession(config, dn, password) as session:
            person = _person(config, session, dn, login.strip().lower(), address, domain)
            if person is not None and person.address is not None:
                # The same rehash as every other front end (mailrouter.auth); as the
                # person, who may read their own label.  It never fails the login.
                local, _, user_domain = person.address.partition("@")
                user = session.user(local, user_domain)
                if user is not None:
                    auth.rehash_after_login(config, user, password)
            return person
    except (AdminError, LdapRefused):
        return None


def load(config: Config, session: AdminSession, dn: str) -> Person | None:
    """The :class:`Person` behind an existing session (roles re-read on each request)."""
    address = domain = None
    base = config.ldap.base_dn
    rdn, _, parent = dn.partition(",")
    if parent != base:
        domain = parent.partition(",")[0].partition("=")[2]
        address = f"{rdn.partition('=')[2]}@{domain}"
        login = address
    else:
        login = rdn.partition("=")[2]
    try:
        return _person(config, session, dn, login, address, domain)
    except LdapRefused:
        return None


def _person(
    config: Config, session: AdminSession, dn: str, login: str, address: str | None, domain: str | None
) -> Person | None:
    base = config.ldap.base_dn
    if address is not None:
        # A disabled mail account may still bind (slapd does not know our status
        # attribute): it is refused here, with the same answer as a bad password.
        own = session.read(dn, "mailUser", ["mailAccountStatus"])
        if own is None:
            return None
        status = directory.first(own, "mailAccountStatus")
        if status is not None and status.lower() != "active":
            return None
        if domain is not None:
            # A disabled domain (``domain disable``) refuses every login of its people, here too.
            home = session.read(directory.domain_dn(domain, base), "mailDomain", ["mailAccountStatus"])
            status = directory.first(home or {}, "mailAccountStatus")
            if status is not None and status.lower() != "active":
                return None
    group = session.read(directory.admin_group_dn(None, base), "groupOfNames", ["member"])
    members = {member.lower() for member in directory.values(group or {}, "member")}
    administered: set[str] = set()
    if address is not None and address.startswith("postmaster@") and domain is not None:
        administered.add(domain)
    found = session.search(
        base,
        f"(&(objectClass=groupOfNames)(cn=admin)(member={directory.escape_filter_value(dn)}))",
        ["cn"],
        subtree=True,
    )
    for group_dn, _attributes in found:
        parent = group_dn.partition(",")[2]
        if parent.lower().endswith("," + base.lower()) and parent.lower().startswith("dc="):
            administered.add(parent.partition(",")[0].partition("=")[2].lower())
    return Person(
        dn=dn,
        login=login,
        address=address,
        domain=domain,
        global_admin=dn.lower() in members,
        admin_of=tuple(sorted(administered)),
    )
