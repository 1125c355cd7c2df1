"""mailrouter-checkpassword -- the checkpassword interface (Dovecot 2.3, qmail-style servers).

Usage::

    mailrouter-checkpassword [--config CONF] PROG [ARG...]

Dovecot 2.3 (``passdb { driver = checkpassword  args = /opt/mailrouter/venv/bin/mailrouter-checkpassword }``)
runs it as user ``dovecot`` with ``PROG`` = its checkpassword-reply helper.
Dovecot cannot pass extra arguments, so the configuration comes from
``--config``, else the environment variable ``MAILROUTER_CONFIG`` (Dovecot:
``import_environment = MAILROUTER_CONFIG=/etc/mailrouter/mailrouter.toml``), else
``/etc/mailrouter/mailrouter.toml``.  Taking a path from the environment is safe
here: this program has no privileges of its own, so whoever sets the variable
only fools themselves.  The config and its password file must be readable by
the user the server runs this as (``dovecot``).

Input:
    fd 3   ``LOGIN\\0PASSWORD\\0`` then anything (a timestamp, or Dovecot's empty
           field).  The protocol's limit is 512 bytes; up to 65536 are read, so
           that an over-long login or password is a plain refusal; more is misuse.
    ``AUTHORIZED=1`` (environment, Dovecot userdb lookups and passdb lookups with
           no password): check that the user exists and is active, do not check
           the password, and set ``AUTHORIZED=2`` before the exec, as Dovecot asks.

On success it execs ``PROG ARG...`` with these variables set:
    ``USER``         the canonical login ``local@domain``
    ``HOME``         the user's directory: the parent of the Maildir given by
                     ``spool.maildir_template`` (created by the server as needed)
    ``userdb_uid``, ``userdb_gid``  the storage account (or per-user ids)
    ``userdb_mail``  Dovecot mail location, in the user's format
                     (``mailMessageFormat``, else ``spool.format``):
                     ``mbox:~/mail:INBOX=<mbox path>`` (folders in ``~/mail``) or
                     ``maildir:<Maildir path>`` (Maildir++ folders inside it),
                     the paths delivery writes (the spool templates)
    ``EXTRA``        ``userdb_uid userdb_gid userdb_mail`` (checkpassword-reply
                     passes exactly these on to Dovecot)
Nothing is written to stdout or stderr.

Exit codes (checkpassword convention):
    1    refused: unknown user, wrong or empty password, disabled account,
         non-canonical login -- all the same on purpose
    2    misuse: no PROG, ``--config`` without a path, fd 3 missing, malformed
         or longer than 65536 bytes
    111  temporary: LDAP down or slow, bad configuration, the exec failed, any
         unexpected error (``mailrouter.cmd.guard``)
"""

from __future__ import annotations

import os

from mailrouter import auth
from mailrouter.cmd.fdread import read_at_most
from mailrouter.config import Config, load
from mailrouter.directory import User
from mailrouter.errors import InvalidName, Misuse, TemporaryFailure
from mailrouter.exitcodes import CHECKPASSWORD_MISUSE, CHECKPASSWORD_REFUSED, CHECKPASSWORD_TEMPFAIL
from mailrouter.mailbox import spool

INPUT_FD = 3
# The protocol says "at most 512 bytes", but a client may send a longer login
# and password and Dovecot passes them on: that is a refusal (exit 1, via the
# core's limits), like a wrong password, not a protocol error.  Only beyond
# this (the limit of mailrouter-authd's requests too) is the caller broken.
MAX_INPUT = 65536
CONFIG_ENV = "MAILROUTER_CONFIG"


def read_request(fd: int = INPUT_FD) -> tuple[bytes, bytes]:
    """``(login, password)`` from the checkpassword descriptor."""
    try:
        data = read_at_most(fd, MAX_INPUT)
        os.close(fd)
    except OSError as exc:
        raise Misuse(f"cannot read fd {fd}: {exc.strerror}") from exc
    if len(data) > MAX_INPUT:
        raise Misuse(f"more than {MAX_INPUT} bytes on fd 3")
    fields = data.split(b"\0")
    if len(fields) < 3:
        raise Misuse("fd 3 needs LOGIN\\0PASSWORD\\0")
    return fields[0], fields[1]


def user_environment(config: Config, user: User) -> dict[str, str]:
    """The variables handed to PROG for an authenticated ``user``."""
    uid, gid = spool.storage_ids(user.uid_number, user.gid_number, config.spool, who=user.address)
    try:
        home = spool.imap_home(config.spool, user.local, user.domain)
        path, mailbox_format = spool.user_mailbox(user.local, user.domain, user.mailbox_format, config.spool)
        # "~/mail" with HOME = imap_home is spool.mbox_folders (what the admin tools check).
        mail = f"maildir:{path}" if mailbox_format == "maildir" else f"mbox:~/mail:INBOX={path}"
    except InvalidName as exc:  # cannot happen for a canonical name; still not "bad password"
        raise TemporaryFailure(str(exc)) from exc
    return {
        "USER": user.address,
        "HOME": home,
        "userdb_uid": str(uid),
        "userdb_gid": str(gid),
        "userdb_mail": mail,
        "EXTRA": "userdb_uid userdb_gid userdb_mail",
    }


def main(argv: list[str]) -> int:
    config_path = os.environ.get(CONFIG_ENV) or None
    if argv[:1] == ["--config"]:
        if len(argv) < 2:
            return CHECKPASSWORD_MISUSE
        config_path, argv = argv[1], argv[2:]
    if not argv:
        return CHECKPASSWORD_MISUSE
    try:
        login, password = read_request()
    except Misuse:
        return CHECKPASSWORD_MISUSE
    try:
        config = load(config_path)
    except TemporaryFailure:
        return CHECKPASSWORD_TEMPFAIL
    authorized = os.environ.get("AUTHORIZED") == "1"
    if authorized:
        try:
            login_text = login.decode("utf-8")
        except UnicodeDecodeError:
            return CHECKPASSWORD_REFUSED
        result = auth.lookup(config, login_text)
    else:
        result = auth.authenticate_raw(config, login, password)
    if result.verdict is auth.Verdict.TEMPORARY:
        return CHECKPASSWORD_TEMPFAIL
    if result.verdict is not auth.Verdict.OK or result.user is None:
        return CHECKPASSWORD_REFUSED
    try:
        environment = user_environment(config, result.user)
    except TemporaryFailure:
        return CHECKPASSWORD_TEMPFAIL
    os.environ.update(environment)
    if authorized:
        os.environ["AUTHORIZED"] = "2"
    try:
        # execvp, like qmail's checkpassword: PROG may be a bare name found on PATH.
        os.execvp(argv[0], argv)  # noqa: S606 - exec without a shell is the point
    except OSError:
        return CHECKPASSWORD_TEMPFAIL
    return CHECKPASSWORD_TEMPFAIL  # not reached: execv does not return
