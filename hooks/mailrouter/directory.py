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
  bind failed, or any other result code came back;
* :class:`~mailrouter.errors.BindRefused` (a temporary ``ConfigError``) when
  slapd refused the *service account's* bind (rc 49: a wrong secret in the
  configuration); a *person's* refused bind (:class:`Session`) is
  :class:`~mailrouter.errors.LdapRefused` with code 49, slapd's answer.

Timeouts: each URI gets ``connect_timeout`` to connect and ``operation_timeout``
per operation (ldap3 ``receive_timeout``), so a frozen slapd costs at most
``len(uris) * (connect + operation)`` seconds, far inside Exim's 60 s.
Nothing connects at import time or in ``__init__``; the connection is made on
first use and reused for the life of the object (one request).

Persistent service connections (:class:`PersistentDirectory`): a long-lived
worker (``mailrouter-lookupd``, ``mailrouter-authd``) keeps one service-account
connection across requests instead of connecting and binding for each
(the bind was ~0.75 ms of a ~2 ms socket lookup).  It is replaced after
``ldap.connection_max_requests`` requests, ``connection_max_age`` seconds
open, or ``connection_max_idle`` seconds unused (below slapd's idletimeout),
and after any request that ended in an error.  A *read* that fails on a
reused connection (slapd restarted, the connection dropped) is asked once
more, on a fresh connection, of every URI in order -- the first request after
a slapd restart is answered, not deferred.  Writes never go through it (the
hooks only read; writes are :class:`Session`'s, one connection per request,
never retried).  User binds (:meth:`Directory.check_password`) always use
their own short connection, so the service connection never carries a
user's identity.  The ``${run}`` hooks are one request per process and keep
a plain :class:`Directory`.

Failover differs for reads and writes.  A read that gets no answer is simply
asked again of the next URI.  A *write* (add, delete, modify, password change)
that was sent and got no answer -- a timeout, a lost connection -- may have
been applied: it is never sent to another server but raises
:class:`~mailrouter.errors.WriteOutcomeUnknown` (temporary; the message says
the outcome is unknown).  Only a failure *before* the write was sent (connect
or bind) moves on to the next URI.

Reads and writes go to different lists when the directory is replicated
(``mailrouter.config``): :class:`Directory` reads from ``uris`` (a node's local
replica first); :class:`Session` -- every write -- and
:meth:`Directory.check_password` use ``writers`` (the providers).  A write
answered with a referral (a read-only replica's ``updateref``) raises
:class:`~mailrouter.errors.ReadOnlyReplica`: nothing was written there, and it
is not followed to the server it names.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ldap3
from ldap3 import BASE, LEVEL, NONE, SUBTREE, Connection, Server
from ldap3.core.exceptions import LDAPException, LDAPSASLPrepError
from ldap3.protocol.sasl.sasl import sasl_prep
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from mailrouter.config import LdapConfig
from mailrouter.errors import (
    REFUSAL_CODES,
    BindRefused,
    DirectoryUnavailable,
    LdapRefused,
    ReadOnlyReplica,
    WriteOutcomeUnknown,
)

RESULT_SUCCESS = 0
RESULT_SIZE_LIMIT = 4
RESULT_COMPARE_FALSE = 5
RESULT_COMPARE_TRUE = 6
RESULT_REFERRAL = 10
RESULT_NO_SUCH_ATTRIBUTE = 16
RESULT_NO_SUCH_OBJECT = 32
RESULT_INVALID_CREDENTIALS = 49

# The catch-all of a domain is the alias with this name (the seed's "default alias").
CATCHALL_NAME = "default"

# Keys longer than this cannot name an entry we created; refuse without a query.
MAX_KEY_LENGTH = 255

STATUS_ACTIVE = "active"

# What the hooks need of a user; mailMessageStore is never read (delivery builds
# the path from the configured template: a domain admin could otherwise point it anywhere).
USER_ATTRIBUTES = (
    "uid",
    "dc",
    "uidNumber",
    "gidNumber",
    "mailQuota",
    "mailAccountStatus",
    "mailMessageFormat",
    # The rehash on login (mailrouter.auth) and the lockout timing: never the hash itself.
    "mailPasswordScheme",
    "pwdChangedTime",
    "pwdAccountLockedTime",
    # The home node in a cluster (README "More than one machine"); absent: any node.
    "mailHost",
)

# mailPasswordScheme = "<scheme label> <pwdChangedTime of the write>" (mailrouter.passwords
# labels); "-" when slapd kept no pwdChangedTime (slapadd, no ppolicy overlay).
PASSWORD_SCHEME = "mailPasswordScheme"
# The outbound limit of a user or a domain (mailrouter.ratelimit).
RATE_LIMIT = "mailRateLimit"
NO_CHANGE_TIME = "-"

T = TypeVar("T")


@dataclass(frozen=True)
class User:
    dn: str
    local: str
    domain: str
    uid_number: int | None
    gid_number: int | None
    quota: str | None  # raw mailQuota, e.g. "32M"; parsed by the caller that enforces it
    active: bool
    password_scheme: str | None = None  # label of the stored hash; None = unknown (see password_stamp)
    locked: bool = False  # ppolicy's pwdAccountLockedTime is set (the lock may have run out)
    mailbox_format: str | None = None  # raw mailMessageFormat; None: the default (spool.user_format)
    # First values of the attributes a caller asked for besides these (``user(extra=...)``),
    # each name present, None when unset: read in the same request.
    extra: dict[str, str | None] = field(default_factory=dict, compare=False)
    home: str | None = None  # mailHost as stored: the cluster node that stores the mailbox

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


def password_octets(password: str) -> bytes:
    """The octets a password is sent to slapd as, in every bind and Password Modify.

    RFC 4513 asks clients to SASLprep simple-bind passwords, and ldap3 does so
    for a ``str``, raising *before anything is sent* when SASLprep refuses the
    string (control characters, U+2028, private use, a bidi mix...).  Callers
    took that for "LDAP unavailable": a temporary answer, and a fast one, for
    existing users only.  So: SASLprep where it is defined (what ldap3 has
    always sent, so existing passwords keep working), and the UTF-8 octets as
    typed where it is not -- slapd then compares them with the stored hash like
    any other password.  Either way the password reaches slapd, and a wrong
    one is a wrong password.
    """
    try:
        prepared = str(sasl_prep(password))
    except LDAPSASLPrepError:
        prepared = password
    return prepared.encode("utf-8", "surrogatepass")


def values(attributes: dict[str, Any], name: str) -> list[str]:
    """Attribute values by case-insensitive name, always as a list of str.

    The one decoder of ldap3 attribute dicts (single values, lists, bytes)."""
    for key, value in attributes.items():
        if key.lower() == name.lower():
            items = value if isinstance(value, (list, tuple)) else [value]
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]
    return []


def first(attributes: dict[str, Any], name: str) -> str | None:
    found = values(attributes, name)
    return found[0] if found else None


# -- DNs: the only place they are built (RDN values escaped with ldap3's escape_rdn) --
def domain_dn(domain: str, base_dn: str) -> str:
    return f"dc={escape_rdn(domain)},{base_dn}"


def user_dn(local: str, domain: str, base_dn: str) -> str:
    return f"{user_rdn(local)},{domain_dn(domain, base_dn)}"


def member_name(dn: str, base_dn: str) -> str:
    """How people are named everywhere else: ``local@domain`` for
    ``uid=LOCAL,dc=DOMAIN,BASE``, ``NAME`` for ``uid=NAME,BASE``, else ``dn`` itself."""
    try:
        rdns = [(attr.lower(), _unescape(value)) for attr, value, _ in parse_dn(dn)]
        base = [(attr.lower(), value.lower()) for attr, value, _ in parse_dn(base_dn)]
    except LDAPException:
        return dn
    head, tail = rdns[: len(rdns) - len(base)], rdns[len(rdns) - len(base):]
    if [(a, v.lower()) for a, v in tail] != base or not head or head[0][0] != "uid":
        return dn
    if len(head) == 1:
        return head[0][1]
    if len(head) == 2 and head[1][0] == "dc":
        return f"{head[0][1]}@{head[1][1]}"
    return dn


def _unescape(value: str) -> str:
    """An RDN value as parse_dn returns it (``\\+``, ``\\2B``), unescaped."""
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            char = value[i + 1]
            i += 1
        out += char.encode("utf-8")
        i += 1
    return out.decode("utf-8", "replace")


def user_rdn(local: str) -> str:
    """The RDN of a user entry (``uid=LOCAL``), for a rename."""
    return f"uid={escape_rdn(local)}"


def alias_dn(name: str, domain: str, base_dn: str) -> str:
    return f"mailAlias={escape_rdn(name)},{domain_dn(domain, base_dn)}"


def setting_dn(name: str, base_dn: str) -> str:
    return f"mailSetting={escape_rdn(name)},{base_dn}"


def admin_group_dn(domain: str | None, base_dn: str) -> str:
    """``cn=admin,dc=DOMAIN,BASE``, or the global ``cn=admin,BASE`` for ``None``."""
    return f"cn=admin,{domain_dn(domain, base_dn) if domain else base_dn}"


def person_dn(uid: str, base_dn: str) -> str:
    """A top-level account such as a global admin: ``uid=NAME,BASE``."""
    return f"uid={escape_rdn(uid)},{base_dn}"


def no_lockout_policy_dn(base_dn: str) -> str:
    """The ppolicy entry without lockout (ldap/seed.ldif): service account, global admins."""
    return f"cn=no-lockout,ou=policies,{base_dn}"


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _is_active(attributes: dict[str, Any]) -> bool:
    status = first(attributes, "mailAccountStatus")
    return status is None or status.lower() == STATUS_ACTIVE


def password_stamp(label: str, changed: str | None) -> str:
    """The ``mailPasswordScheme`` value for a hash labelled ``label`` whose write
    slapd timestamped ``changed`` (``pwdChangedTime``; ``None``: no timestamp)."""
    return f"{label} {changed or NO_CHANGE_TIME}"


def stamped_label(attributes: dict[str, Any]) -> str | None:
    """The label of the stored hash, or ``None`` when it is unknown.

    Why the timestamp: a writer that does not keep the label (``ldapmodify``,
    ``ldappasswd``, a migration script) cannot be stopped, but slapd's ppolicy
    overlay stamps every password write with ``pwdChangedTime``.  The label is
    believed only while that time is still the one its writer saw, so any later
    write by anything makes it unknown, and unknown means "rehash once"."""
    stamp = first(attributes, PASSWORD_SCHEME)
    if not stamp:
        return None
    label, _, changed = stamp.rpartition(" ")
    if not label or changed != (first(attributes, "pwdChangedTime") or NO_CHANGE_TIME):
        return None
    return label


def _discard(connection: Connection) -> None:
    """Unbind a connection that may already be broken; nothing to report."""
    try:
        connection.unbind()
    except (LDAPException, OSError):
        pass


class Directory:
    """One request's view of LDAP.  Use as a context manager to close the connection.

    ``as_person``: the configured ``bind_dn`` is a person binding as themself
    (:class:`Session`), so a refused bind is their wrong password
    (:class:`LdapRefused` 49), not a wrong service secret (:class:`BindRefused`).
    """

    def __init__(self, config: LdapConfig, read_only: bool = True, *, as_person: bool = False) -> None:
        self._config = config
        self._read_only = read_only  # hooks only ever read: ldap3 then refuses any write
        self._as_person = as_person
        self._connection: Connection | None = None
        self._connected_uri = ""

    # -- DNs --------------------------------------------------------------
    @property
    def base_dn(self) -> str:
        return self._config.base_dn

    def domain_dn(self, domain: str) -> str:
        return domain_dn(domain, self.base_dn)

    def user_dn(self, local: str, domain: str) -> str:
        return user_dn(local, domain, self.base_dn)

    def alias_dn(self, name: str, domain: str) -> str:
        return alias_dn(name, domain, self.base_dn)

    def setting_dn(self, name: str) -> str:
        return setting_dn(name, self.base_dn)

    # -- connection -------------------------------------------------------
    @property
    def _receive_timeout(self) -> int:
        # ldap3 packs this into a struct timeval with "LL": it must be an int.
        return max(1, math.ceil(self._config.operation_timeout))

    def _server(self, uri: str) -> Server:
        # ldap3 wants "ldap://host:port" without the trailing "/" of an LDAP URL.
        return Server(uri.rstrip("/"), connect_timeout=self._config.connect_timeout, get_info=NONE)

    def _open(self, uri: str) -> Connection:
        password = self._config.service_password() if self._config.bind_dn else None
        connection = Connection(
            self._server(uri),
            user=self._config.bind_dn,
            password=password_octets(password) if password else None,
            receive_timeout=self._receive_timeout,
            raise_exceptions=False,
            read_only=self._read_only,
            # A referral is an answer (ReadOnlyReplica), never a server to send
            # our credentials and the write to: ldap3 would follow it by default.
            auto_referrals=False,
        )
        if not connection.bind():
            code = connection.result.get("result")
            _discard(connection)
            if code == RESULT_INVALID_CREDENTIALS:
                who = self._config.bind_dn or "anonymous"
                if self._as_person:
                    raise LdapRefused(RESULT_INVALID_CREDENTIALS, "bind", who)
                raise BindRefused(f"service bind as {who} refused (rc 49)")
            raise DirectoryUnavailable(f"{uri}: bind failed (rc {code})")
        return connection

    def _with_connection(self, operation: Callable[[Connection], T], *, write: str | None = None) -> T:
        """Run ``operation`` on a bound connection, failing over across the URI list.

        ``write`` names a write (``"add DN"``); ``None`` for a read.  A read that
        gets no answer is retried on the next URI; a write that was sent is not
        (see the module docstring): :class:`WriteOutcomeUnknown`.
        """
        if self._connection is not None:
            try:
                return operation(self._connection)
            except (LDAPException, OSError) as exc:
                uri = self._connected_uri
                self.close()  # a read falls through: try every URI afresh
                if write is not None:
                    raise self._unknown(write, uri, exc) from exc
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
            self._connected_uri = uri  # for the messages of this first operation
            try:
                result = operation(connection)
            except (LDAPException, OSError) as exc:
                _discard(connection)
                if write is not None:
                    raise self._unknown(write, uri, exc) from exc
                problems.append(f"{uri}: {type(exc).__name__}")
                continue
            except BaseException:
                _discard(connection)  # an answer we do not accept: no connection is left behind
                raise
            self._connection = connection
            self._connected_uri = uri
            self._connected()
            return result
        raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(problems))

    def _connected(self) -> None:
        """A new connection was just kept (for :class:`PersistentDirectory`'s accounting)."""

    @staticmethod
    def _unknown(write: str, uri: str, exc: BaseException) -> WriteOutcomeUnknown:
        return WriteOutcomeUnknown(
            f"{write}: sent to {uri}, no answer ({type(exc).__name__}): the outcome is unknown,"
            " check before trying again (not retried on another server)"
        )

    @property
    def connected_uri(self) -> str:
        """The URI of the open connection (``""`` before the first operation)."""
        return self._connected_uri

    def close(self) -> None:
        if self._connection is not None:
            _discard(self._connection)
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
        """True for a mailDomain entry, enabled or not: a disabled domain stays
        ours (its mail is refused by the routers, never relayed elsewhere)."""
        if not _plausible_key(domain):
            return False
        attributes = self.read(self.domain_dn(domain), "mailDomain", ["dc"])
        return attributes is not None and domain in values(attributes, "dc")

    def domain_active(self, domain: str) -> bool:
        """False when ``dc=DOMAIN`` has a ``mailAccountStatus`` other than ``active``
        (``domain disable``): then every user and alias in it counts as disabled.

        An LDAP Compare, not a read: it returns no entry for ldap3 to decode.  It
        makes a hook's user lookup (connect, bind, read) 1.21x as long, a read
        would make it 1.38x (bench/bench_domain_status.py: 1.42 -> 1.72 ms)."""
        dn = self.domain_dn(domain)

        def operation(connection: Connection) -> bool:
            connection.compare(dn, "mailAccountStatus", STATUS_ACTIVE)
            code = connection.result.get("result")
            if code == RESULT_COMPARE_FALSE:
                return False
            # compareTrue; no such attribute (absent = active, as for entries);
            # no such object (the domain went away: the entry's own read decides)
            if code in (RESULT_COMPARE_TRUE, RESULT_NO_SUCH_ATTRIBUTE, RESULT_NO_SUCH_OBJECT):
                return True
            raise DirectoryUnavailable(f"compare {dn}: rc {code} {connection.result.get('description')}")

        return self._with_connection(operation)

    def user(self, local: str, domain: str, extra: Sequence[str] = ()) -> User | None:
        """The user ``local@domain``; ``extra`` attributes come along in the same read
        (``User.extra``: the mail rules, for the lookups that need them)."""
        if not (_plausible_key(local) and _plausible_key(domain)):
            return None
        dn = self.user_dn(local, domain)
        attributes = self.read(dn, "mailUser", (*USER_ATTRIBUTES, *extra))
        if attributes is None or local not in values(attributes, "uid"):
            return None
        if domain not in values(attributes, "dc"):
            return None
        return User(
            dn=dn,
            local=local,
            domain=domain,
            uid_number=_int_or_none(first(attributes, "uidNumber")),
            gid_number=_int_or_none(first(attributes, "gidNumber")),
            quota=first(attributes, "mailQuota"),
            # One rule for every consumer (routing, logins, user records): an
            # entry of a disabled domain is disabled.  Asked only for an active
            # entry, so "no such user" and a disabled user cost nothing more.
            active=_is_active(attributes) and self.domain_active(domain),
            password_scheme=stamped_label(attributes),
            locked=bool(first(attributes, "pwdAccountLockedTime")),
            mailbox_format=first(attributes, "mailMessageFormat"),
            extra={name: first(attributes, name) for name in extra},
            home=first(attributes, "mailHost"),
        )

    def alias(self, name: str, domain: str) -> Alias | None:
        if not (_plausible_key(name) and _plausible_key(domain)):
            return None
        dn = self.alias_dn(name, domain)
        attributes = self.read(
            dn, "mailAlias", ["mailAlias", "mailAliasedName", "mailAccountStatus"]
        )
        if attributes is None or name not in values(attributes, "mailAlias"):
            return None
        return Alias(
            dn=dn,
            name=name,
            domain=domain,
            targets=tuple(values(attributes, "mailAliasedName")),
            active=_is_active(attributes) and self.domain_active(domain),
        )

    def catchall(self, domain: str) -> Alias | None:
        return self.alias(CATCHALL_NAME, domain)

    def user_rate_limit(self, local: str, domain: str) -> str | None:
        """The raw ``mailRateLimit`` of the user ``local@domain``; ``None`` when
        the user has none or does not exist (the caller asks the domain next)."""
        if not (_plausible_key(local) and _plausible_key(domain)):
            return None
        attributes = self.read(self.user_dn(local, domain), "mailUser", ["uid", "dc", RATE_LIMIT])
        if attributes is None or local not in values(attributes, "uid"):
            return None
        return first(attributes, RATE_LIMIT) if domain in values(attributes, "dc") else None

    def domain_rate_limit(self, domain: str) -> str | None:
        """The raw ``mailRateLimit`` of ``dc=DOMAIN``; ``None`` when absent or no such domain."""
        if not _plausible_key(domain):
            return None
        attributes = self.read(self.domain_dn(domain), "mailDomain", ["dc", RATE_LIMIT])
        if attributes is None or domain not in values(attributes, "dc"):
            return None
        return first(attributes, RATE_LIMIT)

    def setting(self, name: str) -> tuple[str, ...]:
        """Values of ``mailSetting=NAME,BASE``; empty when the setting does not exist."""
        if not _plausible_key(name):
            return ()
        attributes = self.read(self.setting_dn(name), "mailSetting", ["mailSetting", "mailSettingValue"])
        if attributes is None or name not in values(attributes, "mailSetting"):
            return ()
        return tuple(values(attributes, "mailSettingValue"))

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
            if target in values(attributes, "mailAliasedName"):
                names.extend(values(attributes, "mailAlias"))
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
        # The writers: a bind updates ppolicy's failure count (config.py).
        for uri in self._config.writers:
            try:
                connection = Connection(
                    self._server(uri),
                    user=dn,
                    password=password_octets(password),
                    receive_timeout=self._receive_timeout,
                    raise_exceptions=False,
                    auto_referrals=False,
                )
                ok = connection.bind()
            except (LDAPException, OSError) as exc:
                problems.append(f"{uri}: {type(exc).__name__}")
                continue
            code = connection.result.get("result")
            _discard(connection)
            if ok:
                return True
            if code == RESULT_INVALID_CREDENTIALS:
                return False
            problems.append(f"{uri}: bind rc {code}")
        raise DirectoryUnavailable("no LDAP server answered the bind: " + "; ".join(problems))


class PersistentDirectory(Directory):
    """A :class:`Directory` whose service connection outlives a request.

    One per worker process; each request is ``with persistent as directory:``
    (so it plugs into every ``directory_factory``).  Leaving the block keeps
    the connection open unless the request raised (then it is closed: its
    state is unknown).  Entering it replaces a connection that has served
    ``max_requests`` requests, is ``max_age`` seconds old or ``max_idle``
    seconds unused (``ldap.connection_max_*``).  A connection inherited across
    ``fork`` is dropped unused: two processes must never share one LDAP session.
    Reads only (``read_only`` is forced): see the module docstring.
    """

    def __init__(self, config: LdapConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, read_only=True)
        self._clock = clock
        self._pid = os.getpid()
        self._opened_at = 0.0
        self._last_used = 0.0
        self._served = 0

    def _connected(self) -> None:
        self._opened_at = self._last_used = self._clock()
        self._served = 0

    def _worn_out(self, now: float) -> bool:
        return (
            self._served >= self._config.connection_max_requests
            or now - self._opened_at >= self._config.connection_max_age
            or now - self._last_used >= self._config.connection_max_idle
        )

    def __enter__(self) -> PersistentDirectory:
        if self._pid != os.getpid():
            # Forked with the parent's connection: forget it without an unbind,
            # which would end the session the parent still uses.
            self._connection = None
            self._pid = os.getpid()
        if self._connection is not None and self._worn_out(self._clock()):
            self.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info and exc_info[0] is not None:
            self.close()
        elif self._connection is not None:
            self._served += 1
            self._last_used = self._clock()


# -- writing, as the acting admin or user -----------------------------------
# Our tools never decide who may write what: they bind as the person acting and
# let slapd's ACLs answer.  A refusal becomes a LdapRefused carrying slapd's
# result code, for a one-line message; no answer at all stays DirectoryUnavailable.

MODIFY_ADD = "add"
MODIFY_DELETE = "delete"
MODIFY_REPLACE = "replace"
_LDAP3_MODIFY = {
    MODIFY_ADD: ldap3.MODIFY_ADD,
    MODIFY_DELETE: ldap3.MODIFY_DELETE,
    MODIFY_REPLACE: ldap3.MODIFY_REPLACE,
}


class Session:
    """A connection bound as one person (admin or user) for writes and reads.

    ``Session(config, dn, password)`` binds on first use, failing over across the
    URIs; a wrong password raises :class:`LdapRefused` with code 49.  A write
    that was sent and got no answer raises :class:`WriteOutcomeUnknown` and is
    never sent to another URI.
    """

    def __init__(self, config: LdapConfig, dn: str | None, password: str | None) -> None:
        if dn is not None and not password:
            raise LdapRefused(49, "bind", dn, "empty password")
        self._directory = Directory(
            LdapConfig(
                uris=config.writers,  # every write, and the reads around it, at a provider
                base_dn=config.base_dn,
                bind_dn=dn,
                bind_password=password,
                connect_timeout=config.connect_timeout,
                operation_timeout=config.operation_timeout,
            ),
            read_only=False,
            as_person=True,
        )
        self.dn = dn

    @property
    def directory(self) -> Directory:
        """Typed read lookups, as this session's identity."""
        return self._directory

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._directory.close()

    def _check(self, connection: Connection, operation: str, dn: str) -> None:
        code = connection.result.get("result")
        if code == RESULT_SUCCESS:
            return
        detail = str(connection.result.get("message") or "")
        if code == RESULT_REFERRAL:
            referrals = [str(url) for url in connection.result.get("referrals") or []]
            raise ReadOnlyReplica(operation, dn, self._directory.connected_uri, referrals)
        if isinstance(code, int) and code in REFUSAL_CODES:
            raise LdapRefused(code, operation, dn, detail)
        raise DirectoryUnavailable(f"{operation} {dn}: rc {code} {detail}")

    def bind(self) -> None:
        """Bind now (normally done on first use) to report bad credentials early."""
        self._directory._with_connection(lambda connection: None)

    def add(self, dn: str, attributes: dict[str, list[str]]) -> None:
        def operation(connection: Connection) -> None:
            connection.add(dn, attributes=attributes)
            self._check(connection, "add", dn)

        self._directory._with_connection(operation, write=f"add {dn}")

    def delete(self, dn: str) -> None:
        def operation(connection: Connection) -> None:
            connection.delete(dn)
            self._check(connection, "delete", dn)

        self._directory._with_connection(operation, write=f"delete {dn}")

    def modify(self, dn: str, changes: dict[str, tuple[str, list[str]]]) -> None:
        """``changes``: attribute -> (MODIFY_ADD | MODIFY_DELETE | MODIFY_REPLACE, values)."""
        ldap3_changes = {
            name: [(_LDAP3_MODIFY[kind], values)]
            for name, (kind, values) in changes.items()
        }

        def operation(connection: Connection) -> None:
            connection.modify(dn, ldap3_changes)
            self._check(connection, "modify", dn)

        self._directory._with_connection(operation, write=f"modify {dn}")

    def modify_dn(self, dn: str, new_rdn: str) -> None:
        """Rename ``dn`` to ``new_rdn`` (an escaped ``attr=value``) under the same
        parent, dropping the old naming value (``deleteoldrdn``)."""

        def operation(connection: Connection) -> None:
            connection.modify_dn(dn, new_rdn, delete_old_dn=True)
            self._check(connection, "rename", dn)

        self._directory._with_connection(operation, write=f"rename {dn}")

    def password_modify(self, dn: str, new_password: str, old_password: str | None = None) -> None:
        """RFC 3062 Password Modify: slapd hashes with its ``password-hash`` ({ARGON2})."""
        if not new_password:
            raise LdapRefused(53, "password change", dn, "empty password")

        old = password_octets(old_password) if old_password is not None else None

        def operation(connection: Connection) -> None:
            connection.extend.standard.modify_password(dn, old, password_octets(new_password))
            self._check(connection, "password change", dn)

        self._directory._with_connection(operation, write=f"password change {dn}")

    def stamp_password_scheme(self, dn: str, label: str) -> None:
        """Record that the hash just written to ``dn`` is ``label``'s, for the rehash on login.

        Called by every writer of ours right after it changed the password: reads
        the ``pwdChangedTime`` slapd gave that write and stores
        :func:`password_stamp` in ``mailPasswordScheme``."""
        attributes = self._directory.read(dn, "mailUser", ["pwdChangedTime"])
        if attributes is None:
            raise LdapRefused(RESULT_NO_SUCH_OBJECT, "read", dn)
        stamp = password_stamp(label, first(attributes, "pwdChangedTime"))
        self.modify(dn, {PASSWORD_SCHEME: (MODIFY_REPLACE, [stamp])})

    def search(
        self, base: str, search_filter: str, attributes: Sequence[str], subtree: bool = False,
        size_limit: int = 0,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Search with an already-escaped filter; one level unless ``subtree``.
        With ``size_limit``, more matches than that raise LdapRefused with
        :data:`RESULT_SIZE_LIMIT` (slapd's answer, never a partial list)."""
        def operation(connection: Connection) -> list[tuple[str, dict[str, Any]]]:
            connection.search(
                base,
                search_filter,
                search_scope=SUBTREE if subtree else LEVEL,
                attributes=list(attributes),
                size_limit=size_limit,
            )
            code = connection.result.get("result")
            if code == RESULT_NO_SUCH_OBJECT:
                return []
            if code == RESULT_SIZE_LIMIT and size_limit:
                raise LdapRefused(RESULT_SIZE_LIMIT, "search", base, "size limit exceeded")
            self._check(connection, "search", base)
            return [
                (r["dn"], dict(r["attributes"]))
                for r in connection.response or []
                if r.get("type") == "searchResEntry"
            ]

        return self._directory._with_connection(operation)


def escape_filter_value(value: str) -> str:
    """ldap3's filter escaping, for callers that build filters (admin searches)."""
    return str(escape_filter_chars(value))

