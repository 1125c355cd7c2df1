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
* :func:`serve` -- the process model: protocol handlers are plain functions
  ``handle(request_line) -> reply`` and never see a socket.
* :func:`serve_sessions` -- for a protocol with a dialogue (``mailrouter-lmtpd``):
  pre-forked workers that each own one whole connection at a time (see its
  section at the end of this module).

Process model.  The **parent** owns every client connection and never waits
on one: a single ``poll`` loop accepts, checks the peer, reads the request
line without blocking, and writes the reply.  Only a *complete* request line
is handed to a worker process, which runs the handler (LDAP and all) and sends
the reply back over its own channel (an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair).
So an idle or slow peer costs a file descriptor and a few hundred bytes in the
parent, never a worker; workers only ever work.  The workers, one of two ways:

* ``workers=0`` (fork per request): the parent forks one child per complete
  request, at most ``max_children`` at once; the child answers and exits (its
  own LDAP connection and bind, no state survives a request).  Costs a fork
  and a cold child per request (about 5-10 ms with ldap3 loaded).
* ``workers=N`` (pre-forked): N children forked at start take requests one
  at a time from the parent, ``max_requests`` in all, then exit and are
  replaced.  Handlers keep no answer state between requests; what they may
  keep is a connection (lookupd's and authd's persistent service connection,
  ``directory.PersistentDirectory``), which a replaced worker takes with it.
  Per request: no fork, a warm process.

Limits, all enforced by the parent:

* the request line must be complete within ``read_timeout`` seconds of the
  connection (default 2: Exim's ``${readsocket}`` sends it at once), at most
  ``max_request`` bytes; otherwise the reply is ``error_reply`` (``TEMP``);
* a complete request waits in a FIFO queue for a free worker; one whose
  client has hung up meanwhile (Exim gave up) is dropped unanswered, one that
  waited ``request_timeout`` seconds gets ``TEMP``;
* a request running longer than ``request_timeout`` seconds kills its worker
  (SIGALRM); so does any exception of the handler (after replying
  ``error_reply``); the client gets ``error_reply`` and the parent forks a
  replacement (pre-forked) -- a dead worker never leaves a client hanging;
* at most ``max_connections`` connections are open at once (default 512);
  at that number a new connection closes the oldest one that has still not
  sent its request line, and when every open connection holds a request,
  new ones wait in the listening socket's backlog (``BACKLOG``, or the
  socket unit's ``Backlog=``), where the client's own timeout bounds them.

Logging is one line per event on stderr (the journal under systemd), through
:func:`log`, which never raises.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import gc
import grp
import os
import pwd
import select
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from types import FrameType

from mailrouter.errors import TemporaryFailure

DEFAULT_GROUP = "Debian-exim"
DEFAULT_ALLOWED_USER = "Debian-exim"
DEFAULT_MAX_CHILDREN = 32
DEFAULT_REQUEST_TIMEOUT = 30
DEFAULT_MAX_REQUESTS = 1000  # per pre-forked worker, then it is replaced
DEFAULT_MAX_REQUEST = 2048
DEFAULT_READ_TIMEOUT = 2.0  # seconds for the client to send its whole request line
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_ERROR_REPLY = b"TEMP\n"
MAX_REPLY = 65536  # a handler's reply, over the worker channel (one SEQPACKET message)
MAX_DRAIN = 65536
ACCEPT_BATCH = 64  # connections accepted per wake-up, so replies are not starved by accepts
BACKLOG = 128
SD_LISTEN_FDS_START = 3

# A protocol handler: the request line (without its newline) -> the whole reply.
Handler = Callable[[bytes], bytes]


def log(message: str) -> None:
    """One line on stderr; logging must never break an answer."""
    try:
        os.write(2, (message + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


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


def add_server_arguments(parser: argparse.ArgumentParser, max_children: int = DEFAULT_MAX_CHILDREN) -> None:
    """The options every socket server of ours takes (who may connect, limits)."""
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--allow-user", action="append", default=None)
    parser.add_argument("--max-children", type=int, default=max_children)
    parser.add_argument("--request-timeout", type=int, default=DEFAULT_REQUEST_TIMEOUT)
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT)
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)


def run(
    name: str,
    server: socket.socket,
    handle: Handler,
    args: argparse.Namespace,
    *,
    max_request: int,
    workers: int = 0,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> None:
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
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        max_request=max_request,
        workers=workers,
        max_requests=max_requests,
    )


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


# Client states, in the order a connection goes through them.
_READING, _QUEUED, _RUNNING, _WRITING, _CLOSED = range(5)
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL
# Worker channel messages: b"R" + request line to a worker; a reply comes back
# as _MORE + reply (send me the next one) or _LAST + reply (I am exiting now).
_REQUEST, _MORE, _LAST = b"R", b"A", b"L"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Client:
    """One client connection, owned by the parent."""

    __slots__ = ("sock", "fd", "state", "since", "data", "line", "out", "turn")

    def __init__(self, sock: socket.socket, now: float, turn: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.turn = turn  # the loop turn it was accepted in
        self.state = _READING
        self.since = now  # when the current state began (its deadline counts from here)
        self.data = b""
        self.line = b""
        self.out = b""


class _Worker:
    """A worker process as the parent sees it: its pid, its channel, its current client."""

    __slots__ = ("pid", "channel", "client")

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel
        self.client: _Client | None = None


class _Server:
    """The parent's event loop (see the module docstring)."""

    def __init__(
        self,
        listener: socket.socket,
        handle: Handler,
        allowed: set[int],
        *,
        name: str,
        workers: int,
        max_children: int,
        max_requests: int,
        request_timeout: int,
        read_timeout: float,
        max_request: int,
        max_connections: int,
        error_reply: bytes,
    ) -> None:
        self.listener = listener
        self.handle = handle
        self.allowed = allowed
        self.name = name
        self.prefork = workers > 0
        self.pool_size = workers if workers > 0 else max(1, max_children)
        self.max_requests = max_requests
        self.request_timeout = request_timeout
        self.read_timeout = read_timeout
        self.max_request = max_request
        self.max_connections = max(1, max_connections)
        self.error_reply = error_reply
        self.poll = select.poll()
        self.clients: dict[int, _Client] = {}
        # Oldest first: the deadlines of reading clients run out in this order.
        self.reading: collections.OrderedDict[int, _Client] = collections.OrderedDict()
        self.queue: collections.deque[_Client] = collections.deque()
        self.workers: dict[int, _Worker] = {}  # by channel fd
        self.idle: collections.deque[_Worker] = collections.deque()
        self.zombies: set[int] = set()
        self.listening = False
        self.paused_until = 0.0  # accept() failed for lack of descriptors: wait a little
        self.respawn_after = 0.0
        self.turn = 0

    # -- the loop ----------------------------------------------------------------
    def run(self) -> None:
        self.listener.setblocking(False)
        self._listen(True)
        if self.prefork:
            # Everything the parent loaded moves to the GC's permanent generation, so
            # the workers' collections do not touch (and copy-on-write) those pages.
            gc.collect()
            gc.freeze()
        while True:
            self.turn += 1
            now = time.monotonic()
            if self.prefork:
                self._top_up(now)
                self._dispatch(now)  # a fresh worker takes a waiting request at once
            self._listen(len(self.clients) < self.max_connections or bool(self.reading))
            for fd, events in self.poll.poll(self._timeout(now) * 1000):
                now = time.monotonic()
                if fd == self.listener.fileno():
                    self._accept(now)
                elif fd in self.workers:
                    self._from_worker(self.workers[fd], now)
                elif fd in self.clients and self.clients[fd].turn != self.turn:
                    # (A client accepted during this turn may have reused the number
                    # of one closed during it: these events are not about it.)
                    self._client_event(self.clients[fd], events, now)
            now = time.monotonic()
            self._expire(now)
            self._dispatch(now)
            self._reap()

    def _timeout(self, now: float) -> float:
        """Seconds until the next deadline (at most 1: reaping and topping up)."""
        wake = now + 1.0
        if self.reading:
            wake = min(wake, next(iter(self.reading.values())).since + self.read_timeout)
        if self.queue:
            wake = min(wake, self.queue[0].since + self.request_timeout)
        for client in self.clients.values():
            if client.state == _WRITING:
                wake = min(wake, client.since + self.read_timeout)
        if self.paused_until > now:
            wake = min(wake, self.paused_until)
        if self.respawn_after > now and (self.queue or (self.prefork and len(self.workers) < self.pool_size)):
            wake = min(wake, self.respawn_after)  # a worker to replace, a child to fork
        return max(0.0, wake - now)

    def _listen(self, wanted: bool) -> None:
        wanted = wanted and time.monotonic() >= self.paused_until
        if wanted and not self.listening:
            self.poll.register(self.listener, select.POLLIN)
        elif not wanted and self.listening:
            self.poll.unregister(self.listener)
        self.listening = wanted

    # -- connections -------------------------------------------------------------
    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.clients) >= self.max_connections and not self._evict_oldest_reader():
                return
            try:
                sock, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"{self.name}: cannot accept: {exc.strerror}; pausing 0.1 s")
                    self.paused_until = now + 0.1
                    self._listen(False)
                return  # e.g. ECONNABORTED: that client is gone already
            try:
                uid = peer_uid(sock)
            except OSError:
                sock.close()
                continue
            if uid not in self.allowed:
                log(f"{self.name}: refused connection from uid {uid}")
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, now, self.turn)
            self.clients[client.fd] = client
            self.reading[client.fd] = client
            self.poll.register(client.fd, select.POLLIN)
            self._read(client, now)  # Exim's request is usually there already

    def _evict_oldest_reader(self) -> bool:
        """At the connection limit: make room by dropping the client that has
        waited longest without sending a request.  False if every client has one."""
        while self.reading:
            oldest = next(iter(self.reading.values()))
            self._read(oldest, time.monotonic())  # what it sent meanwhile may complete its request
            if oldest.state == _READING:
                self._bad(oldest, f"over {self.max_connections} connections: dropped the oldest idle one")
                return True
        return False

    def _client_event(self, client: _Client, events: int, now: float) -> None:
        if client.state == _READING and events & select.POLLIN:
            self._read(client, now)
        elif client.state == _WRITING and events & select.POLLOUT:
            self._write(client)
        elif events & _HANGUP:
            # Gone while it waited for a worker, its reply, or in the middle of
            # its request: nobody to answer (a running worker's reply is dropped).
            self._close(client)

    def _read(self, client: _Client, now: float) -> None:
        try:
            chunk = client.sock.recv(self.max_request + 2 - len(client.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not chunk and not client.data:
            self._close(client)  # connected and left without asking anything: nobody to answer
            return
        client.data += chunk
        line, newline, _rest = client.data.partition(b"\n")
        if newline and len(line) <= self.max_request:
            client.line, client.data = line, b""
            self._set_state(client, _QUEUED, now)
            self.poll.modify(client.fd, 0)  # only hang-ups from now on
            self.queue.append(client)
        elif newline or len(client.data) > self.max_request:
            self._bad(client, "request too long")
        elif not chunk:
            self._bad(client, "no newline before the end of the request")

    def _bad(self, client: _Client, why: str) -> None:
        log(f"{self.name}: {self.error_reply.decode('ascii', 'replace').strip()} bad request: {why}")
        self._reply(client, self.error_reply, time.monotonic())

    def _set_state(self, client: _Client, state: int, now: float) -> None:
        if client.state == _READING:
            self.reading.pop(client.fd, None)
        client.state = state
        client.since = now

    def _reply(self, client: _Client, reply: bytes, now: float) -> None:
        if client.state == _CLOSED:
            return
        if client.state != _WRITING:
            self._set_state(client, _WRITING, now)
            self.poll.modify(client.fd, select.POLLOUT)
        client.out = reply
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._drain(client)
            self._close(client)

    @staticmethod
    def _drain(client: _Client) -> None:
        """Read what the client still sent, so that closing with unread data does
        not turn its end of the connection into ECONNRESET after our reply."""
        total = 0
        while total < MAX_DRAIN:
            try:
                chunk = client.sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            total += len(chunk)

    def _close(self, client: _Client) -> None:
        if client.state == _CLOSED:
            return
        self.reading.pop(client.fd, None)
        self.clients.pop(client.fd, None)
        try:
            self.poll.unregister(client.fd)
        except KeyError:
            pass
        client.state = _CLOSED
        client.sock.close()

    def _expire(self, now: float) -> None:
        while self.reading:
            client = next(iter(self.reading.values()))
            if now - client.since < self.read_timeout:
                break
            self._bad(client, f"no complete request line within {self.read_timeout:g} s")
        while self.queue and (
            self.queue[0].state == _CLOSED or now - self.queue[0].since >= self.request_timeout
        ):
            client = self.queue.popleft()
            if client.state != _CLOSED:
                log(f"{self.name}: no worker free for {self.request_timeout} s; answering "
                    f"{self.error_reply.decode('ascii', 'replace').strip()}")
                self._reply(client, self.error_reply, now)
        for client in [c for c in self.clients.values() if c.state == _WRITING]:
            if now - client.since >= self.read_timeout:
                self._close(client)  # it does not read its reply: give up on it

    # -- workers -----------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        while self.queue:
            client = self.queue[0]
            if client.state == _CLOSED:
                self.queue.popleft()
                continue
            if self.prefork:
                if not self.idle:
                    return
                # Last in, first out: the worker that just finished is the one whose
                # memory and LDAP connection are warm (one lookup at a time then runs
                # on one process, not round-robin over all: 1.4 vs 2.0 ms per lookup).
                worker = self.idle.pop()
                try:
                    worker.channel.send(_REQUEST + client.line)
                except OSError:
                    self._worker_gone(worker, now)  # it died while idle; try the next one
                    continue
            else:
                if len(self.workers) >= self.pool_size or now < self.respawn_after:
                    return
                try:
                    worker = self._spawn(client.line)
                except OSError as exc:
                    self._cannot_fork(exc, now)
                    return
            self.queue.popleft()
            worker.client = client
            self._set_state(client, _RUNNING, now)

    def _spawn(self, line: bytes | None = None) -> _Worker:
        """Fork a worker: pre-forked (``line`` None) or for the one request ``line``."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # No SIGTERM between fork and the child's own handlers: the parent's would
        # raise _Stop in the child, which must never run the parent's shutdown.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            mine.close()
            theirs.close()
            raise
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                mine.detach()
                self._forget_everything(keep=theirs.fileno())
                if line is None:
                    code = self._serve_channel(theirs)
                else:
                    signal.alarm(self.request_timeout)  # default action: the child dies
                    reply, code = self._call(line)
                    theirs.send(_LAST + reply)
            except BaseException:  # noqa: BLE001 - a child must never return into the loop
                code = 1
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        theirs.close()
        mine.setblocking(False)
        worker = _Worker(pid, mine)
        self.workers[mine.fileno()] = worker
        self.poll.register(mine, select.POLLIN)
        return worker

    def _forget_everything(self, keep: int) -> None:
        """In a new child: drop every descriptor of the parent but ``keep`` and 0-2.

        A child holding a client's connection would keep it open after the parent
        answered and closed it (the client would wait for EOF).  ``detach`` first,
        so no finalizer can ever close a number the child has reused meanwhile."""
        self.listener.detach()
        for client in self.clients.values():
            client.sock.detach()
        for worker in self.workers.values():
            worker.channel.detach()
        os.closerange(3, keep)
        os.closerange(keep + 1, max(keep + 1, os.sysconf("SC_OPEN_MAX")))

    def _serve_channel(self, channel: socket.socket) -> int:
        """A pre-forked worker: requests from the parent, one at a time, ``max_requests`` in all."""
        for count in range(1, self.max_requests + 1):
            message = channel.recv(self.max_request + 2)
            if not message:
                return 0  # the parent is gone or stopping
            signal.alarm(self.request_timeout)  # default action: the worker dies, the parent replaces it
            reply, code = self._call(message[1:])
            signal.alarm(0)
            # After any exception, and after max_requests, a fresh process takes over;
            # saying so with this reply keeps the parent from sending us another request.
            last = code != 0 or count == self.max_requests
            channel.send((_LAST if last else _MORE) + reply)
            if last:
                return code
        return 0

    def _call(self, line: bytes) -> tuple[bytes, int]:
        """The handler's reply and 0, or the error reply and 1 when it raised."""
        try:
            reply = self.handle(line)
        except Exception as exc:  # noqa: BLE001 - any surprise is the error reply, never silence
            log(f"{self.name}: unexpected {type(exc).__name__} in the handler")
            return self.error_reply, 1
        if len(reply) > MAX_REPLY:
            log(f"{self.name}: reply of {len(reply)} bytes is over {MAX_REPLY}")
            return self.error_reply, 0
        return reply, 0

    def _from_worker(self, worker: _Worker, now: float) -> None:
        try:
            message = worker.channel.recv(MAX_REPLY + 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if not message:
            self._worker_gone(worker, now)
            return
        client, worker.client = worker.client, None
        if client is not None:
            self._reply(client, message[1:], now)
        if self.prefork and message[:1] == _MORE:
            self.idle.append(worker)  # else it is exiting: its end of the channel comes next

    def _worker_gone(self, worker: _Worker, now: float) -> None:
        self.workers.pop(worker.channel.fileno(), None)
        try:
            self.poll.unregister(worker.channel)
        except KeyError:
            pass
        worker.channel.close()
        if worker in self.idle:
            self.idle.remove(worker)
        self.zombies.add(worker.pid)
        if worker.client is not None and worker.client.state != _CLOSED:
            # Killed by its request timeout, or crashed: the client still gets an answer.
            log(f"{self.name}: worker {worker.pid} ended during a request; answering "
                f"{self.error_reply.decode('ascii', 'replace').strip()}")
            self._reply(worker.client, self.error_reply, now)

    def _top_up(self, now: float) -> None:
        if now < self.respawn_after:
            return
        while len(self.workers) < self.pool_size:
            try:
                self.idle.append(self._spawn())
            except OSError as exc:
                self._cannot_fork(exc, now)
                return

    def _cannot_fork(self, exc: OSError, now: float) -> None:
        # Out of processes or memory: requests wait (their deadlines still hold).
        log(f"{self.name}: cannot fork: {exc.strerror}; trying again in 1 s")
        self.respawn_after = now + 1.0

    def _reap(self) -> None:
        for pid in list(self.zombies):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.zombies.discard(pid)
                continue
            if done == 0:
                continue
            self.zombies.discard(pid)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                if self.prefork:
                    log(f"{self.name}: worker {pid} ended with status {status:#x}; replacing it")
                    # Do not spin if every new worker dies at once (e.g. a broken install).
                    self.respawn_after = time.monotonic() + 0.1
                else:
                    log(f"{self.name}: child {pid} ended with status {status:#x}")

    def stop(self) -> None:
        for worker in list(self.workers.values()):
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            worker.channel.close()
            self.zombies.add(worker.pid)
        for pid in self.zombies:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for client in list(self.clients.values()):
            self._close(client)
        self.listener.close()


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
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_request: int = DEFAULT_MAX_REQUEST,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    error_reply: bytes = DEFAULT_ERROR_REPLY,
) -> None:
    """Serve until SIGTERM/SIGINT (the process model is in the module docstring).

    ``handle(line)`` runs in a worker, only for an allowed peer's complete
    request line (without the newline), and returns the whole reply.  Whatever
    it raises becomes ``error_reply`` and ends that worker, never the server.
    """
    loop = _Server(
        server, handle, allowed, name=name, workers=workers, max_children=max_children,
        max_requests=max_requests, request_timeout=request_timeout, read_timeout=read_timeout,
        max_request=max_request, max_connections=max_connections, error_reply=error_reply,
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        loop.run()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        loop.stop()


# -- conversation servers (mailrouter-lmtpd) -------------------------------------------------
# A protocol with a dialogue (LMTP: greeting, LHLO, MAIL, RCPT..., DATA, a reply per
# recipient, QUIT) does not fit the one-line handlers above: the whole connection belongs
# to one worker.  The process model is then the classic pre-forked one:
#
# * the parent forks ``workers`` children and only supervises them: it replaces one that
#   exits (after ``max_sessions`` connections, after a crash, after being killed), at
#   most every 0.1 s when they keep dying, and on SIGTERM/SIGINT stops them all;
# * each child blocks in ``accept()`` on the shared listening socket (the kernel wakes
#   exactly one), checks the peer's SO_PEERCRED uid and runs ``session(connection)``
#   for the whole conversation; the session owns its own timeouts;
# * a child asked to stop (SIGTERM from the parent) while idle exits at once; in a
#   session it finishes that conversation first (no delivery is cut short by a
#   restart), and the parent kills it after ``stop_timeout`` seconds;
# * a child dies with its parent (PR_SET_PDEATHSIG): a daemon killed with -9 leaves no
#   worker behind that still accepts on the old socket.
#
# Busy workers mean new connections wait in the socket's backlog, where the client's own
# connect/greeting timeout bounds them.  Only allowed peers reach a worker at all.

Session = Callable[[socket.socket], None]
DEFAULT_STOP_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent exits (Linux)."""
    import ctypes  # only the conversation servers need it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        log("cannot set PR_SET_PDEATHSIG; workers may outlive a killed parent")


class _SessionWorker:
    """One pre-forked child: accept, check, converse; ``max_sessions`` times."""

    def __init__(self, listener: socket.socket, session: Session, allowed: set[int], name: str) -> None:
        self.listener = listener
        self.session = session
        self.allowed = allowed
        self.name = name
        self.busy = False
        self.stopping = False

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if not self.busy:
            raise _Stop

    def run(self, max_sessions: int, parent: int, blocked: set[signal.Signals]) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)  # the parent's mask, inherited
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:
            return 0  # the parent died before the line above
        self.listener.setblocking(True)
        try:
            for _ in range(max_sessions):
                if self.stopping:
                    break
                try:
                    connection, _address = self.listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log(f"{self.name}: cannot accept: {exc.strerror}; pausing 0.1 s")
                        time.sleep(0.1)
                    continue
                self.busy = True
                try:
                    self._converse(connection)
                finally:
                    connection.close()
                    self.busy = False
        except _Stop:
            pass
        return 0

    def _converse(self, connection: socket.socket) -> None:
        try:
            uid = peer_uid(connection)
        except OSError:
            return
        if uid not in self.allowed:
            log(f"{self.name}: refused connection from uid {uid}")
            return
        try:
            self.session(connection)
        except Exception as exc:  # noqa: BLE001 - one broken conversation never ends the worker
            log(f"{self.name}: unexpected {type(exc).__name__} in a session: {exc}")


def serve_sessions(
    server: socket.socket,
    session: Session,
    allowed: set[int],
    *,
    name: str,
    workers: int,
    max_sessions: int = DEFAULT_MAX_REQUESTS,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> None:
    """Serve conversations until SIGTERM/SIGINT (the model is described above).

    ``session(connection)`` runs in a worker for each allowed peer and owns the
    connection until it returns (the worker closes it then).
    """
    # The parent waits for its signals instead of taking them: SIGCHLD (a worker
    # ended), SIGTERM/SIGINT (stop) stay blocked and are fetched by sigtimedwait.  (A
    # handler that raises can fire anywhere, e.g. inside an at-fork hook of the
    # logging module, where the exception is swallowed and the stop lost.)
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    children: set[int] = set()
    parent = os.getpid()
    respawn_after = 0.0
    gc.collect()
    gc.freeze()  # see _Server.run: the workers' collections leave the parent's pages shared
    try:
        while True:
            respawn_after = _reap_children(children, name, respawn_after)
            now = time.monotonic()
            while len(children) < max(1, workers) and now >= respawn_after:
                try:
                    pid = os.fork()
                except OSError as exc:
                    log(f"{name}: cannot fork: {exc.strerror}; trying again in 1 s")
                    respawn_after = now + 1.0
                    break
                if pid == 0:
                    code = 75
                    try:
                        worker = _SessionWorker(server, session, allowed, name)
                        code = worker.run(max_sessions, parent, watched)
                    finally:
                        os._exit(code)
                children.add(pid)
            wait = max(0.01, respawn_after - now) if len(children) < max(1, workers) else 1.0
            caught = signal.sigtimedwait(watched, wait)
            if caught is not None and caught.si_signo in (signal.SIGTERM, signal.SIGINT):
                break
    finally:
        _stop_children(children, stop_timeout)
        server.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _reap_children(children: set[int], name: str, respawn_after: float) -> float:
    """Collect every ended worker; the new respawn time (later when one died badly)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            break
        if pid == 0:
            break
        children.discard(pid)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            log(f"{name}: worker {pid} ended with status {status:#x}; replacing it")
            respawn_after = time.monotonic() + 0.1  # do not spin when every new worker dies at once
    return respawn_after


def _stop_children(children: set[int], timeout: float) -> None:
    """SIGTERM every child, wait up to ``timeout`` seconds for them, then SIGKILL the rest."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while children and time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)
        else:
            children.discard(pid)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

