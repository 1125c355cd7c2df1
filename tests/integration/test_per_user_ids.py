"""Per-user ids (``spool.per_user_ids``): the system uid mail is stored as is a global admin's choice.

Issue 13.10: a domain admin who could write ``uidNumber``/``gidNumber`` chose the
uid deliveries run as.  Now slapd (``ldap/acl.conf`` rules 3-3e) lets a domain
admin add an account only with the storage account's ids -- what the admin
library writes -- and change no id at all; with per-user ids on, delivery
refuses those storage ids (below ``spool.min_uid``) and defers the mail until a
global admin gives the account its own uid.  Real slapd, the real admin
library, the shipped Exim config with the lookup and delivery hooks.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ldap3 import MODIFY_REPLACE, NONE, Connection, Server

from conftest import hook_config, hub_exim, needs_root, start_slapd
from dataset import Dataset
from mailrouter import config as config_module
from mailrouter import entries, passwords
from mailrouter.admin import users
from mailrouter.admin.session import AdminSession, resolve_login
from mailrouter.sandbox import demo
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd

pytestmark = needs_root

OWN_ID = 5000  # a uid/gid a global admin gives the account (>= spool.min_uid)
ROGUE_ID = 1000  # what a domain admin would like mail to be stored as
NEWBIE = "newbie@example.com"
NEWBIE_DN = "uid=newbie,dc=example.com,o=top"


@dataclass
class Hub:
    slapd: Slapd
    spool: Path
    config: Path
    exim: Exim
    data: demo.DemoDirectory

    def ldap_as(self, who: str) -> Connection:
        account = self.data.account(who)
        connection = Connection(Server(self.slapd.uri.rstrip("/"), get_info=NONE), user=account.dn,
                                password=account.password, raise_exceptions=False)
        assert connection.bind(), connection.result
        return connection


@pytest.fixture(scope="module")
def hub(dataset: Dataset) -> Iterator[Hub]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-ids-"))
    slapd: Slapd | None = None
    exim: Exim | None = None
    try:
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset)
        spool = workdir / "mail"
        spool.mkdir()
        spool.chmod(0o1777)  # per-user ids: each uid creates its own mailbox here
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool, per_user_ids=True)
        exim = hub_exim(workdir, config).prepare()
        yield Hub(slapd, spool, config, exim, dataset)
    finally:
        if exim is not None:
            exim.close()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def ids_of(hub: Hub, dn: str) -> tuple[str, str]:
    connection = hub.ldap_as("global-admin")
    try:
        connection.search(dn, "(objectClass=*)", "BASE", attributes=["uidNumber", "gidNumber"])
        attributes = connection.response[0]["raw_attributes"]
        return attributes["uidNumber"][0].decode(), attributes["gidNumber"][0].decode()
    finally:
        connection.unbind()


def test_only_a_global_admin_chooses_the_uid_mail_is_stored_as(hub: Hub) -> None:
    postmaster = hub.data.account("postmaster@example.com")
    assert postmaster.role == "domain-admin"
    config = config_module.load(str(hub.config))
    # A domain admin adds a user through the admin library: it works (storage ids) ...
    with AdminSession(config, resolve_login(config, postmaster.dn), postmaster.password) as session:
        assert users.add_user(session, NEWBIE, "newbie-Secret-1")["ok"]
    assert ids_of(hub, NEWBIE_DN) == ("8", "8")
    # ... but slapd refuses any other id from them, on a new entry or an existing one.
    admin = hub.ldap_as("postmaster@example.com")
    try:
        for attribute in ("uidNumber", "gidNumber"):
            admin.modify(NEWBIE_DN, {attribute: [(MODIFY_REPLACE, [str(ROGUE_ID)])]})
            assert admin.result["result"] == 50, (attribute, admin.result)
        rogue = entries.user_entry("rogue", "example.com", "o=top", password_hash=passwords.hash_password(
            "rogue-Secret-1", "ssha"), uid_number=ROGUE_ID, gid_number=ROGUE_ID, mailbox="/var/mail/rogue")
        admin.add(rogue.dn, attributes=rogue.attributes)
        assert admin.result["result"] == 50, admin.result
    finally:
        admin.unbind()
    assert ids_of(hub, NEWBIE_DN) == ("8", "8")

    # With per-user ids the storage ids a domain admin wrote are refused: the mail waits
    # (451 at RCPT, deferred in the queue), it is never stored as uid 8 nor bounced.
    assert hub.exim.address_test(NEWBIE).returncode == 1
    session = ["EHLO client.example", "MAIL FROM:<someone@remote.example>", f"RCPT TO:<{NEWBIE}>", "QUIT"]
    replies = [line for line in hub.exim.host_test(session).stdout.splitlines() if re.match(r"\d{3} ", line)]
    assert replies[3].startswith("451 "), replies
    queued = hub.exim.deliver("Subject: for newbie\n\nhello\n", NEWBIE, sender="someone@remote.example")
    assert queued.returncode == 0, queued.output
    assert f"== {NEWBIE}" in hub.exim.main_log() and "** " not in hub.exim.main_log()
    mailbox = hub.spool / NEWBIE
    assert not mailbox.exists()

    # A global admin gives the account its own ids: the queued message goes there.
    admin = hub.ldap_as("global-admin")
    try:
        admin.modify(NEWBIE_DN, {"uidNumber": [(MODIFY_REPLACE, [str(OWN_ID)])],
                                 "gidNumber": [(MODIFY_REPLACE, [str(OWN_ID)])]})
        assert admin.result["result"] == 0, admin.result
    finally:
        admin.unbind()
    assert hub.exim.queue_run("-qff").returncode == 0
    assert "Subject: for newbie" in mailbox.read_text()
    assert (mailbox.stat().st_uid, mailbox.stat().st_gid) == (OWN_ID, OWN_ID)
    assert os.stat(hub.spool).st_uid == 0  # nothing else changed hands
