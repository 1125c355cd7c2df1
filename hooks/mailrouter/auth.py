"""The one authentication core behind every login front end.

``mailrouter-pam-auth`` (popa3d via pam_exec), ``mailrouter-checkpassword``
(Dovecot, qmail-style servers) and ``mailrouter-authd`` (Exim SMTP AUTH via
``${readsocket}``) all call :func:`authenticate` and only translate its
:class:`Verdict` into their caller's protocol.  Nothing here talks to a client.

The rules, and why:

* **Only the canonical login.**  The login must be the lower-case
  ``local@domain`` exactly as stored (``names.address``).  Stock popa3d opens
  ``/var/mail/<login as typed>`` without any check, so ``BOB@EXAMPLE.COM``,
  ``../x@example.com`` or ``a/b@example.com`` must never pass, even if LDAP's
  case-insensitive matching would find an entry for them.
* **DN built, never searched.**  The user DN is ``uid=LOCAL,dc=DOMAIN,BASE``
  with escaped RDNs (``Directory.user_dn``); ``Directory.user`` compares the
  naming attributes exactly after the read.
* **Empty password refused before any user bind.**  With ``allow bind_anon_dn``
  an empty-password simple bind *succeeds* as anonymous.
* **One answer for every refusal.**  Unknown user, wrong password, disabled
  account, non-canonical login and empty password all give :attr:`Verdict.REFUSED`,
  and about the same time: every request makes the same LDAP round trip (one
  base read as the service account -- on a fresh bind, or on authd's persistent
  connection, alike for every login; a non-canonical login is looked up as a
  name in ``.invalid``), and when no user bind follows, the core spends
  ``passwords.dummy_work`` (the cost of slapd verifying an ``{ARGON2}`` hash of
  the configured cost)
  instead.  ``bench/bench_auth.py`` measures it.
* **Any octets are a password.**  Control characters (``\\n``, ``\\x01``,
  U+2028...), a bidi mix, 5 000 bytes, NUL, octets that are not UTF-8: either
  slapd compares them with the hash (``directory.password_octets``: SASLprep
  where it is defined, else the octets as typed -- the LDAP client used to
  refuse such a password *before* binding, which came back as "LDAP
  unavailable", fast and for existing users only), or :func:`password_problem`
  refuses them at the cost of the dummy work.  The same holds for any login:
  one that is not canonical is looked up as the probe name.  So no login or
  password is ever answered TEMPORARY, or faster, because of what it contains.
* **LDAP trouble is temporary, never "bad password".**  Any
  ``TemporaryFailure`` (LDAP down, frozen, service bind refused, bad config)
  gives :attr:`Verdict.TEMPORARY` -- for malformed logins too, since they make
  the same round trip.

* **Locked accounts look like wrong passwords.**  slapd's ppolicy lockout
  (ldap/seed.ldif) answers a locked account's bind with rc 49 at once, without
  a hash check; the core then spends ``dummy_work`` (the entry's
  ``pwdAccountLockedTime`` says so), so the refusal also costs what a wrong
  password costs.  (After the lock has run out the attribute stays until the
  next successful bind, and until then a wrong password costs two hashes.)
* **Rehash on login** (:func:`rehash_after_login`, after every successful
  check, on every front end): when the stored hash is not known to be of the
  configured ``auth.password_scheme``, the same password is written again,
  hashed that way, under the user's own identity.  It never changes the verdict.

The user entry is looked up with the service account *before* the user bind,
because a bind to a DN that does not exist fails at once while a wrong
password costs slapd a hash verification: only the lookup tells us when to do
the dummy work.  The account status is checked only after a successful bind, so
a disabled account with a wrong password and one with the right password are
both plain refusals.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from mailrouter import names, passwords
from mailrouter.config import Config, LdapConfig
from mailrouter.directory import MODIFY_REPLACE, Directory, Session, User
from mailrouter.errors import InvalidName, TemporaryFailure

# Longer passwords are refused without asking LDAP: nobody types them, and an
# attacker could otherwise make every front end hash megabytes.
MAX_PASSWORD_BYTES = 1024

# What a non-canonical login is looked up as, for equal timing: a name no
# canonical login can produce (``.invalid`` is reserved, RFC 2606).
PROBE_LOCAL = "nobody"
PROBE_DOMAIN = "mailrouter.invalid"


class Verdict(enum.Enum):
    """The three answers; the values are the authd wire tokens."""

    OK = "OK"
    REFUSED = "NO"
    TEMPORARY = "TEMP"


@dataclass(frozen=True)
class AuthResult:
    verdict: Verdict
    user: User | None = None  # set only for Verdict.OK
    reason: str = ""  # for the caller's own log; never shown to a client
    # A refused *canonical* login whose user LDAP says is gone or disabled (the
    # PAM helper then removes its user record); never shown to a client.
    gone: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


DirectoryFactory = Callable[[LdapConfig], Directory]


def canonical_login(login: str) -> tuple[str, str]:
    """``(local, domain)`` of a canonical login, else :class:`InvalidName`."""
    return names.address(login)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: nothing LDAP could compare
        return False
    return True


def password_problem(password: str) -> str:
    """Why ``password`` is refused without asking LDAP, or ``""`` when slapd must judge it.

    The one input rule of every login front end (the web's too): empty (with
    ``allow bind_anon_dn`` an empty bind *succeeds*), over ``MAX_PASSWORD_BYTES``,
    a NUL, or a lone surrogate (undecodable octets).  Everything else -- control
    characters, U+2028, any script -- is a password like any other: its octets
    go to slapd (``directory.password_octets``), and a wrong one is a wrong
    password.  A refusal here must be made to cost what a bind costs (the
    callers' business: ``authenticate`` spends the dummy hash, the web its floor).
    """
    if not password:
        return "empty password"
    if (
        len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES
        or "\x00" in password
        or not _encodable(password)
    ):
        return "over-long password, NUL or lone surrogate in password"
    return ""


def _refused(
    reason: str, password: str, *, spend: bool, cost: passwords.Argon2Cost, gone: bool = False
) -> AuthResult:
    if spend:
        # Cost what a failed user bind costs slapd, so that this refusal cannot
        # be told apart from a wrong password by its timing.  At most
        # MAX_PASSWORD_BYTES are hashed: an over-long password must not cost more.
        # ``cost`` is the configured one: what slapd spends on this deployment's hashes.
        passwords.dummy_work(password[:MAX_PASSWORD_BYTES] or "x", cost)
    return AuthResult(Verdict.REFUSED, None, reason, gone=gone)


def authenticate(
    config: Config,
    login: str,
    password: str,
    directory_factory: DirectoryFactory = Directory,
) -> AuthResult:
    """Check ``login``/``password`` against LDAP; see the module docstring."""
    problem = ""
    canonical = True
    try:
        local, domain = canonical_login(login)
    except InvalidName as exc:
        canonical = False
        # Still go through the same LDAP round trip as a real unknown user (the
        # service bind and one base read cost what they cost in this deployment),
        # so that a malformed login is not the fast way to learn nothing exists.
        local, domain = PROBE_LOCAL, PROBE_DOMAIN
        problem = f"non-canonical login: {exc}"
    problem = problem or password_problem(password)
    cost = passwords.configured_cost(config.auth)
    try:
        with directory_factory(config.ldap) as directory:
            user = directory.user(local, domain)
            gone = canonical and (user is None or not user.active)
            if problem:
                return _refused(problem, password, spend=True, cost=cost, gone=gone)
            if user is None:
                return _refused("unknown user", password, spend=True, cost=cost, gone=gone)
            # The DN is rebuilt from the canonical name, not taken from the entry.
            dn = directory.user_dn(local, domain)
            if not directory.check_password(dn, password):
                # A locked account's bind is refused without a hash check: spend it here.
                return _refused("wrong password", password, spend=user.locked, cost=cost, gone=gone)
            if not user.active:
                return _refused("account disabled", password, spend=False, cost=cost, gone=gone)
            return AuthResult(Verdict.OK, user, "ok" + rehash_after_login(config, user, password))
    except TemporaryFailure as exc:
        return AuthResult(Verdict.TEMPORARY, None, f"temporary: {exc}")


def rehash_after_login(config: Config, user: User, password: str) -> str:
    """After a successful login: store ``password`` again under the configured
    scheme if the stored hash is not known to be of that scheme.  Returns a note
    for the caller's log (``""`` when nothing was to be done); never raises.

    Why here and like this: OpenLDAP 2.5 has no rehash on bind (2.7's
    ``pwdRehashOnBind``), and only a login sees the password.  Nobody may read a
    hash, so the scheme is known from ``mailPasswordScheme`` (``User.password_scheme``,
    ``None`` when absent or stale: rehash once).  The write is a replace of
    ``userPassword`` under the user's own bind (the ACL's ``by self =wx``) with
    a hash made here, so it is exactly ``auth.password_scheme`` -- also when
    that is not slapd's ``password-hash`` -- and the label written next to it is
    the truth.  A rehash that fails (LDAP trouble, an ACL, anything) leaves the
    old hash and the verdict alone; the next login tries again.
    """
    scheme = config.auth.password_scheme
    cost = passwords.configured_cost(config.auth)
    target = passwords.scheme_label(scheme, cost)
    if user.password_scheme == target:
        return ""
    try:
        new_hash = passwords.hash_password(password, scheme, cost)
        with Session(config.ldap, user.dn, password) as session:
            session.modify(user.dn, {"userPassword": (MODIFY_REPLACE, [new_hash])})
            session.stamp_password_scheme(user.dn, target)
    except Exception as exc:  # noqa: BLE001 - a failed rehash must never fail the login
        return f"; rehash to {target} failed: {type(exc).__name__}: {exc}"
    return f"; rehashed ({user.password_scheme or 'unknown'} -> {target})"


def lookup(
    config: Config, login: str, directory_factory: DirectoryFactory = Directory
) -> AuthResult:
    """The active user named by a canonical ``login`` without a password check.

    For callers that have already authenticated the user by other means (Dovecot's
    userdb call with ``AUTHORIZED=1``).  Same verdicts as :func:`authenticate`.
    """
    try:
        local, domain = canonical_login(login)
    except InvalidName as exc:
        return AuthResult(Verdict.REFUSED, None, f"non-canonical login: {exc}")
    try:
        with directory_factory(config.ldap) as directory:
            user = directory.user(local, domain)
    except TemporaryFailure as exc:
        return AuthResult(Verdict.TEMPORARY, None, f"temporary: {exc}")
    if user is None or not user.active:
        return AuthResult(Verdict.REFUSED, None, "unknown or disabled user")
    return AuthResult(Verdict.OK, user, "ok")


def authenticate_raw(
    config: Config,
    login: bytes,
    password: bytes,
    directory_factory: DirectoryFactory = Directory,
) -> AuthResult:
    """:func:`authenticate` for octets off a wire: anything not strict UTF-8 is a refusal.

    Refusing (rather than decoding with replacement characters) keeps two
    different byte strings from ever checking as the same password.
    """
    try:
        login_text = login.decode("utf-8")
        password_text = password.decode("utf-8")
    except UnicodeDecodeError:
        # Same round trip as any other refusal: a login that cannot be canonical.
        return authenticate(config, "\x00", "x", directory_factory)
    return authenticate(config, login_text, password_text, directory_factory)
