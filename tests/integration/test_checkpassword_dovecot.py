"""Real Dovecot 2.3 IMAP logins through ``mailrouter-checkpassword``.

Dovecot runs fully private (``dovecot -F -c FILE``: its own base_dir, state_dir,
log, IMAPS on a free loopback port with a throwaway certificate) with
``passdb checkpassword`` + ``userdb prefetch``, as a deployment would.  Its auth
process runs our checkpassword as user ``dovecot``; the mailbox is an mbox under
a private spool owned by the storage account ``mail`` (uid 8).
"""

from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import alice, hook_config, needs_root
from dataset import Dataset
from dovecot_support import Dovecot, is_24
from mailrouter.sandbox import tls
from mailrouter.sandbox.slapd import Slapd, free_port

pytestmark = [
    needs_root,
    pytest.mark.skipif(not os.path.exists("/usr/sbin/dovecot"), reason="dovecot-imapd not installed"),
    # Dovecot 2.4 has no checkpassword passdb: test_dovecot_imap.py runs its config.
    pytest.mark.skipif(is_24(), reason="Dovecot 2.4: no checkpassword (see test_dovecot_imap.py)"),
]

MAIL_UID = MAIL_GID = 8
MESSAGE = (
    b"From sender@example.net Tue Nov 24 20:40:45 2026\n"
    b"From: sender@example.net\n"
    b"To: alice@example.com\n"
    b"Subject: imap test\n"
    b"\n"
    b"Hello over IMAP.\n"
    b"\n"
)

@pytest.fixture(scope="module")
def dovecot(slapd: Slapd, dataset: Dataset) -> Iterator[Dovecot]:
    # World-traversable (not pytest's 0700 tmp): the auth process runs our
    # checkpassword as "dovecot" and mail processes run as "mail".
    work = Path(tempfile.mkdtemp(prefix="mailrouter-dovecot-"))
    try:
        work.chmod(0o755)
        spool = work / "mail"
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)
        conf = hook_config(
            work / "conf" / "mailrouter.toml", dataset, [slapd.uri], spool,
            maildir_template=f"{spool}/{{domain}}/{{local}}/Maildir",
            group="dovecot",  # the secret: 0640 root:dovecot, for checkpassword run as dovecot
        )
        (work / "conf").chmod(0o755)
        mailbox = spool / "alice@example.com"
        mailbox.write_bytes(MESSAGE)
        os.chown(mailbox, MAIL_UID, MAIL_GID)
        mailbox.chmod(0o600)
        server = Dovecot(work, conf, slapd.uri, spool, tls.make_certificates(work / "tls"))
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def imap(dovecot: Dovecot) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(dovecot.certificates.ca_cert))
    return imaplib.IMAP4_SSL("localhost", dovecot.port, ssl_context=context, timeout=30)


def test_imap_login_reads_inbox(dovecot: Dovecot, dataset: Dataset) -> None:
    client = imap(dovecot)
    try:
        typ, _ = client.login("alice@example.com", alice(dataset).password)
        assert typ == "OK", dovecot.log()
        typ, data = client.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"]), dovecot.log()
        typ, fetched = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        assert b"Hello over IMAP." in fetched[0][1]
    finally:
        client.logout()


@pytest.mark.parametrize(
    "login, password",
    [
        ("alice@example.com", "wrong password"),
        ("nobody@example.com", "whatever-password"),
        ("ALICE@example.com", None),
        ("../alice@example.com", None),
    ],
)
def test_imap_refusals(
    dovecot: Dovecot, dataset: Dataset, login: str, password: str | None
) -> None:
    client = imap(dovecot)
    try:
        with pytest.raises(imaplib.IMAP4.error) as refused:
            client.login(login, password or alice(dataset).password)
        assert b"AUTHENTICATIONFAILED" in str(refused.value).encode()
    finally:
        client.shutdown()


def test_imap_ldap_down_is_temporary(dovecot: Dovecot, dataset: Dataset) -> None:
    """Same Dovecot, its config re-pointed at a dead LDAP: UNAVAILABLE, not a bad password."""
    conf = dovecot.work / "conf" / "mailrouter.toml"
    original = conf.read_text()
    dead = f"ldap://127.0.0.1:{free_port()}/"
    conf.write_text(original.replace(original.split("uris = ")[1].split("\n")[0], f'["{dead}"]'))
    try:
        client = imap(dovecot)
        try:
            with pytest.raises(imaplib.IMAP4.error) as failed:
                client.login("alice@example.com", alice(dataset).password)
            message = str(failed.value)
            assert "UNAVAILABLE" in message or "Temporary" in message, message
        finally:
            client.shutdown()
    finally:
        conf.write_text(original)
