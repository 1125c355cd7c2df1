"""mailrouter-deliver, the installed executable, against real files, locks, tmpfs, popa3d and Exim.

Every test runs the console script from the venv as a separate process, as
root: the hook itself drops to the storage account (uid of ``mail``), exactly
what it does under a pipe transport run as root by mistake -- and what it checks
when Exim already ran it as that uid.
"""

from __future__ import annotations

import json
import mailbox
import os
import poplib
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import hook_config, hub_exim
from dataset import Dataset
from deliver_support import (
    DELIVER,
    DELIVERY_PATHS,
    DELIVERY_TRANSPORTS,
    MAIL_GID,
    MAIL_UID,
    Lmtpd,
    MiniExim,
    address_data,
    from_line,
    make_root,
    make_spool,
    run_deliver,
    write_config,
)
from mailrouter import exitcodes
from mailrouter.mailbox import mbox
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd, free_port, wait_for_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def message(tag: str, body_lines: int = 3) -> bytes:
    body = "".join(f"{tag} line {i}\n" for i in range(body_lines))
    return f"Subject: {tag}\nMessage-Id: <{tag}@test>\n\n{body}".encode()


def entry(msg: bytes) -> bytes:
    return mbox.entry(from_line(), msg)


@dataclass
class Spool:
    root: Path
    spool: Path
    config: Path
    box: Path

    def data(self, **kwargs: object) -> str:
        return address_data(self.box, **kwargs)  # type: ignore[arg-type]

    def deliver(self, msg: bytes, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return run_deliver(self.config, self.data(**kwargs), msg)

    def subjects(self) -> list[str]:
        box = mailbox.mbox(str(self.box), create=False)
        try:
            return [str(m["Subject"]) for m in box]
        finally:
            box.close()


@pytest.fixture
def sp() -> Iterator[Spool]:
    root = make_root()
    try:
        spool = make_spool(root / "spool")
        config = write_config(root / "mailrouter.toml", spool, lock_timeout=1.0)
        yield Spool(root, spool, config, spool / "alice@example.com")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --- basics -----------------------------------------------------------------


def test_creates_mailbox_0600_owned_by_storage_account(sp: Spool) -> None:
    done = sp.deliver(message("one"))
    assert done.returncode == 0, done
    assert done.stdout.startswith(b"delivered ") and done.stderr == b""
    st = sp.box.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (MAIL_UID, MAIL_GID, 0o600)
    assert sp.box.read_bytes() == entry(message("one"))
    assert sp.deliver(message("two")).returncode == 0
    assert sp.box.read_bytes() == entry(message("one")) + entry(message("two"))
    assert sp.subjects() == ["one", "two"]
    assert not Path(f"{sp.box}.lock").exists()


def test_runs_as_the_storage_account_like_exim_does(sp: Spool) -> None:
    as_mail = ["setpriv", f"--reuid={MAIL_UID}", f"--regid={MAIL_GID}", "--clear-groups"]
    done = run_deliver(sp.config, sp.data(), message("one"), wrapper=as_mail)
    assert done.returncode == 0, done
    assert sp.subjects() == ["one"]
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = run_deliver(sp.config, sp.data(), message("two"), wrapper=as_nobody)
    assert done.returncode == 75 and b"running as uid 65534" in done.stdout, done
    assert sp.subjects() == ["one"]


@pytest.mark.parametrize(
    "data",
    [
        # {outside}: a stand-in for /etc/passwd, a file outside the spool
        "mailbox={outside} format=mbox quota=0 uid=8 gid=8",
        "mailbox={spool}/../alice@example.com format=mbox quota=0 uid=8 gid=8",
        "mailbox={spool}/Alice@example.com format=mbox quota=0 uid=8 gid=8",
        "mailbox={spool}/alice@example.com format=mbox quota=0 uid=0 gid=0",
        "mailbox={spool}/alice@example.com format=mbox quota=0 uid=1000 gid=1000",
        "mailbox={spool}/alice@example.com format=mbox quota=0 uid=8",
        "mailbox={spool}/alice@example.com format=mbox quota=0 uid=8 gid=8 uid=9",
        "mailbox={spool}/alice@example.com format=mbx quota=0 uid=8 gid=8",
        "mailbox={spool}/alice@example.com format=mbox quota=12Q uid=8 gid=8",
    ],
)
def test_refuses_bad_address_data_with_75(sp: Spool, data: str) -> None:
    data = data.format(spool=sp.spool, outside=sp.root / "etc" / "passwd")
    target = Path(data.split()[0].removeprefix("mailbox="))
    standin = None
    if os.path.normpath(target) != str(sp.box):
        # Whatever the data names, a file the storage account could write: refused
        # deliveries must leave it exactly as it was (bytes and mtime).
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"root:x:0:0:stand-in:/root:/bin/sh\n")
        os.chown(target, MAIL_UID, MAIL_GID)
        target.chmod(0o600)
        os.utime(target, ns=(1_000_000_000, 1_000_000_000))
        standin = snapshot(target)
    done = run_deliver(sp.config, data, message("x"))
    assert done.returncode == 75, done
    assert not sp.box.exists()
    if standin is not None:
        assert snapshot(target) == standin


def test_missing_from_line_is_75(sp: Spool) -> None:
    done = run_deliver(sp.config, sp.data(), message("x"), prefix=b"")
    assert done.returncode == 75 and b"message_prefix" in done.stdout
    assert not sp.box.exists()


def test_bad_config_is_75(sp: Spool) -> None:
    bad = sp.root / "bad.toml"
    bad.write_text("[spool]\n")
    assert run_deliver(bad, sp.data(), message("x")).returncode == 75
    done = subprocess.run([DELIVER, "--bogus"], input=b"", capture_output=True, check=False)
    assert (done.returncode, done.stderr) == (75, b"")


# --- locks ------------------------------------------------------------------


HOLD_FCNTL = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


class Holder:
    """Another process holding a lock until released (its stdin closed)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"locked", line

    def release(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _held_then_released(sp: Spool, holder_argv: list[str]) -> None:
    assert sp.deliver(message("before")).returncode == 0
    before = snapshot(sp.box)
    holder = Holder(holder_argv)
    try:
        done = sp.deliver(message("blocked"))
        assert done.returncode == 75, done
        assert b"locked" in done.stdout
        assert snapshot(sp.box) == before
    finally:
        holder.release()
    done = sp.deliver(message("blocked"))
    assert done.returncode == 0, done
    assert sp.subjects() == ["before", "blocked"]


def test_fcntl_lock_defers_then_delivers(sp: Spool) -> None:
    _held_then_released(sp, [sys.executable, "-c", HOLD_FCNTL, str(sp.box)])


def test_exim_lock_defers_then_delivers(sp: Spool) -> None:
    # exim_lock takes Exim's dotlock and an fcntl lock, then runs the command.
    _held_then_released(
        sp, ["exim_lock", "-q", str(sp.box), "echo locked; cat >/dev/null"])


def test_foreign_dotlock_defers_and_is_left_alone(sp: Spool) -> None:
    assert sp.deliver(message("before")).returncode == 0
    lock = Path(f"{sp.box}.lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # like mutt/procmail
    os.close(fd)
    before = snapshot(sp.box)
    done = sp.deliver(message("blocked"))
    assert done.returncode == 75 and lock.exists()
    assert snapshot(sp.box) == before
    lock.unlink()
    assert sp.deliver(message("blocked")).returncode == 0
    assert sp.subjects() == ["before", "blocked"]


def test_stale_dotlock_is_removed(sp: Spool) -> None:
    lock = Path(f"{sp.box}.lock")
    lock.write_bytes(b"")
    os.utime(lock, (1, 1))  # far older than stale_lock_age
    assert sp.deliver(message("one")).returncode == 0
    assert not lock.exists() and sp.subjects() == ["one"]


def test_own_dotlock_of_dead_process_is_removed_at_once(sp: Spool) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    lock = Path(f"{sp.box}.lock")
    lock.write_bytes(f"mailrouter-deliver pid={proc.pid} host={os.uname().nodename}\n".encode())
    assert sp.deliver(message("one")).returncode == 0
    assert not lock.exists()


def test_symlinked_dotlock_is_never_followed(sp: Spool) -> None:
    victim = sp.root / "victim"
    victim.write_bytes(b"precious\n")
    lock = Path(f"{sp.box}.lock")
    lock.symlink_to(victim)
    done = sp.deliver(message("one"))
    assert done.returncode == 75  # a fresh lock, whatever it is, is somebody's lock
    assert victim.read_bytes() == b"precious\n" and lock.is_symlink()
    os.utime(lock, (1, 1), follow_symlinks=False)  # now stale: the link itself goes
    assert sp.deliver(message("one")).returncode == 0
    assert victim.read_bytes() == b"precious\n" and not lock.is_symlink()


# --- refused mailboxes ------------------------------------------------------


def _refused(sp: Spool, check_unchanged: list[Path]) -> None:
    before = {p: p.read_bytes() for p in check_unchanged}
    done = sp.deliver(message("evil"))
    assert done.returncode == 75, done
    assert {p: p.read_bytes() for p in check_unchanged} == before
    assert not Path(f"{sp.box}.lock").exists()


def test_symlinked_mailbox_refused(sp: Spool) -> None:
    victim = sp.root / "victim"
    victim.write_bytes(b"precious\n")
    os.chown(victim, MAIL_UID, MAIL_GID)
    sp.box.symlink_to(victim)
    _refused(sp, [victim])


def test_dangling_symlink_mailbox_refused(sp: Spool) -> None:
    target = sp.root / "created-through-link"
    sp.box.symlink_to(target)
    _refused(sp, [])
    assert not target.exists()


def test_hard_linked_mailbox_refused(sp: Spool) -> None:
    assert sp.deliver(message("one")).returncode == 0
    other = sp.spool / "other"
    os.link(sp.box, other)
    _refused(sp, [sp.box])


def test_fifo_refused_without_hanging(sp: Spool) -> None:
    os.mkfifo(sp.box, 0o600)
    os.chown(sp.box, MAIL_UID, MAIL_GID)
    _refused(sp, [])


def test_directory_refused(sp: Spool) -> None:
    sp.box.mkdir()
    os.chown(sp.box, MAIL_UID, MAIL_GID)
    _refused(sp, [])


def test_wrong_owner_refused(sp: Spool) -> None:
    sp.box.write_bytes(entry(message("root-owned")))
    sp.box.chmod(0o666)  # even writable for the storage account: still refused
    _refused(sp, [sp.box])


def test_symlinked_parent_inside_spool_refused(sp: Spool) -> None:
    config = write_config(sp.root / "nested.toml", sp.spool, lock_timeout=1.0,
                          mbox_template=f"{sp.spool}/{{domain}}/{{local}}")
    elsewhere = make_spool(sp.root / "elsewhere")
    (sp.spool / "example.com").symlink_to(elsewhere)
    data = address_data(sp.spool / "example.com" / "alice")
    done = run_deliver(config, data, message("x"))
    assert done.returncode == 75, done
    assert list(elsewhere.iterdir()) == []
    # The same layout with a real directory works (and is created when missing).
    (sp.spool / "example.com").unlink()
    done = run_deliver(config, data, message("x"))
    assert done.returncode == 0, done
    assert (sp.spool / "example.com" / "alice").read_bytes() == entry(message("x"))


# --- quota ------------------------------------------------------------------


def test_quota_edges(sp: Spool) -> None:
    one, two = message("one"), message("two")
    size = len(entry(one))
    assert len(entry(two)) == size
    # exact fit into an empty mailbox
    assert sp.deliver(one, quota=str(size)).returncode == 0
    assert sp.box.stat().st_size == size
    # one byte over
    before = snapshot(sp.box)
    done = sp.deliver(two, quota=str(2 * size - 1))
    assert done.returncode == 75 and b"quota" in done.stdout, done
    assert snapshot(sp.box) == before
    # exact fit again
    assert sp.deliver(two, quota=str(2 * size)).returncode == 0
    # 0 = unlimited
    assert sp.deliver(message("three"), quota="0").returncode == 0
    assert sp.subjects() == ["one", "two", "three"]
    # larger than the whole quota: permanent, nothing touched
    before = snapshot(sp.box)
    done = sp.deliver(message("big", 100), quota=str(size))
    assert done.returncode == exitcodes.EX_TOOBIG == 100 and b"whole quota" in done.stdout, done
    assert snapshot(sp.box) == before
    # units
    assert sp.deliver(message("four"), quota="1K").returncode == 0


def test_two_concurrent_deliveries_at_the_quota_edge(sp: Spool) -> None:
    assert sp.deliver(message("base")).returncode == 0
    base = sp.box.stat().st_size
    a, b = message("aaaa"), message("bbbb")
    quota = str(base + len(entry(a)))  # room for exactly one of them
    procs = [
        subprocess.Popen([DELIVER, "--config", str(sp.config), "--address-data",
                          sp.data(quota=quota)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in (a, b)
    ]
    outputs = [p.communicate(from_line() + m, timeout=60) for p, m in zip(procs, (a, b), strict=True)]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 75], outputs
    assert sp.box.stat().st_size == int(quota)
    subjects = sp.subjects()
    assert subjects[0] == "base" and len(subjects) == 2 and subjects[1] in ("aaaa", "bbbb")


# --- faults -----------------------------------------------------------------


@pytest.fixture
def small_tmpfs(sp: Spool) -> Iterator[Spool]:
    mount = sp.root / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        spool = make_spool(mount / "spool")
        config = write_config(sp.root / "small.toml", spool, lock_timeout=1.0)
        yield Spool(sp.root, spool, config, spool / "alice@example.com")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_defers_and_restores_mailbox(small_tmpfs: Spool) -> None:
    sp = small_tmpfs
    assert sp.deliver(message("one")).returncode == 0
    assert sp.deliver(message("two")).returncode == 0
    before = snapshot(sp.box)
    os.utime(sp.box, ns=(1_000_000_000, 2_000_000_000))  # a distinctive mtime to be restored
    before = snapshot(sp.box)
    vfs = os.statvfs(sp.spool)
    free = vfs.f_bavail * vfs.f_frsize
    filler = sp.spool / "filler"
    filler.write_bytes(b"\0" * (free - 64 * 1024))
    big = message("big", 20_000)  # ~300 KB: the first write is short, the next one ENOSPC
    assert len(big) > 4 * 64 * 1024
    done = sp.deliver(big)
    assert done.returncode == 75, done
    assert b"No space left" in done.stdout and b"restored" in done.stdout
    assert snapshot(sp.box) == before
    filler.unlink()
    assert sp.deliver(big).returncode == 0
    assert sp.subjects() == ["one", "two", "big"]


def test_kill_9_mid_write_is_undone_by_the_next_delivery(sp: Spool) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace (package strace) is needed to kill the hook inside write()")
    assert sp.deliver(message("one")).returncode == 0
    assert sp.deliver(message("two")).returncode == 0
    earlier = sp.box.read_bytes()
    # Over 1 MiB: the hook writes in 1 MiB chunks, so SIGKILL at the second write
    # to the mailbox leaves exactly a torn first chunk behind.
    huge = message("huge", 150_000)
    assert len(huge) > (1 << 20) + 1000
    killer = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(sp.box),
              "-e", "trace=write", "-e", "inject=write:signal=KILL:when=2"]
    done = run_deliver(sp.config, sp.data(), huge, wrapper=killer)
    assert done.returncode != 0, done  # killed, not delivered
    torn = sp.box.read_bytes()
    assert torn.startswith(earlier) and len(torn) == len(earlier) + (1 << 20)
    lock = Path(f"{sp.box}.lock")
    assert lock.exists() and b" size=" in lock.read_bytes()  # the journal of the dead append
    # The next delivery removes the dead hook's lock and its torn entry, then appends.
    done = sp.deliver(message("three"))
    assert done.returncode == 0, done
    assert sp.box.read_bytes() == earlier + entry(message("three"))
    assert sp.subjects() == ["one", "two", "three"]
    assert not lock.exists()
    # The retry of the killed message stores it whole, once.
    assert sp.deliver(huge).returncode == 0
    assert sp.subjects() == ["one", "two", "three", "huge"]


# --- maildir ----------------------------------------------------------------


def test_maildir_delivery(sp: Spool) -> None:
    box = sp.spool / "example.com" / "bob" / "Maildir"
    data = address_data(box, fmt="maildir")
    for tag in ("m1", "m2"):
        done = run_deliver(sp.config, data, message(tag) + b"From inside\n")
        assert done.returncode == 0, done
    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and list((box / "tmp").iterdir()) == []
    contents = sorted(f.read_bytes() for f in files)
    assert contents == sorted(message(t) + b"From inside\n" for t in ("m1", "m2"))
    assert all(f.stat().st_uid == MAIL_UID and f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert all(f.name.endswith(f",S={len(message('m1')) + 12}") for f in files)


def test_maildir_symlinked_subdir_refused(sp: Spool) -> None:
    box = sp.spool / "example.com" / "bob" / "Maildir"
    assert run_deliver(sp.config, address_data(box, fmt="maildir"), message("a")).returncode == 0
    elsewhere = make_spool(sp.root / "elsewhere")
    shutil.rmtree(box / "tmp")
    (box / "tmp").symlink_to(elsewhere)
    done = run_deliver(sp.config, address_data(box, fmt="maildir"), message("b"))
    assert done.returncode == 75, done
    assert list(elsewhere.iterdir()) == [] and len(list((box / "new").iterdir())) == 1


# --- 50 concurrent deliveries while a real popa3d reads and deletes ------------


@dataclass
class Popa3d:
    port: int
    login: str


@pytest.fixture
def popa3d(sp: Spool) -> Iterator[Popa3d]:
    """Stock /usr/sbin/popa3d, inetd-style under socat, in a private mount namespace.

    Bind mounts (private to the namespace, the host's /etc is untouched):
    our pam.d (service popa3d = pam_permit), /etc/passwd + one user
    ``alice@example.com`` with the storage account's uid/gid (popa3d setuids to
    getpwnam(login) and opens /var/mail/<login>), and our spool on /var/mail.
    """
    login = "alice@example.com"
    pam = sp.root / "pam.d"
    pam.mkdir()
    (pam / "popa3d").write_text(
        "auth required pam_permit.so\naccount required pam_permit.so\n"
        "session required pam_permit.so\n")
    passwd = sp.root / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text()
                      + f"{login}:x:{MAIL_UID}:{MAIL_GID}::/nonexistent:/usr/sbin/nologin\n")
    for path in (pam, pam / "popa3d", passwd):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    script = (
        'mount --bind "$1" /etc/pam.d && mount --bind "$2" /etc/passwd && '
        'mount --bind "$3" /var/mail && '
        f'exec socat TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork EXEC:/usr/sbin/popa3d'
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--", "sh", "-c", script, "sh", str(pam), str(passwd), str(sp.spool)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port, 10, proc), "socat/popa3d did not start"
        yield Popa3d(port, login)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pop_session(server: Popa3d, seen: Counter[str], errors: list[str]) -> None:
    """One POP3 session: RETR every message, check it, DELE it, QUIT (popa3d commits)."""
    client = poplib.POP3("127.0.0.1", server.port, timeout=30)
    try:
        client.user(server.login)
        client.pass_("any")  # pam_permit
        count, _size = client.stat()
        for number in range(1, count + 1):
            _resp, lines, _octets = client.retr(number)
            subject = [line for line in lines if line.startswith(b"Subject: ")]
            tag = subject[0][9:].decode() if len(subject) == 1 else "?"
            expected = message(tag, 40).split(b"\n\n", 1)[1].rstrip(b"\n").split(b"\n")
            body = lines[lines.index(b"") + 1 :]
            if body != expected:
                errors.append(f"message {tag!r} garbled: {lines[:3]!r}...")
            seen[tag] += 1
            client.dele(number)
    finally:
        client.quit()


@pytest.mark.slow
def test_50_concurrent_deliveries_while_popa3d_reads(sp: Spool, popa3d: Popa3d) -> None:
    """Two waves of 25 deliveries at once; the second starts only after popa3d has
    already taken mail out, and a reader session must overlap it.  Every session
    is recorded; a failing one fails the test."""
    config = write_config(sp.root / "busy.toml", sp.spool, lock_timeout=60.0)
    seen: Counter[str] = Counter()
    errors: list[str] = []
    failures: list[BaseException] = []
    sessions: list[tuple[float, float]] = []  # (start, end) of each reader session
    took_mail = threading.Event()
    finished = threading.Event()

    def reader() -> None:
        try:
            while not finished.is_set():
                started = time.monotonic()
                _pop_session(popa3d, seen, errors)
                sessions.append((started, time.monotonic()))
                if seen:
                    took_mail.set()
                finished.wait(0.05)  # leave the deliveries some CPU on a 2-core runner
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not as a warning
            failures.append(exc)
            took_mail.set()

    def wave(numbers: range) -> list[tuple[int, bytes]]:
        procs = [
            subprocess.Popen([DELIVER, "--config", str(config), "--address-data", address_data(sp.box)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in numbers
        ]
        for proc, n in zip(procs, numbers, strict=True):  # all at once: input first, then wait
            assert proc.stdin is not None
            proc.stdin.write(from_line() + message(f"msg{n:02d}", 40))
            proc.stdin.close()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            output = proc.stdout.read()
            results.append((proc.wait(timeout=120), output))
        return results

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        results = wave(range(25))
        assert took_mail.wait(60), "popa3d took no mail out while the first wave went in"
        second_started = time.monotonic()
        results += wave(range(25, 50))
        second_ended = time.monotonic()
    finally:
        finished.set()
        thread.join(timeout=120)
    assert not thread.is_alive() and failures == [], failures
    assert [code for code, _output in results] == [0] * 50, results
    during = [(start, end) for start, end in sessions if start < second_ended and end > second_started]
    assert during, f"no popa3d session while the second wave was delivered ({len(sessions)} in all)"
    _pop_session(popa3d, seen, errors)  # whatever is left after the last delivery
    assert errors == []
    assert seen == Counter({f"msg{n:02d}": 1 for n in range(50)}), seen
    # popa3d rewrote the file under its fcntl lock while we appended: still a clean mbox.
    assert sp.box.read_bytes() == b""


# --- through real Exim ------------------------------------------------------


@pytest.fixture
def exim(sp: Spool) -> Iterator[MiniExim]:
    """The smallest private config around the hook (``deliver_support.MiniExim``)."""
    mini = MiniExim(sp.root / "exim", sp.config, hook_users={
        "alice": sp.data(),
        "full": address_data(sp.spool / "full@example.com", quota="1K"),
        "tiny": address_data(sp.spool / "tiny@example.com", quota="100"),
    })
    try:
        yield mini
    finally:
        mini.close()  # fails on a paniclog entry


@pytest.fixture(params=DELIVERY_PATHS)
def via(request: pytest.FixtureRequest) -> str:
    """Each shipped-config test runs over both delivery paths (MAILROUTER_DELIVERY_VIA)."""
    return str(request.param)


@pytest.fixture
def hub(sp: Spool, slapd: Slapd, dataset: Dataset, via: str) -> Iterator[Exim]:
    """The shipped exim/mailrouter.conf: LDAP routing (the suite's data set, fulluser has
    a 1K quota) and the shipped ``mailrouter_delivery`` transport -- or ``mailrouter_lmtp``
    and a running mailrouter-lmtpd -- into this test's spool."""
    config = hook_config(sp.root / "hub.toml", dataset, [slapd.uri], sp.spool, lock_timeout=1.0)
    server = Lmtpd(sp.root / "lmtpd", config).start() if via == "lmtp" else None
    shipped = hub_exim(sp.root, config, **(server.macros() if server else {}))
    try:
        yield shipped
    finally:
        shipped.close()  # fails on a paniclog entry
        if server is not None:
            server.stop()


def _defers_while_locked_then_delivers_once(sp: Spool, exim: Exim, deliver: Callable[[str], object]) -> None:
    deliver("first")
    assert sp.subjects() == ["first"], exim.main_log()
    holder = Holder(["exim_lock", "-q", str(sp.box), "echo locked; cat >/dev/null"])
    try:
        deliver("second")
        assert exim.queue_count() == 1, exim.main_log()
        assert "== alice@example.com" in exim.main_log()
        assert sp.subjects() == ["first"]
    finally:
        holder.release()
    done = exim.queue_run()
    assert done.returncode == 0, done
    assert exim.queue_count() == 0, exim.main_log()
    assert sp.subjects() == ["first", "second"]
    exim.queue_run()  # nothing left to deliver twice
    assert sp.subjects() == ["first", "second"]


def test_exim_defers_while_locked_then_delivers_once(sp: Spool, exim: MiniExim) -> None:
    _defers_while_locked_then_delivers_once(
        sp, exim, lambda tag: exim.submit(message(tag), "alice@example.com"))


def test_shipped_exim_defers_while_locked_then_delivers_once(sp: Spool, hub: Exim, via: str) -> None:
    _defers_while_locked_then_delivers_once(
        sp, hub, lambda tag: hub.deliver(message(tag), "alice@example.com", sender="sender@example.org"))
    assert f"R=users T={DELIVERY_TRANSPORTS[via]}" in hub.main_log()


def test_exim_daemon_smtp_delivery(sp: Spool, exim: MiniExim) -> None:
    (port,) = exim.start_daemon()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("smtp@example.org", ["alice@example.com"],
                            b"Subject: via daemon\r\n\r\nFrom a line\r\n.leading dot\r\n")
        deadline = time.monotonic() + 30
        while "Completed" not in exim.main_log() and time.monotonic() < deadline:
            time.sleep(0.05)  # delivery runs in a child of the daemon
    finally:
        exim.stop_daemon()
    assert "=> alice <alice@example.com> R=to_hook T=mailrouter_deliver" in exim.main_log()
    data = sp.box.read_bytes()
    assert data.startswith(b"From smtp@example.org ") and data.endswith(
        b"\n\n>From a line\n.leading dot\n\n")
    assert sp.subjects() == ["via daemon"]


def test_exim_over_quota_defers_and_too_big_bounces(sp: Spool, exim: MiniExim) -> None:
    full = sp.spool / "full@example.com"
    exim.submit(message("fits"), "full@example.com")
    assert len(mailbox.mbox(str(full))) == 1
    exim.submit(message("overflow", 40), "full@example.com")
    log = exim.main_log()
    assert "== full@example.com" in log and "mailbox full" in log, log
    assert exim.queue_count() >= 1
    exim.submit(message("huge", 40), "tiny@example.com")
    log = exim.main_log()
    assert "** tiny@example.com" in log and "whole quota" in log, log
    assert not (sp.spool / "tiny@example.com").exists()


def test_shipped_exim_over_quota_defers_and_too_big_bounces(sp: Spool, hub: Exim, via: str) -> None:
    full = sp.spool / "fulluser@example.com"  # quota 1K in the data set

    def deliver(tag: str, lines: int) -> None:
        done = hub.deliver(message(tag, lines), "fulluser@example.com", sender="sender@example.org")
        assert done.returncode == 0, done  # taken in; the delivery's fate is in the log

    deliver("fits", 3)
    assert [m["Subject"] for m in mailbox.mbox(str(full))] == ["fits"], hub.main_log()
    before = snapshot(full)
    deliver("overflow", 20)  # fits alone, not beside "fits": wait for room
    log = hub.main_log()
    transport = DELIVERY_TRANSPORTS[via]
    assert f"== fulluser@example.com R=users T={transport}" in log and "mailbox full" in log, log
    assert hub.queue_count() == 1
    deliver("huge", 200)  # larger than the whole quota: never fits, bounce
    log = hub.main_log()
    assert f"** fulluser@example.com R=users T={transport}" in log, log
    # return_fail_output (lmtp: the server's reply): the reason is in the bounce (to sender@example.org,
    # which example.org's catch-all hands to carol).
    assert "whole quota" in (sp.spool / "carol@example.org").read_text(), log
    assert snapshot(full) == before


# --- syslog -----------------------------------------------------------------

SYSLOG_PROBE = r"""
import json, os, socket, subprocess, sys
# Private mount namespace: a tmpfs /dev with only null and our log socket.
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/dev"], check=True)
os.mknod("/dev/null", 0o666 | 0o020000, os.makedev(1, 3))
os.chmod("/dev/null", 0o666)
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("/dev/log")
os.chmod("/dev/log", 0o666)
log.settimeout(0.5)
runs = []
for stdin, data in json.loads(sys.argv[1]):
    done = subprocess.run([sys.argv[2], "--config", sys.argv[3], "--address-data", data],
                          input=stdin.encode("latin-1"), capture_output=True,
                          env={"PATH": "/bin:/usr/bin", "MESSAGE_ID": "test"})
    lines = []
    while True:
        try:
            lines.append(log.recv(4096).decode("latin-1"))
        except socket.timeout:
            break
    runs.append([done.returncode, lines])
print(json.dumps(runs))
"""


def test_one_mail_syslog_line_per_delivery(sp: Spool) -> None:
    good = (from_line() + message("logged")).decode("latin-1")
    cases = [[good, sp.data()], [good, sp.data(quota="12Q")], [good, "garbage"]]
    done = subprocess.run(
        ["unshare", "-m", "--", sys.executable, "-c", SYSLOG_PROBE, json.dumps(cases), DELIVER,
         str(sp.config)],
        capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done
    runs = json.loads(done.stdout)
    assert [code for code, _lines in runs] == [0, 75, 75]
    for (code, lines), status in zip(runs, ("delivered", "deferred", "deferred"), strict=True):
        assert len(lines) == 1, lines
        priority = 2 * 8 + (6 if code == 0 else 4)  # LOG_MAIL | LOG_INFO / LOG_WARNING
        assert lines[0].startswith(f"<{priority}>"), lines
        assert "mailrouter-deliver[" in lines[0] and f"status={status}" in lines[0]
    assert f"mailbox={sp.box}" in runs[0][1][0] and "id=test" in runs[0][1][0]


def test_ldap_secret_is_never_read(sp: Spool) -> None:
    """Delivery must not need the LDAP secret (the storage account cannot read it).

    Run as root the hook could read a 0600 file, so permissions prove nothing:
    every open(2) of the hook and its children is traced instead.
    """
    if shutil.which("strace") is None:
        pytest.fail("strace (package strace, bin/install-deps) is needed to watch the hook's opens")
    secret = sp.root / "ldap.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)  # root only
    config = sp.root / "with-secret.toml"
    config.write_text(sp.config.read_text().replace(
        "[ldap]\n", f'[ldap]\nbind_dn = "cn=svc,o=top"\nbind_password_file = "{secret}"\n'))
    config.chmod(0o644)
    trace = sp.root / "opens.trace"
    tracer = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
    done = run_deliver(config, sp.data(), message("one"), wrapper=tracer)
    assert done.returncode == 0, done
    assert sp.subjects() == ["one"]
    opened = trace.read_text()
    assert str(config) in opened  # the trace sees the hook's opens ...
    assert str(secret) not in opened  # ... and the secret is not among them
