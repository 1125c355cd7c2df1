"""mailrouter-authd -- password checks for Exim SMTP AUTH over a Unix socket.

Usage::

    mailrouter-authd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                     [--max-children N] [--request-timeout SECONDS] [--read-timeout SECONDS]
                     [--max-connections N]

Why a socket: ``${run{prog $auth2 $auth3}}`` would put the password on a
command line, readable by every local user in ``ps`` and ``/proc/PID/cmdline``.
Exim's ``${readsocket}`` sends it over a Unix socket instead; this server is
the other end.  It never puts a password into any argv.

Protocol (one request per connection; the Exim side is in exim/mailrouter.conf)::

    request:  AUTH <base64 login> <base64 password>\\n      (at most 65536 bytes)
    reply:    OK\\n | NO\\n | TEMP\\n                         then the server closes

``OK`` authenticated; ``NO`` refused: unknown user, wrong or empty password,
disabled account, non-canonical login, and any login or password octets at all
(control characters, non-UTF-8, NUL, over-long) -- one answer on purpose, see
``mailrouter.auth``; ``TEMP`` LDAP trouble, a malformed request (the limit is
above anything Exim's 16 KiB SMTP command buffer can produce), or one not sent
within ``--read-timeout`` seconds (default 2; Exim sends it at once).  A check
that takes longer than ``--request-timeout`` is killed and answered ``TEMP``.
The replies are fixed tokens because Exim echoes an unexpected
``${readsocket}`` result to the SMTP client.

Process model (``mailrouter.cmd.sockserver``, fork per request): the parent
imports everything once and owns every connection: it accepts, checks the
peer, and reads each request line without ever waiting on a client, so idle or
slow clients starve nothing.  For each *complete* request it forks one child,
which does the whole check (its own LDAP connection and bind,
``mailrouter.auth``), hands the token back to the parent and exits.  A slow
LDAP therefore blocks only that child, and no state survives a request.  At
most ``--max-children`` checks run at once (default 4 per CPU: a check is
mostly a password hash, CPU-bound, and more at once only makes each slower);
further complete requests wait in order, and one whose client gave up meanwhile
is dropped unasked.  Each child is killed after ``--request-timeout`` seconds
(default 30; Exim's own readsocket timeout, 5 s, is shorter).  At most
``--max-connections`` (default 512) connections are open; beyond that the
oldest one still without a request line is dropped, and new ones wait in the
socket's backlog.

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
import os

from mailrouter import auth
from mailrouter.cmd import sockserver
from mailrouter.config import Config, load
from mailrouter.errors import BadRequest, TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL

# Exim's SMTP command buffer is 16 KiB: an AUTH LOGIN login and password of up
# to 12 KiB each, base64 again here, stay below this.  Every request Exim can
# send is read and answered by the core (an over-long password is a refusal);
# only a longer line is malformed.
MAX_REQUEST = 65536
# Checks in progress at once.  A check is mostly a password hash (slapd's, or
# the core's dummy work): CPU-bound.  A few per CPU keep every core busy while
# others wait on the network; many more only make every check slower, until
# all of them run into the LDAP operation timeout at once (measured on 2 CPUs:
# 16 parallel {ARGON2} checks -> every one TEMP; 8 -> none; bench_sockets.py).
DEFAULT_MAX_CHILDREN = 4 * (os.cpu_count() or 1)
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


def handle(config: Config, line: bytes) -> bytes:
    """The reply to one request line, in its own child (``sockserver.serve``); logs the verdict."""
    verdict, reason, login = answer(config, line)
    shown = login[:320].decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")
    sockserver.log(f"authd: {shown} {verdict.value} {reason}")
    return TOKENS[verdict]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-authd")
    parser.add_argument("--config", default=None)
    parser.add_argument("--socket", default=None, help="default: auth.auth_socket")
    sockserver.add_server_arguments(parser, max_children=DEFAULT_MAX_CHILDREN)
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        server = sockserver.listening_socket(args.socket or config.auth.auth_socket, args.group)
    except (TemporaryFailure, OSError) as exc:
        sockserver.log(f"authd: cannot start: {exc}")
        return EX_TEMPFAIL
    # Fork per connection (workers=0): each request gets a fresh child with its
    # own LDAP connection and binds; a frozen LDAP blocks only that child.
    sockserver.run("authd", server, lambda line: handle(config, line), args, max_request=MAX_REQUEST)
    return EX_OK
