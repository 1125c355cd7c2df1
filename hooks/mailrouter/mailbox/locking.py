"""Mailbox locks that popa3d, Exim, procmail, mutt and Dovecot all honour.

An mbox is locked twice, in this order (as Exim's appendfile does by default):

1. a *dotlock* ``<mailbox>.lock`` created with ``O_CREAT|O_EXCL`` in the
   mailbox's directory -- the lock of Exim, procmail, mutt and Dovecot;
2. an ``fcntl`` (POSIX record) lock on the mailbox file itself -- the only lock
   popa3d takes, honoured by the others too.

Why not ``flock`` or ``filelock.FileLock`` on a side file: popa3d does not see
them, they ignore existing dotlocks, and a left-over side file blocks Exim for
its whole ``lockfile_timeout`` (see the integration notes).

Both locks are tried without blocking and retried until a deadline, so a busy
mailbox costs a bounded wait and then a temporary failure (Exim retries later).

Stale dotlocks: a dotlock older than ``stale_age`` seconds is removed, and so
is a dotlock *we* wrote whose process is provably gone -- so a ``kill -9`` of
the delivery hook does not block the mailbox for ``stale_age``.  A dotlock that
is a symlink is never opened or followed: ``O_EXCL`` refuses it, and removal
uses ``unlink``, which acts on the link itself.

Our dotlock is also the *journal* of the append it guards, so that a delivery
killed at any point leaves the mailbox exactly as it was before it started.
Its content is one line::

    mailrouter-deliver pid=N host=H boot=B start=T                   (when taken)
    ... size=S mtime=NS atime=NS dev=D ino=I length=L head=BASE64    (before appending)

``boot`` (the kernel's boot id) and ``start`` (the process's start time) tell a
dead owner from a recycled pid.  :meth:`DotLock.journal` adds the second part,
fsynced, before the first byte is appended: the mailbox's size, times and
identity before the append, the length of the append and its first bytes.
The next delivery that finds this lock with a dead owner rolls the mailbox
back (:func:`roll_back`) *before* removing the lock, holding the mailbox's
fcntl lock meanwhile, and only when what lies beyond the recorded size is
ours: the same file, no shorter than before, no longer than the append, and
beginning with the recorded bytes.  Anything else (a POP3 session expunged
messages meanwhile, a foreign writer broke the lock and appended) is left as
it is: a leftover fragment is better than lost mail.  Rolling back twice is
harmless, so two deliveries racing to break the same lock cannot hurt.  A
lock removed only for its age is never rolled back: its owner may still run.

Caveat kept from the POSIX lock semantics: closing *any* descriptor of the
mailbox in this process drops the fcntl lock.  Callers open the mailbox exactly
once and only ``fstat``/``pread`` it while locked.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import os
import random
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailrouter.errors import LockTimeout

LOCK_SUFFIX = ".lock"
_OWN_PREFIX = b"mailrouter-deliver pid="
_MAX_LOCK_CONTENT = 1024
_MAX_PAUSE = 0.1  # seconds between lock attempts at most
HEAD_LENGTH = 64  # bytes of the append kept in the journal to recognise it
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class Journal:
    """What an append is about to do to a mailbox (see the module docstring)."""

    size: int  # the mailbox's size before the append
    mtime_ns: int
    atime_ns: int
    dev: int
    ino: int
    length: int  # bytes the append writes
    head: bytes  # its first bytes (at most HEAD_LENGTH)

    def fields(self) -> str:
        return (
            f"size={self.size} mtime={self.mtime_ns} atime={self.atime_ns} dev={self.dev} "
            f"ino={self.ino} length={self.length} head={base64.b64encode(self.head).decode('ascii')}"
        )

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Journal | None:
        """The journal in a lock's fields, ``None`` when there is none (or it is garbled)."""
        try:
            head = base64.b64decode(fields["head"], validate=True)
            journal = cls(
                int(fields["size"]), int(fields["mtime"]), int(fields["atime"]), int(fields["dev"]),
                int(fields["ino"]), int(fields["length"]), head,
            )
        except (KeyError, ValueError, binascii.Error):
            return None
        if min(journal.size, journal.length) < 0 or len(head) > min(journal.length, HEAD_LENGTH):
            return None
        return journal


def _boot_id() -> str:
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _own_content() -> bytes:
    return _OWN_PREFIX + (
        f"{os.getpid()} host={socket.gethostname()} boot={_boot_id() or '-'} "
        f"start={_start_time(os.getpid()) or '-'}"
    ).encode("ascii")


def _fields(content: bytes) -> dict[str, str] | None:
    """The key=value fields of one of our dotlocks, ``None`` for anyone else's."""
    if not content.startswith(_OWN_PREFIX):
        return None
    try:
        return dict(item.split("=", 1) for item in content.decode("ascii").split()[1:])
    except (ValueError, UnicodeDecodeError):
        return None


def _dead_owner(fields: dict[str, str]) -> bool:
    """True if the process that wrote our dotlock with ``fields`` is provably gone."""
    try:
        pid = int(fields["pid"])
    except (KeyError, ValueError):
        return False
    if fields.get("host") != socket.gethostname() or pid <= 1:
        return False
    boot = fields.get("boot", "-")
    if boot != "-" and boot != _boot_id():
        return True  # written before a reboot: every process of then is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone's process: ours, or the pid was recycled
        pass
    start = fields.get("start", "-")
    current = _start_time(pid)
    return start != "-" and current != "" and current != start  # a recycled pid


def roll_back(fd: int, journal: Journal) -> bool:
    """Undo a dead delivery's append to the mailbox open as ``fd`` (fcntl-locked by
    the caller); True if bytes were removed.  Only ever removes bytes that are
    provably that append's (module docstring); otherwise changes nothing."""
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (journal.dev, journal.ino):
        return False  # another file now
    extra = st.st_size - journal.size
    if extra <= 0 or extra > journal.length:
        return False  # nothing appended, or the file changed under someone else's lock
    present = min(extra, len(journal.head))
    if os.pread(fd, present, journal.size) != journal.head[:present]:
        return False  # not the bytes that append began with
    os.ftruncate(fd, journal.size)
    os.utime(fd, ns=(journal.atime_ns, journal.mtime_ns))
    os.fsync(fd)
    return True


class DotLock:
    """An ``O_EXCL`` dotlock ``name`` in the directory open as ``dir_fd``.

    ``mailbox_fd``: the mailbox it guards, opened by the caller.  When given, a
    dead owner's lock with a journal is rolled back before it is removed.
    """

    def __init__(self, dir_fd: int, name: str, stale_age: float, mailbox_fd: int | None = None) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.stale_age = stale_age
        self.mailbox_fd = mailbox_fd
        self.rolled_back = False  # True once this lock undid a dead delivery's append
        self._identity: tuple[int, int] | None = None
        self._fd: int | None = None
        self._content = b""

    @property
    def held(self) -> bool:
        return self._identity is not None

    def try_acquire(self) -> bool:
        """Create the dotlock; False if another process holds it (stale ones are removed)."""
        for _ in range(2):  # second round after removing a stale lock
            try:
                fd = os.open(
                    self.name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=self.dir_fd,
                )
            except FileExistsError:
                if not self._remove_if_stale():
                    return False
                continue
            try:
                # The content is only a hint for stale-lock detection (a short
                # write leaves a lock we cannot identify, which ages out normally),
                # but a failed write (disk full) must not leave an anonymous lock.
                content = _own_content()
                os.write(fd, content + b"\n")
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                os.unlink(self.name, dir_fd=self.dir_fd)
                raise
            self._fd, self._content = fd, content  # kept open for journal()
            self._identity = (st.st_dev, st.st_ino)
            return True
        return False

    def journal(self, journal: Journal) -> None:
        """Record ``journal`` in the held lock, on disk, before the append starts."""
        if self._fd is None:
            raise RuntimeError("journal() without holding the lock")
        data = self._content + b" " + journal.fields().encode("ascii") + b"\n"
        written = os.pwrite(self._fd, data, 0)
        if written != len(data):
            raise OSError(errno.ENOSPC, "short write of the lock journal")
        os.fsync(self._fd)

    def _remove_if_stale(self) -> bool:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # released meanwhile: try again
        content = self._read_content() if stat.S_ISREG(st.st_mode) else b""
        fields = _fields(content)
        dead = fields is not None and _dead_owner(fields)
        journal = Journal.parse(fields) if dead and fields is not None else None
        if journal is not None and self.mailbox_fd is not None:
            return self._roll_back_and_remove(st, content, journal)
        if not dead and time.time() - st.st_mtime <= self.stale_age:
            return False
        # Narrow the race with another remover: only unlink the very lock we judged.
        try:
            again = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if (again.st_ino, again.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
                return False
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        return True

    def _roll_back_and_remove(self, st: os.stat_result, content: bytes, journal: Journal) -> bool:
        """Under the mailbox's fcntl lock: check the dead lock is still this one,
        undo its append, then remove it.  False when someone holds the mailbox."""
        assert self.mailbox_fd is not None
        if not try_fcntl(self.mailbox_fd):
            return False  # a reader or another breaker: try again later
        try:
            try:
                again = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return True  # another breaker finished first
            if (again.st_ino, again.st_mtime_ns) != (st.st_ino, st.st_mtime_ns) or (
                self._read_content() != content
            ):
                return True  # replaced meanwhile: judge the new one
            self.rolled_back = roll_back(self.mailbox_fd, journal) or self.rolled_back
            try:
                os.unlink(self.name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            return True
        finally:
            unlock_fcntl(self.mailbox_fd)

    def _read_content(self) -> bytes:
        try:
            fd = os.open(
                self.name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=self.dir_fd,
            )
        except OSError:
            return b""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            return os.read(fd, _MAX_LOCK_CONTENT).rstrip(b"\n")
        finally:
            os.close(fd)

    def release(self) -> None:
        """Remove the dotlock if it is still the one we created."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._identity is None:
            return
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        finally:
            self._identity = None


def try_fcntl(fd: int) -> bool:
    """Take an exclusive fcntl (POSIX) lock on the whole file without waiting."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def unlock_fcntl(fd: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN)


def lock_mailbox(
    dir_fd: int,
    name: str,
    fd: int,
    *,
    timeout: float,
    stale_age: float,
    interval: float = 0.02,
    sleep: Callable[[float], None] = time.sleep,
) -> DotLock:
    """Dotlock ``name + '.lock'`` then fcntl-lock ``fd``; retry until ``timeout``.

    A dead delivery's dotlock found on the way is rolled back first (module
    docstring).  Returns the held :class:`DotLock` (release it after closing
    ``fd``; :meth:`DotLock.journal` before appending).  Raises
    :class:`LockTimeout` when both locks could not be held together in time.
    Never waits while holding only the dotlock: if the fcntl lock is busy the
    dotlock is released first, so two lockers that take them in a different order
    (popa3d takes only fcntl) cannot deadlock.
    """
    dotlock = DotLock(dir_fd, name + LOCK_SUFFIX, stale_age, mailbox_fd=fd)
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        if dotlock.try_acquire():
            try:
                if try_fcntl(fd):
                    return dotlock
            except BaseException:
                dotlock.release()
                raise
            dotlock.release()
            holder = "fcntl lock"
        else:
            holder = "dotlock"
        if time.monotonic() >= deadline:
            raise LockTimeout(f"mailbox locked ({holder} held) after {attempts} attempts")
        # Back off a little more each time, capped low (a delivery holds the lock
        # for milliseconds), with jitter so waiting deliveries do not wake in step.
        pause = min(interval * attempts, _MAX_PAUSE) * random.uniform(0.5, 1.5)
        sleep(min(pause, max(0.0, deadline - time.monotonic()) + 0.001))
