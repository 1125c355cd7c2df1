"""IMAP in the sandbox (issue 19 item 2): Dovecot over the very files the delivery hook writes.

The hub is started as an admin starts it (``bin/mailrouter-sandbox up``) and stopped
with ``down``.  Python's imaplib over TLS (IMAPS, and STARTTLS on the IMAP port)
logs in through ``mailrouter-checkpassword``, lists, fetches, flags \\Deleted and
expunges -- on an mbox user and on a Maildir user added with ``mailrouter-admin
user add --format maildir`` -- while Exim keeps delivering to the same mailbox.
Then POP3 (popa3d) and IMAP work on one mbox user at the same time as deliveries:
the locks (dotlock + fcntl, ``dovecot/mailrouter.conf``) keep the file whole, every
message is there exactly once unless a client deleted it.
"""

from __future__ import annotations

import imaplib
import json
import mailbox
import os
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, VENV_ENV, needs_root
from mailrouter.sandbox.dovecot import is_24

pytestmark = [
    needs_root,
    pytest.mark.slow,  # a whole hub
    pytest.mark.skipif(not os.path.exists("/usr/sbin/dovecot"), reason="dovecot-imapd not installed"),
]

SANDBOX = str(ROOT / "bin" / "mailrouter-sandbox")
ENV = {**os.environ, **VENV_ENV}
MAILDIR_USER = "mira@example.com"
MAILDIR_PASSWORD = "mira-Secret-imap-1"
DEADLINE = 90.0


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOX, *args], capture_output=True, text=True, timeout=180, check=False, env=ENV)


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    done = sandbox("up")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    try:
        secret = Path(info["dir"]) / "mira.secret"
        secret.write_text(MAILDIR_PASSWORD + "\n")
        secret.chmod(0o600)
        added = subprocess.run(
            [str(ROOT / "bin" / "mailrouter-admin"), "--config", info["config"],
             "--bind-dn", info["admin_dn"], "--password-file", str(Path(info["dir"]) / "admin.secret"),
             "user", "add", MAILDIR_USER, "--format", "maildir", "--new-password-file", str(secret)],
            capture_output=True, text=True, timeout=60, check=False, env=ENV,
        )
        assert added.returncode == 0, added
        yield info
    finally:
        down = sandbox("down", "--dir", info["dir"])
        assert down.returncode == 0, down.stderr


def password(info: dict[str, Any], address: str) -> str:
    if address == MAILDIR_USER:
        return MAILDIR_PASSWORD
    return str(next(a for a in info["accounts"] if a.get("address") == address)["password"])


def context(info: dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=info["ca_cert"])


def imaps(info: dict[str, Any], address: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(info["tls_host"], info["imaps_port"], ssl_context=context(info), timeout=60)
    client.login(address, password(info, address))
    return client


def send(info: dict[str, Any], to: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "sender@client.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(f"{subject}\nFrom somebody\nEND-{subject}\n")  # "From " in the body: mbox escaping
    with smtplib.SMTP("127.0.0.1", info["smtp_port"], local_hostname="client.example", timeout=60) as smtp:
        smtp.send_message(message)


def subjects(client: imaplib.IMAP4_SSL) -> dict[bytes, str]:
    """UID -> subject of every message in the selected mailbox."""
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    found = {}
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            assert uid is not None, item
            found[uid.group(1)] = item[1].decode().split(":", 1)[1].strip()
    return found


def inbox(client: imaplib.IMAP4_SSL) -> dict[bytes, str]:
    """Select INBOX again (Dovecot then sees what was delivered meanwhile); UID -> subject."""
    typ, count = client.select("INBOX")
    assert typ == "OK", count
    return subjects(client) if int(count[0] or 0) else {}


def wait_for(client: imaplib.IMAP4_SSL, wanted: set[str]) -> dict[bytes, str]:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = inbox(client)
        if wanted <= set(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


class Sender(threading.Thread):
    """Delivers ``names`` (subjects) to ``to`` over SMTP one after the other."""

    def __init__(self, info: dict[str, Any], to: str, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.info, self.to, self.names = info, to, names
        self.errors: list[str] = []
        self.start()

    def run(self) -> None:
        try:
            for name in self.names:
                send(self.info, self.to, name)
                time.sleep(0.1)
        except (OSError, smtplib.SMTPException) as exc:
            self.errors.append(repr(exc))


class RemoteIMAP4(imaplib.IMAP4):
    """IMAP from 127.0.0.2: Dovecot counts a connection from its own address as secure
    (plaintext LOGIN allowed), so a client that is not the server itself must come from elsewhere."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.2", 0))


def test_up_json_names_the_imap_ports(hub: dict[str, Any]) -> None:
    assert isinstance(hub["imap_port"], int) and isinstance(hub["imaps_port"], int)
    # IMAP on the plain port: no password before STARTTLS, then the same login works.
    client = RemoteIMAP4("127.0.0.1", hub["imap_port"], timeout=60)
    try:
        assert "LOGINDISABLED" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            client.login("alice@example.com", password(hub, "alice@example.com"))
        client.starttls(ssl_context=context(hub))
        assert client.login("alice@example.com", password(hub, "alice@example.com"))[0] == "OK"
    finally:
        client.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4_SSL(hub["tls_host"], hub["imaps_port"], ssl_context=context(hub), timeout=60).login(
            "alice@example.com", "wrong password")


# Dovecot 2.4 (Debian 13) has no checkpassword, which tells 2.3 each user's format:
# dovecot/mailrouter-2.4.conf serves one format per deployment (mbox, the default).
MAILDIR_NEEDS_23 = pytest.mark.skipif(
    is_24(), reason="Dovecot 2.4: mailrouter-2.4.conf serves one mailbox format (mbox), no per-user Maildir")


@pytest.mark.parametrize("address", ["dave@example.org", pytest.param(MAILDIR_USER, marks=MAILDIR_NEEDS_23)],
                         ids=["mbox", "maildir"])
def test_list_fetch_store_expunge_while_deliveries_run(hub: dict[str, Any], address: str) -> None:
    tag = uuid.uuid4().hex[:8]
    first = [f"{tag}-a{n}" for n in range(5)]
    later = [f"{tag}-b{n}" for n in range(10)]
    for name in first:
        send(hub, address, name)
    client = imaps(hub, address)
    try:
        typ, listed = client.list()
        assert typ == "OK" and any(b"INBOX" in line for line in listed), listed
        found = wait_for(client, set(first))
        assert set(first) <= set(found.values()), found
        sender = Sender(hub, address, later)
        # Delete three of the first five while Exim appends the others.
        doomed = {uid: name for uid, name in found.items() if name in first[:3]}
        typ, _ = client.uid("STORE", b",".join(doomed).decode(), "+FLAGS.SILENT", "(\\Deleted)")
        assert typ == "OK"
        typ, expunged = client.expunge()
        assert typ == "OK" and len([e for e in expunged if e]) == 3, expunged
        sender.join(timeout=DEADLINE)
        assert not sender.errors
        expected = set(first[3:]) | set(later)
        found = wait_for(client, expected)
        names = [name for name in found.values() if name.startswith(tag)]
        assert sorted(names) == sorted(expected), (sorted(names), sorted(expected))
        # Every message whole (mbox keeps appendfile's ">From " escaping, as it always did).
        typ, data = client.uid("FETCH", b",".join(found).decode(), "(BODY.PEEK[TEXT])")
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        assert len(bodies) == len(found)
        assert all(re.search(rb"\n>?From somebody\r?\nEND-" + tag.encode(), b) for b in bodies), bodies
    finally:
        client.logout()
    store = Path(hub["spool_dir"])
    local, domain = address.split("@")
    if address == MAILDIR_USER:
        files = [p for sub in ("new", "cur") for p in (store / domain / local / "Maildir" / sub).iterdir()]
        assert len([f for f in files if tag.encode() in f.read_bytes()]) == len(expected)
        assert not (store / address).exists()
    else:
        box = mailbox.mbox(str(store / address), create=False)
        names = [str(m["subject"]) for m in box if str(m["subject"]).startswith(tag)]
        assert sorted(names) == sorted(expected)


def test_pop3_and_imap_on_one_mbox_during_deliveries(hub: dict[str, Any]) -> None:
    """popa3d and Dovecot take turns on bob's mbox while Exim appends: nothing torn, nothing twice."""
    address = "bob@example.com"
    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}-{n:02d}" for n in range(16)]
    popped: set[str] = set()  # deleted by a POP3 session whose QUIT said +OK
    expunged: set[str] = set()
    errors: list[str] = []
    pop3_failures: list[str] = []
    sender = Sender(hub, address, names)
    stop = threading.Event()

    def pop3_loop() -> None:
        while not stop.is_set():
            try:
                pop = poplib.POP3_SSL(hub["tls_host"], hub["pop3s_port"], context=context(hub), timeout=60)
                pop.user(address)
                pop.pass_(password(hub, address))
                mine = set()
                for number in range(1, len(pop.list()[1]) + 1):
                    lines = pop.retr(number)[1]
                    text = b"\n".join(lines).decode(errors="replace")
                    subject = re.search(r"^Subject: (\S+)$", text, re.M)
                    if subject and subject.group(1).startswith(tag):
                        name = subject.group(1)
                        if f"END-{name}" not in text:
                            errors.append(f"POP3 got a torn {name}")
                        if int(name[-2:]) % 2 == 0:  # POP3 takes the even ones
                            pop.dele(number)
                            mine.add(name)
                if pop.quit().startswith(b"+OK"):
                    popped.update(mine)
            except (poplib.error_proto, OSError) as exc:
                pop3_failures.append(repr(exc))  # a busy mailbox: try again (shown if the test fails)
            time.sleep(0.2)

    popper = threading.Thread(target=pop3_loop, daemon=True)
    popper.start()
    client = imaps(hub, address)
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = inbox(client)
            odd = [uid for uid, name in found.items() if name.startswith(tag) and int(name[-2:]) % 4 == 1]
            if odd:
                assert client.uid("STORE", b",".join(odd).decode(), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
                assert client.expunge()[0] == "OK"
                expunged.update(found[uid] for uid in odd)
            done = not sender.is_alive() and {n for n in names if int(n[-2:]) % 2 == 0} <= popped
            if done and {n for n in names if int(n[-2:]) % 4 == 1} <= expunged:
                break
            time.sleep(0.3)
    finally:
        stop.set()
        popper.join(timeout=DEADLINE)
        client.logout()
    assert not sender.errors and not errors, (sender.errors, errors, pop3_failures)
    box = mailbox.mbox(str(Path(hub["spool_dir"]) / address), create=False)
    left = [str(m["subject"]) for m in box if str(m["subject"]).startswith(tag)]
    assert len(left) == len(set(left)), left  # nothing twice
    assert set(left) == set(names) - popped - expunged, (sorted(left), sorted(popped), sorted(expunged))
    assert popped and expunged, pop3_failures
    for message in box:
        if str(message["subject"]).startswith(tag):
            assert f"END-{message['subject']}" in message.get_payload(), message.as_string()
