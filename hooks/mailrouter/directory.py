"""The directory layer: the only module that imports ldap3.

Every lookup is a *base-scope read of a DN built from the key* (escaped with
ldap3's ``escape_rdn``), never a subtree search on a user-supplied value.  Why:
a domain admin may write anything under their own ``dc=``, including an entry
whose ``mail`` claims another domain's address; a DN built as
``uid=LOCAL,dc=DOMAIN,BASE`` can only ever name the entry that domain owns.
After the read, the naming attribute is compared *exactly* with the key, because
LDAP matching is case-insensitive and ignores insignificant spaces: ``BOB`` or
``bob `` must be "not found", never bob's entry.

The error split is strict:

* a method returns ``None`` / ``False`` / ``()`` only when LDAP answered and the
  thing does not exist (or the key cannot possibly name an entry);
* :class:`~mailrouter.errors.DirectoryUnavailable` is raised whenever no answer
  was obtained: every URI refused or timed out, the server was busy, the service
  bind failed, or any other result code came back.

Timeouts: each URI gets ``connect_timeout`` to connect and ``operation_timeout``
per operation (ldap3 ``receive_timeout``), so a frozen slapd costs at most
``len(uris) * (connect + operation)`` seconds, far inside Exim's 60 s.
Nothing connects at import time or in ``__init__``; the connection is made on
first use and reused for the life of the object (one request).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ldap3 import BASE, LEVEL, NONE, Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from mailrouter.config import LdapConfig
from mailrouter.errors import ConfigError, DirectoryUnavailable

RESULT_SUCCESS = 0
RESULT_NO_SUCH_OBJECT = 32
RESULT_INVALID_CREDENTIALS = 49

# The catch-all of a domain is the alias with this name (the seed's "default alias").
CATCHALL_NAME = "default"

# Keys longer than this cannot name an entry we created; refuse without a query.
MAX_KEY_LENGTH = 255

STATUS_ACTIVE = "active"

USER_ATTRIBUTES = (
    "uid",
    "dc",
    "mail",
    "cn",
    "uidNumber",
    "gidNumber",
    "mailQuota",
    "mailAccountStatus",
    "mailMessageStore",
    "homeDirectory",
)

T = TypeVar("T")


@dataclass(frozen=True)
class User:
    dn: str
    local: str
    domain: str
    mail: str | None
    uid_number: int | None
    gid_number: int | None
    quota: str | None  # raw mailQuota, e.g. "32M"; parsed by the caller that enforces it
    active: bool
    message_store: str | None  # informational only: delivery builds paths from the template

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class Alias:
    dn: str
    name: str
    domain: str
    targets: tuple[str, ...]
    active: bool


def _plausible_key(value: str) -> bool:
    """A key that cannot name any entry we store is answered without a query."""
    return (
        0 < len(value) <= MAX_KEY_LENGTH
        and value.isprintable()
        and value == value.strip()
    )


def _values(attributes: dict[str, Any], name: str) -> list[str]:
    """Attribute values by case-insensitive name, always as a list of str."""
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, (list, tuple)):
                return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]
            return [value.decode("utf-8") if isinstance(value, bytes) else str(value)]
    return []


def _first(attributes: dict[str, Any], name: str) -> str | None:
    values = _values(attributes, name)
    return values[0] if values else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _is_active(attributes: dict[str, Any]) -> bool:
    status = _first(attributes, "mailAccountStatus")
    return status is None or status.lower() == STATUS_ACTIVE


class Directory:
    """One request's view of LDAP.  Use as a context manager to close the connection."""

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._connection: Connection | None = None

    # -- DNs --------------------------------------------------------------
    @property
    def base_dn(self) -> str:
        return self._config.base_dn

    def domain_dn(self, domain: str) -> str:
        return f"dc={escape_rdn(domain)},{self.base_dn}"

    def user_dn(self, local: str, domain: str) -> str:
        return f"uid={escape_rdn(local)},{self.domain_dn(domain)}"

    def alias_dn(self, name: str, domain: str) -> str:
        return f"mailAlias={escape_rdn(name)},{self.domain_dn(domain)}"

    def setting_dn(self, name: str) -> str:
        return f"mailSetting={escape_rdn(name)},{self.base_dn}"

    # -- connection -------------------------------------------------------
    @property
    def _receive_timeout(self) -> int:
        # ldap3 packs this into a struct timeval with "LL": it must be an int.
        return max(1, math.ceil(self._config.operation_timeout))

    def _server(self, uri: str) -> Server:
        # ldap3 wants "ldap://host:port" without the trailing "/" of an LDAP URL.
        return Server(uri.rstrip("/"), connect_timeout=self._config.connect_timeout, get_info=NONE)

    def _open(self, uri: str) -> Connection:
        connection = Connection(
            self._server(uri),
            user=self._config.bind_dn,
            password=self._config.bind_password,
            receive_timeout=self._receive_timeout,
            raise_exceptions=False,
            read_only=True,
        )
        if not connection.bind():
            code = connection.result.get("result")
            connection.unbind()
            if code == RESULT_INVALID_CREDENTIALS:
                raise ConfigError(f"service bind as {self._config.bind_dn} refused (rc 49)")
            raise DirectoryUnavailable(f"{uri}: service bind failed (rc {code})")
        return connection

    def _with_connection(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` on a bound connection, failing over across the URI list."""
        if self._connection is not None:
            try:
                return operation(self._connection)
            except (LDAPException, OSError):
                self.close()  # fall through: try every URI afresh
        problems = []
        for uri in self._config.uris:
            try:
                connection = self._open(uri)
            except (LDAPException, OSError) as exc:
                problems.append(f"{uri}: {type(exc).__name__}")
                continue
            except DirectoryUnavailable as exc:
                problems.append(str(exc))
                continue
            try:
                result = operation(connection)
            except (LDAPException, OSError) as exc:
                connection.unbind()
                problems.append(f"{uri}: {type(exc).__name__}")
                continue
            self._connection = connection
            return result
        raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(problems))

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.unbind()
            except (LDAPException, OSError):
                pass
            self._connection = None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- primitives -------------------------------------------------------
    def read(
        self, dn: str, object_class: str, attributes: Sequence[str]
    ) -> dict[str, Any] | None:
        """Base-scope read of ``dn``; ``None`` when LDAP says it does not exist."""
        search_filter = f"(objectClass={escape_filter_chars(object_class)})"

        def operation(connection: Connection) -> dict[str, Any] | None:
            connection.search(dn, search_filter, search_scope=BASE, attributes=list(attributes))
            code = connection.result.get("result")
            if code == RESULT_NO_SUCH_OBJECT:
                return None
            if code != RESULT_SUCCESS:
                raise DirectoryUnavailable(f"read {dn}: rc {code} {connection.result.get('description')}")
            entries = [r for r in connection.response or [] if r.get("type") == "searchResEntry"]
            return dict(entries[0]["attributes"]) if entries else None

        return self._with_connection(operation)

    def search_level(
        self, base: str, search_filter: str, attributes: Sequence[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """One-level search under ``base`` with an already-escaped filter."""

        def operation(connection: Connection) -> list[tuple[str, dict[str, Any]]]:
            connection.search(base, search_filter, search_scope=LEVEL, attributes=list(attributes))
            code = connection.result.get("result")
            if code == RESULT_NO_SUCH_OBJECT:
                return []
            if code != RESULT_SUCCESS:
                raise DirectoryUnavailable(f"search {base}: rc {code}")
            return [
                (r["dn"], dict(r["attributes"]))
                for r in connection.response or []
                if r.get("type") == "searchResEntry"
            ]

        return self._with_connection(operation)

    # -- typed lookups ----------------------------------------------------
    def is_local_domain(self, domain: str) -> bool:
        if not _plausible_key(domain):
            return False
        attributes = self.read(self.domain_dn(domain), "mailDomain", ["dc"])
        return attributes is not None and domain in _values(attributes, "dc")

    def user(self, local: str, domain: str) -> User | None:
        if not (_plausible_key(local) and _plausible_key(domain)):
            return None
        dn = self.user_dn(local, domain)
        attributes = self.read(dn, "mailUser", USER_ATTRIBUTES)
        if attributes is None or local not in _values(attributes, "uid"):
            return None
        if domain not in _values(attributes, "dc"):
            return None
        return User(
            dn=dn,
            local=local,
            domain=domain,
            mail=_first(attributes, "mail"),
            uid_number=_int_or_none(_first(attributes, "uidNumber")),
            gid_number=_int_or_none(_first(attributes, "gidNumber")),
            quota=_first(attributes, "mailQuota"),
            active=_is_active(attributes),
            message_store=_first(attributes, "mailMessageStore"),
        )

    def alias(self, name: str, domain: str) -> Alias | None:
        if not (_plausible_key(name) and _plausible_key(domain)):
            return None
        dn = self.alias_dn(name, domain)
        attributes = self.read(
            dn, "mailAlias", ["mailAlias", "mailAliasedName", "mailAccountStatus"]
        )
        if attributes is None or name not in _values(attributes, "mailAlias"):
            return None
        return Alias(
            dn=dn,
            name=name,
            domain=domain,
            targets=tuple(_values(attributes, "mailAliasedName")),
            active=_is_active(attributes),
        )

    def catchall(self, domain: str) -> Alias | None:
        return self.alias(CATCHALL_NAME, domain)

    def setting(self, name: str) -> tuple[str, ...]:
        """Values of ``mailSetting=NAME,BASE``; empty when the setting does not exist."""
        if not _plausible_key(name):
            return ()
        attributes = self.read(self.setting_dn(name), "mailSetting", ["mailSetting", "mailSettingValue"])
        if attributes is None or name not in _values(attributes, "mailSetting"):
            return ()
        return tuple(_values(attributes, "mailSettingValue"))

    def aliases_delivering_to(self, target: str, domain: str) -> list[str]:
        """Names of the aliases of ``domain`` that list ``target`` among their targets."""
        if not (_plausible_key(target) and _plausible_key(domain)):
            return []
        search_filter = (
            f"(&(objectClass=mailAlias)(mailAliasedName={escape_filter_chars(target)}))"
        )
        found = self.search_level(self.domain_dn(domain), search_filter, ["mailAlias", "mailAliasedName"])
        names = []
        for _dn, attributes in found:
            if target in _values(attributes, "mailAliasedName"):
                names.extend(_values(attributes, "mailAlias"))
        return sorted(set(names))

    # -- authentication ---------------------------------------------------
    def check_password(self, dn: str, password: str) -> bool:
        """Simple bind as ``dn``.  True on success, False on invalid credentials.

        An empty password is refused here, before any bind: with ``allow
        bind_anon_dn`` slapd would treat it as an anonymous bind and succeed.
        """
        if not password:
            return False
        problems = []
        for uri in self._config.uris:
            try:
                connection = Connection(
                    self._server(uri),
                    user=dn,
                    password=password,
                    receive_timeout=self._receive_timeout,
                    raise_exceptions=False,
                )
                ok = connection.bind()
            except (LDAPException, OSError) as exc:
                problems.append(f"{uri}: {type(exc).__name__}")
                continue
            code = connection.result.get("result")
            try:
                connection.unbind()
            except (LDAPException, OSError):
                pass
            if ok:
                return True
            if code == RESULT_INVALID_CREDENTIALS:
                return False
            problems.append(f"{uri}: bind rc {code}")
        raise DirectoryUnavailable("no LDAP server answered the bind: " + "; ".join(problems))

