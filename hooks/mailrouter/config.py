"""Configuration: one TOML file, parsed into frozen dataclasses in ``main()``.

The file (default ``/etc/mailrouter/mailrouter.toml``, every executable takes
``--config PATH``) looks like this; every key is optional except ``ldap.uris``::

    [ldap]
    uris = ["ldap://ldap1.example.net/", "ldap://ldap2.example.net/"]  # tried in order
    write_uris = ["ldap://ldap1.example.net/"]  # writes and password checks (default: uris)
    base_dn = "o=top"
    bind_dn = "cn=mailrouter,o=top"            # the read-only service account
    bind_password_file = "/etc/mailrouter/ldap.secret"   # never on a command line
    connect_timeout = 3.0                       # seconds, per URI
    operation_timeout = 5.0                     # seconds, per LDAP operation
    connection_max_requests = 1000              # lookupd/authd workers keep one service
    connection_max_age = 300.0                  #   connection each, replaced after this many
    connection_max_idle = 20.0                  #   requests, seconds open, or seconds unused

    [spool]
    format = "mbox"                             # or "maildir": the hub's default; a user's
                                                #   mailMessageFormat overrides it
    mbox_template = "/var/mail/{local}@{domain}"  # what stock popa3d opens
    maildir_template = "/var/mail/{domain}/{local}/Maildir"
    storage_user = "mail"                       # one storage account, as the seed mandates
    per_user_ids = false                        # true: uidNumber/gidNumber from LDAP (set by
                                                #   global admins only: ldap/acl.conf rule 3)
    min_uid = 100                               # per-user ids below this are refused
    lock_timeout = 10.0                         # seconds to wait for a mailbox lock
    stale_lock_age = 600                        # seconds after which a dotlock is stale

    [auth]
    sender_ownership = true                     # authenticated senders must own MAIL FROM
    password_scheme = "argon2"                  # argon2 | sha512_crypt | ssha: what our tools
                                                #   write and what every login rehashes to
    argon2_memory_kib = 65536                   # Argon2 cost of every {ARGON2} hash (default:
    argon2_time = 3                             #   RFC 9106's second option, passwords.ARGON2_*);
    argon2_parallelism = 4                      #   slapd.conf's "moduleload argon2" must match:
                                                #   python3 -m mailrouter.passwords --config FILE
    auth_socket = "/run/mailrouter/auth.sock"

    [web]                                       # mailrouter-web (admin and self-service pages, API)
    listen = "127.0.0.1:8443"                   # host:port gunicorn binds
    tls_certificate = "/etc/mailrouter/web.crt" # with tls_key: HTTPS by gunicorn itself; without
    tls_key = "/etc/mailrouter/web.key"         #   both, put a TLS reverse proxy in front
    secret_key_file = "/etc/mailrouter/web.secret"  # signs cookies and CSRF tokens (>= 32 bytes)
    state_dir = "/var/lib/mailrouter/web"       # sessions (passwords only encrypted) and throttles
    idle_timeout = 1800                         # seconds without a request before a login ends
    absolute_timeout = 28800                    # seconds after which every login ends
    workers = 2                                 # gunicorn worker processes
    proxies = 0                                 # reverse proxies in front that set X-Forwarded-*
    login_failures_per_account = 5              # refused logins per account per window ...
    login_failures_per_client = 20              # ... and per client address, then 429
    login_window = 900                          # seconds

Reads and writes (more than one machine, ``ldap/replication/``): ``uris`` is
where lookups *read*, in order -- on a mail node its own read-only replica
first, then the providers.  ``write_uris`` is where every *write* goes (the
admin CLI, the web, ``mailrouter-passwd``, the rehash on login) and every
*password check*: a bind updates ppolicy's failure count and lockout, which a
read-only replica cannot record -- checked there, a guesser would never be
locked out.  Without ``write_uris`` both are ``uris`` (one server, or a
failover list of equals: unchanged).  A write that reaches a replica anyway is
refused with its referral (:class:`~mailrouter.errors.ReadOnlyReplica`), never
applied there nor retried elsewhere.

Why no globals: every executable calls :func:`load` once and hands the result
down, so tests can run several configurations in one process.
"""

from __future__ import annotations

import os
import pwd
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailrouter.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/mailrouter/mailrouter.toml"

# Far inside Exim's 60 s ${run} limit, even when every URI of a failover list
# times out: (connect + operation) * len(uris) must stay well below 60.
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_OPERATION_TIMEOUT = 5.0

# The persistent service connection of a lookupd/authd worker (directory.PersistentDirectory).
# Age: a connection failed over to a later URI goes back to the first within this time, and a
# rotated service secret is used within it.  Idle: below the shipped slapd's idletimeout (30 s,
# ldap/slapd.conf), so slapd never closes a connection we are about to use.
DEFAULT_CONNECTION_MAX_REQUESTS = 1000
DEFAULT_CONNECTION_MAX_AGE = 300.0
DEFAULT_CONNECTION_MAX_IDLE = 20.0

# The default is the file stock popa3d opens for the login "local@domain".
DEFAULT_MBOX_TEMPLATE = "/var/mail/{local}@{domain}"
DEFAULT_MAILDIR_TEMPLATE = "/var/mail/{domain}/{local}/Maildir"


@dataclass(frozen=True)
class LdapConfig:
    """Where LDAP is and how the service account binds.

    ``service_password()`` gives the password: ``bind_password`` when set
    directly (tests, the sandbox), else the contents of ``bind_password_file``.
    """

    uris: tuple[str, ...]
    base_dn: str = "o=top"
    bind_dn: str | None = None
    bind_password: str | None = field(default=None, repr=False)
    # Read on first connect, not at load: the delivery hook runs as the storage
    # account, loads the same file, and neither needs nor may read the secret.
    bind_password_file: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT
    # Empty: writes and password checks go to ``uris`` (see the module docstring).
    write_uris: tuple[str, ...] = ()

    @property
    def writers(self) -> tuple[str, ...]:
        """Where writes and password checks (binds) go: ``write_uris``, else ``uris``."""
        return self.write_uris or self.uris
    connection_max_requests: int = DEFAULT_CONNECTION_MAX_REQUESTS
    connection_max_age: float = DEFAULT_CONNECTION_MAX_AGE
    connection_max_idle: float = DEFAULT_CONNECTION_MAX_IDLE

    def service_password(self) -> str | None:
        if self.bind_password is not None:
            return self.bind_password
        return read_secret(self.bind_password_file) if self.bind_password_file else None


@dataclass(frozen=True)
class SpoolConfig:
    format: str = "mbox"
    mbox_template: str = DEFAULT_MBOX_TEMPLATE
    maildir_template: str = DEFAULT_MAILDIR_TEMPLATE
    storage_user: str = "mail"
    storage_uid: int = 8
    storage_gid: int = 8
    per_user_ids: bool = False
    min_uid: int = 100
    lock_timeout: float = 10.0
    stale_lock_age: float = 600.0

    def template(self) -> str:
        """The template of the hub's default format."""
        return self.template_for(self.format)

    def template_for(self, mailbox_format: str) -> str:
        """The template of ``mailbox_format`` ("mbox" or "maildir")."""
        return self.maildir_template if mailbox_format == "maildir" else self.mbox_template


@dataclass(frozen=True)
class AuthConfig:
    sender_ownership: bool = True
    password_scheme: str = "argon2"
    auth_socket: str = "/run/mailrouter/auth.sock"
    # None: mailrouter.passwords' defaults (one place; passwords.configured_cost).
    argon2_memory_kib: int | None = None
    argon2_time: int | None = None
    argon2_parallelism: int | None = None


@dataclass(frozen=True)
class WebConfig:
    listen: str = "127.0.0.1:8443"
    tls_certificate: str | None = None
    tls_key: str | None = None
    secret_key_file: str = "/etc/mailrouter/web.secret"
    state_dir: str = "/var/lib/mailrouter/web"
    idle_timeout: int = 1800
    absolute_timeout: int = 28800
    workers: int = 2
    proxies: int = 0
    login_failures_per_account: int = 5
    login_failures_per_client: int = 20
    login_window: int = 900

    def secret_key(self) -> bytes:
        """The cookie/CSRF signing key, read when the web app is built (never logged)."""
        key = read_secret(self.secret_key_file).encode("utf-8")
        if len(key) < 32:
            raise ConfigError(f"{self.secret_key_file}: the web secret needs at least 32 characters")
        return key


@dataclass(frozen=True)
class Config:
    ldap: LdapConfig
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    web: WebConfig = field(default_factory=WebConfig)
    path: str | None = None


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int in Python: never accept true for a number or 1 for a bool.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{key}: expected {kind}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind}, got {type(value).__name__}")
    return value


def secret_line(text: str) -> str:
    """The secret in a password file's text: its first line, without the line end.

    One rule for every reader (hooks, daemons, the admin CLI): a file written with
    ``echo``, an editor or ``printf`` gives the same password, and a second line
    (a comment, a stray paste) is never part of it.
    """
    return text.split("\n", 1)[0].rstrip("\r")


def read_secret(path: str) -> str:
    """The secret in password file ``path`` (:func:`secret_line`); empty is an error."""
    secret_path = Path(path)
    try:
        secret = secret_line(secret_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read password file {secret_path}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"password file {secret_path} is empty")
    return secret


def _storage_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"storage_user {user!r} does not exist") from exc
    if entry.pw_uid == 0:
        raise ConfigError("storage_user must not be root")
    return entry.pw_uid, entry.pw_gid


def parse(data: dict[str, Any], base: Path = Path("/"), path: str | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML; relative file names resolve against ``base``."""
    ldap = _section(data, "ldap")
    uris = _typed(ldap, "uris", list, None)
    if not uris or not all(isinstance(u, str) and u for u in uris):
        raise ConfigError("ldap.uris must be a non-empty list of LDAP URIs")
    write_uris = _typed(ldap, "write_uris", list, [])
    if not all(isinstance(u, str) and u for u in write_uris):
        raise ConfigError("ldap.write_uris must be a list of LDAP URIs (the providers)")
    password_file = _typed(ldap, "bind_password_file", str, None)
    bind_dn = _typed(ldap, "bind_dn", str, None)
    if bind_dn and not password_file:
        raise ConfigError("ldap.bind_dn needs ldap.bind_password_file")
    connect_timeout = float(_typed(ldap, "connect_timeout", (int, float), DEFAULT_CONNECT_TIMEOUT))
    operation_timeout = float(
        _typed(ldap, "operation_timeout", (int, float), DEFAULT_OPERATION_TIMEOUT)
    )
    if not (0 < connect_timeout <= 20 and 0 < operation_timeout <= 20):
        raise ConfigError("LDAP timeouts must be between 0 and 20 seconds (Exim gives up at 60)")
    max_requests = int(_typed(ldap, "connection_max_requests", int, DEFAULT_CONNECTION_MAX_REQUESTS))
    max_age = float(_typed(ldap, "connection_max_age", (int, float), DEFAULT_CONNECTION_MAX_AGE))
    max_idle = float(_typed(ldap, "connection_max_idle", (int, float), DEFAULT_CONNECTION_MAX_IDLE))
    if max_requests < 1 or max_age <= 0 or max_idle <= 0:
        raise ConfigError("ldap.connection_max_requests, _max_age and _max_idle must be positive")
    ldap_config = LdapConfig(
        uris=tuple(uris),
        write_uris=tuple(write_uris),
        base_dn=_typed(ldap, "base_dn", str, "o=top"),
        bind_dn=bind_dn,
        bind_password_file=str(base / password_file) if password_file else None,
        connect_timeout=connect_timeout,
        operation_timeout=operation_timeout,
        connection_max_requests=max_requests,
        connection_max_age=max_age,
        connection_max_idle=max_idle,
    )

    spool = _section(data, "spool")
    spool_format = _typed(spool, "format", str, "mbox")
    if spool_format not in ("mbox", "maildir"):
        raise ConfigError("spool.format must be 'mbox' or 'maildir'")
    templates = {}
    for key, default in (
        ("mbox_template", DEFAULT_MBOX_TEMPLATE),
        ("maildir_template", DEFAULT_MAILDIR_TEMPLATE),
    ):
        template = _typed(spool, key, str, default)
        if not os.path.isabs(template) or "{local}" not in template or "{domain}" not in template:
            raise ConfigError(f"spool.{key} must be absolute and contain {{local}} and {{domain}}")
        templates[key] = template
    storage_user = _typed(spool, "storage_user", str, "mail")
    storage_uid, storage_gid = _storage_ids(storage_user)
    spool_config = SpoolConfig(
        format=spool_format,
        storage_user=storage_user,
        storage_uid=storage_uid,
        storage_gid=storage_gid,
        per_user_ids=_typed(spool, "per_user_ids", bool, False),
        min_uid=_typed(spool, "min_uid", int, 100),
        lock_timeout=float(_typed(spool, "lock_timeout", (int, float), 10.0)),
        stale_lock_age=float(_typed(spool, "stale_lock_age", (int, float), 600.0)),
        **templates,
    )

    auth = _section(data, "auth")
    scheme = _typed(auth, "password_scheme", str, "argon2")
    if scheme not in ("argon2", "sha512_crypt", "ssha"):
        raise ConfigError("auth.password_scheme must be argon2, sha512_crypt or ssha")
    argon2_cost = {key: _typed(auth, key, int, None)
                   for key in ("argon2_memory_kib", "argon2_time", "argon2_parallelism")}
    if any(value is not None and value < 1 for value in argon2_cost.values()):
        raise ConfigError("auth.argon2_memory_kib, argon2_time and argon2_parallelism must be positive")
    lanes = argon2_cost["argon2_parallelism"]
    memory = argon2_cost["argon2_memory_kib"]
    if memory is not None and memory < 8 * (lanes or 4):
        raise ConfigError("auth.argon2_memory_kib must be at least 8 KiB per lane (RFC 9106)")
    auth_config = AuthConfig(
        sender_ownership=_typed(auth, "sender_ownership", bool, True),
        password_scheme=scheme,
        auth_socket=_typed(auth, "auth_socket", str, "/run/mailrouter/auth.sock"),
        **argon2_cost,
    )
    return Config(ldap=ldap_config, spool=spool_config, auth=auth_config, web=_web(data, base), path=path)


def _web(data: dict[str, Any], base: Path) -> WebConfig:
    web = _section(data, "web")
    defaults = WebConfig()

    def path_or_none(key: str) -> str | None:
        value = _typed(web, key, str, None)
        return str(base / value) if value else None

    def positive(key: str, default: int) -> int:
        value = int(_typed(web, key, int, default))
        if value <= 0:
            raise ConfigError(f"web.{key} must be a positive number")
        return value

    certificate, tls_key = path_or_none("tls_certificate"), path_or_none("tls_key")
    if (certificate is None) != (tls_key is None):
        raise ConfigError("web.tls_certificate and web.tls_key go together")
    listen = _typed(web, "listen", str, defaults.listen)
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError("web.listen must be HOST:PORT")
    proxies = int(_typed(web, "proxies", int, 0))
    if proxies < 0:
        raise ConfigError("web.proxies must be 0 or more")
    numbers = {
        key: positive(key, getattr(defaults, key))
        for key in ("idle_timeout", "absolute_timeout", "workers", "login_failures_per_account",
                    "login_failures_per_client", "login_window")
    }
    return WebConfig(
        listen=listen,
        tls_certificate=certificate,
        tls_key=tls_key,
        secret_key_file=str(base / _typed(web, "secret_key_file", str, defaults.secret_key_file)),
        state_dir=str(base / _typed(web, "state_dir", str, defaults.state_dir)),
        **numbers,
    )


def load(path: str | None = None) -> Config:
    """Read and validate the TOML file at ``path`` (default :data:`DEFAULT_CONFIG_PATH`)."""
    config_path = Path(path or DEFAULT_CONFIG_PATH)
    try:
        with config_path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: {exc}") from exc
    return parse(data, base=config_path.parent, path=str(config_path))
