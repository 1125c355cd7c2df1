"""mailrouter-pam-auth -- password check for PAM's pam_exec (stock popa3d logins).

Usage (from a PAM service file, never by hand)::

    auth required pam_exec.so expose_authtok quiet \\
        /opt/mailrouter/venv/bin/mailrouter-pam-auth --config /etc/mailrouter/mailrouter.toml

Input:
    ``PAM_USER``  (environment) the login exactly as the client typed it; only the
                  canonical lower-case ``local@domain`` can succeed.
    ``PAM_TYPE``  must be ``auth`` (pam_exec sets it); anything else is refused.
    stdin         the password (pam_exec ``expose_authtok``).  Linux-PAM writes it
                  without a trailing NUL; one trailing NUL is tolerated.
    ``--config``  the TOML configuration (default ``/etc/mailrouter/mailrouter.toml``).
                  Taken from argv (the root-owned PAM file) and never from the
                  environment, which the PAM application and its modules may influence.

Output: nothing on stdout or stderr (stderr is /dev/null, see ``mailrouter.cmd.guard``).

Exit codes (pam_exec turns every non-zero code into a failed login; the code
only shows up in pam_exec's syslog line, for the admin):
    0   authenticated
    1   refused: unknown user, wrong or empty password, disabled account,
        non-canonical login -- all the same on purpose
    2   misuse: no PAM_USER, PAM_TYPE is not auth, bad arguments
    75  temporary: LDAP down or slow, bad configuration, any unexpected error
        (``mailrouter.cmd.guard`` maps escapes and import failures)

The records that let popa3d's ``getpwnam("local@domain")`` find the storage
account after PAM are written by a separate program, ``mailrouter-userdb``.
"""

from __future__ import annotations

import argparse
import os
import sys

from mailrouter import auth
from mailrouter.config import Config, load
from mailrouter.errors import Misuse, TemporaryFailure
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
    chunks = []
    total = 0
    while total <= MAX_STDIN:
        chunk = os.read(stream, MAX_STDIN + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    data = b"".join(chunks)
    # Some PAM versions terminate the token with a NUL; it is never part of it.
    return data[:-1] if data.endswith(b"\0") else data


def check(config: Config, login: str, password: bytes) -> int:
    """Exit code for one PAM authentication."""
    result = auth.authenticate_raw(
        config, login.encode("utf-8", "surrogateescape"), password
    )
    return EXIT_CODES[result.verdict]


def main(argv: list[str]) -> int:
    parser = _Parser(prog="mailrouter-pam-auth", add_help=False)
    parser.add_argument("--config", default=None)
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
    return check(config, login, password)
