"""One exception hierarchy for the whole project.

Every executable maps these classes to its caller's exit codes in exactly one
place (see ``mailrouter.cmd.guard`` and each executable's ``EXIT_CODES``).  The split
that matters is *temporary* versus *definite*: only a definite answer from LDAP
may ever turn into a permanent failure (a bounce, a 5xx, "bad password").
"""


class MailrouterError(Exception):
    """Base class of every error the project raises on purpose."""


class TemporaryFailure(MailrouterError):
    """Try again later: LDAP down or slow, a lock held, a disk full, a bad config."""


class DirectoryUnavailable(TemporaryFailure):
    """LDAP gave no answer (connection refused, timeout, server busy, bind failed)."""


class ConfigError(TemporaryFailure):
    """The configuration is missing or wrong.  Temporary: an admin can fix it
    and the queued mail then goes through; bouncing it would lose it."""


class PermanentFailure(MailrouterError):
    """A definite no, based on an answer from LDAP or on the input itself."""


class InvalidName(PermanentFailure):
    """A local part, domain or login that is not canonical or is path-like."""


class NotAllowed(PermanentFailure):
    """slapd refused an operation (insufficient access and friends)."""
