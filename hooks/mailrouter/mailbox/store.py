"""Store one message in one mailbox: the code every delivery front end calls.

:func:`deliver` is the only entry point.  ``mailrouter-deliver`` (Exim's pipe
transport) calls it with the ``From `` line Exim sent; ``mailrouter-lmtpd``
calls it with ``mbox.from_line(sender)`` built from its envelope.  Both hand
over the target as :class:`~mailrouter.mailbox.addressdata.AddressData`, decided
by :func:`mailrouter.routing.delivery_target`, and switch ids with
:func:`mailrouter.mailbox.spool.become` before calling.

Nothing in the target is trusted: the path must be exactly what the
configured template makes of canonical names (:func:`spool.check_mailbox_path`),
the ids must pass the storage-id rule (:func:`spool.check_ids`), the quota
must parse, and the process must already run as the target's uid (the
front end drops or switches privileges; this module never changes ids and so
never writes as root).

mbox: every directory below the spool root is opened with ``O_NOFOLLOW`` (a
symlinked parent is refused), the mailbox likewise; it must be a regular file
with one link, owned by the target uid.  A missing mailbox is created with
``O_EXCL``, mode 0600.  Locks: dotlock ``<mailbox>.lock`` (O_EXCL) plus an fcntl
lock on the mailbox (:mod:`mailrouter.mailbox.locking`), retried for
``spool.lock_timeout`` seconds.  Under the locks: the quota check against the
current size (:mod:`mailrouter.mailbox.usage`) plus the bytes to write,
``>From`` escaping as appendfile does (:mod:`mailrouter.mailbox.mbox`), the
append's journal in the dotlock (fsynced), every write's count checked,
``fsync``.  On any failure the file is truncated back to its old size and its
old mtime/atime restored.  A front end killed at any point (``kill -9``, OOM,
power loss) cannot do that itself: the next delivery to the mailbox finds its
dotlock, sees the owner is gone and truncates the mailbox back to the size the
journal recorded -- after checking the bytes it removes are that append's --
before appending (:mod:`mailrouter.mailbox.locking`).  So a killed delivery
leaves the mailbox exactly as before it started, once the next delivery (the
retry of the same message, usually) comes; until then readers may see the
fragment.

Maildir: the same parent walk, then :func:`mailrouter.mailbox.maildir.deliver`
(tmp/, link to new/, fsync); no lock, so the quota check is approximate under
concurrency.

Errors: only :class:`~mailrouter.errors.TemporaryFailure` and its subclasses
(lock held, over quota, refused mailbox, I/O error, bad target) and
:class:`~mailrouter.errors.TooBigForQuota` (the message alone -- without the mbox
``From `` line and escaping -- exceeds the whole quota: permanent).  Anything
else escaping is a bug; front ends map it to their temporary answer.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from mailrouter.errors import (
    GarbledQuota,
    MailboxRefused,
    OverQuota,
    TemporaryFailure,
    TooBigForQuota,
)
from mailrouter.mailbox import locking, maildir, mbox, spool, usage
from mailrouter.quota import parse_quota

if TYPE_CHECKING:
    from mailrouter.config import SpoolConfig
    from mailrouter.mailbox.addressdata import AddressData

_OPEN_MAILBOX = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_IDENTITY_RETRIES = 3


def deliver(spool_config: SpoolConfig, target: AddressData, message: bytes, *, from_line: bytes,
            folder: str | None = None) -> str:
    """Append ``message`` to ``target``'s mailbox; return the outcome text ("delivered N bytes ...").

    ``message`` is the message as received, without any ``From `` line.
    ``from_line`` is the mbox ``From <sender> <date>\\n`` line to write before it:
    ``mbox.from_line(sender)`` for a front end that has the envelope,
    ``mbox.split_from_line(data)[0]`` for Exim's pipe input.  It must be well
    formed even for Maildir, which does not store it.
    ``folder`` is a Maildir++ folder directory (``.Junk``, from
    ``mailrouter.rules.folder_directory``) to store into instead of the
    Maildir itself (Sieve ``fileinto``); an mbox has none (TemporaryFailure).
    The quota counts the whole Maildir, folders included.
    """
    template = spool.check_mailbox_path(spool_config, target.mailbox, target.format)
    spool.check_ids(target.uid, target.gid, spool_config)
    try:
        quota = parse_quota(target.quota_raw)
    except GarbledQuota as exc:
        raise TemporaryFailure(str(exc)) from exc
    if not mbox.is_from_line(from_line):
        raise TemporaryFailure("the From_ line is not 'From <sender> <date>'")
    if os.geteuid() != target.uid:
        raise TemporaryFailure(f"running as uid {os.geteuid()}, address data says {target.uid}")
    if folder is not None and target.format != "maildir":
        raise TemporaryFailure("folders exist only in a Maildir")
    try:
        if target.format == "maildir":
            return _deliver_maildir(template, target, message, quota, folder)
        return _deliver_mbox(spool_config, template, target, from_line, message, quota)
    except OSError as exc:
        raise TemporaryFailure(f"mailbox I/O error: {exc.strerror or exc}") from exc


def _open_parent(template: str, path: str) -> tuple[int, str]:
    """Open the mailbox's directory without following symlinks below the spool root.

    Returns (directory fd, final name).  Missing directories below the root are
    created (mode 0750, owned by the delivering uid).
    """
    root = spool.spool_root(template)
    parts = path[len(root) :].split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                next_fd = maildir.open_dir(part, fd, create=True, mode=0o750)
            except OSError as exc:
                raise MailboxRefused(f"spool directory {part!r}: {exc.strerror}") from exc
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _check_file(st: os.stat_result, uid: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise MailboxRefused("mailbox is not a regular file")
    if st.st_nlink != 1:
        raise MailboxRefused(f"mailbox has {st.st_nlink} links")
    if st.st_uid != uid:
        raise MailboxRefused(f"mailbox owned by uid {st.st_uid}, not {uid}")


def _open_mailbox(dir_fd: int, name: str, uid: int) -> int:
    """Open (or create with O_EXCL, 0600) the mbox file ``name``; checked, never followed."""
    for _ in range(2):
        try:
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            try:
                fd = os.open(name, _OPEN_MAILBOX | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue  # created concurrently: open the existing one
            except OSError as exc:
                raise TemporaryFailure(f"cannot create mailbox: {exc.strerror}") from exc
            os.fchmod(fd, 0o600)  # whatever the umask
            return fd
        # Check before opening so a FIFO or device is never even opened.
        _check_file(before, uid)
        try:
            fd = os.open(name, _OPEN_MAILBOX, dir_fd=dir_fd)
        except OSError as exc:
            raise MailboxRefused(f"cannot open mailbox: {exc.strerror}") from exc
        try:
            after = os.fstat(fd)
            _check_file(after, uid)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise MailboxRefused("mailbox replaced while opening")
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise TemporaryFailure("mailbox appeared and vanished while opening")


def _restore(fd: int, old: os.stat_result) -> None:
    """Undo a partial append: old size, old times, on disk."""
    os.ftruncate(fd, old.st_size)
    os.utime(fd, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.fsync(fd)


def _deliver_mbox(spool_config: SpoolConfig, template: str, target: AddressData, prefix: bytes,
                  message: bytes, quota: int) -> str:
    entry = mbox.entry(prefix, message)
    # Permanent only for the message itself, as Exim measured it plus the headers
    # its transport added: what the DATA-time check counts (routing.quota_verdict),
    # so a message Exim accepted is never bounced for its size.  The From_ line
    # and ">From" escaping can still overfill: that is the temporary OverQuota.
    if quota and len(message) > quota:
        raise TooBigForQuota(f"message of {len(message)} bytes exceeds the whole quota of {quota}")
    dir_fd, name = _open_parent(template, target.mailbox)
    try:
        for _ in range(_IDENTITY_RETRIES):
            fd = _open_mailbox(dir_fd, name, target.uid)
            dotlock: locking.DotLock | None = None
            try:
                dotlock = locking.lock_mailbox(
                    dir_fd, name, fd,
                    timeout=spool_config.lock_timeout,
                    stale_age=spool_config.stale_lock_age,
                )
                old = os.fstat(fd)
                current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (current.st_dev, current.st_ino) != (old.st_dev, old.st_ino):
                    continue  # renamed/replaced before we locked it: start again
                _check_file(old, target.uid)
                return _append_locked(fd, old, entry, quota, dotlock)
            finally:
                # Close first (drops the fcntl lock), then remove the dotlock, as Exim does.
                os.close(fd)
                if dotlock is not None:
                    dotlock.release()
        raise TemporaryFailure("mailbox kept changing identity while locking")
    finally:
        os.close(dir_fd)


def _append_locked(fd: int, old: os.stat_result, entry: bytes, quota: int, dotlock: locking.DotLock) -> str:
    tail = os.pread(fd, 2, max(0, old.st_size - 2)) if old.st_size else b""
    data = mbox.separator_for(tail, old.st_size) + entry
    used = usage.mbox_usage(old) or 0  # a regular file: _check_file said so
    if quota and used + len(data) > quota:
        raise OverQuota(f"mailbox full: {used} + {len(data)} bytes > quota {quota}")
    # On disk before the first byte: a kill from here on is undone by the next
    # delivery, which finds this dead lock (mailbox.locking, "journal").
    dotlock.journal(locking.Journal(
        size=old.st_size, mtime_ns=old.st_mtime_ns, atime_ns=old.st_atime_ns, dev=old.st_dev,
        ino=old.st_ino, length=len(data), head=data[: locking.HEAD_LENGTH],
    ))
    try:
        maildir.write_all(fd, data)
        os.fsync(fd)
    except BaseException as exc:
        try:
            _restore(fd, old)
        except OSError as restore_exc:
            raise TemporaryFailure(
                f"write failed ({exc}) and restore failed ({restore_exc.strerror})"
            ) from exc
        if isinstance(exc, OSError):
            raise TemporaryFailure(f"write failed: {exc.strerror or exc}; mailbox restored") from exc
        raise
    return f"delivered {len(data)} bytes"


def _deliver_maildir(template: str, target: AddressData, message: bytes, quota: int,
                     folder: str | None) -> str:
    if quota and len(message) > quota:
        raise TooBigForQuota(f"message of {len(message)} bytes exceeds the whole quota of {quota}")
    parent_fd, name = _open_parent(template, target.mailbox)
    try:
        try:
            box_fd = maildir.open_dir(name, parent_fd, create=True)
        except OSError as exc:
            raise MailboxRefused(f"maildir: {exc.strerror}") from exc
        try:
            st = os.fstat(box_fd)
            if st.st_uid != target.uid:
                raise MailboxRefused(f"maildir owned by uid {st.st_uid}, not {target.uid}")
            if quota:
                try:
                    used = usage.maildir_usage(box_fd)
                except OSError as exc:
                    raise MailboxRefused(f"maildir new/ or cur/: {exc.strerror}") from exc
                # No lock in maildir: the quota is approximate under concurrency.
                if used + len(message) > quota:
                    raise OverQuota(f"maildir full for a message of {len(message)} bytes")
            if folder is None:
                stored = maildir.deliver(box_fd, message)
            else:
                folder_fd = maildir.open_folder(box_fd, folder)
                try:
                    stored = f"{folder}/{maildir.deliver(folder_fd, message)}"
                finally:
                    os.close(folder_fd)
        finally:
            os.close(box_fd)
    finally:
        os.close(parent_fd)
    return f"delivered {len(message)} bytes as {stored}"
