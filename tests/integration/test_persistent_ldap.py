"""Persistent service connections of mailrouter-lookupd and mailrouter-authd workers.

Real daemons, real slapd(s).  What a worker holds is observed from outside,
with ``ss``: the established TCP connections to slapd's port and the local
port of each, so "the same connection" and "a new connection" are facts of the
kernel, not of our code.  Each server runs with ``--workers 1`` so that every
request goes to the one worker.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import hook_config, needs_root, start_slapd
from dataset import Dataset
from mailrouter.sandbox.exim import make_readable_dir
from mailrouter.sandbox.slapd import Slapd, free_port
from test_authd import Authd
from test_lookupd import Lookupd, ask

pytestmark = needs_root

ALICE = ("user", "alice", "example.com")


def connections(port: int) -> set[int]:
    """Local ports of the established client connections to ``port`` (slapd's)."""
    done = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=True,
    )
    pattern = r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:" + str(port)
    return {int(m.group(1)) for m in re.finditer(pattern, done.stdout)}


def settled(port: int) -> set[int]:
    """:func:`connections` once closes in flight have landed (an unbind is asynchronous)."""
    time.sleep(0.1)
    return connections(port)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailrouter-persist-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def slapd(workdir: Path, dataset: Dataset) -> Iterator[Slapd]:
    server = start_slapd(workdir / "slapd", dataset)
    try:
        yield server
    finally:
        server.stop()


def lookupd(workdir: Path, dataset: Dataset, uris: list[str], workers: int = 1, **settings: float) -> Lookupd:
    spool = make_readable_dir(workdir / "mail")
    config = hook_config(workdir / "mailrouter.toml", dataset, uris, spool, **settings)
    return Lookupd(config, workdir / "lookup.sock", "--workers", str(workers))


def user_reply(server: Lookupd) -> bytes:
    reply = ask(server.sock, *ALICE)
    assert reply.startswith(b"OK mailbox="), reply
    return reply


def test_worker_keeps_one_connection_across_requests(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    server = lookupd(workdir, dataset, [slapd.uri])
    try:
        user_reply(server)
        first = settled(slapd.port)
        assert len(first) == 1, first  # per-request connections would leave none open
        for _ in range(5):
            user_reply(server)
            assert settled(slapd.port) == first
    finally:
        server.stop()


def test_one_lookup_at_a_time_stays_on_one_warm_worker(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    """The idle worker that finished last takes the next request (sockserver's LIFO):
    serial lookups keep one process and one connection warm instead of going round
    all workers (each of which would then hold a connection of its own)."""
    server = lookupd(workdir, dataset, [slapd.uri], workers=4)
    try:
        for _ in range(8):
            user_reply(server)
        assert len(settled(slapd.port)) == 1
    finally:
        server.stop()


def test_connection_replaced_after_max_requests(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    server = lookupd(workdir, dataset, [slapd.uri], connection_max_requests=3)
    try:
        seen = []
        for _ in range(7):
            user_reply(server)
            seen.append(frozenset(settled(slapd.port)))
        assert all(len(ports) == 1 for ports in seen), seen  # the old one is closed, not leaked
        # A user lookup is one request: 3 on each connection.
        assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4] == seen[5] != seen[6], seen
    finally:
        server.stop()


def test_connection_replaced_after_max_age_and_idle(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    server = lookupd(workdir, dataset, [slapd.uri], connection_max_age=1.0)
    try:
        user_reply(server)
        first = settled(slapd.port)
        user_reply(server)
        assert settled(slapd.port) == first
        time.sleep(1.2)
        user_reply(server)
        second = settled(slapd.port)
        assert len(second) == 1 and second != first
    finally:
        server.stop()
    idle_dir = workdir / "idle"
    idle_dir.mkdir()
    idle_dir.chmod(0o755)
    server = lookupd(idle_dir, dataset, [slapd.uri], connection_max_idle=0.5)
    try:
        user_reply(server)
        first = settled(slapd.port)
        time.sleep(0.8)
        user_reply(server)
        assert settled(slapd.port) != first
    finally:
        server.stop()


def test_first_request_after_slapd_restart_is_answered(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    server = lookupd(workdir, dataset, [slapd.uri])
    try:
        expected = user_reply(server)
        slapd.restart()
        # The worker's connection is dead; the one retry on a fresh one answers.
        assert ask(server.sock, *ALICE) == expected
        assert len(settled(slapd.port)) == 1
        assert ask(server.sock, *ALICE) == expected
    finally:
        log = server.stop()
    assert "TEMP" not in log, log


def test_failover_to_the_second_uri(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    second = start_slapd(workdir / "slapd2", dataset)
    server = lookupd(workdir, dataset, [slapd.uri, second.uri])
    try:
        expected = user_reply(server)
        assert len(settled(slapd.port)) == 1 and not connections(second.port)
        slapd.stop()  # the first is gone: its connection breaks, the retry fails over
        assert ask(server.sock, *ALICE) == expected
        assert len(settled(second.port)) == 1
        assert ask(server.sock, *ALICE) == expected
    finally:
        log = server.stop()
        second.stop()
    assert "TEMP" not in log, log


def test_first_uri_down_from_the_start(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    server = lookupd(workdir, dataset, [f"ldap://127.0.0.1:{free_port()}/", slapd.uri])
    try:
        user_reply(server)
        first = settled(slapd.port)
        user_reply(server)
        assert settled(slapd.port) == first and len(first) == 1
    finally:
        server.stop()


def pam(server: Authd, login: str, password: str) -> bytes:
    return server.ask(b"PAM " + base64.b64encode(login.encode()) + b" " + base64.b64encode(password.encode())
                      + b"\n")


def test_authd_service_connection_never_carries_a_user_identity(
    workdir: Path, slapd: Slapd, dataset: Dataset
) -> None:
    """carol (example.org) may not read example.com's entries (ldap/acl.conf): were
    the worker's service connection left bound as her, alice's lookup would find
    nothing and her right password would be refused."""
    config = hook_config(workdir / "conf" / "mailrouter.toml", dataset, [slapd.uri])
    server = Authd(workdir, config, "--workers", "1")
    try:
        carol = dataset.account("carol@example.org")
        alice = dataset.account("alice@example.com")
        assert server.auth(carol.address, carol.password) == b"OK\n"
        service = settled(slapd.port)
        assert len(service) == 1  # the user binds' short connections are closed again
        assert server.auth(alice.address, alice.password) == b"OK\n"
        assert server.auth(carol.address, "wrong") == b"NO\n"
        assert pam(server, alice.address, alice.password).startswith(b"OK {")
        assert settled(slapd.port) == service
        slapd.restart()
        assert server.auth(alice.address, alice.password) == b"OK\n"  # not TEMP: the one retry
    finally:
        server.stop()
