"""mailrouter-authd -- password checks for Exim SMTP AUTH over a Unix socket.

Usage::

    mailrouter-authd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                     [--max-children N] [--request-timeout SECONDS]

Why a socket: ``${run{prog $auth2 $auth3}}`` would put the password on a
command line, readable by every local user in ``ps`` and ``/proc/PID/cmdline``.
Exim's ``${readsocket}`` sends it over a Unix socket instead; this server is
the other end.  It never puts a password into any argv.

Protocol (one request per connection; the Exim side is in exim/mailrouter.conf)::

    request:  AUTH <base64 login> <base64 password>\\n      (at most 2048 bytes)
    reply:    OK\\n | NO\\n | TEMP\\n                         then the server closes

``OK`` authenticated; ``NO`` refused (unknown user, wrong or empty password,
disabled account, non-canonical login -- one answer on purpose); ``TEMP`` LDAP
trouble, a malformed request or one not sent within 10 seconds.  A check that
takes longer than ``--request-timeout`` gets no reply at all (its child is
killed): Exim must treat that, like any other reply, as a failure.  The replies are
fixed tokens because Exim echoes an unexpected ``${readsocket}`` result to the
SMTP client.

Process model (``mailrouter.cmd.sockserver``, fork per connection): the parent
imports everything once, then forks one child per connection; the child does
the whole check (its own LDAP connection and bind, ``mailrouter.auth``), writes
the token and exits.  A slow LDAP therefore blocks only that child, and no
state survives a request.  At most ``--max-children``
(default 32) children run at once; each is killed after ``--request-timeout``
seconds (default 30; Exim's own readsocket timeout is usually shorter).

Who may connect:
    * the socket is created mode 0660, group ``--group`` (default ``Debian-exim``,
      the user Exim runs SMTP-time expansions as), in a directory the admin
      creates (``/run/mailrouter``, see systemd/);
    * in addition each peer's SO_PEERCRED uid must be root, the server's own uid,
      or a user named with ``--allow-user`` (default ``Debian-exim``).

Socket: ``--socket PATH`` (default ``auth.auth_socket`` from the config), or a
listening socket handed over by systemd (``LISTEN_FDS``/``LISTEN_PID``,
``systemd/mailrouter-authd.socket``), in which case systemd sets the permissions.
``--config`` defaults to ``/etc/mailrouter/mailrouter.toml``.

Logging: one line per request on stderr (the journal under systemd): the login
as received (escaped), the verdict and the reason.  Never the password.

Exit codes: 0 after SIGTERM/SIGINT; 2 bad arguments (argparse's message on
stderr); 75 on bad configuration, when the socket cannot be set up, or on
any unexpected error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import socket

from mailrouter import auth
from mailrouter.cmd import sockserver
from mailrouter.config import Config, load
from mailrouter.errors import BadRequest, TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL

MAX_REQUEST = 2048
TOKENS = {
    auth.Verdict.OK: b"OK\n",
    auth.Verdict.REFUSED: b"NO\n",
    auth.Verdict.TEMPORARY: b"TEMP\n",
}


def parse_request(line: bytes) -> tuple[bytes, bytes]:
    """``(login, password)`` from ``AUTH <b64> <b64>`` (newline already stripped).

    An empty field is allowed (Exim's ``${base64:}`` of an empty string is
    empty): an empty login or password is a refusal, not a protocol error.
    """
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"AUTH":
        raise BadRequest("expected AUTH <base64 login> <base64 password>")
    try:
        login = base64.b64decode(parts[1], validate=True)
        password = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("bad base64") from exc
    return login, password


def answer(config: Config, line: bytes) -> tuple[auth.Verdict, str, bytes]:
    """Verdict, log reason and the login as received, for one request line."""
    try:
        login, password = parse_request(line)
    except BadRequest as exc:
        return auth.Verdict.TEMPORARY, f"bad request: {exc}", b""
    result = auth.authenticate_raw(config, login, password)
    return result.verdict, result.reason, login


def handle(config: Config, connection: socket.socket) -> None:
    """One connection, in its own child (``sockserver.serve``): read, check, reply."""
    try:
        line = sockserver.read_line(connection, MAX_REQUEST)
    except (BadRequest, OSError) as exc:
        sockserver.log(f"authd: TEMP bad request: {exc}")
        try:
            sockserver.drain(connection)
            connection.sendall(TOKENS[auth.Verdict.TEMPORARY])
        except OSError:
            pass
        return
    verdict, reason, login = answer(config, line)
    shown = login[:320].decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")
    sockserver.log(f"authd: {shown} {verdict.value} {reason}")
    connection.sendall(TOKENS[verdict])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-authd")
    parser.add_argument("--config", default=None)
    parser.add_argument("--socket", default=None, help="default: auth.auth_socket")
    sockserver.add_server_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        server = sockserver.listening_socket(args.socket or config.auth.auth_socket, args.group)
    except (TemporaryFailure, OSError) as exc:
        sockserver.log(f"authd: cannot start: {exc}")
        return EX_TEMPFAIL
    # Fork per connection (workers=0): each request gets a fresh child with its
    # own LDAP connection and binds; a frozen LDAP blocks only that child.
    sockserver.run("authd", server, lambda connection: handle(config, connection), args)
    return EX_OK
