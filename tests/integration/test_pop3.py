"""POP3 and POP3S through real stock popa3d with the shipped popa3d/ files.

popa3d runs inetd-style under socat (POP3) and under stunnel with the shipped
stunnel-pop3s.conf (POP3S), in a private mount namespace that carries the
shipped PAM service file, nss-systemd user records written by the real
``mailrouter-userdb`` and a private /var/mail
(``mailrouter.sandbox.popa3d``).  The mailbox is a file ``/var/mail/<login>``
owned by the storage account ``mail`` (uid 8), as the delivery hook writes it.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CASES, ROOT, alice, hook_config, hub_exim, needs_root, refusal_cases
from dataset import Dataset
from mailrouter.sandbox import demo
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd, free_port
from test_auth import HOSTILE_LOGINS, HOSTILE_PASSWORDS

pytestmark = needs_root

MAIL_UID = MAIL_GID = 8
REFUSAL = b"-ERR Authentication failed (bad password?)"
MESSAGE = (
    b"From sender@example.net Tue Nov 24 20:40:45 2026\n"
    b"From: sender@example.net\n"
    b"To: alice@example.com\n"
    b"Subject: popa3d test\n"
    b"\n"
    b"Hello over POP3.\n"
    b"\n"
)


def write_mailbox(popa3d: Popa3d, login: str, data: bytes) -> Path:
    path = popa3d.mailbox(login)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chown(path, MAIL_UID, MAIL_GID)
    return path


@pytest.fixture(scope="module")
def popa3d(
    tmp_path_factory: pytest.TempPathFactory, slapd: Slapd, dataset: Dataset
) -> Iterator[Popa3d]:
    workdir = tmp_path_factory.mktemp("popa3d")
    conf = hook_config(workdir / "conf" / "mailrouter.toml", dataset, [slapd.uri])
    server = Popa3d(workdir / "pop", str(conf), root=ROOT)
    server.start()
    try:
        write_mailbox(server, "alice@example.com", MESSAGE)
        yield server
    finally:
        server.stop()


def tls_context(popa3d: Popa3d) -> ssl.SSLContext:
    assert popa3d.certificates is not None
    context = ssl.create_default_context(cafile=str(popa3d.certificates.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def login_reply(client: poplib.POP3, login: str, password: str) -> bytes:
    try:
        client.user(login)
        return client.pass_(password)
    except poplib.error_proto as exc:
        return exc.args[0]


def test_pop3_reads_the_mailbox(popa3d: Popa3d, dataset: Dataset) -> None:
    client = poplib.POP3("127.0.0.1", popa3d.port, timeout=30)
    try:
        assert login_reply(client, "alice@example.com", alice(dataset).password).startswith(b"+OK")
        count, size = client.stat()
        assert count == 1 and size > 0
        _response, lines, _octets = client.retr(1)
        assert b"Subject: popa3d test" in lines and b"Hello over POP3." in lines
    finally:
        client.quit()


def test_pop3s_reads_the_mailbox(popa3d: Popa3d, dataset: Dataset) -> None:
    client = poplib.POP3_SSL("localhost", popa3d.tls_port, context=tls_context(popa3d), timeout=30)
    try:
        assert isinstance(client.sock, ssl.SSLSocket) and client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert login_reply(client, "alice@example.com", alice(dataset).password).startswith(b"+OK")
        _response, lines, _octets = client.retr(1)
        assert b"Hello over POP3." in lines
    finally:
        client.quit()


def test_other_user_sees_own_empty_mailbox(popa3d: Popa3d, dataset: Dataset) -> None:
    client = poplib.POP3("127.0.0.1", popa3d.port, timeout=30)
    try:
        assert login_reply(
            client, "bob@example.com", dataset.account("bob@example.com").password
        ).startswith(b"+OK")
        assert client.stat() == (0, 0)  # popa3d treats a missing mailbox as empty
    finally:
        client.quit()


POP3_CASES = [
    case
    for case in CASES
    # A NUL or newline cannot travel in a POP3 command line, and popa3d splits
    # arguments on white space ("alice@example.com " is alice); the disabled
    # account lives in test_auth's own slapd.
    if case not in ("NUL in login", "control character", "trailing space") and not case.startswith("disabled")
]
# popa3d answers these itself, before PAM, with a bare "-ERR" (a 65-octet local
# part makes the USER line too long, and "PASS " has no argument): still a
# refusal that says nothing about the account.
POPA3D_SYNTAX_CASES = {"over-long": b"-ERR", "empty password": b"-ERR"}


@pytest.mark.parametrize("case", POP3_CASES)
def test_refusals_identical(popa3d: Popa3d, dataset: Dataset, case: str) -> None:
    login, password = refusal_cases(dataset)[case]
    if case == "dot-dot slash":
        # Make the traversal target exist, so only the PAM side can stop it.
        write_mailbox(popa3d, "alice@example.com", MESSAGE)
    client = poplib.POP3("127.0.0.1", popa3d.port, timeout=30)
    try:
        assert login_reply(client, login, password) == POPA3D_SYNTAX_CASES.get(case, REFUSAL)
    finally:
        client.close()


def raw_login(port: int, login: bytes, password: bytes) -> bytes:
    """USER/PASS with octets as given; the reply to PASS (or the earlier -ERR)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"+OK")
        for command in (b"USER " + login, b"PASS " + password):
            sock.sendall(command + b"\r\n")
            reply = replies.readline().rstrip(b"\r\n")
            if not reply.startswith(b"+OK") or command.startswith(b"PASS"):
                return reply
    raise AssertionError("not reached")


def test_hostile_input_answers_like_a_wrong_password(popa3d: Popa3d, demo_data: demo.DemoDirectory) -> None:
    """Issue 13 item 1 over POP3 (popa3d + PAM + mailrouter-pam-auth): every odd
    password, for the known user and an unknown one, and every odd login get the
    wrong password's exact reply.  (CR and LF end a POP3 line: not passwords here.)
    The time is bench/bench_auth.py's business."""
    right = alice(demo_data).password.encode()
    known, unknown = b"alice@example.com", b"nobody@example.com"
    wrong = raw_login(popa3d.port, known, right + b"x")
    assert wrong == REFUSAL
    attempts = [(login, pw) for pw in HOSTILE_PASSWORDS.values() if b"\n" not in pw and b"\r" not in pw
                for login in (known, unknown)]
    attempts += [(login, right) for login in HOSTILE_LOGINS.values() if b"\n" not in login]
    for login, password in attempts:
        reply = raw_login(popa3d.port, login, password)
        # popa3d refuses some lines itself, before PAM, with a bare -ERR (a NUL, a
        # login longer than its buffer): the same for every account.
        expected = b"-ERR" if b"\x00" in login + password or len(login) > 1000 else REFUSAL
        assert reply == expected, (login[:40], password[:40], reply)
    assert raw_login(popa3d.port, known, right).startswith(b"+OK")


def test_refusal_over_pop3s_identical(popa3d: Popa3d, dataset: Dataset) -> None:
    client = poplib.POP3_SSL("localhost", popa3d.tls_port, context=tls_context(popa3d), timeout=30)
    try:
        assert login_reply(client, "alice@example.com", "wrong password") == REFUSAL
    finally:
        client.close()


def test_mailbox_of_another_owner_is_not_served(popa3d: Popa3d, dataset: Dataset) -> None:
    """popa3d's own guard, with our storage ids: a mailbox not owned by uid 8 is refused."""
    path = write_mailbox(popa3d, "carol@example.org", MESSAGE)
    os.chown(path, 0, 0)
    client = poplib.POP3("127.0.0.1", popa3d.port, timeout=30)
    try:
        reply = login_reply(client, "carol@example.org", dataset.account("carol@example.org").password)
        assert not reply.startswith(b"+OK")
    finally:
        client.close()
        path.unlink()


def test_ldap_down_is_an_error(tmp_path: Path, popa3d: Popa3d, dataset: Dataset) -> None:
    """The same popa3d set-up, but its config points at an LDAP nobody serves."""
    dead_uri = f"ldap://127.0.0.1:{free_port()}/"
    dead = hook_config(tmp_path / "conf" / "mailrouter.toml", dataset, [dead_uri], timeouts=1.0)
    # The user records come from a working LDAP; only the login-time LDAP is down.
    server = Popa3d(tmp_path / "pop", str(dead), root=ROOT, tls=False, userdb_source=popa3d.userdb)
    server.start()
    try:
        write_mailbox(server, "alice@example.com", MESSAGE)
        client = poplib.POP3("127.0.0.1", server.port, timeout=60)
        try:
            reply = login_reply(client, "alice@example.com", alice(dataset).password)
            assert reply.startswith(b"-ERR")
        finally:
            client.close()
    finally:
        server.stop()


def test_reads_mail_delivered_by_real_exim(slapd: Slapd, dataset: Dataset) -> None:
    """End to end with the shipped exim/ config: Exim routes and delivers (the
    project's lookup and delivery hooks) into the spool that popa3d serves as
    /var/mail; POP3S then returns the message."""
    # Not pytest's tmp dir (0700): the hooks run as Debian-exim and as mail.
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-pop3-exim-"))
    with contextlib.ExitStack() as cleanup:  # every step undone, even when one of them raises
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.chmod(0o755)
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)
        conf = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
        exim = hub_exim(workdir, conf)
        cleanup.callback(exim.close)  # fails the test on a paniclog entry
        body = "From: sender@example.net\nTo: carol@example.org\nSubject: via exim\n\nDelivered by Exim.\n"
        result = exim.deliver(body, "carol@example.org", sender="sender@example.net")
        mailbox = spool / "carol@example.org"
        assert mailbox.exists(), result.output + exim.main_log()
        assert os.stat(mailbox).st_uid == MAIL_UID
        pop = Popa3d(workdir / "pop", str(conf), root=ROOT, spool=spool)
        cleanup.callback(pop.stop)
        pop.start()
        client = poplib.POP3_SSL("localhost", pop.tls_port, context=tls_context(pop), timeout=30)
        try:
            reply = login_reply(client, "carol@example.org", dataset.account("carol@example.org").password)
            assert reply.startswith(b"+OK")
            assert client.stat()[0] == 1
            _response, lines, _octets = client.retr(1)
            assert b"Subject: via exim" in lines and b"Delivered by Exim." in lines
        finally:
            client.quit()
