"""The Argon2 cost as a setting, and how slapd is made to agree with it.

A configuration sets a non-default (and cheap) cost.  slapd is started from a
copy of the shipped ldap/ files whose ``moduleload argon2`` line is exactly what
the documented command prints for that configuration
(``python3 -m mailrouter.passwords --config FILE``).  Then every {ARGON2} hash
-- slapd's (Password Modify) and ours (the admin library) -- carries that cost,
both verify, the label our writers stamp names it, and the unknown-user dummy
work spends it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT, hook_config, needs_root, start_slapd
from dataset import Dataset
from mailrouter import auth, config, passwords
from mailrouter.directory import Directory, Session
from test_passwords import slapcat, stored

pytestmark = needs_root

COST = passwords.Argon2Cost(8192, 1, 2)
IN_HASH = f"$m={COST.memory_kib},t={COST.time},p={COST.parallelism}$"


def test_slapd_and_our_writers_and_the_dummy_work_share_the_setting(
    tmp_path: Path, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_path = hook_config(tmp_path / "conf" / "mailrouter.toml", dataset, ["ldap://127.0.0.1:1/"],
                            argon2_memory_kib=COST.memory_kib, argon2_time=COST.time,
                            argon2_parallelism=COST.parallelism)
    line = subprocess.run([str(BIN / "python"), "-m", "mailrouter.passwords", "--config", str(conf_path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert line == f"moduleload\targon2 m={COST.memory_kib} t={COST.time} p={COST.parallelism}"

    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "ldap", root / "ldap")
    shipped = (root / "ldap" / "slapd.conf").read_text()
    assert passwords.slapd_moduleload() in shipped  # the default is what ships
    (root / "ldap" / "slapd.conf").write_text(re.sub(r"(?m)^moduleload\s+argon2 .*$", line, shipped))
    server = start_slapd(tmp_path / "slapd", dataset, root=root)
    try:
        loaded = config.load(str(conf_path))
        ldap = config.LdapConfig(**{**loaded.ldap.__dict__, "uris": (server.uri,)})
        settings = config.Config(ldap=ldap, spool=loaded.spool, auth=loaded.auth, web=loaded.web)
        admin = dataset.account("global-admin")
        bob_dn = "uid=bob,dc=example.com," + dataset.base_dn
        carol_dn = "uid=carol,dc=example.org," + dataset.base_dn
        with Session(ldap, admin.dn, admin.password) as session:
            session.password_modify(bob_dn, "slapd-hashed-1")  # slapd hashes
            ours = passwords.configured_hash("we-hashed-1", settings.auth)
            session.modify(carol_dn, {"userPassword": ("replace", [ours])})
        hashes = slapcat(server)
        assert IN_HASH in stored(hashes[bob_dn.lower()]) and IN_HASH in stored(hashes[carol_dn.lower()])
        with Directory(ldap) as directory:
            assert directory.check_password(bob_dn, "slapd-hashed-1")
            assert directory.check_password(carol_dn, "we-hashed-1")
        assert passwords.configured_label(settings.auth) == "{ARGON2}m=8192,t=1,p=2"

        spent: list[str] = []
        real = passwords.dummy_work
        monkeypatch.setattr(passwords, "dummy_work",
                            lambda pw, cost=passwords.ARGON2: spent.append(real(pw, cost)))
        result = auth.authenticate(settings, "nobody@example.com", "some-password")
        assert result.verdict is auth.Verdict.REFUSED
        assert len(spent) == 1 and IN_HASH in spent[0]
    finally:
        server.stop()
