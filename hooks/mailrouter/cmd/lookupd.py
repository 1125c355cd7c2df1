"""mailrouter-lookupd -- the lookups of ``mailrouter-lookup``, served over a Unix socket.

Usage::

    mailrouter-lookupd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                       [--workers N] [--max-requests N] [--max-children N]
                       [--request-timeout SECONDS]

Why: every ``${run}`` of ``mailrouter-lookup`` is a new Python process that
imports ldap3 (~75 ms, ~90 ms per lookup in all).  Exim's ``${readsocket}``
to this server costs one fork of an already warm process plus the LDAP
request itself.  The decisions are the very same code: each request is
answered by :func:`mailrouter.lookup.answer`, so the kinds, their arguments
and their meanings are those of ``pydoc mailrouter.cmd.lookup``.  Select the
socket path in Exim with ``MAILROUTER_LOOKUP_VIA = socket``
(exim/mailrouter.conf).

Protocol (one request per connection)::

    request:  KIND[ <base64 arg>]...\\n        (single spaces; at most 4096 bytes)
    reply:    OK <answer>\\n | NO\\n | TEMP\\n  then the server closes

``KIND`` is one of the kinds of mailrouter-lookup (``domain``, ``alias``,
``user``, ``quota``, ...), each argument is base64 (standard alphabet with
padding, as Exim's ``${base64:}`` writes it; an empty argument is an empty
field).  The replies carry the exit codes of ``mailrouter-lookup``:

    ``OK <answer>``  exit 0: the one-line answer (the hook's stdout, no newline inside)
    ``NO``           exit 1: LDAP answered and there is no such thing / the predicate is false
    ``TEMP``         exit 75: LDAP down or slow, bad configuration, a malformed
                     request (unknown kind, wrong arity, bad base64), any exception

Exim must treat any other reply (or none, or a timeout) like ``TEMP``: defer.

Process model (``mailrouter.cmd.sockserver``): the parent loads the configuration
and imports everything once, then pre-forks ``--workers`` (default 8) worker
processes that accept on the socket and serve one connection at a time.  Each
request opens its own LDAP connection and binds as the service account (a
bind per request: no connection or failover state outlives a request).  A
worker is replaced after ``--max-requests`` (default 1000) requests, after any
exception, and when a request takes longer than ``--request-timeout`` seconds
(default 30; it is killed).  ``--workers 0`` forks one child per connection
instead (at most ``--max-children``, default 32): more isolation, but a fork
and a cold process per lookup (~5-10 ms instead of ~1-2 ms).  The number of
workers bounds the lookups in progress: when LDAP hangs, further requests wait
in the socket's backlog and Exim's ``${readsocket}`` timeout turns that into a
deferral.  The configuration is read at start: restart the service after
changing it.

Who may connect: the socket is created mode 0660, group ``--group`` (default
``Debian-exim``); in addition each peer's SO_PEERCRED uid must be root, the
server's own uid, or a user named with ``--allow-user`` (default
``Debian-exim``).  Delivery processes run routers as root, SMTP-time
expansions run as Debian-exim.

Socket: ``--socket PATH``, or the listening socket handed over by systemd
(``systemd/mailrouter-lookupd.socket``), which then sets the permissions and
wins over ``--socket``.

Logging: stderr (the journal): the socket at start, or why it cannot start;
one line per TEMP answer with the reason; refused peers; replaced workers.
Answers to ordinary requests are not logged.

Exit codes: 0 after SIGTERM/SIGINT; 2 bad arguments (argparse's message on
stderr); 75 on bad configuration, when the socket cannot be set up, or on
any unexpected error.  Nothing is ever read from the environment except
systemd's LISTEN_FDS/LISTEN_PID.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import socket
import sys

from mailrouter import config as config_module
from mailrouter import lookup
from mailrouter.cmd import sockserver
from mailrouter.config import Config
from mailrouter.errors import BadRequest, MailrouterError
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL

MAX_REQUEST = 4096
DEFAULT_WORKERS = 8
TEMP = b"TEMP\n"
NO = b"NO\n"


def parse_request(line: bytes) -> tuple[str, list[str]]:
    """``(kind, args)`` from ``KIND b64 b64 ...``; :class:`BadRequest` if malformed."""
    fields = line.rstrip(b"\r").split(b" ")
    try:
        kind = fields[0].decode("ascii")
        args = [base64.b64decode(field, validate=True).decode("utf-8") for field in fields[1:]]
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"bad request: {exc}") from exc
    if kind not in lookup.KINDS:
        raise BadRequest(f"unknown kind {kind[:40]!r}")
    return kind, args


def reply(config: Config, line: bytes) -> tuple[bytes, str]:
    """The reply to one request line, and why when it is TEMP (for the log)."""
    try:
        kind, args = parse_request(line)
        result = lookup.answer(config, kind, args)
    except BadRequest as exc:
        return TEMP, str(exc)
    except MailrouterError as exc:
        return TEMP, f"{type(exc).__name__}: {exc}"
    if result is None:
        return NO, ""
    # One line, as mailrouter-lookup prints it.
    return b"OK " + result.replace("\n", " ").replace("\r", " ").encode("utf-8") + b"\n", ""


def handle(config: Config, connection: socket.socket) -> None:
    """One connection, in a forked child."""
    try:
        line = sockserver.read_line(connection, MAX_REQUEST)
    except (BadRequest, OSError) as exc:
        sockserver.log(f"lookupd: TEMP bad request: {exc}")
        try:
            sockserver.drain(connection)
            connection.sendall(TEMP)
        except OSError:
            pass
        return
    try:
        answer, why = reply(config, line)
    except Exception as exc:  # noqa: BLE001 - any surprise is a TEMP, never silence
        answer, why = TEMP, f"unexpected {type(exc).__name__}"
    if answer == TEMP:
        shown = line[:200].decode("ascii", "backslashreplace")
        sockserver.log(f"lookupd: TEMP for {shown!r}: {why}")
    try:
        connection.sendall(answer)
    except OSError:
        pass  # the client gave up (e.g. Exim's timeout): nobody to tell; the worker lives on


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-lookupd")
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH)
    parser.add_argument("--socket", default=None, help="default: the socket systemd passed")
    sockserver.add_server_arguments(parser)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--max-requests", type=int, default=sockserver.DEFAULT_MAX_REQUESTS)
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
        # Imported here, once, in the parent: each forked child then pays
        # neither the ldap3 import nor the module set-up.
        import mailrouter.directory  # noqa: F401

        server = sockserver.listening_socket(args.socket, args.group)
    except (MailrouterError, OSError, ImportError) as exc:
        sockserver.log(f"lookupd: cannot start: {exc}")
        return EX_TEMPFAIL
    sockserver.run(
        "lookupd",
        server,
        lambda connection: handle(config, connection),
        args,
        workers=args.workers,
        max_requests=args.max_requests,
    )
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
