"""mailrouter-userdb -- the user records that let stock popa3d find the storage account.

Usage (from ``systemd/mailrouter-userdb.service``, run by its timer, as root)::

    mailrouter-userdb [--config CONF] DIR

Why: after PAM said yes (``mailrouter-pam-auth``), popa3d calls
``getpwnam("local@domain")`` for the uid/gid to run as.  This program brings
``DIR`` (``/etc/userdb`` in production) in line with LDAP: one systemd JSON
user record ``DIR/local@domain.user`` per active, canonically named user::

    {"userName": LOGIN, "uid": UID, "gid": GID, "homeDirectory": "/nonexistent",
     "shell": "/usr/sbin/nologin", "service": "io.mailrouter"}

with the storage ids (or the per-user ids with ``spool.per_user_ids``).
Debian 12's default ``passwd: files systemd`` reads these drop-ins through
nss-systemd, with no daemon.  Each file is replaced atomically (mode 0644);
records of ours (``service`` = ``io.mailrouter``) whose user is gone or
disabled are removed; other files in DIR are never touched.  A user whose
ids are unusable gets no record (no POP3), the others still do.  Why this NSS
and not extrausers, nslcd or pam_python: see ``popa3d/README``.

Input: LDAP, read as the service account of ``--config`` (default
``/etc/mailrouter/mailrouter.toml``).  Nothing from the environment.

Output: nothing on stdout; one line on stderr (the journal) when it fails.

Exit codes:
    0   DIR is up to date
    2   usage: bad arguments
    75  temporary: LDAP down or slow, bad configuration, DIR not writable;
        records already replaced stay (each is complete), stale ones may remain
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from mailrouter import names
from mailrouter.config import Config, load
from mailrouter.directory import Directory, values
from mailrouter.errors import TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL, EX_USAGE
from mailrouter.mailbox.spool import storage_ids

NOLOGIN_SHELL = "/usr/sbin/nologin"
USERDB_SERVICE = "io.mailrouter"
USERDB_SUFFIX = ".user"
NO_HOME = "/nonexistent"


def userdb_records(config: Config, directory: Directory) -> dict[str, dict[str, object]]:
    """login -> systemd JSON user record, for every active, canonically named user."""
    records: dict[str, dict[str, object]] = {}
    domains = directory.search_level(directory.base_dn, "(objectClass=mailDomain)", ["dc"])
    for _dn, attributes in domains:
        for domain in values(attributes, "dc"):
            if not names.is_domain(domain):
                continue
            users = directory.search_level(
                directory.domain_dn(domain), "(objectClass=mailUser)", ["uid"]
            )
            for _user_dn, user_attributes in users:
                for local in values(user_attributes, "uid"):
                    if not names.is_local_part(local):
                        continue
                    # Re-read through the one typed path: exact naming checks, status.
                    user = directory.user(local, domain)
                    if user is None or not user.active:
                        continue
                    try:
                        uid, gid = storage_ids(user.uid_number, user.gid_number, config.spool)
                    except TemporaryFailure:
                        continue  # a user with bad ids gets no POP3, not everyone
                    records[user.address] = {
                        "userName": user.address,
                        "uid": uid,
                        "gid": gid,
                        "homeDirectory": NO_HOME,
                        "shell": NOLOGIN_SHELL,
                        "service": USERDB_SERVICE,
                    }
    return records


def _write_atomically(directory: str, name: str, data: bytes) -> None:
    fd, tmp_path = tempfile.mkstemp(prefix=".mailrouter.", dir=directory)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)  # a short write is possible on a full disk
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp_path, os.path.join(directory, name))
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp_path):
            os.unlink(tmp_path)


def _is_ours(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as handle:
            record = json.loads(handle.read(65536))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("service") == USERDB_SERVICE


def write_userdb(config: Config, target_dir: str) -> int:
    """Bring ``target_dir`` in line with LDAP; returns the number of records written."""
    with Directory(config.ldap) as directory:
        records = userdb_records(config, directory)
    for login, record in records.items():
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        _write_atomically(target_dir, login + USERDB_SUFFIX, data)
    for name in os.listdir(target_dir):
        login = name[: -len(USERDB_SUFFIX)]
        if name.endswith(USERDB_SUFFIX) and login not in records:
            path = os.path.join(target_dir, name)
            if _is_ours(path):
                os.unlink(path)
    return len(records)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-userdb", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("dir", metavar="DIR")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (argparse said why on stderr)
        return EX_OK if exc.code == 0 else EX_USAGE
    try:
        write_userdb(load(args.config), args.dir)
    except (TemporaryFailure, OSError) as exc:
        print(f"mailrouter-userdb: not updated: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return EX_OK
