"""mailrouter-pam-auth -- password check for PAM's pam_exec (stock popa3d logins).

Usage (from a PAM service file, never by hand)::

    auth required pam_exec.so expose_authtok quiet \\
        /opt/mailrouter/venv/bin/mailrouter-pam-auth --config /etc/mailrouter/mailrouter.toml \\
        --userdb /etc/userdb

Input:
    ``PAM_USER``  (environment) the login exactly as the client typed it; only the
                  canonical lower-case ``local@domain`` can succeed.
    ``PAM_TYPE``  must be ``auth`` (pam_exec sets it); anything else is refused.
    stdin         the password (pam_exec ``expose_authtok``).  Linux-PAM writes it
                  without a trailing NUL; one trailing NUL is tolerated.
    ``--config``  the TOML configuration (default ``/etc/mailrouter/mailrouter.toml``).
                  Taken from argv (the root-owned PAM file) and never from the
                  environment, which the PAM application and its modules may influence.
    ``--userdb DIR``  the nss-systemd record directory popa3d's ``getpwnam`` reads
                  (``/etc/userdb``); see below.  Without it no record is touched.

Output: nothing on stdout or stderr (stderr is /dev/null, see ``mailrouter.cmd.guard``).

User records (``--userdb``): after a successful check, and before exiting --
that is, before popa3d calls ``getpwnam(login)`` -- the helper writes or
refreshes that one user's record ``DIR/local@domain.user``
(``mailrouter.userrecords``; unchanged records are not rewritten), so a user
created a second ago logs in at once, no timer in the path.  When a canonical
login is refused, the user is looked up (service account; for every such
refusal, so the cost tells nothing): gone or disabled removes the record, a
wrong password alone never does.  ``mailrouter-userdb`` (its
timer) stays as the sweeper for users who never log in again.  The record
needs only what the check already returned (address, ids, status), so any
process holding the verdict can write it -- also this helper once it asks
``mailrouter-authd`` instead of LDAP, as long as the reply carries the ids.
A record that cannot be written while none exists is exit 75 (popa3d could
not find the account anyway); with an older record present, the login stands.

Exit codes (pam_exec turns every non-zero code into a failed login; the code
only shows up in pam_exec's syslog line, for the admin):
    0   authenticated
    1   refused: unknown user, wrong or empty password, disabled account,
        non-canonical login -- all the same on purpose
    2   misuse: no PAM_USER, PAM_TYPE is not auth, bad arguments
    75  temporary: LDAP down or slow, bad configuration, the user's record could
        not be written and none exists, any unexpected error
        (``mailrouter.cmd.guard`` maps escapes and import failures)
"""

from __future__ import annotations

import argparse
import os
import sys

from mailrouter import auth, names, userrecords
from mailrouter.cmd.fdread import read_at_most
from mailrouter.config import Config, load
from mailrouter.directory import User
from mailrouter.errors import InvalidName, Misuse, TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_USAGE

EXIT_CODES = {
    auth.Verdict.OK: EX_OK,
    auth.Verdict.REFUSED: EX_REFUSED,
    auth.Verdict.TEMPORARY: EX_TEMPFAIL,
}

# PAM_MAX_RESP_SIZE is 512; read a little more so an over-long token is seen as such.
MAX_STDIN = 4096


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing to stderr and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise Misuse(message)


def _read_password(stream: int) -> bytes:
    data = read_at_most(stream, MAX_STDIN)
    # Some PAM versions terminate the token with a NUL; it is never part of it.
    return data[:-1] if data.endswith(b"\0") else data


def check(config: Config, login: str, password: bytes, userdb: str | None = None) -> int:
    """Exit code for one PAM authentication; ``userdb``: keep that login's record current."""
    result = auth.authenticate_raw(
        config, login.encode("utf-8", "surrogateescape"), password
    )
    if userdb is not None:
        if result.user is not None:
            return _record_login(config, userdb, result.user)
        if result.verdict is auth.Verdict.REFUSED:
            _forget_if_gone(config, userdb, login)
    return EXIT_CODES[result.verdict]


def _record_login(config: Config, userdb: str, user: User) -> int:
    """Write ``user``'s record before popa3d asks for it; the exit code of the login."""
    try:
        userrecords.refresh(userdb, user.address, userrecords.record(config, user))
    except (OSError, InvalidName):
        try:
            present = userrecords.current(userdb, user.address) is not None
        except (OSError, InvalidName):
            present = False
        return EX_OK if present else EX_TEMPFAIL
    return EX_OK


def _forget_if_gone(config: Config, userdb: str, login: str) -> None:
    """A refused canonical login: remove its record of ours if the user is gone or disabled.

    The lookup is made for every such refusal, record or not, so that its cost
    says nothing about whether the user exists.  A wrong password alone never
    removes a record: a guesser could otherwise pull it away between a real
    login's write and popa3d's ``getpwnam``."""
    try:
        names.address(login)
    except InvalidName:
        return
    if auth.lookup(config, login).verdict is not auth.Verdict.REFUSED:
        return  # the user exists (a wrong password), or LDAP gave no answer
    try:
        userrecords.refresh(userdb, login, None)
    except OSError:
        pass  # the login is refused either way; the sweeper removes it later


def main(argv: list[str]) -> int:
    parser = _Parser(prog="mailrouter-pam-auth", add_help=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("--userdb", default=None, metavar="DIR")
    try:
        args = parser.parse_args(argv)
    except Misuse:
        # Returned, not raised as SystemExit: the guard maps a SystemExit of a
        # silenced hook to the temporary code, and this is a definite misuse.
        return EX_USAGE
    try:
        config = load(args.config)
    except TemporaryFailure:
        return EX_TEMPFAIL
    login = os.environ.get("PAM_USER")
    if not login or os.environ.get("PAM_TYPE", "auth") != "auth":
        return EX_USAGE
    password = _read_password(sys.stdin.fileno())
    return check(config, login, password, args.userdb)
