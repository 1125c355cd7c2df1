"""A delivery killed at any point leaves the mailbox exactly as before it started.

Issue 13.3: ``kill -9`` of the delivery hook during a 30 MB delivery left the
truncated copy in the mbox beside the later full one.  Here the real
``mailrouter-deliver`` is killed with SIGKILL at every stage of a 30 MB append
-- directly, at exact system calls (strace's fault injection), and through the
shipped Exim pipe transport (a size watch on the mailbox) -- then the message
is delivered again, as Exim's retry would, and real popa3d reads the mailbox:
it must hold exactly the messages delivered completely, each byte-identical.
"""

from __future__ import annotations

import math
import os
import poplib
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, ROOT, hook_config, hub_exim, needs_root
from dataset import Dataset
from deliver_support import from_line, run_deliver
from mailrouter import entries, passwords
from mailrouter.mailbox import mbox
from mailrouter.sandbox import demo
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (bin/install-deps installs it)"),
]

MAIL_UID = MAIL_GID = 8
CHUNK = 1 << 20  # mailbox.maildir.write_all writes this much per write(2)
BIG = 30 * 1024 * 1024
BULK = "bulk@example.com"  # an unlimited mailbox for the Exim path (torn<N>@ for the direct one)
PASSWORD = "torn-Secret-42"
KILL_POINTS = [
    "lock taken, no journal yet",
    "journal written, nothing appended",
    "first chunk written",
    "half written",
    "all but the last chunk",
    "all written, not fsynced",
    "fsynced, lock not released",
]


def big_message(tag: str, size: int = BIG) -> bytes:
    """About ``size`` octets; no line starts with "From " (so mbox stores it unescaped)."""
    line = (tag + " " + "0123456789abcdef" * 5)[:76].encode() + b"\n"
    head = f"From: sender@remote.example\nTo: someone\nSubject: {tag}\nMessage-Id: <{tag}@test>\n\n"
    return head.encode() + line * (size // len(line))


def small_message(tag: str) -> bytes:
    return f"Subject: {tag}\nMessage-Id: <{tag}@test>\n\nsmall {tag}\n".encode()


@dataclass
class Hub:
    workdir: Path
    slapd: Slapd
    spool: Path
    config: Path
    exim: Exim
    data: demo.DemoDirectory

    def address_data(self, address: str) -> str:
        return f"mailbox={self.spool}/{address} format=mbox quota=0 uid={MAIL_UID} gid={MAIL_GID}"

    def deliver(self, address: str, message: bytes, wrapper: list[str] | None = None
                ) -> subprocess.CompletedProcess[bytes]:
        return run_deliver(self.config, self.address_data(address), message, wrapper=wrapper, timeout=300)

    def pop3_messages(self, address: str, password: str) -> list[bytes]:
        """Every message of ``address`` as real popa3d serves it (RETR, lines joined by LF)."""
        server = Popa3d(self.workdir / f"pop-{address}", str(self.config), root=ROOT, spool=self.spool,
                        tls=False)
        server.start()
        try:
            client = poplib.POP3("127.0.0.1", server.port, timeout=120)
            try:
                client.user(address)
                client.pass_(password)
                count = client.stat()[0]
                return [b"\n".join(client.retr(n)[1]) + b"\n" for n in range(1, count + 1)]
            finally:
                client.quit()
        finally:
            server.stop()


@pytest.fixture(scope="module")
def hub(dataset: Dataset) -> Iterator[Hub]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-torn-"))
    slapd: Slapd | None = None
    exim: Exim | None = None
    try:
        workdir.chmod(0o755)
        password_hash = passwords.hash_password(PASSWORD, "ssha")
        users = [
            entries.user_entry(local, "example.com", dataset.base_dn, password_hash=password_hash,
                               uid_number=MAIL_UID, gid_number=MAIL_GID,
                               mailbox=f"/var/mail/{local}@example.com", quota="0")
            for local in ["bulk", *(f"torn{n}" for n in range(len(KILL_POINTS)))]
        ]
        slapd = Slapd(workdir / "slapd", ldif=[dataset.ldif, entries.to_ldif(users)], root=ROOT,
                      seed_passwords=dataset.seed_passwords).start()
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
        exim = hub_exim(workdir, config).prepare()
        yield Hub(workdir, slapd, spool, config, exim, dataset)
    finally:
        if exim is not None:
            exim.close()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def strace_kill(*rule: str) -> list[str]:
    """Run the hook under strace, killed with SIGKILL when ``rule`` fires."""
    return ["strace", "-f", "-qq", "-o", "/dev/null", *rule]


def kill_points(box: Path, append_length: int) -> dict[str, list[str]]:
    """Where to kill: each is one system call of the append, killed on entry."""
    lock = f"{box}.lock"
    chunks = math.ceil(append_length / CHUNK)

    def on(path: str, call: str, when: int = 1) -> list[str]:
        return ["-P", path, "-e", f"trace={call}", "-e", f"inject={call}:signal=KILL:when={when}"]

    return {
        "lock taken, no journal yet": on(lock, "pwrite64"),
        "journal written, nothing appended": on(lock, "fsync"),
        "first chunk written": on(str(box), "write", 2),
        "half written": on(str(box), "write", chunks // 2 + 1),
        "all but the last chunk": on(str(box), "write", chunks),
        "all written, not fsynced": on(str(box), "fsync"),
        # The only unlinkat of a delivery is the release of its dotlock (strace's
        # -P does not match a path relative to a directory fd, hence no -P here).
        "fsynced, lock not released": ["-e", "trace=unlinkat", "-e", "inject=unlinkat:signal=KILL"],
    }


@pytest.mark.parametrize("point", KILL_POINTS)
def test_direct_kill_then_retry_leaves_exactly_the_whole_messages(hub: Hub, point: str) -> None:
    address = f"torn{KILL_POINTS.index(point)}@example.com"
    box = hub.spool / address
    lock = Path(f"{box}.lock")
    sent = [small_message("first"), small_message("second")]
    for message in sent:
        assert hub.deliver(address, message).returncode == 0
    message = big_message("big")
    before = box.read_bytes()
    rule = kill_points(box, len(mbox.entry(from_line(), message)))[point]
    killed = hub.deliver(address, message, wrapper=strace_kill(*rule))
    assert killed.returncode == -signal.SIGKILL, killed
    assert lock.exists()  # a killed hook cannot clean up
    assert box.read_bytes().startswith(before)
    # The retry: the dead hook's lock is broken, its append undone, the message stored once.
    retried = hub.deliver(address, message)
    assert retried.returncode == 0, retried
    assert box.read_bytes() == before + mbox.entry(from_line(), message)
    assert not lock.exists()
    sent.append(message)
    # A later message too; then real popa3d serves exactly these, byte for byte.
    sent.append(small_message("after"))
    assert hub.deliver(address, sent[-1]).returncode == 0
    assert hub.pop3_messages(address, PASSWORD) == sent


def test_a_dead_lock_that_is_not_ours_to_undo_is_left_alone(hub: Hub) -> None:
    """The journal is honoured only for bytes that are provably the dead append's."""
    address = "torn-other@example.com"
    box = hub.spool / address
    lock = Path(f"{box}.lock")
    assert hub.deliver(address, small_message("first")).returncode == 0
    message = big_message("big", 4 * CHUNK)
    rule = kill_points(box, len(mbox.entry(from_line(), message)))["first chunk written"]
    assert hub.deliver(address, message, wrapper=strace_kill(*rule)).returncode == -signal.SIGKILL
    torn = box.read_bytes()
    # Someone rewrote the fragment meanwhile (not what the journal says was appended):
    # the next delivery removes the dead lock but keeps every byte.
    with box.open("r+b") as handle:
        handle.seek(len(torn) - CHUNK)
        handle.write(b"X")
    changed = box.read_bytes()
    assert hub.deliver(address, small_message("next")).returncode == 0
    assert box.read_bytes().startswith(changed) and not lock.exists()


def test_kill_through_the_exim_pipe_transport_then_retry(hub: Hub) -> None:
    """The shipped config's pipe transport runs the hook (as the storage user) through a
    wrapper that kills it with SIGKILL at one system call; Exim freezes the message
    (freeze_signal), never bounces it; its retry stores it once, whole."""
    box = hub.spool / BULK
    lock = Path(f"{box}.lock")
    wrapped = hub.workdir / "bin"
    wrapped.mkdir(exist_ok=True)
    wrapped.chmod(0o755)
    (wrapped / "mailrouter-lookup").unlink(missing_ok=True)
    (wrapped / "mailrouter-lookup").symlink_to(BIN / "mailrouter-lookup")
    exim = hub_exim(hub.workdir / "wrapped", hub.config, MAILROUTER_BIN=str(wrapped)).prepare()
    points = kill_points(box, BIG)
    bodies: list[bytes] = []
    try:
        for index, point in enumerate(["journal written, nothing appended", "half written",
                                       "fsynced, lock not released"]):
            message = big_message(f"exim-{index}")
            before = box.read_bytes() if box.exists() else b""
            write_hook_wrapper(wrapped, strace_kill(*points[point]))
            received = exim.run("-odi", "-f", "sender@remote.example", "--", BULK, stdin=message)
            assert received.returncode == 0, received.output
            log = exim.main_log().rsplit(" <= sender@remote.example ", 1)[1]
            assert "terminated by signal 9" in log and "Frozen" in log, log  # freeze_signal
            assert "** " not in exim.main_log()  # never bounced
            assert lock.exists() and box.read_bytes().startswith(before), point
            queued = exim.queue_list().stdout
            # Message ids: 6-6-2 (Exim 4.96, Debian 12) or 6-11-4 (4.97+, Debian 13).
            found = re.search(r"(\w{6}-\w{6,11}-\w{2,4}) <sender@remote.example> \*\*\* frozen \*\*\*",
                              queued)
            assert found is not None, queued
            # The retry (an operator's -M here; auto_thaw and the queue runner in production).
            write_hook_wrapper(wrapped, [])
            retried = exim.run("-M", found.group(1))
            assert retried.returncode == 0, retried.output
            assert not lock.exists() and found.group(1) not in exim.queue_list().stdout, point
            stored = box.read_bytes()
            assert stored.startswith(before), point
            assert len(mbox_entries(stored)) == index + 1, point
            bodies.append(message.split(b"\n\n", 1)[1])
    finally:
        exim.close()
    assert [m.split(b"\n\n", 1)[1] for m in hub.pop3_messages(BULK, PASSWORD)] == bodies


def write_hook_wrapper(directory: Path, prefix: list[str]) -> None:
    """``directory/mailrouter-deliver``: the real hook, run under ``prefix`` (e.g. strace)."""
    script = directory / "mailrouter-deliver"
    command = " ".join([*prefix, str(BIN / "mailrouter-deliver")])
    script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    script.chmod(0o755)


def mbox_entries(data: bytes) -> list[bytes]:
    """The entries of an mbox as popa3d splits it: at "From " lines after a blank line."""
    return [part for part in re.split(rb"(?:^|\n\n)(?=From )", data) if part]
