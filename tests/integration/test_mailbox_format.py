"""Per-user mailbox format (``mailMessageFormat``, issue 19 item 1) through the real daemons.

A hub whose default (``spool.format``) is mbox: a user added with
``mailrouter-admin user add --format maildir`` gets Maildir from Exim's
routers and the delivery hook, the others keep their mbox; a garbled value
defers (451, the mail waits); the RCPT-time quota counts a Maildir's IMAP
folders; ``user format`` refuses while the old mailbox holds mail and switches
once it is empty, so a switch never strands mail in the old format.  Real
slapd with the project's schema and ACLs, the shipped Exim config with the
lookup and delivery hooks, ``bin/mailrouter-admin`` as a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ldap3 import MODIFY_DELETE, MODIFY_REPLACE, NONE, Connection, Server

from conftest import ROOT, VENV_ENV, hook_config, hub_exim, needs_root, start_slapd
from dataset import Dataset
from mailrouter import config as config_module
from mailrouter.sandbox import demo
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd, free_port
from mailrouter.sandbox.web import web_settings

pytestmark = needs_root

MAIL_GID = 8
POSTMASTER = "postmaster@example.com"


@dataclass
class Hub:
    slapd: Slapd
    spool: Path
    config: Path
    exim: Exim
    data: demo.DemoDirectory
    password_file: Path

    def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``bin/mailrouter-admin`` as the postmaster of example.com (a domain admin)."""
        command = [str(ROOT / "bin" / "mailrouter-admin"), "--config", str(self.config),
                   "--bind-dn", POSTMASTER, "--password-file", str(self.password_file), *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, **VENV_ENV})

    def ldap_as(self, who: str) -> Connection:
        account = self.data.account(who)
        connection = Connection(Server(self.slapd.uri.rstrip("/"), get_info=NONE), user=account.dn,
                                password=account.password, raise_exceptions=False)
        assert connection.bind(), connection.result
        return connection

    def stored_format(self, local: str) -> list[str]:
        connection = self.ldap_as("global-admin")
        try:
            connection.search(f"uid={local},dc=example.com,o=top", "(objectClass=*)", "BASE",
                              attributes=["mailMessageFormat"])
            return [v.decode() for v in connection.response[0]["raw_attributes"].get("mailMessageFormat", [])]
        finally:
            connection.unbind()

    def set_raw_format(self, local: str, value: str | None) -> None:
        connection = self.ldap_as("global-admin")
        try:
            change = (MODIFY_REPLACE, [value]) if value else (MODIFY_DELETE, [])
            connection.modify(f"uid={local},dc=example.com,o=top", {"mailMessageFormat": [change]})
            assert connection.result["result"] in (0, 16), connection.result
        finally:
            connection.unbind()

    def mbox(self, local: str) -> Path:
        return self.spool / f"{local}@example.com"

    def maildir(self, local: str) -> Path:
        return self.spool / "example.com" / local / "Maildir"

    def send(self, local: str, subject: str) -> None:
        done = self.exim.deliver(f"Subject: {subject}\n\nbody of {subject}\n", f"{local}@example.com",
                                 sender="someone@remote.example")
        assert done.returncode == 0, done.output

    def rcpt_reply(self, local: str) -> str:
        session = ["EHLO client.example", "MAIL FROM:<someone@remote.example>",
                   f"RCPT TO:<{local}@example.com>", "QUIT"]
        output = self.exim.host_test(session).stdout
        replies = [line for line in output.splitlines() if re.match(r"\d{3} ", line)]
        return replies[3]


def maildir_messages(box: Path) -> list[bytes]:
    return [p.read_bytes() for sub in ("new", "cur") if (box / sub).is_dir()
            for p in sorted((box / sub).iterdir())]


@pytest.fixture(scope="module")
def hub(dataset: Dataset) -> Iterator[Hub]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-format-"))
    slapd: Slapd | None = None
    exim: Exim | None = None
    try:
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset)
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)  # as Debian's /var/mail
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool,
                             maildir_template=f"{spool}/{{domain}}/{{local}}/Maildir",
                             web=web_settings(workdir, free_port(), None, None))
        exim = hub_exim(workdir, config).prepare()
        password_file = workdir / "postmaster.secret"
        password_file.write_text(dataset.account(POSTMASTER).password + "\n")
        password_file.chmod(0o600)
        yield Hub(slapd, spool, config, exim, dataset, password_file)
    finally:
        if exim is not None:
            exim.close()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def add_user(hub: Hub, local: str, *options: str) -> None:
    done = hub.admin("user", "add", f"{local}@example.com", "--no-password", *options)
    assert done.returncode == 0, done


def test_maildir_user_beside_mbox_users(hub: Hub) -> None:
    add_user(hub, "mdnew", "--format", "maildir")
    assert hub.stored_format("mdnew") == ["maildir"]
    add_user(hub, "mbnew")  # no --format: nothing stored, the hub's default (mbox) applies
    assert hub.stored_format("mbnew") == []
    hub.send("mdnew", "to the maildir user")
    hub.send("mbnew", "to the mbox user")
    stored = maildir_messages(hub.maildir("mdnew"))
    assert len(stored) == 1 and b"Subject: to the maildir user" in stored[0]
    assert not stored[0].startswith(b"From ")  # Maildir keeps no From_ line
    assert not hub.mbox("mdnew").exists()
    assert b"Subject: to the mbox user" in hub.mbox("mbnew").read_bytes()
    assert hub.mbox("mbnew").read_bytes().startswith(b"From someone@remote.example ")
    assert not hub.maildir("mbnew").exists()
    # The admin tools show what delivery does.
    shown = json.loads(hub.admin("--json", "user", "show", "mdnew@example.com").stdout)
    assert (shown["mailbox_format"], shown["mailbox"], shown["mail_message_format"]) == (
        "maildir", str(hub.maildir("mdnew")), "maildir")
    assert shown["quota"]["used_bytes"] == len(stored[0])
    rows = json.loads(hub.admin("--json", "user", "list", "example.com", "--contains", "new").stdout)
    assert {row["address"]: row["format"] for row in rows} == {
        "mbnew@example.com": "mbox", "mdnew@example.com": "maildir"}


def test_garbled_format_defers_until_fixed(hub: Hub) -> None:
    add_user(hub, "badformat")
    hub.set_raw_format("badformat", "mh")
    assert hub.exim.address_test("garbled@example.com").returncode == 1  # deferred, not undeliverable
    assert hub.rcpt_reply("badformat").startswith("451 ")
    hub.set_raw_format("badformat", "MailDir")  # any case, as the attribute's matching rule
    assert hub.rcpt_reply("badformat").startswith("250 ")
    hub.send("badformat", "after the fix")
    assert len(maildir_messages(hub.maildir("badformat"))) == 1


def test_maildir_quota_counts_imap_folders(hub: Hub) -> None:
    """Mail moved to an IMAP folder (Dovecot's Maildir++ ``.Trash``) still uses quota:
    the delivery (the authority; the SMTP-time check cannot read a Maildir, 0700
    of the storage account) defers, the message waits in the queue."""
    add_user(hub, "folders", "--format", "maildir", "--quota", "10K")
    hub.send("folders", "first")
    assert len(maildir_messages(hub.maildir("folders"))) == 1
    trash = hub.maildir("folders") / ".Trash" / "cur"
    trash.mkdir(parents=True)
    (trash / "1.M1P1.host,S=12000:2,S").write_bytes(b"x")  # Dovecot's name carries the size
    os.chown(trash.parent, 8, MAIL_GID)
    os.chown(trash, 8, MAIL_GID)
    shown = json.loads(hub.admin("--json", "user", "show", "folders@example.com").stdout)
    assert shown["quota"]["used_bytes"] > 12000
    hub.send("folders", "second")
    assert len(maildir_messages(hub.maildir("folders"))) == 1
    log = hub.exim.main_log()
    assert "== folders@example.com" in log and "** folders@example.com" not in log, log


def test_switch_refused_while_old_mailbox_holds_mail(hub: Hub) -> None:
    add_user(hub, "switcher")
    hub.send("switcher", "kept in mbox")
    before = hub.mbox("switcher").read_bytes()
    refused = hub.admin("user", "format", "switcher@example.com", "maildir")
    assert refused.returncode == 1, refused
    assert "holds" in refused.stderr and str(hub.mbox("switcher")) in refused.stderr, refused.stderr
    assert hub.stored_format("switcher") == []  # nothing written
    hub.send("switcher", "still mbox")
    after = hub.mbox("switcher").read_bytes()
    assert after.startswith(before) and b"Subject: still mbox" in after
    assert not hub.maildir("switcher").exists()

    # An mbox user's IMAP folders count as mail too.
    os.truncate(hub.mbox("switcher"), 0)  # what POP3 leaves after DELE of everything
    folders = hub.spool / "example.com" / "switcher" / "mail"
    folders.mkdir(parents=True)
    (folders / "Sent").write_bytes(b"From a@b Tue Nov 24 20:40:45 2026\nSubject: sent\n\nx\n\n")
    refused = hub.admin("user", "format", "switcher@example.com", "maildir")
    assert refused.returncode == 1 and "Sent" in refused.stderr, refused
    # Emptied (a client keeps the folder, empty), beside Dovecot's own files: that is no mail.
    (folders / "Sent").write_bytes(b"")
    (folders / ".imap" / "INBOX").mkdir(parents=True)
    (folders / ".imap" / "INBOX" / "dovecot.index.log").write_bytes(b"i" * 100)
    (folders / ".subscriptions").write_bytes(b"Sent\n")
    done = hub.admin("user", "format", "switcher@example.com", "maildir")
    assert done.returncode == 0, done
    assert hub.stored_format("switcher") == ["maildir"]


def test_switch_of_an_empty_mailbox_moves_delivery(hub: Hub) -> None:
    add_user(hub, "mover")
    hub.send("mover", "read and deleted")
    os.truncate(hub.mbox("mover"), 0)
    done = hub.admin("--json", "user", "format", "mover@example.com", "maildir")
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["changed"] is True
    assert hub.stored_format("mover") == ["maildir"]
    hub.send("mover", "now maildir")
    assert hub.mbox("mover").stat().st_size == 0
    stored = maildir_messages(hub.maildir("mover"))
    assert len(stored) == 1 and b"Subject: now maildir" in stored[0]
    # And back: refused now that the Maildir holds mail; the same value again changes nothing.
    refused = hub.admin("user", "format", "mover@example.com", "mbox")
    assert refused.returncode == 1 and "maildir mailbox" in refused.stderr, refused
    again = hub.admin("--json", "user", "format", "mover@example.com", "maildir")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again


def test_api_chooses_and_switches_the_format(hub: Hub) -> None:
    """The web's JSON API (the same admin library, bound as the postmaster): POST a Maildir
    user, 422 for a format that is none, 409 for a switch while the Maildir holds mail."""
    from mailrouter.admin.web import create_app

    client = create_app(config_module.load(str(hub.config))).test_client()
    token = base64.b64encode(f"{POSTMASTER}:{hub.data.account(POSTMASTER).password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    base = "/api/v1/domains/example.com/users"

    def call(method: str, path: str, body: dict[str, str]) -> Any:
        return client.open(path, method=method, base_url="https://localhost", headers=headers, json=body)

    bad = call("POST", base, {"local": "apibad", "password": "Api-User-Pass-1", "format": "mh"})
    assert bad.status_code == 422 and "format" in bad.get_json()["fields"], bad.get_json()
    made = call("POST", base, {"local": "apiuser", "password": "Api-User-Pass-1", "format": "maildir"})
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["mailbox_format"] == "maildir"
    hub.send("apiuser", "over the api")
    assert len(maildir_messages(hub.maildir("apiuser"))) == 1
    refused = call("PATCH", f"{base}/apiuser", {"format": "mbox", "quota": "5M"})
    assert refused.status_code == 409, refused.get_json()
    assert hub.stored_format("apiuser") == ["maildir"]
    assert call("GET", f"{base}/apiuser", {}).get_json()["quota"]["limit"] != "5M"  # nothing else written
    for sub in ("new", "cur"):
        for entry in (hub.maildir("apiuser") / sub).iterdir():
            entry.unlink()
    switched = call("PATCH", f"{base}/apiuser", {"format": "mbox"})
    assert switched.status_code == 200, switched.get_json()
    assert switched.get_json()["mailbox_format"] == "mbox"
    hub.send("apiuser", "back in mbox")
    assert b"Subject: back in mbox" in hub.mbox("apiuser").read_bytes()


def test_user_page_switches_the_format(hub: Hub) -> None:
    """The user page's "Switch format" form: refused (409, the reason on the page) while the
    mbox holds mail; once it is empty, the switch and a redirect to the user page."""
    from mailrouter.admin.web import create_app

    client = create_app(config_module.load(str(hub.config))).test_client()
    https = "https://localhost"
    token = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')

    def post(path: str, form: dict[str, str]) -> Any:
        page = client.get(path if path == "/login" else "/domains/example.com/users/pageuser", base_url=https)
        found = token.search(page.get_data(as_text=True))
        assert found, page.get_data(as_text=True)[:300]
        return client.post(path, data={**form, "csrf_token": found.group(1)}, base_url=https,
                           headers={"Referer": f"{https}/"})

    login = post("/login", {"login": POSTMASTER, "password": hub.data.account(POSTMASTER).password})
    assert login.status_code == 302
    add_user(hub, "pageuser")
    hub.send("pageuser", "keeps the mbox busy")
    refused = post("/domains/example.com/users/pageuser/format", {"format": "maildir"})
    assert refused.status_code == 409, refused.status_code
    assert "holds" in refused.get_data(as_text=True)
    os.truncate(hub.mbox("pageuser"), 0)
    done = post("/domains/example.com/users/pageuser/format", {"format": "maildir"})
    assert done.status_code == 302 and done.headers["Location"].endswith("/users/pageuser"), done.status_code
    assert hub.stored_format("pageuser") == ["maildir"]
    shown = client.get("/domains/example.com/users/pageuser", base_url=https).get_data(as_text=True)
    assert 'id="format">maildir<' in shown
