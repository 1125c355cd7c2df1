"""One exception hierarchy for the whole project: every exception class lives here.

Every executable maps these classes to its caller's exit codes in exactly one
place (see ``mailrouter.cmd.guard``, ``mailrouter.exitcodes`` and each
executable's ``main``).  The split that matters is *temporary* versus
*definite*: only a definite answer from LDAP may ever turn into a permanent
failure (a bounce, a 5xx, "bad password").
"""

from __future__ import annotations


class MailrouterError(Exception):
    """Base class of every error the project raises on purpose."""


# -- temporary: try again later ------------------------------------------------
class TemporaryFailure(MailrouterError):
    """Try again later: LDAP down or slow, a lock held, a disk full, a bad config."""


class DirectoryUnavailable(TemporaryFailure):
    """LDAP gave no answer (connection refused, timeout, server busy)."""


class WriteOutcomeUnknown(DirectoryUnavailable):
    """A write was sent but no answer came back: it may or may not have been applied.

    Never retried on another server (it may have happened); reported as temporary."""


class ConfigError(TemporaryFailure):
    """The configuration is missing or wrong.  Temporary: an admin can fix it
    and the queued mail then goes through; bouncing it would lose it."""


class BindRefused(ConfigError):
    """slapd refused the *service account's* bind (rc 49): a wrong secret in the
    configuration.  Temporary for mail (an admin fixes the secret); a person's
    own refused bind is :class:`LdapRefused` with code 49 instead.

    A :class:`ConfigError` because that is what it is: every caller that treats
    a broken configuration in its own way (the admin CLI's "bad configuration")
    treats this one the same, and a caller that must tell it apart can."""


class ReadOnlyReplica(ConfigError):
    """A write reached a read-only replica, which answered with a referral to its
    providers (slapd's ``updateref``): nothing was written.  A configuration error
    -- ``ldap.write_uris`` must name the providers -- and never retried elsewhere."""

    def __init__(self, operation: str, dn: str, uri: str, referrals: list[str]) -> None:
        where = ", ".join(referrals) or "its providers"
        super().__init__(
            f"{operation} {dn}: {uri} is a read-only replica (it refers writes to {where});"
            " nothing was written: put the providers in ldap.write_uris"
        )


class LockTimeout(TemporaryFailure):
    """The mailbox stayed locked by another process until our deadline."""


class MaildirError(TemporaryFailure):
    """The maildir is unusable (not a directory, symlinked, full disk...)."""


class MailboxRefused(TemporaryFailure):
    """The mailbox is a symlink, hard link, non-regular file, or owned by someone else.

    Temporary: an admin must look at it; bouncing would lose the mail."""


class OverQuota(TemporaryFailure):
    """The mailbox is too full for this message now (it may be emptied later)."""


# -- definite answers ------------------------------------------------------------
class PermanentFailure(MailrouterError):
    """A definite no, based on an answer from LDAP or on the input itself."""


class InvalidName(PermanentFailure):
    """A local part, domain or login that is not canonical or is path-like."""


class NotAllowed(PermanentFailure):
    """slapd refused an operation (insufficient access and friends)."""


# Result codes that mean "slapd answered, and the answer is no" (RFC 4511).
REFUSAL_CODES = {
    16: "no such attribute",
    19: "constraint violation",
    20: "value already present",
    21: "invalid attribute syntax",
    32: "no such entry",
    34: "invalid DN",
    48: "inappropriate authentication",
    49: "invalid credentials",
    50: "insufficient access",
    53: "unwilling to perform",
    64: "naming violation",
    65: "object class violation",
    66: "not allowed on non-leaf",
    67: "not allowed on RDN",
    68: "entry already exists",
    69: "object class modifications prohibited",
}


class LdapRefused(NotAllowed):
    """slapd answered an operation with a refusal; ``code`` is its result code."""

    def __init__(self, code: int, operation: str, dn: str, detail: str = "") -> None:
        self.code = code
        self.operation = operation
        self.dn = dn
        reason = REFUSAL_CODES.get(code, f"result {code}")
        super().__init__(f"{operation} {dn}: {reason}" + (f" ({detail})" if detail else ""))


class TooBigForQuota(PermanentFailure):
    """The message alone exceeds the whole quota: it can never be delivered."""


class AdminError(PermanentFailure):
    """An admin operation was refused or its input is invalid; the message is
    already worded for the person acting (CLI exit 1, HTTP 4xx).

    ``kind`` says which 4xx, so a front end never parses the message:

    ``"invalid"``    bad input, nothing sent to LDAP (HTTP 422); ``field`` names the input
    ``"refused"``    slapd said no: insufficient access, invalid credentials (403)
    ``"not_found"``  no such domain, user, alias, account... (404)
    ``"exists"``     the entry (or value) is already there (409)
    ``"conflict"``   the change contradicts the directory's state: a domain that still
                     has entries, an alias's last target, the last global admin (409)
    """

    KINDS = ("invalid", "refused", "not_found", "exists", "conflict")

    def __init__(self, message: str, kind: str = "invalid", field: str | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"AdminError kind must be one of {self.KINDS}, not {kind!r}")
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.field = field


class FieldErrors(AdminError):
    """Several input fields are wrong at once (HTTP 422 with one message per field)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("invalid input: " + ", ".join(sorted(fields)), kind="invalid")
        self.fields = fields


class NotLoggedIn(Exception):
    """A web page or API call needs a login it does not have (HTTP 401 / the login page)."""


class Throttled(Exception):
    """Too many refused logins for this account or client address (HTTP 429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins; try again later")
        self.retry_after = retry_after


# -- malformed input (not MailrouterError: each caller maps it itself) ------------
class GarbledQuota(ValueError):
    """A mailQuota value we cannot read."""


class GarbledRateLimit(ValueError):
    """A mailRateLimit value (or the default_rate_limit setting) we cannot read."""


class NoFromLine(ValueError):
    """The input does not start with the ``From `` line of Exim's message_prefix."""


class BadRequest(Exception):
    """A socket client sent a malformed request."""


class Misuse(Exception):
    """The caller broke an executable's protocol (argv, fds, environment): exit 2."""


class UsageError(Exception):
    """Wrong use of an interactive command line (exit 2)."""


class DaemonError(RuntimeError):
    """A sandbox daemon could not be configured or started; the message carries its log."""
