"""mailrouter-pam-auth -- password check for PAM's pam_exec (stock popa3d logins).

Usage (from a PAM service file, never by hand)::

    auth required pam_exec.so expose_authtok quiet \\
        /opt/mailrouter/venv/bin/mailrouter-pam-auth --authd-socket /run/mailrouter/auth.sock \\
        --userdb /etc/userdb                                          (lean: popa3d/pam.d-popa3d-authd)
    auth required pam_exec.so expose_authtok quiet \\
        /opt/mailrouter/venv/bin/mailrouter-pam-auth --config /etc/mailrouter/mailrouter.toml \\
        --userdb /etc/userdb                                          (full: popa3d/pam.d-popa3d)

Two paths, one verdict.  With ``--authd-socket`` (the lean path) the helper
asks ``mailrouter-authd`` over its Unix socket (the ``PAM`` request, see
``pydoc mailrouter.cmd.authd``) and loads neither the LDAP library nor a TOML
parser nor the configuration: a POP3 login then costs a Python start-up plus
one socket round trip, and authd's warm worker does the check with the same
core (``mailrouter.auth``: the same refusals, the same dummy work for
unknown users, the same timing).  The password travels on the socket, never
in argv or the environment.  authd not running or not answering is exit 75,
as LDAP trouble is.  Without ``--authd-socket`` (the full path, the fallback
where no authd runs) the helper loads the configuration and checks against
LDAP itself.  The shipped ``popa3d/pam.d-popa3d`` uses the full path (it
needs no daemon); ``popa3d/pam.d-popa3d-authd`` is the lean one, for hosts
that run ``mailrouter-authd`` (systemd/) -- the one to install there.

Input:
    ``PAM_USER``  (environment) the login exactly as the client typed it; only the
                  canonical lower-case ``local@domain`` can succeed.
    ``PAM_TYPE``  must be ``auth`` (pam_exec sets it); anything else is refused.
    stdin         the password (pam_exec ``expose_authtok``).  Linux-PAM writes it
                  without a trailing NUL; one trailing NUL is tolerated.
    ``--authd-socket PATH``  ask mailrouter-authd there (the lean path); ``--config``
                  is then not read.
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
login is refused and its user is gone or disabled, the record is removed; a
wrong password alone never does.  The full path looks the user up once more
(service account; for every such refusal, so the cost tells nothing); on the
lean path authd's reply carries both (``OK <record>``, ``NO GONE``) from the
check itself.  ``mailrouter-userdb`` (its timer) stays as the sweeper for
users who never log in again.  A record that cannot be written while none
exists is exit 75 (popa3d could not find the account anyway); with an older
record present, the login stands.

Exit codes (pam_exec turns every non-zero code into a failed login; the code
only shows up in pam_exec's syslog line, for the admin):
    0   authenticated
    1   refused: unknown user, wrong or empty password, disabled account,
        non-canonical login -- all the same on purpose
    2   misuse: no PAM_USER, PAM_TYPE is not auth, bad arguments
    75  temporary: LDAP down or slow, authd not running or not answering, bad
        configuration, the user's record could not be written and none exists,
        any unexpected error (``mailrouter.cmd.guard`` maps escapes and import failures)
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from typing import TYPE_CHECKING

# Standard library, names, errors, userrecords and constants only: the lean path
# must not pay for ldap3 or a TOML parser (tests/integration/test_pam_authd.py).
# The full path imports the rest inside check().
from mailrouter import names, userrecords
from mailrouter.cmd.fdread import read_at_most
from mailrouter.errors import InvalidName, Misuse
from mailrouter.exitcodes import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_USAGE

if TYPE_CHECKING:
    from mailrouter.config import Config

# A check is one password hash on authd's side (~0.1 s); authd kills one after 30 s.
AUTHD_TIMEOUT = 35.0
MAX_REPLY = 4096

# PAM_MAX_RESP_SIZE is 512; read a little more so an over-long token is seen as such.
MAX_STDIN = 4096


OPTIONS = ("--config", "--authd-socket", "--userdb")


def parse_arguments(argv: list[str]) -> dict[str, str]:
    """``{option: value}`` from ``--option VALUE`` / ``--option=VALUE``; :class:`Misuse` otherwise.

    By hand, not argparse: the lean path's start-up time is the login's (argparse
    alone was a fifth of the helper's imports), and three options need no more."""
    values: dict[str, str] = {}
    rest = list(argv)
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        if name not in OPTIONS or name in values:
            raise Misuse(f"unexpected argument {name!r}")
        if not equals:
            if not rest:
                raise Misuse(f"{name} needs a value")
            value = rest.pop(0)
        values[name] = value
    return values


def _read_password(stream: int) -> bytes:
    data = read_at_most(stream, MAX_STDIN)
    # Some PAM versions terminate the token with a NUL; it is never part of it.
    return data[:-1] if data.endswith(b"\0") else data


def check(config: Config, login: str, password: bytes, userdb: str | None = None) -> int:
    """The full path: exit code for one PAM authentication checked against LDAP here;
    ``userdb``: keep that login's record current."""
    from mailrouter import auth

    exit_codes = {
        auth.Verdict.OK: EX_OK,
        auth.Verdict.REFUSED: EX_REFUSED,
        auth.Verdict.TEMPORARY: EX_TEMPFAIL,
    }
    result = auth.authenticate_raw(
        config, login.encode("utf-8", "surrogateescape"), password
    )
    if userdb is not None:
        if result.user is not None:
            return _record_login(userdb, result.user.address, userrecords.record(config, result.user))
        if result.verdict is auth.Verdict.REFUSED and _canonical(login):
            # Asked for every canonical refusal, record or not, so that its cost
            # says nothing about whether the user exists.
            if auth.lookup(config, login).verdict is auth.Verdict.REFUSED:
                _forget(userdb, login)  # gone or disabled (not when LDAP gave no answer)
    return exit_codes[result.verdict]


def check_via_authd(socket_path: str, login: str, password: bytes, userdb: str | None = None) -> int:
    """The lean path: the same check, asked of mailrouter-authd (see the manual)."""
    raw_login = login.encode("utf-8", "surrogateescape")
    request = b"PAM " + base64.b64encode(raw_login) + b" " + base64.b64encode(password) + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(AUTHD_TIMEOUT)
            client.connect(socket_path)
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            reply = b""
            while len(reply) <= MAX_REPLY and (chunk := client.recv(MAX_REPLY + 1 - len(reply))):
                reply += chunk  # (a socket with a timeout is non-blocking: recv, not os.read)
    except OSError:
        return EX_TEMPFAIL  # not running, not answering: like LDAP trouble
    if reply == b"NO\n":
        return EX_REFUSED
    if reply == b"NO GONE\n":
        if userdb is not None and _canonical(login):
            _forget(userdb, login)
        return EX_REFUSED
    if reply == b"OK\n" or reply.startswith(b"OK {"):
        record = _record_from_reply(reply, login) if reply != b"OK\n" else None
        if reply != b"OK\n" and record is None:
            return EX_TEMPFAIL  # a record that is not for this login: trust nothing
        return _record_login(userdb, login, record) if userdb is not None else EX_OK
    return EX_TEMPFAIL  # TEMP, or anything we do not understand


def _record_from_reply(reply: bytes, login: str) -> userrecords.Record | None:
    """The record in ``OK <json>\\n`` if it is one of ours for exactly ``login``."""
    try:
        record = json.loads(reply[3:].decode("utf-8"))
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or record.get("service") != userrecords.USERDB_SERVICE
        or record.get("userName") != login
    ):
        return None
    return record


def _canonical(login: str) -> bool:
    try:
        names.address(login)
    except InvalidName:
        return False
    return True


def _record_login(userdb: str, login: str, record: userrecords.Record | None) -> int:
    """Write ``login``'s record before popa3d asks for it; the exit code of the login."""
    try:
        userrecords.refresh(userdb, login, record)
    except (OSError, InvalidName):
        try:
            present = userrecords.current(userdb, login) is not None
        except (OSError, InvalidName):
            present = False
        return EX_OK if present else EX_TEMPFAIL
    return EX_OK


def _forget(userdb: str, login: str) -> None:
    """A refused canonical login whose user is gone or disabled: remove its record of ours.

    A wrong password alone never removes a record: a guesser could otherwise
    pull it away between a real login's write and popa3d's ``getpwnam``."""
    try:
        userrecords.refresh(userdb, login, None)
    except (OSError, InvalidName):
        pass  # the login is refused either way; the sweeper removes it later


def main(argv: list[str]) -> int:
    try:
        args = parse_arguments(argv)
    except Misuse:
        # Returned, not raised as SystemExit: the guard maps a SystemExit of a
        # silenced hook to the temporary code, and this is a definite misuse.
        return EX_USAGE
    login = os.environ.get("PAM_USER")
    if not login or os.environ.get("PAM_TYPE", "auth") != "auth":
        return EX_USAGE
    userdb = args.get("--userdb")
    if "--authd-socket" in args:
        return check_via_authd(args["--authd-socket"], login, _read_password(sys.stdin.fileno()), userdb)
    from mailrouter.config import load  # the full path: TOML, then LDAP
    from mailrouter.errors import TemporaryFailure

    try:
        config = load(args.get("--config"))
    except TemporaryFailure:
        return EX_TEMPFAIL
    password = _read_password(sys.stdin.fileno())
    return check(config, login, password, userdb)
