"""The nss-systemd user records that let stock popa3d find the storage account.

After PAM said yes, popa3d calls ``getpwnam("local@domain")`` for the uid/gid
to run as.  Debian 12's default ``passwd: files systemd`` answers it from JSON
drop-ins, one per login, with no daemon::

    DIR/local@domain.user
    {"userName": LOGIN, "uid": UID, "gid": GID, "homeDirectory": "/nonexistent",
     "shell": "/usr/sbin/nologin", "service": "io.mailrouter"}

This module is their one definition, used by both writers:

* ``mailrouter-pam-auth --userdb DIR`` (root, inside the login): writes or
  refreshes the record of the user who just authenticated, *before* popa3d asks
  for it, so a user created a second ago logs in at once; removes the record
  of a login that is gone or disabled.
* ``mailrouter-userdb DIR`` (its systemd timer): brings DIR in line with LDAP,
  the sweeper for users who never log in again.

Each file is replaced atomically (mode 0644, fsynced); records of ours are
recognised by ``"service": "io.mailrouter"`` and nothing else in DIR is ever
touched; symlinks are never followed.  Why this NSS and not extrausers, nslcd
or pam_python: see ``popa3d/README``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from mailrouter import names
from mailrouter.errors import InvalidName, TemporaryFailure
from mailrouter.mailbox.spool import storage_ids

if TYPE_CHECKING:
    from mailrouter.config import Config
    from mailrouter.directory import User

# Only the standard library, names and errors at import time: the lean PAM path
# (mailrouter-pam-auth --authd-socket) writes records with no TOML parser and no
# ldap3 loaded (tests/integration/test_pam_authd.py checks sys.modules).

NOLOGIN_SHELL = "/usr/sbin/nologin"
USERDB_SERVICE = "io.mailrouter"
USERDB_SUFFIX = ".user"
NO_HOME = "/nonexistent"

Record = dict[str, object]


def record(config: Config, user: User) -> Record | None:
    """The record of an active, canonically named ``user``; ``None`` when it must have
    none (disabled, or ids that ``spool.storage_ids`` refuses: no POP3 for that user)."""
    if not user.active:
        return None
    try:
        names.address(user.address)
        uid, gid = storage_ids(user.uid_number, user.gid_number, config.spool)
    except (InvalidName, TemporaryFailure):
        return None
    return {
        "userName": user.address,
        "uid": uid,
        "gid": gid,
        "homeDirectory": NO_HOME,
        "shell": NOLOGIN_SHELL,
        "service": USERDB_SERVICE,
    }


def _path(target_dir: str, login: str) -> str:
    names.address(login)  # InvalidName for anything path-like: never a file name of ours
    return os.path.join(target_dir, login + USERDB_SUFFIX)


def write(target_dir: str, login: str, data: Record) -> None:
    """Replace ``DIR/LOGIN.user`` atomically with ``data``."""
    final = _path(target_dir, login)
    import tempfile  # here: the lean PAM path starts faster without it (and rarely writes)

    encoded = (json.dumps(data, sort_keys=True) + "\n").encode("utf-8")
    fd, tmp_path = tempfile.mkstemp(prefix=".mailrouter.", dir=target_dir)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(encoded)
        while view:
            written = os.write(fd, view)  # a short write is possible on a full disk
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp_path, final)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp_path):
            os.unlink(tmp_path)


def _load(path: str) -> Record | None:
    """The record in ``path`` if it is a regular file of ours (never follows a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(65536))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("service") == USERDB_SERVICE:
        return data
    return None


def current(target_dir: str, login: str) -> Record | None:
    """The record of ours for ``login`` in DIR, if there is one."""
    return _load(_path(target_dir, login))


def refresh(target_dir: str, login: str, data: Record | None) -> bool:
    """Make DIR's record for ``login`` be ``data`` (``None``: no record of ours);
    True if anything changed.  An unchanged record is not rewritten."""
    if current(target_dir, login) == data:
        return False
    if data is None:
        os.unlink(_path(target_dir, login))
    else:
        write(target_dir, login, data)
    return True


def sweep(target_dir: str, keep: set[str]) -> None:
    """Remove every record of ours in DIR whose login is not in ``keep``."""
    for name in os.listdir(target_dir):
        login = name[: -len(USERDB_SUFFIX)]
        if name.endswith(USERDB_SUFFIX) and login not in keep:
            path = os.path.join(target_dir, name)
            if _load(path) is not None:
                os.unlink(path)
