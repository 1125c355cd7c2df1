"""mailrouter-authd -- password checks for Exim SMTP AUTH over a Unix socket.

Usage::

    mailrouter-authd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                     [--workers N] [--max-requests N] [--max-children N]
                     [--request-timeout SECONDS] [--read-timeout SECONDS] [--max-connections N]

Why a socket: ``${run{prog $auth2 $auth3}}`` would put the password on a
command line, readable by every local user in ``ps`` and ``/proc/PID/cmdline``.
Exim's ``${readsocket}`` sends it over a Unix socket instead; this server is
the other end.  It never puts a password into any argv.

Protocol (one request per connection; the Exim side is in exim/mailrouter.conf)::

    request:  AUTH <base64 login> <base64 password>\\n      (at most 65536 bytes)
    reply:    OK\\n | NO\\n | TEMP\\n                         then the server closes

The PAM helper's request (``mailrouter-pam-auth --authd-socket``, popa3d's
logins; never sent by Exim)::

    request:  PAM <base64 login> <base64 password>\n
    reply:    OK <user record>\n | OK\n | NO\n | NO GONE\n | TEMP\n

Same check, same verdicts; ``OK`` carries the login's nss-systemd user record
as one line of JSON (``mailrouter.userrecords.record``; bare ``OK`` when the
user may have none), which the helper writes before popa3d calls
``getpwnam``; ``NO GONE`` is a refused canonical login whose user LDAP says is
gone or disabled (the helper removes its record).  The helper runs as root
and shows nothing to the POP3 client, so these details never reach one; the
other peers allowed to ask (Debian-exim) learn no more than
mailrouter-lookupd's ``user`` lookup already tells them.

``OK`` authenticated; ``NO`` refused: unknown user, wrong or empty password,
disabled account, non-canonical login, and any login or password octets at all
(control characters, non-UTF-8, NUL, over-long) -- one answer on purpose, see
``mailrouter.auth``; ``TEMP`` LDAP trouble, a malformed request (the limit is
above anything Exim's 16 KiB SMTP command buffer can produce), or one not sent
within ``--read-timeout`` seconds (default 2; Exim sends it at once).  A check
that takes longer than ``--request-timeout`` is killed and answered ``TEMP``.
The replies are fixed tokens because Exim echoes an unexpected
``${readsocket}`` result to the SMTP client.

Process model (``mailrouter.cmd.sockserver``, pre-forked): the parent
imports everything once and owns every connection: it accepts, checks the
peer, and reads each request line without ever waiting on a client, so idle or
slow clients starve nothing.  Each *complete* request goes to one of
``--workers`` worker processes (default ``--max-children``, 4 per CPU: a
check is mostly a password hash, CPU-bound, and more at once only makes each
slower), which does
the whole check (``mailrouter.auth``) and hands the token back.  Each worker
keeps one service-account LDAP connection for the user lookups
(``directory.PersistentDirectory``: replaced after ``ldap.connection_max_*``,
a read on a broken one retried once on a fresh one); the user's own bind
always goes over a separate short connection, so the service connection never
carries a user's identity.  A worker is replaced after ``--max-requests``
(default 1000) checks, after any exception, and when a check runs longer than
``--request-timeout`` seconds (default 30; Exim's own readsocket timeout, 5 s,
is shorter): a slow LDAP blocks only that worker.  Further complete requests
wait in order, and one whose client gave up meanwhile is dropped unasked.
``--workers 0`` forks one child per request instead (at most
``--max-children``), each with its own connection and bind.  At most
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
import json
import os

from mailrouter import auth, userrecords
from mailrouter.cmd import sockserver
from mailrouter.config import Config, load
from mailrouter.directory import Directory, PersistentDirectory
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


VERBS = (b"AUTH", b"PAM")  # Exim's SMTP AUTH; mailrouter-pam-auth --authd-socket


def parse_request(line: bytes) -> tuple[bytes, bytes, bytes]:
    """``(verb, login, password)`` from ``AUTH|PAM <b64> <b64>`` (newline already stripped).

    An empty field is allowed (Exim's ``${base64:}`` of an empty string is
    empty): an empty login or password is a refusal, not a protocol error.
    """
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in VERBS:
        raise BadRequest("expected AUTH|PAM <base64 login> <base64 password>")
    try:
        login = base64.b64decode(parts[1], validate=True)
        password = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("bad base64") from exc
    return parts[0], login, password


def pam_reply(config: Config, result: auth.AuthResult) -> bytes:
    """The ``PAM`` verb's reply: the token, plus the user record or ``GONE`` (see the manual)."""
    if result.verdict is auth.Verdict.OK and result.user is not None:
        record = userrecords.record(config, result.user)
        if record is None:
            return b"OK\n"
        return b"OK " + json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
    if result.verdict is auth.Verdict.REFUSED and result.gone:
        return b"NO GONE\n"
    return TOKENS[result.verdict]


def handle(config: Config, line: bytes, directory: Directory | None = None) -> bytes:
    """The reply to one request line, in a worker (``sockserver.serve``); logs the verdict.

    ``directory``: the worker's persistent service connection (``None``: a fresh one)."""
    login = b""
    try:
        verb, login, password = parse_request(line)
    except BadRequest as exc:
        result = auth.AuthResult(auth.Verdict.TEMPORARY, None, f"bad request: {exc}")
        verb = b""
    else:
        factory = (lambda _ldap: directory) if directory is not None else Directory
        result = auth.authenticate_raw(config, login, password, factory)
    shown = login[:320].decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")
    sockserver.log(f"authd: {shown} {result.verdict.value} {result.reason}")
    return pam_reply(config, result) if verb == b"PAM" else TOKENS[result.verdict]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-authd")
    parser.add_argument("--config", default=None)
    parser.add_argument("--socket", default=None, help="default: auth.auth_socket")
    sockserver.add_server_arguments(parser, max_children=DEFAULT_MAX_CHILDREN)
    # Default: as many workers as --max-children allowed checks at once before.
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-requests", type=int, default=sockserver.DEFAULT_MAX_REQUESTS)
    args = parser.parse_args(argv)
    workers = args.max_children if args.workers is None else args.workers
    try:
        config = load(args.config)
        server = sockserver.listening_socket(args.socket or config.auth.auth_socket, args.group)
    except (TemporaryFailure, OSError) as exc:
        sockserver.log(f"authd: cannot start: {exc}")
        return EX_TEMPFAIL
    # Not connected yet: each worker inherits it unopened and opens its own.
    persistent = PersistentDirectory(config.ldap) if workers > 0 else None
    sockserver.run(
        "authd",
        server,
        lambda line: handle(config, line, persistent),
        args,
        max_request=MAX_REQUEST,
        workers=workers,
        max_requests=args.max_requests,
    )
    return EX_OK
