"""mailrouter-lmtpd -- local delivery over LMTP (RFC 2033), for Exim's ``lmtp`` transport.

SYNOPSIS
    mailrouter-lmtpd [--config CONF] [--socket PATH] [--group GROUP] [--allow-user USER]...
                     [--workers N] [--max-sessions N] [--command-timeout SECONDS]
                     [--max-message BYTES]

DESCRIPTION
    The persistent twin of ``mailrouter-deliver``: the same mailboxes, stored by
    the same code (:func:`mailrouter.mailbox.store.deliver`: path check, locks,
    quota, ``>From`` escaping, journal, fsync, truncate-back), without a Python
    start per message.  Select it in Exim with ``MAILROUTER_DELIVERY_VIA = lmtp``
    (exim/mailrouter.conf: the ``mailrouter_lmtp`` transport, ``batch_max``
    recipients per connection).

    LMTP carries only the envelope.  What the pipe path gets from
    ``$address_data`` -- mailbox path, format, quota, ids -- is looked up here at
    RCPT time through the very decision the ``user`` lookup makes
    (:func:`mailrouter.routing.delivery_target`, on the worker's one service
    connection, kept across sessions as lookupd's is:
    :class:`mailrouter.directory.PersistentDirectory`, ``ldap.connection_max_*``),
    so both front ends always agree on where and as whom mail is stored.

PROTOCOL
    RFC 2033 on a Unix socket: greeting ``220``; ``LHLO`` (PIPELINING,
    ENHANCEDSTATUSCODES, 8BITMIME, SIZE); ``MAIL FROM:<sender>`` (any
    parameters ignored); ``RCPT TO:<local@domain>`` per recipient; ``DATA``
    (dot-stuffed, CRLF lines; stored with LF, as Exim's spool has it);
    ``RSET``, ``NOOP``, ``VRFY`` (252), ``QUIT``.  After the final dot there is
    one reply per accepted recipient, in RCPT order: LMTP's point, so one
    recipient's trouble defers that recipient only.

    The mbox entry is byte-identical to Exim's appendfile: the ``From `` line is
    built from MAIL FROM (``MAILER-DAEMON`` for ``<>``) and the delivery time;
    Exim's transport adds ``Return-path:`` and ``Delivery-date:``.  This server
    adds ``Envelope-to: <recipient>`` between them, per recipient, where
    appendfile writes its ``envelope_to_add`` header: Exim's own option would
    list every recipient of the batch in every copy (a Bcc leak).  For a
    recipient reached through an alias it names the mailbox's address, where
    appendfile names the alias.

REPLIES
    RCPT:  250 2.1.5 the user exists and is active (the target is kept for DATA);
           450 4.1.1 no such active user (Exim routed it there: let the router,
               the authority, decide again at the retry); 451 4.4.3 LDAP
               unavailable; 451 4.3.0 a target the storage rule refuses (ids,
               path, garbled quota) or any other trouble.
    after DATA, per recipient:
           250 2.0.0 delivered (fsynced);
           552 5.2.2 the message alone is larger than the whole quota (the pipe
               hook's exit 100: the one permanent answer);
           452 4.2.2 mailbox full now; 451 4.2.0 mailbox locked;
           451 4.3.0 anything else (refused mailbox, I/O error, a crashed
               delivery) -- the mailbox is restored;
           552 5.3.4 for every recipient when the message exceeds --max-message
               (default 64 MiB; keep it above Exim's message_size_limit).
    Nothing else is ever permanent.  A server that is not running, or dies
    mid-session (``kill -9``, OOM), makes Exim defer every recipient of that
    session (a refused connection, or the connection lost before the replies);
    a torn append is undone by the next delivery to that mailbox (the dotlock
    journal, :mod:`mailrouter.mailbox.locking`), so Exim's retry stores the
    message once, whole.

PRIVILEGES
    Started as root (it must read the service account's password file); no
    delivery ever runs as root (:func:`mailrouter.mailbox.spool.become`):

    * ``spool.per_user_ids = false`` (the default): once the socket is open and
      the password read, the whole server becomes the storage account
      (``spool.storage_user``) for good, before any worker exists.  The password
      stays in memory only; the kernel makes a process that changed its ids
      non-dumpable, so other processes of the storage account cannot read it.
    * ``spool.per_user_ids = true``: the workers stay root and each recipient's
      delivery runs in a forked child that switches to that user's ids
      (setgroups, setgid, setuid) before it opens anything, and dies with its
      worker.  Ids the storage-id rule refuses are a 451 for that recipient.

    Started as any other user it runs as that user; then only deliveries to
    that uid can succeed (store.deliver refuses any other).

PROCESS MODEL
    :func:`mailrouter.cmd.sockserver.serve_sessions`: ``--workers`` (default 8)
    pre-forked workers each take one connection at a time from the listening
    socket, ``--max-sessions`` (default 1000) in all, then are replaced; the
    parent only supervises.  Each connection's SO_PEERCRED uid must be root,
    the uid the server was started as or an ``--allow-user`` (default
    ``Debian-exim``, the transport's user in exim/mailrouter.conf) -- not the
    storage account it becomes, whose other processes must not inject mail; the socket is mode 0660, group
    ``--group`` (default ``Debian-exim``).  A client silent for
    ``--command-timeout`` seconds (default 300, RFC 5321's server timeout) is
    dropped.  SIGTERM: idle workers exit at once, busy ones finish their
    session first.  Socket: ``--socket PATH`` or the one systemd passes
    (``systemd/mailrouter-lmtpd.socket``), which wins.  The configuration is
    read at start: restart after changing it.

LOGGING
    stderr (the journal): the socket at start, or why it cannot start; one line
    per recipient after DATA (status, SMTP code, mailbox, size, reason); every
    refused RCPT; refused peers; replaced workers.  Never a password.

EXIT CODES
    0 after SIGTERM/SIGINT; 2 bad arguments; 75 bad configuration, unreadable
    password file, a socket that cannot be set up, any unexpected error at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailrouter import config as config_module
from mailrouter import names, routing
from mailrouter.cmd import sockserver
from mailrouter.config import Config
from mailrouter.errors import (
    DirectoryUnavailable,
    LockTimeout,
    MailrouterError,
    OverQuota,
    TemporaryFailure,
    TooBigForQuota,
)
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL
from mailrouter.mailbox import mbox, spool, store
from mailrouter.mailbox.addressdata import AddressData

if TYPE_CHECKING:
    from mailrouter.directory import PersistentDirectory

DEFAULT_WORKERS = 8
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
MAX_LINE = 4096  # a command line (RFC 5321 says 512; be lenient, never unbounded)
MAX_RECIPIENTS = 1000
MAX_ERRORS = 10  # bad commands in one session before we hang up
RECV = 1 << 20
_END_OF_DATA = b"\r\n.\r\n"
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


class Reply:
    """The replies, spelled once."""

    GREETING = "220 {host} LMTP mailrouter-lmtpd ready"
    OK = "250 2.0.0 OK"
    SENDER_OK = "250 2.1.0 sender OK"
    RCPT_OK = "250 2.1.5 recipient OK"
    DELIVERED = "250 2.0.0 <{rcpt}> delivered"
    DATA = "354 2.0.0 send the message, end with <CRLF>.<CRLF>"
    BYE = "221 2.0.0 bye"
    VRFY = "252 2.5.0 cannot verify, send the message"
    NO_USER = "450 4.1.1 <{rcpt}> no such active user here now; try again later"
    DIRECTORY = "451 4.4.3 directory unavailable: {why}"
    TROUBLE = "451 4.3.0 {why}"
    LOCKED = "451 4.2.0 {why}"
    FULL = "452 4.2.2 {why}"
    TOO_BIG = "552 5.2.2 {why}"
    TOO_BIG_FOR_SERVER = "552 5.3.4 message larger than {limit} bytes"
    TOO_MANY_RCPTS = "452 4.5.3 too many recipients"
    BAD_SYNTAX = "501 5.5.4 syntax: {what}"
    BAD_SEQUENCE = "503 5.5.1 {what}"
    UNKNOWN = "500 5.5.2 command not recognised"
    TIMEOUT = "421 4.4.2 timeout"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as printable ASCII on one line, at most ``limit`` characters (for replies and logs)."""
    return _PRINTABLE.sub("?", text)[:limit]


def failure_reply(exc: BaseException) -> str:
    """The reply for a delivery or lookup that raised ``exc``: only TooBigForQuota is 5xx."""
    why = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TooBigForQuota):
        return Reply.TOO_BIG.format(why=why)
    if isinstance(exc, OverQuota):
        return Reply.FULL.format(why=why)
    if isinstance(exc, LockTimeout):
        return Reply.LOCKED.format(why=why)
    if isinstance(exc, DirectoryUnavailable):
        return Reply.DIRECTORY.format(why=why)
    if isinstance(exc, MailrouterError):
        return Reply.TROUBLE.format(why=why)
    return Reply.TROUBLE.format(why=f"internal error: {type(exc).__name__}")


def parse_path(argument: bytes) -> str | None:
    """The address inside ``<...>`` of a MAIL/RCPT argument (parameters ignored); None if malformed.

    Lenient on purpose: the client is Exim, and a 5xx to MAIL would bounce the
    message.  The address runs to the LAST ``>`` before the parameters (a quoted
    local part may hold one); octets that are not UTF-8 are kept as surrogates
    (such a recipient cannot be canonical: 450; a sender becomes MAILER-DAEMON
    in the From_ line, as :func:`mailrouter.mailbox.mbox.from_line` does with any
    sender it cannot write).
    """
    text = argument.strip()
    if not text.startswith(b"<"):
        return None
    end = text.rfind(b">", 0, (text.find(b"> ") + 1) or len(text))
    if end < 0 or (end + 1 < len(text) and text[end + 1 : end + 2] != b" "):
        return None
    return text[1:end].decode("utf-8", "surrogateescape")


def split_recipient(address: str) -> tuple[str, str] | None:
    """``(local, domain)`` of a recipient Exim sends (``$local_part@$domain``), canonical or None."""
    local, at, domain = address.rpartition("@")
    if not at:
        return None
    return routing.canonical_key(local, domain.lower()) if names.is_domain(domain.lower()) else None


def decode_data(raw: bytes) -> bytes:
    """The message from LMTP DATA text (without the final ``.`` line): dots unstuffed, CRLF -> LF.

    Exim stores messages with LF line ends and its lmtp transport sends each as
    CRLF; a CR before a line end in the message arrives as CR CR LF and comes
    back as CR LF, so the bytes are exactly Exim's (what appendfile writes).
    """
    unstuffed = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n")[2:]
    return unstuffed.replace(b"\r\n", b"\n")


def with_envelope_to(message: bytes, recipient: str) -> bytes:
    """``message`` with ``Envelope-to: recipient`` where Exim's envelope_to_add puts it:
    right after the ``Return-path:`` line the transport added at the top (before
    ``Delivery-date:``), or at the top without one."""
    offset = 0
    if message.startswith(b"Return-path:"):
        offset = message.find(b"\n") + 1
    header = f"Envelope-to: {recipient}\n".encode("utf-8", "surrogateescape")
    return message[:offset] + header + message[offset:]


class Connection:
    """Line I/O on one client socket, with a timeout per read."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = bytearray()
        self.too_big = False

    def _fill(self) -> bool:
        chunk = self.sock.recv(RECV)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> bytes | None:
        """One command line without its line end; None at EOF; ValueError when too long."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > MAX_LINE:
                raise ValueError("command line too long")
            start = len(self.buffer)
            if not self._fill():
                return None

    def data(self, limit: int) -> bytes | None:
        """The DATA text up to (without) the final ``.`` line; None at EOF.

        Text beyond ``limit`` bytes (as sent: CRLF, dot-stuffed) is read to its
        end and dropped, never held; the result is then ``b""`` and ``self.too_big``.
        """
        self.too_big = False
        # A "." line right at the start is the empty message.  Any text has at least
        # three bytes (a line end plus ".\r\n"), so waiting for three never hangs.
        while len(self.buffer) < 3:
            if not self._fill():
                return None
        if self.buffer.startswith(b".\r\n"):
            del self.buffer[:3]
            return b""
        scanned = 0
        while True:
            end = self.buffer.find(_END_OF_DATA, max(0, scanned - len(_END_OF_DATA)))
            if end >= 0:
                self.too_big = self.too_big or end + 2 > limit
                text = b"" if self.too_big else bytes(self.buffer[: end + 2])
                del self.buffer[: end + len(_END_OF_DATA)]
                return text
            scanned = len(self.buffer)
            if scanned > limit + len(_END_OF_DATA):
                self.too_big = True
                keep = len(_END_OF_DATA)
                del self.buffer[:-keep]
                scanned = len(self.buffer)
            if not self._fill():
                return None

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode("ascii", "replace"))


@dataclasses.dataclass
class Recipient:
    address: str
    target: AddressData


Deliver = Callable[[AddressData, bytes, bytes], str]


class Session:
    """One LMTP conversation (RFC 2033), in a worker."""

    def __init__(self, config: Config, deliver: Deliver, lookups: PersistentDirectory, *, host: str,
                 max_message: int) -> None:
        self.config = config
        self.deliver = deliver
        self.lookups = lookups
        self.host = host
        self.max_message = max_message
        self.greeted = False
        self.sender: str | None = None
        self.recipients: list[Recipient] = []

    def reset(self) -> None:
        self.sender = None
        self.recipients = []

    def run(self, connection: Connection) -> None:
        connection.send(Reply.GREETING.format(host=self.host))
        errors = 0
        while errors < MAX_ERRORS:
            try:
                line = connection.line()
            except ValueError:
                connection.send(Reply.BAD_SYNTAX.format(what="line too long"))
                return
            if line is None:
                return
            verb, _, argument = line.partition(b" ")
            verb = verb.upper()
            if verb == b"QUIT":
                connection.send(Reply.BYE)
                return
            handler = self.COMMANDS.get(verb)
            if handler is None:
                errors += 1
                connection.send(Reply.UNKNOWN)
                continue
            if not handler(self, connection, argument):
                errors += 1

    # -- commands: each sends its reply, returns False for a client error -------------------
    def lhlo(self, connection: Connection, argument: bytes) -> bool:
        if not argument.strip():
            connection.send(Reply.BAD_SYNTAX.format(what="LHLO hostname"))
            return False
        self.reset()
        self.greeted = True
        connection.send(f"250-{self.host}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                        "250-8BITMIME", f"250 SIZE {self.max_message}")
        return True

    def mail(self, connection: Connection, argument: bytes) -> bool:
        if not self.greeted:
            connection.send(Reply.BAD_SEQUENCE.format(what="LHLO first"))
            return False
        if self.sender is not None:
            connection.send(Reply.BAD_SEQUENCE.format(what="MAIL already given"))
            return False
        if not argument.upper().startswith(b"FROM:"):
            connection.send(Reply.BAD_SYNTAX.format(what="MAIL FROM:<address>"))
            return False
        sender = parse_path(argument[5:])
        if sender is None:
            connection.send(Reply.BAD_SYNTAX.format(what="MAIL FROM:<address>"))
            return False
        self.sender = sender
        connection.send(Reply.SENDER_OK)
        return True

    def rcpt(self, connection: Connection, argument: bytes) -> bool:
        if self.sender is None:
            connection.send(Reply.BAD_SEQUENCE.format(what="MAIL first"))
            return False
        if not argument.upper().startswith(b"TO:"):
            connection.send(Reply.BAD_SYNTAX.format(what="RCPT TO:<address>"))
            return False
        address = parse_path(argument[3:])
        if address is None:
            connection.send(Reply.BAD_SYNTAX.format(what="RCPT TO:<address>"))
            return False
        if len(self.recipients) >= MAX_RECIPIENTS:
            connection.send(Reply.TOO_MANY_RCPTS)
            return True
        reply = self._accept_recipient(address)
        if not reply.startswith("250"):
            sockserver.log(f"lmtpd: rcpt={one_line(address, 200)} refused: {reply}")
        connection.send(reply)
        return True

    def _accept_recipient(self, address: str) -> str:
        key = split_recipient(address)
        if key is None:
            return Reply.NO_USER.format(rcpt=one_line(address, 200))
        try:
            # The worker's connection is reused across sessions; one that
            # failed is closed on the way out of the block, never reused.
            with self.lookups as directory:
                target = routing.delivery_target(directory, self.config.spool, *key)
        except Exception as exc:  # noqa: BLE001 - every trouble is this recipient's 4xx
            return failure_reply(exc)
        if target is None:
            return Reply.NO_USER.format(rcpt=one_line(address, 200))
        self.recipients.append(Recipient(f"{key[0]}@{key[1]}", target))
        return Reply.RCPT_OK

    def data(self, connection: Connection, argument: bytes) -> bool:
        if self.sender is None or not self.recipients:
            connection.send(Reply.BAD_SEQUENCE.format(what="no valid recipients"))
            return False
        connection.send(Reply.DATA)
        raw = connection.data(self.max_message)
        if raw is None:
            raise ConnectionError("connection lost during DATA")
        if connection.too_big:
            reply = Reply.TOO_BIG_FOR_SERVER.format(limit=self.max_message)
            sockserver.log(f"lmtpd: message over --max-message: {reply}")
            connection.send(*(reply for _ in self.recipients))
        else:
            message = decode_data(raw)
            from_line = mbox.from_line(self.sender or None)
            for recipient in self.recipients:
                connection.send(self._store(recipient, from_line, message))
        self.reset()
        return True

    def _store(self, recipient: Recipient, from_line: bytes, message: bytes) -> str:
        copy = with_envelope_to(message, recipient.address)
        try:
            outcome = self.deliver(recipient.target, copy, from_line)
            reply = Reply.DELIVERED.format(rcpt=recipient.address)
            status, why = "delivered", outcome
        except Exception as exc:  # noqa: BLE001 - this recipient's answer, never the others'
            reply = failure_reply(exc)
            status, why = ("bounced" if reply.startswith("5") else "deferred"), reply
        sockserver.log(
            f"lmtpd: status={status} rcpt={one_line(recipient.address, 200)} "
            f"mailbox={one_line(recipient.target.mailbox)} input={len(copy)} reason={one_line(why)}"
        )
        return reply

    def rset(self, connection: Connection, _argument: bytes) -> bool:
        self.reset()
        connection.send(Reply.OK)
        return True

    def noop(self, connection: Connection, _argument: bytes) -> bool:
        connection.send(Reply.OK)
        return True

    def vrfy(self, connection: Connection, _argument: bytes) -> bool:
        connection.send(Reply.VRFY)
        return True

    def helo(self, connection: Connection, _argument: bytes) -> bool:
        connection.send(Reply.BAD_SEQUENCE.format(what="this is LMTP: LHLO"))
        return False

    COMMANDS: dict[bytes, Callable[[Session, Connection, bytes], bool]] = {
        b"LHLO": lhlo, b"MAIL": mail, b"RCPT": rcpt, b"DATA": data, b"RSET": rset,
        b"NOOP": noop, b"VRFY": vrfy, b"HELO": helo, b"EHLO": helo,
    }


# -- storing: in this process, or in a child that switches ids --------------------------------
def deliver_here(spool_config: config_module.SpoolConfig) -> Deliver:
    """Store in this process (already the storage account, or whoever we run as)."""
    def deliver(target: AddressData, message: bytes, from_line: bytes) -> str:
        return store.deliver(spool_config, target, message, from_line=from_line)
    return deliver


_RESULT = struct.Struct("!B")
_KINDS: dict[int, type[MailrouterError]] = {
    0: TemporaryFailure, 1: TooBigForQuota, 2: OverQuota, 3: LockTimeout,
}


def deliver_as_user(spool_config: config_module.SpoolConfig) -> Deliver:
    """Store in a forked child that becomes the target's uid/gid first (per-user ids, as root)."""
    def deliver(target: AddressData, message: bytes, from_line: bytes) -> str:
        spool.check_ids(target.uid, target.gid, spool_config)  # refused here: no fork at all
        worker = os.getpid()
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reader)
            code = _child_deliver(spool_config, target, message, from_line, writer, worker)
            os._exit(code)
        os.close(writer)
        try:
            with os.fdopen(reader, "rb") as result:
                report = result.read(4096)
        finally:
            _pid, status = os.waitpid(pid, 0)
        if not report or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise TemporaryFailure(f"delivery process ended with status {status:#x}")
        kind, text = report[0], report[1:].decode("utf-8", "replace")
        if kind == 255:
            return text
        raise _KINDS.get(kind, TemporaryFailure)(text)
    return deliver


def _child_deliver(spool_config: config_module.SpoolConfig, target: AddressData, message: bytes,
                   from_line: bytes, writer: int, worker: int) -> int:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        spool.become(target.uid, target.gid, spool_config)
        # After the switch: the kernel clears the parent-death signal on any change of ids.
        # A worker killed from here on takes this delivery with it (the journal undoes it).
        sockserver.die_with_parent(signal.SIGKILL)
        if os.getppid() != worker:
            return 1  # the worker died before the line above: nobody waits for the result
        kind, text = 255, store.deliver(spool_config, target, message, from_line=from_line)
    except TooBigForQuota as exc:
        kind, text = 1, str(exc)
    except OverQuota as exc:
        kind, text = 2, str(exc)
    except LockTimeout as exc:
        kind, text = 3, str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as a temporary failure
        kind, text = 0, one_line(str(exc)) or type(exc).__name__
    try:
        os.write(writer, _RESULT.pack(kind) + text.encode("utf-8", "replace")[:4000])
    except OSError:
        return 1
    return 0


# -- start-up ----------------------------------------------------------------------------------
def prepare(config: Config) -> tuple[Config, Deliver]:
    """Read the password now, then drop root (storage account) unless per-user ids need it."""
    password = config.ldap.service_password()  # as root: the storage account cannot read the file
    config = dataclasses.replace(config, ldap=dataclasses.replace(config.ldap, bind_password=password))
    if config.spool.per_user_ids and os.geteuid() == 0:
        return config, deliver_as_user(config.spool)
    spool_config = config.spool
    if os.geteuid() == 0:
        spool.become(spool_config.storage_uid, spool_config.storage_gid, spool_config)
    return config, deliver_here(spool_config)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-lmtpd")
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH)
    parser.add_argument("--socket", default=None, help="default: the socket systemd passed")
    parser.add_argument("--group", default=sockserver.DEFAULT_GROUP)
    parser.add_argument("--allow-user", action="append", default=None)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--max-sessions", type=int, default=sockserver.DEFAULT_MAX_REQUESTS)
    parser.add_argument("--command-timeout", type=float, default=DEFAULT_COMMAND_TIMEOUT)
    parser.add_argument("--max-message", type=int, default=DEFAULT_MAX_MESSAGE)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.max_sessions < 1 or args.command_timeout <= 0 or args.max_message < 1:
        parser.error("--workers, --max-sessions, --command-timeout and --max-message must be positive")
    try:
        config = config_module.load(args.config)
        # Imported once, here: the workers pay neither the ldap3 import nor module set-up.
        import mailrouter.directory  # noqa: F401, PLC0415

        server = sockserver.listening_socket(args.socket, args.group)
        allowed = sockserver.allowed_uids(args.allow_user or [sockserver.DEFAULT_ALLOWED_USER])
        config, deliver = prepare(config)
    except (MailrouterError, OSError, ImportError) as exc:
        sockserver.log(f"lmtpd: cannot start: {exc}")
        return EX_TEMPFAIL
    host = one_line(socket.gethostname(), 100) or "localhost"
    from mailrouter.directory import PersistentDirectory  # noqa: PLC0415 - imported above already

    lookups = PersistentDirectory(config.ldap)

    def session(sock: socket.socket) -> None:
        conversation = Session(config, deliver, lookups, host=host, max_message=args.max_message)
        try:
            conversation.run(Connection(sock, args.command_timeout))
        except TimeoutError:
            try:
                Connection(sock, 1.0).send(Reply.TIMEOUT)
            except OSError:
                pass
        except OSError:
            pass  # the client went away: Exim defers what it did not get an answer for

    sockserver.log(f"lmtpd: listening on {server.getsockname()!r} as uid {os.geteuid()}, "
                   f"{args.workers} workers, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    sockserver.serve_sessions(server, session, allowed, name="lmtpd", workers=args.workers,
                              max_sessions=args.max_sessions)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
