"""mailrouter-passwd -- a user changes their own mail password.

Usage::

    mailrouter-passwd [--config CONF] [--login LOCAL@DOMAIN]
                      [--old-password-file FILE] [--new-password-file FILE]

``--config`` defaults to ``$MAILROUTER_CONFIG``, else ``/etc/mailrouter/mailrouter.toml``.

Passwords are never taken from argv (every local user can read a command
line).  Without ``--old-password-file``/``--new-password-file`` the tool prompts
on the terminal (the new password twice); ``FILE`` may be ``-`` for stdin (one
password per line; only the trailing newline is removed).  The login is
prompted for when ``--login`` is not given; only the canonical lower-case
``local@domain`` is accepted.

What it does: binds to LDAP *as the user* with the old password (DN built from
the login with escaped RDNs), hashes the new password with the configured
``auth.password_scheme`` (passlib: ``{ARGON2}``, ``{CRYPT}`` SHA-512 or
``{SSHA}``) and replaces ``userPassword`` with the hash under the user's own
bind (the ACL's ``by self =wx``), then records the scheme in
``mailPasswordScheme`` (for the rehash on login, ``mailrouter.auth``).
Cleartext is never written.  No service
account is used, so the service password file need not be readable: only
``ldap.uris``, ``ldap.base_dn``, the timeouts and ``auth.password_scheme`` are
read from the configuration.

Output: one line on stdout on success, one line on stderr otherwise.

Exit codes:
    0   password changed
    1   refused: wrong old password, unknown or non-canonical login, slapd
        refused the write
    2   misuse: bad arguments, a password file that cannot be read, a new
        password shorter than 8 characters, longer than 1024 bytes, with control
        characters, equal to the old one, or the two entries differ; input
        ended or interrupted at a prompt
    75  temporary: LDAP down or slow, bad configuration; also when the change
        was sent but no answer came back (the message says so: it may have
        been applied, try the new password before trying again)
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TextIO

from mailrouter import auth, names, passwords
from mailrouter.config import Config, load
from mailrouter.directory import MODIFY_REPLACE, Session, user_dn
from mailrouter.errors import InvalidName, LdapRefused, Misuse, TemporaryFailure, WriteOutcomeUnknown
from mailrouter.exitcodes import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_USAGE

MIN_PASSWORD_LENGTH = 8
# An interactive tool, run by the user: the config may come from the environment
# (``eval "$(mailrouter-sandbox env --dir D)"`` sets it).  Hooks never do this.
CONFIG_ENV = "MAILROUTER_CONFIG"


def _read_secret_line(source: str, stdin: TextIO) -> str:
    if source == "-":
        line = stdin.readline()
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                line = handle.readline()
        except OSError as exc:
            raise Misuse(f"cannot read {source}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise Misuse(f"{source} is not UTF-8") from exc
    return line[:-1] if line.endswith("\n") else line


def check_new_password(new: str, old: str) -> None:
    if len(new) < MIN_PASSWORD_LENGTH:
        raise Misuse(f"the new password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(new.encode("utf-8", "surrogatepass")) > auth.MAX_PASSWORD_BYTES:
        raise Misuse(f"the new password is longer than {auth.MAX_PASSWORD_BYTES} bytes")
    if "\x00" in new or not new.isprintable():
        raise Misuse("the new password contains control characters")
    if new == old:
        raise Misuse("the new password equals the old one")


def _stamp(session: Session, dn: str, label: str) -> None:
    """Record the new hash's scheme (``mailPasswordScheme``); the password is
    changed already, so a failure here only means one rehash at the next login."""
    try:
        session.stamp_password_scheme(dn, label)
    except (LdapRefused, TemporaryFailure):
        pass


def change_password(config: Config, login: str, old: str, new: str) -> int:
    """Exit code of one change; the password checks come first, then LDAP."""
    try:
        local, domain = names.address(login)
    except InvalidName:
        return EX_REFUSED
    check_new_password(new, old)
    new_hash = passwords.configured_hash(new, config.auth)
    dn = user_dn(local, domain, config.ldap.base_dn)
    try:
        # Bound as the user: only the ACL's "by self =wx" lets this through.
        with Session(config.ldap, dn, old) as session:
            session.modify(dn, {"userPassword": (MODIFY_REPLACE, [new_hash])})
            _stamp(session, dn, passwords.configured_label(config.auth))
    except LdapRefused:  # 49: wrong old password or unknown user; 50: not allowed
        return EX_REFUSED
    except WriteOutcomeUnknown:
        raise  # not a plain "try again later": main says what happened
    except TemporaryFailure:
        return EX_TEMPFAIL
    return EX_OK


def main(argv: list[str], stdin: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    parser = argparse.ArgumentParser(prog="mailrouter-passwd", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV) or None,
                        help=f"the TOML config (default ${CONFIG_ENV}, else /etc/mailrouter/mailrouter.toml)")
    parser.add_argument("--login", default=None)
    parser.add_argument("--old-password-file", default=None, metavar="FILE")
    parser.add_argument("--new-password-file", default=None, metavar="FILE")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (argparse said why)
        return EX_OK if exc.code == 0 else EX_USAGE
    try:
        config = load(args.config)  # never reads the service secret: it only binds as the user
    except TemporaryFailure as exc:
        print(f"mailrouter-passwd: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        login = args.login if args.login is not None else input("Login (local@domain): ").strip()
        if args.old_password_file:
            old = _read_secret_line(args.old_password_file, stdin)
        else:
            old = getpass.getpass("Current password: ")
        if args.new_password_file:
            new = _read_secret_line(args.new_password_file, stdin)
        else:
            new = getpass.getpass("New password: ")
            if getpass.getpass("New password again: ") != new:
                raise Misuse("the two new passwords differ")
        code = change_password(config, login, old, new)
    except Misuse as exc:
        print(f"mailrouter-passwd: {exc}", file=sys.stderr)
        return EX_USAGE
    except (EOFError, KeyboardInterrupt):
        print("mailrouter-passwd: aborted", file=sys.stderr)
        return EX_USAGE
    except WriteOutcomeUnknown:
        print(
            "mailrouter-passwd: the change was sent but no answer came back: it may have been"
            " applied; try the new password before trying again",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    messages = {
        EX_OK: "password changed",
        EX_REFUSED: "refused: wrong login or password",
        EX_TEMPFAIL: "the directory is unavailable; try again later",
    }
    print(f"mailrouter-passwd: {messages[code]}", file=sys.stdout if code == EX_OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
