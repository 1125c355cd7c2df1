"""mailrouter-lookupd -- the lookups of ``mailrouter-lookup``, served over a Unix socket.

Usage::

    mailrouter-lookupd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                       [--workers N] [--max-requests N] [--max-children N]
                       [--request-timeout SECONDS] [--read-timeout SECONDS] [--max-connections N]

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
                     request (unknown kind, wrong arity, bad base64), a request
                     line not complete within ``--read-timeout`` seconds
                     (default 2; Exim sends it at once), any exception

An argument that is not UTF-8 (``RCPT TO:<al\\xffice@example.com>``) is no
reason for ``TEMP``: it reaches the lookup exactly as ``mailrouter-lookup``
gets it from its argv (undecodable bytes as lone surrogates), so both ways
give the same answer -- for a name, "no such thing".  Exim must treat any
other reply (or none, or a timeout) like ``TEMP``: defer.

Process model (``mailrouter.cmd.sockserver``): the parent loads the configuration
and imports everything once, then pre-forks ``--workers`` (default 8) worker
processes.  The parent owns every connection: it accepts, checks the peer and
reads each request line without ever waiting on a client, and hands only
*complete* requests to a free worker, in order; the worker answers, the parent
writes the reply.  So idle or slow clients never hold a worker: they cost a
descriptor in the parent until their ``--read-timeout``, and at most
``--max-connections`` (default 512) are open (beyond that the oldest one still
without a request is dropped; further connections wait in the socket's
backlog).  Each worker keeps one LDAP connection bound as the service account
(``directory.PersistentDirectory``): replaced after
``ldap.connection_max_requests`` requests, ``connection_max_age`` seconds or
``connection_max_idle`` seconds unused, and after any request that ended in an
error; opened on the first URI of the list that answers (so after a failover
the first URI is tried again when it is replaced); a lookup that fails on a
reused connection (slapd restarted) is asked once more on a fresh one, so
the first request after a restart is answered, not ``TEMP``.  A worker is
replaced after ``--max-requests`` (default 1000) requests, after any
exception, and when a request takes longer than
``--request-timeout`` seconds (default 30; it is killed, the client gets
``TEMP``).  ``--workers 0`` forks one child per request instead (at most
``--max-children``, default 32): more isolation, but a fork and a cold process
and a fresh LDAP connection and bind per lookup (~5-10 ms instead of ~1 ms).
The number of workers bounds the
lookups in progress: when LDAP hangs, further requests wait in the parent's
queue (one whose client gave up is dropped unasked) and Exim's
``${readsocket}`` timeout turns that into a deferral.  The configuration is
read at start: restart the service after changing it.

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
import sys
from typing import TYPE_CHECKING

from mailrouter import config as config_module
from mailrouter import lookup
from mailrouter.cmd import sockserver
from mailrouter.config import Config
from mailrouter.errors import BadRequest, MailrouterError
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from mailrouter.directory import Directory

MAX_REQUEST = 4096
DEFAULT_WORKERS = 8
TEMP = b"TEMP\n"
NO = b"NO\n"


def parse_request(line: bytes) -> tuple[str, list[str]]:
    """``(kind, args)`` from ``KIND b64 b64 ...``; :class:`BadRequest` if malformed."""
    fields = line.rstrip(b"\r").split(b" ")
    try:
        kind = fields[0].decode("ascii")
        # Decoded as Python decodes mailrouter-lookup's argv (UTF-8, undecodable
        # bytes as lone surrogates): the same octets from Exim become the same
        # key on both paths, and a key that cannot be a name is "no such thing".
        args = [
            base64.b64decode(field, validate=True).decode("utf-8", "surrogateescape") for field in fields[1:]
        ]
    except (binascii.Error, ValueError) as exc:  # a non-ASCII kind: UnicodeDecodeError, a ValueError
        raise BadRequest(f"bad request: {exc}") from exc
    if kind not in lookup.KINDS:
        raise BadRequest(f"unknown kind {kind[:40]!r}")
    return kind, args


def reply(config: Config, line: bytes, directory: Directory | None = None) -> tuple[bytes, str]:
    """The reply to one request line, and why when it is TEMP (for the log).

    ``directory``: the worker's persistent service connection (``None``: a fresh one)."""
    try:
        kind, args = parse_request(line)
        result = lookup.answer(config, kind, args, directory)
    except BadRequest as exc:
        return TEMP, str(exc)
    except MailrouterError as exc:
        return TEMP, f"{type(exc).__name__}: {exc}"
    if result is None:
        return NO, ""
    # One line, as mailrouter-lookup prints it.
    one_line = result.replace("\n", " ").replace("\r", " ")
    return b"OK " + one_line.encode("utf-8", "surrogateescape") + b"\n", ""


def handle(config: Config, line: bytes, directory: Directory | None = None) -> bytes:
    """The reply to one request line, in a worker (``sockserver.serve``); logs a TEMP's reason."""
    try:
        answer, why = reply(config, line, directory)
    except Exception as exc:  # noqa: BLE001 - any surprise is a TEMP, never silence
        answer, why = TEMP, f"unexpected {type(exc).__name__}"
    if answer == TEMP:
        shown = line[:200].decode("ascii", "backslashreplace")
        sockserver.log(f"lookupd: TEMP for {shown!r}: {why}")
    return answer


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
        from mailrouter.directory import PersistentDirectory

        server = sockserver.listening_socket(args.socket, args.group)
    except (MailrouterError, OSError, ImportError) as exc:
        sockserver.log(f"lookupd: cannot start: {exc}")
        return EX_TEMPFAIL
    # Not connected yet: each pre-forked worker inherits it unopened and opens its own.
    persistent = PersistentDirectory(config.ldap) if args.workers > 0 else None
    sockserver.run(
        "lookupd",
        server,
        lambda line: handle(config, line, persistent),
        args,
        workers=args.workers,
        max_requests=args.max_requests,
        max_request=MAX_REQUEST,
    )
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
