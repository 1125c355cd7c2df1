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
is a dotlock *we* wrote (content ``mailrouter-deliver pid=N host=H``) whose
process no longer exists on this host -- so a ``kill -9`` of the delivery hook
does not block the mailbox for ``stale_age``.  A dotlock that is a symlink is
never opened or followed: ``O_EXCL`` refuses it, and removal uses ``unlink``,
which acts on the link itself.

Caveat kept from the POSIX lock semantics: closing *any* descriptor of the
mailbox in this process drops the fcntl lock.  Callers open the mailbox exactly
once and only ``fstat``/``pread`` it while locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import stat
import time
from collections.abc import Callable

from mailrouter.errors import LockTimeout

LOCK_SUFFIX = ".lock"
_OWN_PREFIX = b"mailrouter-deliver pid="
_MAX_LOCK_CONTENT = 256
_MAX_PAUSE = 0.1  # seconds between lock attempts at most


def _own_content() -> bytes:
    return _OWN_PREFIX + f"{os.getpid()} host={socket.gethostname()}\n".encode()


def _dead_owner(content: bytes) -> bool:
    """True if ``content`` is one of our dotlocks and its process is gone."""
    if not content.startswith(_OWN_PREFIX):
        return False
    try:
        fields = dict(item.split("=", 1) for item in content.decode("ascii").split()[1:])
        pid = int(fields["pid"])
    except (ValueError, KeyError, UnicodeDecodeError):
        return False
    if fields.get("host") != socket.gethostname() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


class DotLock:
    """An ``O_EXCL`` dotlock ``name`` in the directory open as ``dir_fd``."""

    def __init__(self, dir_fd: int, name: str, stale_age: float) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.stale_age = stale_age
        self._identity: tuple[int, int] | None = None

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
                os.write(fd, _own_content())
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                os.unlink(self.name, dir_fd=self.dir_fd)
                raise
            os.close(fd)
            self._identity = (st.st_dev, st.st_ino)
            return True
        return False

    def _remove_if_stale(self) -> bool:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # released meanwhile: try again
        stale = time.time() - st.st_mtime > self.stale_age
        if not stale and stat.S_ISREG(st.st_mode):
            stale = _dead_owner(self._read_content())
        if not stale:
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
            return os.read(fd, _MAX_LOCK_CONTENT)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Remove the dotlock if it is still the one we created."""
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

    Returns the held :class:`DotLock` (release it after closing ``fd``).  Raises
    :class:`LockTimeout` when both locks could not be held together in time.
    Never waits while holding only the dotlock: if the fcntl lock is busy the
    dotlock is released first, so two lockers that take them in a different order
    (popa3d takes only fcntl) cannot deadlock.
    """
    dotlock = DotLock(dir_fd, name + LOCK_SUFFIX, stale_age)
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
