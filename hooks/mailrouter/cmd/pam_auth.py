"""mailrouter-pam-auth -- password check for PAM's pam_exec (stock popa3d logins).

Usage (from a PAM service file, never by hand)::

    auth required pam_exec.so expose_authtok quiet \\
        /opt/mailrouter/venv/bin/mailrouter-pam-auth --config /etc/mailrouter/mailrouter.toml

    mailrouter-pam-auth --config CONF --write-userdb DIR

Input:
    ``PAM_USER``  (environment) the login exactly as the client typed it; only the
                  canonical lower-case ``local@domain`` can succeed.
    ``PAM_TYPE``  must be ``auth`` (pam_exec sets it); anything else is refused.
    stdin         the password (pam_exec ``expose_authtok``).  Linux-PAM writes it
                  without a trailing NUL; one trailing NUL is tolerated.
    ``--config``  the TOML configuration.  Taken from argv (the root-owned PAM file)
                  and never from the environment, which the PAM application and
                  its modules may influence.

Output: nothing on stdout or stderr (stderr is /dev/null, see ``mailrouter.cmd.guard``).

Exit codes (pam_exec turns every non-zero code into a failed login; the code
only shows up in pam_exec's syslog line, for the admin):
    0   authenticated
    1   refused: unknown user, wrong or empty password, disabled account,
        non-canonical login -- all the same on purpose
    2   misuse: no PAM_USER, PAM_TYPE is not auth, bad arguments
    75  temporary: LDAP down or slow, bad configuration

``--write-userdb DIR`` (for a timer or the admin tool, as root; DIR is
``/etc/userdb`` in production) makes ``getpwnam("local@domain")`` work for stock
popa3d after PAM: one systemd JSON user record ``DIR/local@domain.user`` per
active user, ``{"userName": LOGIN, "uid": UID, "gid": GID, "homeDirectory":
"/nonexistent", "shell": "/usr/sbin/nologin", "service": "io.mailrouter"}`` with
the storage ids (or the per-user ids when ``spool.per_user_ids``).  Debian 12's
default ``passwd: files systemd`` reads these drop-ins through nss-systemd, with
no daemon.  Each file is replaced atomically; records of ours (``service`` =
``io.mailrouter``) whose user is gone or disabled are removed; other files are
never touched.  Exit 0 written, 75 not written.  Why this NSS and not
extrausers, nslcd or pam_python: see ``popa3d/README``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable

from mailrouter import auth, names
from mailrouter.config import Config, load
from mailrouter.directory import Directory
from mailrouter.errors import TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_USAGE
from mailrouter.mailbox.spool import storage_ids

EXIT_CODES = {
    auth.Verdict.OK: EX_OK,
    auth.Verdict.REFUSED: EX_REFUSED,
    auth.Verdict.TEMPORARY: EX_TEMPFAIL,
}

# PAM_MAX_RESP_SIZE is 512; read a little more so an over-long token is seen as such.
MAX_STDIN = 4096

NOLOGIN_SHELL = "/usr/sbin/nologin"
USERDB_SERVICE = "io.mailrouter"
USERDB_SUFFIX = ".user"
NO_HOME = "/nonexistent"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(EX_USAGE)


def _read_password(stream: int) -> bytes:
    chunks = []
    total = 0
    while total <= MAX_STDIN:
        chunk = os.read(stream, MAX_STDIN + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    data = b"".join(chunks)
    # Some PAM versions terminate the token with a NUL; it is never part of it.
    return data[:-1] if data.endswith(b"\0") else data


def check(config: Config, login: str, password: bytes) -> int:
    """Exit code for one PAM authentication."""
    result = auth.authenticate_raw(
        config, login.encode("utf-8", "surrogateescape"), password
    )
    return EXIT_CODES[result.verdict]


def userdb_records(config: Config, directory: Directory) -> dict[str, dict[str, object]]:
    """login -> systemd JSON user record, for every active, canonically named user."""
    records: dict[str, dict[str, object]] = {}
    domains = directory.search_level(directory.base_dn, "(objectClass=mailDomain)", ["dc"])
    for _dn, attributes in domains:
        for domain in _strings(attributes.get("dc")):
            if not names.is_domain(domain):
                continue
            users = directory.search_level(
                directory.domain_dn(domain), "(objectClass=mailUser)", ["uid"]
            )
            for _user_dn, user_attributes in users:
                for local in _strings(user_attributes.get("uid")):
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


def _strings(value: object) -> Iterable[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]


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
    parser = _Parser(prog="mailrouter-pam-auth", add_help=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("--write-userdb", metavar="DIR", default=None)
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except TemporaryFailure:
        return EX_TEMPFAIL
    if args.write_userdb:
        try:
            write_userdb(config, args.write_userdb)
        except (TemporaryFailure, OSError):
            return EX_TEMPFAIL
        return EX_OK
    login = os.environ.get("PAM_USER")
    if not login or os.environ.get("PAM_TYPE", "auth") != "auth":
        return EX_USAGE
    password = _read_password(sys.stdin.fileno())
    return check(config, login, password)
