"""Shared machinery of mailrouter's Unix-socket servers (``mailrouter-lookupd``, ``mailrouter-authd``).

Not an executable.  What every such server needs, in one place:

* :func:`bind_socket` -- a listening socket created with no permissions for
  anyone but us and only then opened to one group (mode 0660): no window in
  which another user could connect;
* :func:`systemd_socket` -- or the socket systemd handed over (``LISTEN_FDS``,
  ``Accept=no`` socket units);
* :func:`peer_uid` / :func:`allowed_uids` -- each connection's SO_PEERCRED
  uid must be root, the server's own uid or a named user (default
  ``Debian-exim``, the user Exim runs SMTP-time expansions as), on top of the
  socket's file permissions;
* :func:`read_line` / :func:`drain` -- one bounded request line, and reading
  what the client still sends before closing so the close does not reset the
  connection before it sees the reply;
* :func:`serve` -- the process model, one of two:

  - ``workers=0`` (fork per connection): the parent imports everything once,
    then forks one child per connection; the child checks the peer, handles
    the request (its own LDAP connection and bind), replies and exits.  A slow
    LDAP blocks only that child, no state survives a request, at most
    ``max_children`` children run at once, and each is killed by SIGALRM after
    ``request_timeout`` seconds.  Costs a fork and a cold child per request
    (about 5-10 ms with ldap3 loaded: copy-on-write faults and first-use set-up).
  - ``workers=N`` (pre-forked): N children forked at start each accept on the
    shared socket and serve one connection at a time, ``max_requests`` in all,
    then exit and are replaced.  Handlers must keep no state between requests
    (lookupd opens and binds a fresh LDAP connection per request).  A request
    over ``request_timeout`` kills its worker (SIGALRM); so does any exception;
    the parent forks a replacement.  Per request: no fork, a warm process.

Logging is one line per event on stderr (the journal under systemd), through
:func:`log`, which never raises.
"""

from __future__ import annotations

import argparse
import gc
import grp
import os
import pwd
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from types import FrameType

from mailrouter.errors import BadRequest, TemporaryFailure

DEFAULT_GROUP = "Debian-exim"
DEFAULT_ALLOWED_USER = "Debian-exim"
DEFAULT_MAX_CHILDREN = 32
DEFAULT_REQUEST_TIMEOUT = 30
DEFAULT_MAX_REQUESTS = 1000  # per pre-forked worker, then it is replaced
DEFAULT_MAX_REQUEST = 2048
READ_TIMEOUT = 10  # seconds for the client to send its one line
MAX_DRAIN = 65536
BACKLOG = 64
SD_LISTEN_FDS_START = 3

Handler = Callable[[socket.socket], None]


def log(message: str) -> None:
    """One line on stderr; logging must never break an answer."""
    try:
        os.write(2, (message + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def read_line(connection: socket.socket, max_request: int = DEFAULT_MAX_REQUEST) -> bytes:
    """One request line without its newline; :class:`BadRequest` if too long or unterminated."""
    data = b""
    while b"\n" not in data:
        if len(data) > max_request:
            raise BadRequest("request too long")
        chunk = connection.recv(max_request + 1 - len(data))
        if not chunk:
            break
        data += chunk
    line, newline, _rest = data.partition(b"\n")
    if not newline:
        raise BadRequest("no newline")
    if len(line) > max_request:
        raise BadRequest("request too long")
    return line


def drain(connection: socket.socket) -> None:
    """Read what the client still sends (bounded), so that closing with unread
    data does not reset the connection before it sees our reply."""
    total = 0
    while total < MAX_DRAIN:
        chunk = connection.recv(4096)
        if not chunk:
            return
        total += len(chunk)


def peer_uid(connection: socket.socket) -> int:
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def allowed_uids(users: Iterable[str]) -> set[int]:
    """root, ourselves, and each named user that exists."""
    uids = {0, os.getuid()}
    for user in users:
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            continue  # e.g. no Exim on a test machine; root still works
    return uids


def bind_socket(path: str, group: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0660, owned by us and ``group``."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise TemporaryFailure(f"group {group!r} does not exist") from exc
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise TemporaryFailure(f"{path} exists and is not a socket")
        os.unlink(path)  # a stale socket of an earlier run
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old_umask)
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    server.listen(BACKLOG)
    return server


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed us, if any (sd_listen_fds protocol)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def listening_socket(path: str | None, group: str) -> socket.socket:
    """systemd's socket when we were socket-activated, else our own at ``path``."""
    server = systemd_socket()
    if server is not None:
        return server
    if not path:
        raise TemporaryFailure("no socket: give --socket or start through the systemd socket unit")
    return bind_socket(path, group)


class _Stop(Exception):
    pass


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every socket server of ours takes (who may connect, limits)."""
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--allow-user", action="append", default=None)
    parser.add_argument("--max-children", type=int, default=DEFAULT_MAX_CHILDREN)
    parser.add_argument("--request-timeout", type=int, default=DEFAULT_REQUEST_TIMEOUT)


def run(name: str, server: socket.socket, handle: Handler, args: argparse.Namespace, **options: int) -> None:
    """Log, then :func:`serve` with the limits and peers from :func:`add_server_arguments`."""
    users = args.allow_user if args.allow_user is not None else [DEFAULT_ALLOWED_USER]
    log(f"{name}: listening on {server.getsockname()!r}")
    serve(
        server,
        handle,
        allowed_uids(users),
        name=name,
        max_children=args.max_children,
        request_timeout=args.request_timeout,
        **options,
    )


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _reap(children: set[int], block: bool) -> None:
    while children:
        try:
            pid, _status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        block = False


def _child(name: str, connection: socket.socket, handle: Handler, allowed: set[int]) -> None:
    uid = peer_uid(connection)
    if uid not in allowed:
        log(f"{name}: refused connection from uid {uid}")
        return
    connection.settimeout(READ_TIMEOUT)
    handle(connection)


def serve(
    server: socket.socket,
    handle: Handler,
    allowed: set[int],
    *,
    name: str,
    max_children: int = DEFAULT_MAX_CHILDREN,
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT,
    workers: int = 0,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> None:
    """Accept connections until SIGTERM/SIGINT (see the module docstring for ``workers``).

    ``handle(connection)`` runs in a child, only for an allowed peer, with a
    read timeout set; it reads the request and writes the reply.  Whatever it
    raises ends the child (exit 1), never the server.
    """
    if workers > 0:
        _serve_preforked(server, handle, allowed, name, workers, max_requests, request_timeout)
        return
    children: set[int] = set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            _reap(children, block=False)
            while len(children) >= max_children:
                _reap(children, block=True)
            try:
                connection, _address = server.accept()
            except InterruptedError:
                continue
            pid = os.fork()
            if pid == 0:  # child
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.alarm(request_timeout)  # default action: the child dies
                    server.close()
                    _child(name, connection, handle, allowed)
                except BaseException:  # noqa: BLE001 - a child must never return into the loop
                    code = 1
                finally:
                    os._exit(code)
            children.add(pid)
            connection.close()
    except _Stop:
        pass
    finally:
        server.close()


def _worker(
    server: socket.socket, handle: Handler, allowed: set[int], name: str, max_requests: int,
    request_timeout: int,
) -> int:
    """A pre-forked child: serve up to ``max_requests`` connections, one at a time."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for _ in range(max_requests):
        connection, _address = server.accept()
        with connection:
            signal.alarm(request_timeout)  # default action: the worker dies, the parent replaces it
            _child(name, connection, handle, allowed)
            signal.alarm(0)
    return 0


def _spawn(
    server: socket.socket, handle: Handler, allowed: set[int], name: str, max_requests: int,
    request_timeout: int,
) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _worker(server, handle, allowed, name, max_requests, request_timeout)
        except BaseException:  # noqa: BLE001 - a worker must never return into the parent's loop
            code = 1
        finally:
            os._exit(code)
    return pid


def _serve_preforked(
    server: socket.socket, handle: Handler, allowed: set[int], name: str, workers: int,
    max_requests: int, request_timeout: int,
) -> None:
    children: set[int] = set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Everything the parent loaded moves to the GC's permanent generation, so
    # the workers' collections do not touch (and copy-on-write) those pages.
    gc.collect()
    gc.freeze()
    try:
        while True:
            while len(children) < workers:
                children.add(_spawn(server, handle, allowed, name, max_requests, request_timeout))
            try:
                pid, status = os.waitpid(-1, 0)
            except (ChildProcessError, InterruptedError):
                continue
            children.discard(pid)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                log(f"{name}: worker {pid} ended with status {status:#x}; replacing it")
                # Do not spin if every new worker dies at once (e.g. a broken install).
                time.sleep(0.1)
    except _Stop:
        pass
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        server.close()
