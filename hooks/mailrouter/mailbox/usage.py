"""How many bytes a mailbox holds: one counting rule for the RCPT-time and the delivery-time quota check.

Both checks must agree, or a mailbox is "full" at RCPT (452) and not at
delivery, or the other way round.  The rule:

* **mbox**: the size of the mailbox file, a regular file (``lstat`` by path,
  ``fstat`` of the locked descriptor at delivery).
* **Maildir**: the sum over the entries of ``new/`` and ``cur/`` that are
  regular files (``tmp/`` is work in progress and not counted), in the Maildir
  itself and in each of its Maildir++ folders (``.Sent/``, ``.Trash/``, ...: the
  folders Dovecot makes when an IMAP client files or deletes mail, and what Sieve
  ``fileinto`` fills: a folder is part of the mailbox, not a way around its
  quota); an entry's size is the ``,S=<bytes>``
  field of its name when it has one (maildir++, written by us and by Dovecot;
  it spares a ``stat`` per message), else its ``lstat`` size.  Dovecot's own
  files (``dovecot-uidlist``, ``dovecot.index*``, ``maildirsize``) are not mail
  and not counted.  We never read ``maildirsize``: it is a cache that only a
  quota-enabled Dovecot keeps current, and a stale one would disagree with
  the delivery.  An mbox user's IMAP folders (``~/mail``) are not counted.
* Symlinks are never followed: not the mailbox, not ``new``/``cur``, not an
  entry (a symlinked entry is not counted; a symlinked mailbox or
  subdirectory is the delivery's to refuse).

:func:`mailbox_usage` reads by path (the RCPT-time check, run as Debian-exim,
and ``mailrouter-admin test address``): 0 for a mailbox that does not exist
yet, ``None`` when it cannot be read (the delivery, which is the authority,
then decides).  :func:`mbox_usage` and :func:`maildir_usage` are the same rule
on what the delivery already holds open.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from mailrouter.mailbox.maildir import is_folder_directory, open_dir

COUNTED_SUBDIRS = ("new", "cur")
# ",S=<digits>" closing the base name (before ":2,flags"), possibly followed by ",W=..." etc.
_SIZE_FIELD = re.compile(r",S=([0-9]{1,20})(?=,|$)")


def mbox_usage(info: os.stat_result) -> int | None:
    """Bytes in an mbox given its ``lstat``/``fstat``; ``None`` when it is not a regular file."""
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def entry_size(name: str) -> int | None:
    """The ``,S=`` size in a Maildir entry's name, ``None`` when it has none."""
    found = _SIZE_FIELD.findall(name.split(":", 1)[0])
    return int(found[-1]) if found else None


def maildir_usage(maildir_fd: int) -> int:
    """Bytes in the Maildir open as ``maildir_fd`` and its folders (see the module docstring).

    Raises ``OSError`` when ``new``/``cur`` cannot be read (a symlink among them:
    ``ELOOP``/``ENOTDIR``); a missing one counts as empty.  A symlinked folder
    is not counted (and never delivered to: ``maildir.open_folder``).
    """
    total = _folder_usage(maildir_fd)
    with os.scandir(maildir_fd) as entries:
        folders = [e.name for e in entries if _is_folder(e)]
    for name in folders:
        try:
            folder_fd = open_dir(name, maildir_fd, create=False)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed (or replaced) meanwhile
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                continue  # became a symlink meanwhile: never followed, never counted
            raise
        try:
            total += _folder_usage(folder_fd)
        finally:
            os.close(folder_fd)
    return total


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A Maildir++ folder (:func:`~mailrouter.mailbox.maildir.is_folder_directory`), a real
    directory (never a symlink)."""
    return is_folder_directory(entry.name) and entry.is_dir(follow_symlinks=False)


def _folder_usage(maildir_fd: int) -> int:
    """Bytes in ``new/`` and ``cur/`` of one folder (the INBOX or a Maildir++ folder)."""
    total = 0
    for sub in COUNTED_SUBDIRS:
        try:
            fd = open_dir(sub, maildir_fd, create=False)
        except FileNotFoundError:
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    # d_type from readdir: no extra system call on the usual file systems.
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    size = entry_size(entry.name)
                    if size is None:
                        try:
                            size = entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue  # moved from new/ to cur/ meanwhile
                    total += size
        finally:
            os.close(fd)
    return total


def mailbox_usage(path: str, mailbox_format: str) -> int | None:
    """Bytes in the mailbox at ``path``; 0 when absent; ``None`` when unreadable."""
    if mailbox_format == "mbox":
        try:
            return mbox_usage(os.lstat(path))
        except FileNotFoundError:
            return 0
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    except OSError:
        return None  # a symlink (ELOOP), not a directory, or not ours to read
    try:
        return maildir_usage(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
