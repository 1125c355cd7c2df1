"""mailrouter-authd, the Unix-socket password check behind Exim's ${readsocket}.

The real executable is started as a daemon on a socket in a temp dir; requests
are exactly what exim/mailrouter.conf sends: ``AUTH <b64 login> <b64 password>\\n``.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    BIN,
    CASES,
    IdleConnections,
    alice,
    hook_config,
    hub_exim,
    make_config,
    refusal_cases,
    start_slapd,
)
from dataset import Dataset
from mailrouter.sandbox import demo, tls
from mailrouter.sandbox.exim import EXIM_USER, make_readable_dir
from mailrouter.sandbox.slapd import Slapd, free_port
from test_auth import HOSTILE_LOGINS, HOSTILE_PASSWORDS

AUTHD = str(BIN / "mailrouter-authd")


class Authd:
    def __init__(self, workdir: Path, conf_path: Path, *extra: str) -> None:
        self.socket_path = workdir / "auth.sock"
        self.log_path = workdir / "authd.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [AUTHD, "--config", str(conf_path), "--socket", str(self.socket_path), *extra],
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("authd did not start: " + self.log_path.read_text())
            time.sleep(0.02)

    def ask(self, request: bytes, timeout: float = 30) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(self.socket_path))
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)  # what Exim's ${readsocket} does by default
            data = b""
            while chunk := client.recv(100):
                data += chunk
            return data

    def auth(self, login: str | bytes, password: str | bytes) -> bytes:
        raw_login = login.encode() if isinstance(login, str) else login
        raw_password = password.encode() if isinstance(password, str) else password
        line = b"AUTH " + base64.b64encode(raw_login) + b" " + base64.b64encode(raw_password) + b"\n"
        return self.ask(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def authd(slapd: Slapd, dataset: Dataset) -> Iterator[Authd]:
    # Not under pytest's tmp dir (mode 0700): other users must be able to reach
    # the socket for the permission test to test the socket's own mode.
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-authd-"))
    try:
        workdir.chmod(0o755)
        server = Authd(workdir, hook_config(workdir / "conf" / "mailrouter.toml", dataset, [slapd.uri]))
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir)


def test_right_password_ok(authd: Authd, dataset: Dataset) -> None:
    assert authd.auth("alice@example.com", alice(dataset).password) == b"OK\n"
    assert authd.auth("dave@example.org", dataset.account("dave@example.org").password) == b"OK\n"


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("disabled")])
def test_refusals_are_one_token(authd: Authd, dataset: Dataset, case: str) -> None:
    login, password = refusal_cases(dataset)[case]
    assert authd.auth(login, password) == b"NO\n"


def test_malformed_requests_get_temp(authd: Authd, dataset: Dataset) -> None:
    good = base64.b64encode(b"alice@example.com").decode()
    for request in [
        b"HELLO\n",
        b"AUTH " + good.encode() + b"\n",
        b"AUTH " + good.encode() + b" !!notbase64!!\n",
        b"AUTH  " + good.encode() + b" eA==\n",
        b"auth " + good.encode() + b" eA==\n",
        b"AUTH " + good.encode() + b" eA==",  # no newline, then EOF
        b"A" * 5000 + b"\n",
    ]:
        assert authd.ask(request) == b"TEMP\n", request
    assert authd.auth(b"alice@example.com", b"\xff\xfe") == b"NO\n"  # not UTF-8


def test_socket_permissions(authd: Authd) -> None:
    info = os.stat(authd.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam("Debian-exim").gr_gid


def test_other_users_cannot_ask(authd: Authd, dataset: Dataset, tmp_path: Path) -> None:
    """nobody: the socket mode stops it.  nobody in group Debian-exim: passes the
    mode, refused by the SO_PEERCRED check (connection closed, no token)."""
    client = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES'); sys.exit()\n"
        "try:\n s.sendall(sys.argv[2].encode()); print(repr(s.recv(100)) or 'closed')\n"
        "except (ConnectionResetError, BrokenPipeError):\n print('closed')\n"
    )
    line = "AUTH " + base64.b64encode(b"alice@example.com").decode() + " "
    line += base64.b64encode(alice(dataset).password.encode()).decode() + "\n"
    outputs = []
    for group in ("nogroup", "Debian-exim"):
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                f"--regid={group}",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                client,
                str(authd.socket_path),
                line,
            ],
            capture_output=True,
            check=False,
            timeout=30,
        )
        outputs.append(done.stdout.decode().strip() or done.stderr.decode()[-300:])
    assert outputs == ["EACCES", "b''"] or outputs == ["EACCES", "closed"]


def test_hundred_idle_connections_starve_no_check(authd: Authd, demo_data: demo.DemoDirectory) -> None:
    """Issue 13 item 7: idle peers used to hold a forked child each until their 10 s
    read timeout, 32 at most: 100 of them left every real check unanswered.
    A liveness check (generous deadline), not a speed claim: bench/bench_sockets.py measures."""
    password = alice(demo_data).password
    with IdleConnections(authd.socket_path, 100) as idle:
        for login, attempt, token in [("alice@example.com", password, b"OK\n"),
                                      ("alice@example.com", password + "x", b"NO\n"),
                                      ("nobody@example.com", password, b"NO\n")]:
            started = time.monotonic()
            assert authd.auth(login, attempt) == token
            assert time.monotonic() - started < 10.0
    assert idle.opened >= 100


def test_more_checks_than_children_wait_their_turn(tmp_path: Path) -> None:
    """40 checks at once against ``--max-children 2``: the parent queues the complete
    requests and every one gets its definite answer, in order.  {SSHA} hashes so that
    the figure is the queue's, not the CPU's (bench/bench_sockets.py measures {ARGON2})."""
    data = demo.build(scheme="ssha")
    server = start_slapd(tmp_path / "slapd", data)
    try:
        conf = make_config(tmp_path / "c", data, [server.uri], timeouts=10.0)
        authd = Authd(tmp_path, conf, "--max-children", "2")
        try:
            password = alice(data).password
            replies: list[bytes] = []
            lock = threading.Lock()

            def one(index: int) -> None:
                reply = authd.auth("alice@example.com", password if index % 2 else password + "x")
                with lock:
                    replies.append(reply)

            threads = [threading.Thread(target=one, args=(index,)) for index in range(40)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(replies) == [b"NO\n"] * 20 + [b"OK\n"] * 20
        finally:
            authd.stop()
    finally:
        server.stop()


def test_a_request_whose_client_gave_up_is_never_checked(
    tmp_path: Path, demo_data: demo.DemoDirectory
) -> None:
    """With every child busy (one, on a frozen LDAP), a complete request waits in the
    parent's queue; when its client hangs up meanwhile (Exim's 5 s), it is dropped
    unasked -- no LDAP work for nobody, no stale verdict in the log."""
    slow = start_slapd(tmp_path / "slapd", demo_data)
    try:
        conf = make_config(tmp_path / "c", demo_data, [slow.uri], timeouts=3.0)
        server = Authd(tmp_path, conf, "--max-children", "1")
        try:
            password = alice(demo_data).password
            slow.freeze()
            first: list[bytes] = []
            busy = threading.Thread(target=lambda: first.append(server.auth("alice@example.com", password)))
            busy.start()
            time.sleep(0.5)  # alice's check now holds the only child, waiting on slapd
            line = b"AUTH " + base64.b64encode(b"bob@example.com") + b" " + base64.b64encode(b"pw") + b"\n"
            with pytest.raises(TimeoutError):
                server.ask(line, timeout=1.0)  # gives up and hangs up, like Exim
            slow.thaw()
            busy.join(timeout=60)
            assert first and first[0] in (b"OK\n", b"TEMP\n")
            assert server.auth("carol@example.org", "wrong") == b"NO\n"  # the server goes on
        finally:
            server.stop()
    finally:
        slow.stop()
    log = server.log_path.read_text()
    assert "carol@example.org NO" in log and "bob@example.com" not in log


def test_ldap_down_is_temp(tmp_path: Path, dataset: Dataset) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}/"
    conf = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [dead], timeouts=1.0)
    server = Authd(tmp_path, conf)
    try:
        assert server.auth("alice@example.com", alice(dataset).password) == b"TEMP\n"
        assert server.auth("alice@example.com", "wrong") == b"TEMP\n"
    finally:
        server.stop()


def wait_for_a_request_on_frozen_ldap(slapd: Slapd, timeout: float = 30) -> None:
    """Return once a client has sent slapd a request it has not read: a frozen slapd
    accepts nothing, so the bytes wait in the kernel (Recv-Q) of a queued connection.
    The event that proves a login now waits on LDAP, whatever the machine's load."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{slapd.port} )"],
            capture_output=True, text=True, check=True,
        )
        if any(int(line.split()[0]) > 0 for line in done.stdout.splitlines() if line.strip()):
            return
        assert time.monotonic() < deadline, "no request reached the frozen slapd"
        time.sleep(0.02)


def _cmdlines_containing(secret: bytes) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if secret in handle.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def test_cmdline_scan_would_see_a_password() -> None:
    """The scan used below can fail: a process with the secret in argv is found."""
    marker = "pw-" + base64.b32encode(os.urandom(10)).decode()
    # Python keeps its argv (a shell might exec "sleep" and drop the marker).
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        deadline = time.monotonic() + 10
        found: list[str] = []
        while not found and time.monotonic() < deadline:  # cmdline is empty until exec is done
            found = _cmdlines_containing(marker.encode())
            time.sleep(0.02)
        assert found == [str(process.pid)]
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_password_never_on_a_command_line_while_ldap_is_frozen(
    tmp_path: Path, dataset: Dataset
) -> None:
    slow = start_slapd(tmp_path / "slapd", dataset)
    try:
        conf = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [slow.uri], timeouts=3.0)
        server = Authd(tmp_path, conf)
        try:
            password = alice(dataset).password
            assert server.auth("alice@example.com", password) == b"OK\n"
            slow.freeze()
            replies: list[bytes] = []
            asking = threading.Thread(
                target=lambda: replies.append(server.auth("alice@example.com", password))
            )
            asking.start()
            wait_for_a_request_on_frozen_ldap(slow)  # the child now waits on the frozen slapd
            assert asking.is_alive(), "the request did not wait on LDAP; the scan would prove nothing"
            children = subprocess.run(
                ["pgrep", "-P", str(server.process.pid)], capture_output=True, check=False
            ).stdout.split()
            assert children, "no per-request child is running"
            assert _cmdlines_containing(password.encode()) == []
            asking.join(timeout=30)
            assert replies == [b"TEMP\n"]
            slow.thaw()
            assert server.auth("alice@example.com", password) == b"OK\n"
        finally:
            server.stop()
    finally:
        slow.stop()


def test_log_has_login_and_verdict_never_the_password(authd: Authd, dataset: Dataset) -> None:
    password = alice(dataset).password
    authd.auth("alice@example.com", password)
    authd.auth("alice@example.com", password + "typo")
    log = authd.log_path.read_text()
    assert "alice@example.com OK" in log and "alice@example.com NO wrong password" in log
    assert password not in log


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-socket-activate"), reason="no systemd-socket-activate"
)
def test_systemd_socket_activation(tmp_path: Path, slapd: Slapd, dataset: Dataset) -> None:
    """The production path: systemd owns the socket (mailrouter-authd.socket, Accept=no)
    and hands the listening fd over with LISTEN_FDS/LISTEN_PID."""
    conf = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [slapd.uri])
    sock = tmp_path / "activated.sock"
    process = subprocess.Popen(
        [
            "/usr/bin/systemd-socket-activate",
            "-l",
            str(sock),
            AUTHD,
            "--config",
            str(conf),
            "--socket",
            str(tmp_path / "must-not-be-created.sock"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        line = b"AUTH " + base64.b64encode(b"alice@example.com") + b" "
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(str(sock))
            client.sendall(line + base64.b64encode(alice(dataset).password.encode()) + b"\n")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"OK\n"
        assert not (tmp_path / "must-not-be-created.sock").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


# -- end to end: real Exim (shipped exim/ config) -> real authd -> real slapd ---------
@pytest.fixture
def exim_with_authd(dataset: Dataset) -> Iterator[tuple[int, Slapd, Authd]]:
    """Exim's submission port with STARTTLS + AUTH, asking the real mailrouter-authd."""
    # Not pytest's tmp dir (0700): Exim's SMTP processes (Debian-exim) connect to the socket.
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-authd-exim-"))
    with contextlib.ExitStack() as cleanup:  # every step undone, even when one of them raises
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.chmod(0o755)
        slow = start_slapd(workdir / "slapd", dataset)
        cleanup.callback(slow.stop)
        conf = hook_config(workdir / "mailrouter.toml", dataset, [slow.uri], workdir / "mail", timeouts=3.0)
        authd_dir = workdir / "authd"
        authd_dir.mkdir(mode=0o755)
        server = Authd(authd_dir, conf)
        cleanup.callback(server.stop)
        certificates = tls.make_certificates(make_readable_dir(workdir / "tls"), key_group=EXIM_USER)
        port = free_port()
        exim = hub_exim(
            workdir,
            conf,
            MAILROUTER_TLS_CERT=str(certificates.cert),
            MAILROUTER_TLS_KEY=str(certificates.key),
            MAILROUTER_AUTH_SOCKET=str(server.socket_path),
        )
        cleanup.callback(exim.close)  # fails the test on a paniclog entry
        exim.start_daemon([port])
        yield port, slow, server


def _smtp_auth_plain(port: int, login: str, password: str) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway certificate; its CA is tested in test_pop3
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.starttls(context=context)
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return client.docmd("AUTH", "PLAIN " + token)[0]


@pytest.mark.slow
def test_smtp_auth_through_real_exim_and_authd(
    exim_with_authd: tuple[int, Slapd, Authd], dataset: Dataset
) -> None:
    port, slow, server = exim_with_authd
    password = alice(dataset).password
    assert _smtp_auth_plain(port, "alice@example.com", password) == 235
    for login, attempt in [
        ("alice@example.com", password + "x"),
        ("nobody@example.com", password),
        ("ALICE@example.com", password),
        ("../alice@example.com", password),
        ("alice@example.com", ""),
    ]:
        assert _smtp_auth_plain(port, login, attempt) == 535, login

    # A frozen LDAP: while Exim waits on authd, which waits on slapd, the password
    # is on no command line -- not Exim's, not authd's, not a child's.
    slow.freeze()
    codes: list[int] = []
    asking = threading.Thread(
        target=lambda: codes.append(_smtp_auth_plain(port, "alice@example.com", password))
    )
    asking.start()
    wait_for_a_request_on_frozen_ldap(slow)  # TLS, EHLO, AUTH done: an authd child waits on LDAP
    assert asking.is_alive(), "the login did not wait on LDAP; the scan would prove nothing"
    assert _children_of(server), "no authd child is waiting on LDAP"
    assert _cmdlines_containing(password.encode()) == []
    assert _cmdlines_containing(base64.b64encode(password.encode())) == []
    asking.join(timeout=60)
    assert codes and 400 <= codes[0] < 500, codes  # temporary, never "bad password"
    slow.thaw()
    assert _smtp_auth_plain(port, "alice@example.com", password) == 235


def test_smtp_auth_answers_with_hundred_idle_peers_on_authd(
    exim_with_authd: tuple[int, Slapd, Authd], demo_data: demo.DemoDirectory
) -> None:
    """Issue 13 item 7 through real Exim: idle peers of the auth socket used to hold
    all 32 children, and every AUTH got 435 after Exim's 5 s."""
    port, _slapd, server = exim_with_authd
    password = alice(demo_data).password
    with IdleConnections(server.socket_path, 100) as idle:
        assert _smtp_auth_plain(port, "alice@example.com", password) == 235
        assert _smtp_auth_plain(port, "alice@example.com", password + "x") == 535
    assert idle.opened >= 100


def _smtp_auth_raw(client: smtplib.SMTP, mechanism: str, login: bytes, password: bytes) -> tuple[int, bytes]:
    """One AUTH exchange with octets as given; the final (code, text)."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    if mechanism == "PLAIN":
        return client.docmd("AUTH", "PLAIN " + b64(b"\0" + login + b"\0" + password))
    for step in ("LOGIN", b64(login)):
        reply = client.docmd("AUTH", step) if step == "LOGIN" else client.docmd(step)
        if reply[0] != 334:
            return reply  # Exim ended the exchange early
    return client.docmd(b64(password))


def test_smtp_auth_hostile_input_answers_like_a_wrong_password(
    exim_with_authd: tuple[int, Slapd, Authd], demo_data: demo.DemoDirectory
) -> None:
    """Issue 13 item 1 through real Exim and authd: every odd password, for the known
    user and an unknown one, and every odd login gets the wrong password's exact
    SMTP answer -- never 435, which only existing users used to get."""
    port, _slapd, server = exim_with_authd
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway self-signed certificate

    def attempt(mechanism: str, login: bytes, password: bytes) -> tuple[int, bytes]:
        # A session each: Exim ends a session after a few failed AUTHs.
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.starttls(context=context)
            client.ehlo("client.example")
            return _smtp_auth_raw(client, mechanism, login, password)

    right = alice(demo_data).password.encode()
    known, unknown = b"alice@example.com", b"nobody@example.com"
    attempts = [(login, pw) for pw in HOSTILE_PASSWORDS.values() for login in (known, unknown)]
    attempts += [(login, right) for login in HOSTILE_LOGINS.values()]
    for mechanism in ("PLAIN", "LOGIN"):
        wrong = attempt(mechanism, known, right + b"x")
        assert wrong[0] == 535, wrong
        for login, password in attempts:
            reply = attempt(mechanism, login, password)
            assert reply == wrong, (mechanism, login[:40], password[:40], reply)
        assert attempt(mechanism, known, right)[0] == 235
    assert "TEMP" not in server.log_path.read_text()


def _children_of(server: Authd) -> str:
    done = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, check=False)
    return done.stdout.decode()
