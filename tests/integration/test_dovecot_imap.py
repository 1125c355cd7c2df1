"""Real IMAPS logins through the shipped Dovecot config of the installed Dovecot.

``dovecot_support`` picks the file by version: Dovecot 2.3 (Debian 12) runs
``dovecot/mailrouter.conf`` (``mailrouter-checkpassword``, the auth core), Dovecot
2.4 (Debian 13) ``dovecot/mailrouter-2.4.conf`` (Dovecot's LDAP passdb: the
user's DN built from the login, an authentication bind as it).  The same cases
hold for both: a login reads and FETCHes the INBOX the delivery hook writes;
every password scheme the project writes logs in; every refusal of the auth
core is a plain AUTHENTICATIONFAILED (also a disabled domain, and an account
slapd's ppolicy has locked); LDAP down is UNAVAILABLE, never a bad password.
The module has its own slapd (it locks an account).
"""

from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CASES, alice, hook_config, needs_root, refusal_cases, start_slapd
from dataset import Dataset
from dovecot_support import MAIL_GID, MAIL_UID, Dovecot, installed_version, is_24, shipped_config
from mailrouter import entries, passwords
from mailrouter.sandbox import tls
from mailrouter.sandbox.slapd import Slapd, free_port

pytestmark = [
    needs_root,
    pytest.mark.skipif(installed_version() is None, reason="dovecot-imapd not installed"),
]

BASE = "o=top"
MESSAGE = (
    b"From sender@example.net Tue Nov 24 20:40:45 2026\n"
    b"From: sender@example.net\n"
    b"To: alice@example.com\n"
    b"Subject: imap test\n"
    b"\n"
    b"Hello over IMAP.\n"
    b"\n"
)
CLOSED_DOMAIN = "closed.example"  # a domain with mailAccountStatus: disabled
CLOSED_LOGIN, CLOSED_PASSWORD = f"carol@{CLOSED_DOMAIN}", "closed-but-correct-1"
LOCKED_LOGIN, LOCKED_PASSWORD = "locky@example.com", "soon-locked-password-1"
# RDN characters ldap3 and Dovecot must escape alike: '+' starts a second RDN value.
ODD_LOGIN, ODD_PASSWORD = "tag+x=y@example.com", "odd-characters-password-1"
SCHEME_PASSWORD = "per-scheme-password-1"
# Every refusal of the auth core that an IMAP client can send (AUTHENTICATE PLAIN
# carries any octets but NUL, which separates its fields).
IMAP_REFUSALS = [case for case in CASES if case != "NUL in login"]


def _user(local: str, domain: str, password: str, scheme: str = "ssha") -> entries.Entry:
    return entries.user_entry(
        local, domain, BASE, password_hash=passwords.hash_password(password, scheme),
        uid_number=8, gid_number=8, mailbox=f"/var/mail/{local}@{domain}",
    )


def extra_entries() -> str:
    closed = entries.domain_entry(CLOSED_DOMAIN, BASE)
    closed.attributes["mailAccountStatus"] = ["disabled"]
    return entries.to_ldif([
        closed,
        _user("carol", CLOSED_DOMAIN, CLOSED_PASSWORD),
        _user("locky", "example.com", LOCKED_PASSWORD),
        _user("tag+x=y", "example.com", ODD_PASSWORD),
        *(_user(f"s-{scheme.replace('_', '-')}", "example.com", SCHEME_PASSWORD, scheme)
          for scheme in passwords.SCHEMES),
    ])


@dataclass
class World:
    work: Path
    slapd: Slapd
    spool: Path
    certificates: tls.Certificates

    def config(self, name: str, dataset: Dataset, uri: str) -> Path:
        """A mailrouter.toml in ``work/name`` for the LDAP at ``uri``."""
        path = hook_config(
            self.work / name / "mailrouter.toml", dataset, [uri], self.spool,
            maildir_template=f"{self.spool}/{{domain}}/{{local}}/Maildir",
            group="dovecot",  # 2.3: checkpassword runs as dovecot; 2.4 reads it as root
        )
        path.parent.chmod(0o755)
        return path

    def dovecot(self, name: str, dataset: Dataset, uri: str) -> Dovecot:
        """A private Dovecot in ``work/name`` with the shipped file, its LDAP at ``uri``."""
        (self.work / name).mkdir(mode=0o755)
        return Dovecot(self.work / name, self.config(f"{name}-conf", dataset, uri), uri, self.spool,
                       self.certificates)

    def ldapmodify_as_admin(self, dataset: Dataset, ldif: str) -> None:
        admin = dataset.account("global-admin")
        secret = self.work / "admin-secret"
        secret.write_text(admin.password)  # -y: the secret stays off the command line
        secret.chmod(0o600)
        done = subprocess.run(
            ["ldapmodify", "-x", "-H", self.slapd.uri, "-D", admin.dn, "-y", str(secret)],
            input=ldif, capture_output=True, text=True, check=False, timeout=60,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def world(dataset: Dataset) -> Iterator[World]:
    # World-traversable (not pytest's 0700 tmp): Dovecot's auth process runs as
    # "dovecot" and its mail processes as "mail".
    work = Path(tempfile.mkdtemp(prefix="mailrouter-imap-"))
    slapd = None
    try:
        work.chmod(0o755)
        slapd = start_slapd(work / "slapd", dataset, extra_ldif=extra_entries())
        spool = work / "mail"
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)
        mailbox = spool / "alice@example.com"
        mailbox.write_bytes(MESSAGE)
        os.chown(mailbox, MAIL_UID, MAIL_GID)
        mailbox.chmod(0o600)
        yield World(work, slapd, spool, tls.make_certificates(work / "tls"))
    finally:
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(world: World, dataset: Dataset) -> Iterator[Dovecot]:
    server = world.dovecot("dovecot", dataset, world.slapd.uri)
    try:
        yield server
    finally:
        server.stop()


def connect(dovecot: Dovecot) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(dovecot.certificates.ca_cert))
    return imaplib.IMAP4_SSL("localhost", dovecot.port, ssl_context=context, timeout=30)


def plain(client: imaplib.IMAP4_SSL, login: str, password: str) -> str:
    """AUTHENTICATE PLAIN (any octets but NUL, unlike LOGIN's quoting); the tagged result."""
    token = b"\0" + login.encode("utf-8") + b"\0" + password.encode("utf-8")
    typ, _ = client.authenticate("PLAIN", lambda _challenge: token)
    return str(typ)


def logged_in(dovecot: Dovecot, login: str, password: str) -> imaplib.IMAP4_SSL:
    """A client authenticated as ``login`` (AUTHENTICATE PLAIN); Dovecot's log on failure."""
    client = connect(dovecot)
    try:
        assert plain(client, login, password) == "OK"
    except imaplib.IMAP4.error as exc:
        client.shutdown()
        pytest.fail(f"{login}: {exc}\n{dovecot.log()}")
    return client


def refused(dovecot: Dovecot, login: str, password: str) -> str:
    """The server's refusal text for a login that must fail."""
    client = connect(dovecot)
    try:
        with pytest.raises(imaplib.IMAP4.error) as failure:
            plain(client, login, password)
        return str(failure.value)
    finally:
        client.shutdown()


def test_the_shipped_file_matches_the_installed_dovecot() -> None:
    version = installed_version()
    assert version is not None
    name = shipped_config(version).name
    assert name == ("mailrouter-2.4.conf" if version >= (2, 4) else "mailrouter.conf")
    assert shipped_config((2, 3)).name == "mailrouter.conf"
    assert shipped_config((2, 4)).name == "mailrouter-2.4.conf"
    if is_24(version):  # 2.4 refuses a file that does not start with its version
        assert (shipped_config(version).read_text().split("\ndovecot_config_version = ")[1]
                .startswith("2.4"))


def test_login_selects_and_fetches_the_inbox(dovecot: Dovecot, dataset: Dataset) -> None:
    client = logged_in(dovecot, "alice@example.com", alice(dataset).password)
    try:
        typ, data = client.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"]), dovecot.log()
        typ, fetched = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        # the mbox's message without its From_ line and the blank line that ends
        # it in the mbox (the separator), in IMAP's CRLF
        expected = MESSAGE.split(b"\n", 1)[1].removesuffix(b"\n").replace(b"\n", b"\r\n")
        assert fetched[0][1] == expected, fetched
    finally:
        client.logout()


@pytest.mark.parametrize("scheme", passwords.SCHEMES)
def test_every_scheme_we_write_logs_in(dovecot: Dovecot, scheme: str) -> None:
    client = logged_in(dovecot, f"s-{scheme.replace('_', '-')}@example.com", SCHEME_PASSWORD)
    try:
        typ, data = client.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"0"]), dovecot.log()
    finally:
        client.logout()


def test_a_login_with_rdn_special_characters(dovecot: Dovecot) -> None:
    logged_in(dovecot, ODD_LOGIN, ODD_PASSWORD).logout()
    assert "AUTHENTICATIONFAILED" in refused(dovecot, ODD_LOGIN, ODD_PASSWORD + "x")


# Logins a DN template or search base could trip over: each must be a plain refusal.
ODD_SHAPES = {
    "empty domain": "alice@",
    "empty local part": "@example.com",
    "two @": "alice@x@example.com",
    "plus in domain": "alice@example+x.com",
    "equals in domain": "alice@example=x.com",
    "underscore in domain": "alice@exam_ple.com",
    "dot domain": "alice@.",
}


@pytest.mark.parametrize("case", IMAP_REFUSALS + ["disabled domain, right password", *ODD_SHAPES])
def test_refusals_are_authentication_failures(dovecot: Dovecot, dataset: Dataset, case: str) -> None:
    if case == "disabled domain, right password":
        login, password = CLOSED_LOGIN, CLOSED_PASSWORD
    elif case in ODD_SHAPES:
        login, password = ODD_SHAPES[case], alice(dataset).password
    else:
        login, password = refusal_cases(dataset)[case]
    assert "AUTHENTICATIONFAILED" in refused(dovecot, login, password), dovecot.log()


def test_the_disabled_domain_is_the_only_reason(world: World, dovecot: Dovecot, dataset: Dataset) -> None:
    """The disabled-domain refusal is the domain's status, nothing else: the same
    account with the same password logs in once the domain is active again."""
    ldif = (f"dn: dc={CLOSED_DOMAIN},{BASE}\nchangetype: modify\nreplace: mailAccountStatus\n"
            "mailAccountStatus: {}\n")
    world.ldapmodify_as_admin(dataset, ldif.format("active"))
    try:
        logged_in(dovecot, CLOSED_LOGIN, CLOSED_PASSWORD).logout()
    finally:
        world.ldapmodify_as_admin(dataset, ldif.format("disabled"))
    assert "AUTHENTICATIONFAILED" in refused(dovecot, CLOSED_LOGIN, CLOSED_PASSWORD)


def test_an_account_ppolicy_locked_is_refused(dovecot: Dovecot) -> None:
    """slapd decides: after the default policy's failures its lockout refuses the right password."""
    logged_in(dovecot, LOCKED_LOGIN, LOCKED_PASSWORD).logout()
    for _ in range(10):  # pwdMaxFailure of cn=default,ou=policies (ldap/seed.ldif)
        refused(dovecot, LOCKED_LOGIN, LOCKED_PASSWORD + "x")
    assert "AUTHENTICATIONFAILED" in refused(dovecot, LOCKED_LOGIN, LOCKED_PASSWORD)


def test_ldap_down_is_temporary(world: World, dataset: Dataset) -> None:
    """A second Dovecot pointed at a dead LDAP: UNAVAILABLE, not a bad password."""
    server = world.dovecot("dovecot-dead", dataset, f"ldap://127.0.0.1:{free_port()}")
    try:
        message = refused(server, "alice@example.com", alice(dataset).password)
        assert "UNAVAILABLE" in message or "Temporary" in message, message + server.log()
    finally:
        server.stop()
