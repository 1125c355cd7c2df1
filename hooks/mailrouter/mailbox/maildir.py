"""Maildir delivery (the option for IMAP users; mbox stays the default).

The classic safe sequence (D. J. Bernstein's maildir(5)):

1. write the message to ``tmp/<unique>`` created with ``O_EXCL``, checking every
   write's byte count, then ``fsync`` it;
2. ``link`` it to ``new/<unique>`` -- link, not rename, so an existing name is
   never overwritten -- then unlink the tmp name and ``fsync`` ``new/``.

The message is stored without the ``From `` line and without ``>From``
escaping (maildir needs neither).  Unique names are
``<sec>.M<usec>P<pid>Q<n>R<random>.<host>,S=<size>``; ``S=`` lets Dovecot's
quota code skip a stat (and :mod:`mailrouter.mailbox.usage` too).

All file operations go through directory descriptors opened with
``O_NOFOLLOW``, so a symlinked ``tmp``/``new`` is refused, not followed.

Folders (Sieve ``fileinto``) are Maildir++ subfolders, what Dovecot and
Courier read: ``<Maildir>/.<name>`` with its own ``tmp``/``new``/``cur`` and
an empty ``maildirfolder`` file; hierarchy levels are joined with ``.``
(``.Lists.exim``).  :func:`open_folder` takes the directory name
(``mailrouter.rules.folder_directory`` makes it from a folder name) and
refuses anything that is not one plain ``.name`` entry of the Maildir.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from mailrouter.errors import MaildirError

_counter = itertools.count(1)  # per-process sequence for unique names, not config state
SUBDIRS = ("tmp", "new", "cur")


def _host() -> str:
    # maildir(5): '/' and ':' in the host name are encoded as octal escapes.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_name(size: int) -> str:
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return (
        f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{os.urandom(8).hex()}.{_host()},S={size}"
    )


def open_dir(name: str, dir_fd: int, *, create: bool, mode: int = 0o700) -> int:
    """Open (optionally create) directory ``name`` below ``dir_fd`` without following symlinks."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made concurrently: open it below
    return os.open(name, flags, dir_fd=dir_fd)


FOLDER_MARKER = "maildirfolder"


def is_folder_directory(name: str) -> bool:
    """A Maildir++ folder entry: ``.name``, one path component, never ``.``/``..``-like."""
    return (
        len(name) > 1
        and name.startswith(".")
        and not name.startswith("..")
        and "/" not in name
        and "\x00" not in name
        and ".." not in name
        and not name.endswith(".")
    )


def open_folder(maildir_fd: int, name: str) -> int:
    """Open (create) the Maildir++ folder ``name`` (``.Junk``) of the Maildir open as
    ``maildir_fd``, with its ``maildirfolder`` marker; never follows a symlink."""
    if not is_folder_directory(name):
        raise MaildirError(f"not a Maildir++ folder name: {name[:80]!r}")
    try:
        fd = open_dir(name, maildir_fd, create=True)
    except OSError as exc:
        raise MaildirError(f"folder {name[:80]!r}: {exc.strerror}") from exc
    try:
        marker = os.open(FOLDER_MARKER, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=fd)
        os.close(marker)
    except OSError as exc:
        os.close(fd)
        raise MaildirError(f"folder {name[:80]!r}: {FOLDER_MARKER}: {exc.strerror}") from exc
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` completely; a short count is retried, a zero count is an error.

    Why a loop: on a nearly full disk ``write`` can return a short count without
    raising; only the following write raises ENOSPC.
    """
    view = memoryview(data)
    offset = 0
    chunk = 1 << 20
    while offset < len(view):
        written = os.write(fd, view[offset : offset + chunk])
        if written <= 0:
            raise OSError(f"write returned {written}")
        offset += written


def deliver(maildir_fd: int, message: bytes) -> str:
    """Store ``message`` in the maildir open as ``maildir_fd``; return ``new/<name>``."""
    fds = {sub: open_dir(sub, maildir_fd, create=True) for sub in SUBDIRS}
    try:
        name = unique_name(len(message))
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=fds["tmp"],
            )
        except OSError as exc:
            raise MaildirError(f"cannot create tmp/{name}: {exc.strerror}") from exc
        try:
            try:
                write_all(fd, message)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(name, name, src_dir_fd=fds["tmp"], dst_dir_fd=fds["new"], follow_symlinks=False)
            os.fsync(fds["new"])
        except OSError as exc:
            raise MaildirError(f"maildir write failed: {exc.strerror or exc}") from exc
        finally:
            # Once linked the tmp name is redundant; if not linked it is junk.  A
            # failed unlink is harmless: maildir readers clean tmp/ after 36 hours.
            try:
                os.unlink(name, dir_fd=fds["tmp"])
            except OSError:
                pass
        return f"new/{name}"
    finally:
        for fd in fds.values():
            os.close(fd)
