"""mailrouter-lmtpd, the installed server, against real slapd, real mailboxes and real Exim.

LMTP's point is one reply per recipient after the data: here every fault of one
recipient (no such user, a refused mailbox, a full one, a message larger than the
whole quota) must be that recipient's answer only, 4xx except the one definite
"never fits".  Through the shipped Exim config (``MAILROUTER_DELIVERY_VIA =
lmtp``): one message to five users is one connection with five replies; a server
that is not running, or that is killed with SIGKILL while it receives or stores a
message, makes Exim defer -- never bounce, never freeze -- and the retry stores the
message exactly once, whole (the dotlock journal undoes the torn append).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import hook_config, hub_exim, needs_root, start_slapd
from dataset import Dataset
from deliver_support import MAIL_GID, MAIL_UID, Lmtpd, make_spool, normalise_dates
from mailrouter import entries
from mailrouter.mailbox import mbox
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd

pytestmark = needs_root

BULK = "bulk@example.com"  # no quota: the big messages of the kill tests
BIG = 8 * 1024 * 1024
CHUNK = 1 << 20  # store.deliver writes this much per write(2)


@dataclass
class Hub:
    workdir: Path
    slapd: Slapd
    spool: Path
    config: Path
    lmtpd: Lmtpd
    exim: Exim

    def box(self, address: str) -> Path:
        return self.spool / address


@pytest.fixture(scope="module")
def hub(dataset: Dataset) -> Iterator[Hub]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-lmtp-"))
    slapd: Slapd | None = None
    server: Lmtpd | None = None
    exim: Exim | None = None
    try:
        workdir.chmod(0o755)
        bulk = entries.user_entry("bulk", "example.com", dataset.base_dn, password_hash=None,
                                  uid_number=MAIL_UID, gid_number=MAIL_GID, mailbox="/var/mail/x", quota="0")
        slapd = start_slapd(workdir / "slapd", dataset, extra_ldif=entries.to_ldif([bulk]))
        spool = make_spool(workdir / "mail")
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
        server = Lmtpd(workdir / "lmtpd", config).start()
        exim = hub_exim(workdir, config, **server.macros()).prepare()
        yield Hub(workdir, slapd, spool, config, server, exim)
    finally:
        if exim is not None:
            exim.close()
        if server is not None:
            server.stop()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class Client:
    """A plain LMTP client: one reply (all its lines) per command, one per recipient after DATA."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.input = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.input.readline().decode("ascii").rstrip("\r\n")
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != "-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def data(self, message: bytes, replies: int) -> list[str]:
        assert self.command("DATA").startswith("354")
        lines = message.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        text = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
        self.sock.sendall(text + b".\r\n")
        return [self.reply() for _ in range(replies)]

    def close(self) -> None:
        self.input.close()
        self.sock.close()


def message(tag: str, size: int = 0) -> bytes:
    body = b"".join(f"{tag} line {n}\n".encode() for n in range(3))
    filler = (b"." + b"x" * 70 + b"\n") * (size // 72)  # lines starting with a dot: stuffed in transit
    return f"Subject: {tag}\nMessage-Id: <{tag}@test>\n\nFrom the start\n".encode() + body + filler


def test_one_reply_per_recipient_and_each_fault_is_that_recipients_alone(hub: Hub) -> None:
    full = hub.box("small@example.com")  # quota 20K
    full.write_bytes(mbox.entry(mbox.from_line("x@y.example"), b"Subject: old\n\n" + b"o\n" * 5000))
    os.chown(full, MAIL_UID, MAIL_GID)
    hub.box("bob@example.com").symlink_to("/etc/passwd")  # a mailbox the store refuses
    sent = message("five", 12_000)  # fits alice; not small's room now; never fulluser's 1K
    client = Client(hub.lmtpd.socket)
    try:
        assert client.greeting.startswith("220 ")
        assert "250 SIZE" in client.command("LHLO client.test")
        assert client.command("MAIL FROM:<sender@remote.example> SIZE=12345").startswith("250 ")
        answers = {rcpt: client.command(f"RCPT TO:<{rcpt}>") for rcpt in [
            "alice@example.com", "nobody@example.com", "disabled@example.com", "bob@example.com",
            "small@example.com", "fulluser@example.com", "garbled@example.com"]}
        assert answers["alice@example.com"].startswith("250 2.1.5")
        # Not there now (or disabled, or a garbled quota): 4xx, the router decides again at the retry.
        assert answers["nobody@example.com"].startswith("450 4.1.1")
        assert answers["disabled@example.com"].startswith("450 4.1.1")
        assert answers["garbled@example.com"].startswith("451 4.3.0")
        replies = client.data(sent, 4)  # alice, bob, small, fulluser: in RCPT order
        assert client.command("QUIT").startswith("221")
    finally:
        client.close()
    assert replies[0] == "250 2.0.0 <alice@example.com> delivered"
    assert replies[1].startswith("451 4.3.0 "), replies  # bob: symlinked mailbox, refused
    assert replies[2].startswith("452 4.2.2 mailbox full"), replies  # small: full now
    assert replies[3].startswith("552 5.2.2 message of"), replies  # fulluser: never fits
    stored = hub.box("alice@example.com").read_bytes()
    expected = mbox.entry(mbox.from_line("sender@remote.example"), b"Envelope-to: alice@example.com\n" + sent)
    assert normalise_dates(stored) == normalise_dates(expected)
    assert b"\n>From the start\n" in stored and b"\n.xxx" in stored and b"\n..xxx" not in stored
    assert hub.box("bob@example.com").is_symlink() and not hub.box("fulluser@example.com").exists()
    assert b"Subject: five" not in full.read_bytes()
    for name in ("small@example.com", "bob@example.com"):
        hub.box(name).unlink()
    hub.box("alice@example.com").unlink()


def test_protocol_errors_and_refused_peers(hub: Hub) -> None:
    client = Client(hub.lmtpd.socket)
    try:
        assert client.command("MAIL FROM:<a@b.example>").startswith("503 ")  # LHLO first
        assert client.command("EHLO x").startswith("503 ")  # this is LMTP
        assert client.command("LHLO x").startswith("250")
        assert client.command("RCPT TO:<alice@example.com>").startswith("503 ")  # MAIL first
        assert client.command("MAIL FROM:<>").startswith("250 ")  # a bounce: the null sender
        assert client.command("DATA").startswith("503 ")  # no valid recipient yet
        assert client.command("RCPT TO:alice@example.com").startswith("501 ")
        assert client.command("BOGUS").startswith("500 ")
        assert client.command("RSET").startswith("250 ")
        assert client.command("NOOP").startswith("250 ")
    finally:
        client.close()
    # Only root, the server's own uid and Debian-exim may talk to it at all.
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports by exit code
        code = 3
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(10)
            probe.connect(str(hub.lmtpd.socket))
            code = 0 if probe.recv(100) == b"" else 1
        except PermissionError:
            code = 2  # the socket's mode kept it out before the server even saw it
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 2


def test_null_sender_and_the_empty_message(hub: Hub) -> None:
    client = Client(hub.lmtpd.socket)
    try:
        client.command("LHLO x")
        client.command("MAIL FROM:<>")
        client.command("RCPT TO:<carol@example.org>")
        assert client.command("DATA").startswith("354")
        client.sock.sendall(b".\r\n")
        assert client.reply() == "250 2.0.0 <carol@example.org> delivered"
    finally:
        client.close()
    stored = hub.box("carol@example.org").read_bytes()
    assert re.fullmatch(rb"From MAILER-DAEMON .{24}\nEnvelope-to: carol@example.org\n\n", stored), stored
    hub.box("carol@example.org").unlink()


def deliveries(log: str, message_id: str) -> list[str]:
    return [line for line in log.splitlines() if f" {message_id} " in line and re.search(r" (=>|->) ", line)]


def test_one_message_to_five_users_is_one_connection_with_five_replies(hub: Hub) -> None:
    users = ["alice@example.com", "bob@example.com", "halffull@example.com", "small@example.com",
             "postmaster@example.com"]
    done = hub.exim.run("-odi", "-oi", "-f", "sender@remote.example", "--", *users, stdin=message("fan"))
    assert done.returncode == 0, done.output
    log = hub.exim.main_log()
    message_id = re.findall(r" (\S+) <= sender@remote.example ", log)[-1]
    lines = deliveries(log, message_id)
    assert len(lines) == 5, log
    # One transport run: the first address "=>", the rest of the same batch "->".
    assert [line.split()[3] for line in lines] == ["=>", "->", "->", "->", "->"], lines
    for address in users:
        reply = f'T=mailrouter_lmtp C="250 2.0.0 <{address}> delivered"'
        assert any(reply in line for line in lines), lines
        stored = hub.box(address).read_bytes()
        assert f"Envelope-to: {address}\n".encode() in stored and b"Subject: fan" in stored
        assert stored.count(b"\nEnvelope-to: ") == 1  # no other recipient named in this copy
        hub.box(address).unlink()


@pytest.mark.parametrize("fault", ["no socket", "nobody listening"])
def test_server_not_running_defers_then_the_queue_delivers(hub: Hub, fault: str) -> None:
    hub.lmtpd.stop()
    if fault == "no socket":
        hub.lmtpd.socket.unlink()
    else:
        assert hub.lmtpd.socket.exists()  # the stale socket of a stopped server
    try:
        done = hub.exim.run("-odi", "-oi", "-f", "sender@remote.example", "--", "dave@example.org",
                            stdin=message("waiting"))
        assert done.returncode == 0, done.output
        log = hub.exim.main_log()
        message_id = re.findall(r" (\S+) <= sender@remote.example ", log)[-1]
        tail = log.split(f" {message_id} <= ", 1)[1]
        assert "== dave@example.org R=users T=mailrouter_lmtp defer" in tail, tail
        assert "** " not in tail and "Frozen" not in tail and "frozen" not in hub.exim.queue_list().stdout
        assert not hub.box("dave@example.org").exists()
    finally:
        hub.lmtpd.start()
    assert hub.exim.queue_run("-qff").returncode == 0
    assert hub.exim.queue_count() == 0, hub.exim.main_log()
    assert hub.box("dave@example.org").read_bytes().count(b"Subject: waiting") == 1
    hub.box("dave@example.org").unlink()


def big_message(tag: str) -> bytes:
    line = (tag + " " + "0123456789abcdef" * 5)[:76].encode() + b"\n"
    return f"Subject: {tag}\nMessage-Id: <{tag}@test>\n\n".encode() + line * (BIG // len(line))


# Each kill point: one system call of the server's worker, killed there by strace on entry
# (with one worker and a fresh strace per case the counts are exact).
KILLS = {
    # the worker reads the 8 MB text from Exim in many reads: the 10th is mid-message
    "receiving the message": ["-e", "trace=recvfrom", "-e", "inject=recvfrom:signal=KILL:when=10"],
    "half appended": ["-P", "{box}", "-e", "trace=write",
                      "-e", f"inject=write:signal=KILL:when={BIG // CHUNK // 2}"],
    # the dotlock's release (the only unlinkat): appended and fsynced, no reply sent yet
    "stored, no reply yet": ["-e", "trace=unlinkat", "-e", "inject=unlinkat:signal=KILL"],
}


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (bin/install-deps installs it)")
@pytest.mark.parametrize("point", list(KILLS))
def test_server_killed_mid_message_defers_and_the_retry_stores_it_once(hub: Hub, point: str) -> None:
    box = hub.box(BULK)
    lock = Path(f"{box}.lock")
    before = box.read_bytes() if box.exists() else b""
    sent = big_message(f"kill-{list(KILLS).index(point)}")
    rule = [part.replace("{box}", str(box)) for part in KILLS[point]]
    hub.lmtpd.stop()
    traced = Lmtpd(hub.workdir / "lmtpd", hub.config, workers=1,
                   wrapper=["strace", "-f", "-qq", "-o", "/dev/null", *rule]).start()
    try:
        done = hub.exim.run("-odi", "-oi", "-f", "sender@remote.example", "--", BULK, stdin=sent)
        assert done.returncode == 0, done.output
        traced.kill()  # the rest of the daemon too: kill -9 of the whole server
        log = hub.exim.main_log()
        message_id = re.findall(r" (\S+) <= sender@remote.example ", log)[-1]
        tail = log.split(f" {message_id} <= ", 1)[1]
        assert f"== {BULK} R=users T=mailrouter_lmtp defer" in tail, tail
        assert "** " not in tail and "Frozen" not in tail, tail
        assert box.read_bytes().startswith(before) if box.exists() else True
        # While nothing listens, retries defer too.
        assert hub.exim.run("-M", message_id).returncode == 0
        assert hub.exim.queue_count() == 1 and "** " not in hub.exim.main_log()
    finally:
        traced.kill()
        hub.lmtpd.start()
    assert hub.exim.run("-M", message_id).returncode == 0
    assert hub.exim.queue_count() == 0, hub.exim.main_log()
    stored = box.read_bytes()
    assert stored.startswith(before) and not lock.exists()
    added = stored[len(before):]
    assert added.count(b"\nFrom ") == 0 and added.count(b"Subject: kill-") == 1, point  # one whole copy
    assert added.endswith(sent.split(b"\n\n", 1)[1] + b"\n"), point


def test_per_user_ids_switch_in_a_child_per_delivery(hub: Hub, dataset: Dataset) -> None:
    """With spool.per_user_ids the server stays root and stores each message as its user."""
    spool = hub.workdir / "per-user"
    spool.mkdir()
    spool.chmod(0o1777)  # each uid creates its own mailbox here
    config = hook_config(hub.workdir / "per-user.toml", dataset, [hub.slapd.uri], spool, per_user_ids=True)
    with Lmtpd(hub.workdir / "lmtpd-per-user", config) as server:
        client = Client(server.socket)
        try:
            client.command("LHLO x")
            client.command("MAIL FROM:<s@remote.example>")
            # small has its own ids (5000); alice has the storage account's (8, below min_uid).
            assert client.command("RCPT TO:<small@example.com>").startswith("250 ")
            refused = client.command("RCPT TO:<alice@example.com>")
            replies = client.data(message("own-ids"), 1)
        finally:
            client.close()
    assert refused.startswith("451 4.3.0") and "min_uid" in refused, refused
    assert replies == ["250 2.0.0 <small@example.com> delivered"]
    stored = spool / "small@example.com"
    assert (stored.stat().st_uid, stored.stat().st_gid) == (5000, 5000)
    assert not (spool / "alice@example.com").exists()


def test_sigterm_lets_a_session_finish(hub: Hub) -> None:
    client = Client(hub.lmtpd.socket)
    try:
        client.command("LHLO x")
        client.command("MAIL FROM:<s@remote.example>")
        client.command("RCPT TO:<dave@example.org>")
        assert hub.lmtpd.process is not None
        os.kill(hub.lmtpd.process.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert client.data(message("during-stop"), 1) == ["250 2.0.0 <dave@example.org> delivered"]
        assert client.command("QUIT").startswith("221")
    finally:
        client.close()
        hub.lmtpd.process.wait(timeout=30)
        hub.lmtpd.start()
    assert b"Subject: during-stop" in hub.box("dave@example.org").read_bytes()
    hub.box("dave@example.org").unlink()


def test_ldap_trouble_is_a_451_per_recipient_and_exim_defers(hub: Hub, dataset: Dataset) -> None:
    """lmtpd's own lookup fails (its LDAP is unreachable) while Exim's routing works."""
    config = hook_config(hub.workdir / "no-ldap.toml", dataset, ["ldap://127.0.0.1:9"], hub.spool,
                         timeouts=1.0)
    with Lmtpd(hub.workdir / "lmtpd-no-ldap", config) as server:
        client = Client(server.socket)
        try:
            client.command("LHLO x")
            client.command("MAIL FROM:<s@remote.example>")
            assert client.command("RCPT TO:<alice@example.com>").startswith("451 4.4.3 ")
            assert client.command("DATA").startswith("503 ")  # no recipient was accepted
        finally:
            client.close()
        exim = hub_exim(hub.workdir / "exim-no-ldap", hub.config, **server.macros())
        try:
            done = exim.run("-odi", "-oi", "-f", "s@remote.example", "--", "alice@example.com",
                            stdin=message("no-ldap"))
            assert done.returncode == 0, done.output
            log = exim.main_log()
            assert "== alice@example.com R=users T=mailrouter_lmtp defer" in log, log
            assert "** " not in log and "Frozen" not in log and exim.queue_count() == 1
        finally:
            exim.close()
    assert not hub.box("alice@example.com").exists()


def test_message_over_the_servers_limit_and_a_silent_client(hub: Hub) -> None:
    with Lmtpd(hub.workdir / "lmtpd-limits", hub.config,
               extra=("--max-message", "1000", "--command-timeout", "1")) as server:
        client = Client(server.socket)
        try:
            assert "250 SIZE 1000" in client.command("LHLO x")
            client.command("MAIL FROM:<s@remote.example>")
            client.command("RCPT TO:<carol@example.org>")
            client.command("RCPT TO:<dave@example.org>")
            replies = client.data(message("big", 5000), 2)
            assert replies == ["552 5.3.4 message larger than 1000 bytes"] * 2
            assert client.command("NOOP").startswith("250 ")  # the session goes on
            time.sleep(1.5)  # silent for longer than --command-timeout
            assert client.reply().startswith("421 4.4.2 ")
        finally:
            client.close()
    assert not hub.box("carol@example.org").exists() and not hub.box("dave@example.org").exists()
