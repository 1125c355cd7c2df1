"""mailrouter-userdb -- the user records that let stock popa3d find the storage account.

Usage (from ``systemd/mailrouter-userdb.service``, run by its timer, as root)::

    mailrouter-userdb [--config CONF] DIR

Why: after PAM said yes (``mailrouter-pam-auth``), popa3d calls
``getpwnam("local@domain")`` for the uid/gid to run as.  The PAM helper writes
the record of each user who logs in, at that login (``--userdb``); this
program is the sweeper behind it: it brings ``DIR`` (``/etc/userdb`` in
production) in line with LDAP -- one systemd JSON user record
``DIR/local@domain.user`` per active, canonically named user (the format and
the rules: ``mailrouter.userrecords``), with the storage ids (or the per-user
ids with ``spool.per_user_ids``) -- and removes the records of ours whose user
is gone or disabled; other files in DIR are never touched.  A user whose ids
are unusable gets no record (no POP3), the others still do.

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
import sys

from mailrouter import names, userrecords
from mailrouter.config import Config, load
from mailrouter.directory import Directory, values
from mailrouter.errors import TemporaryFailure
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL, EX_USAGE


def userdb_records(config: Config, directory: Directory) -> dict[str, userrecords.Record]:
    """login -> systemd JSON user record, for every active, canonically named user."""
    records: dict[str, userrecords.Record] = {}
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
                    record = userrecords.record(config, user) if user is not None else None
                    if record is not None:
                        records[f"{local}@{domain}"] = record
    return records


def write_userdb(config: Config, target_dir: str) -> int:
    """Bring ``target_dir`` in line with LDAP; returns the number of records."""
    with Directory(config.ldap) as directory:
        records = userdb_records(config, directory)
    for login, record in records.items():
        userrecords.refresh(target_dir, login, record)
    userrecords.sweep(target_dir, set(records))
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
