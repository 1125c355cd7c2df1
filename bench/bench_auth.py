#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): can a client tell "no such user" from "wrong password"
by the clock?

Starts a private slapd from the project's ldap/ files with the demo data
({ARGON2} hashes, as deployed), then times, interleaved so that drift hits all
cases alike:

* the authentication core (``mailrouter.auth.authenticate``) in-process, and
* the whole SMTP AUTH path's server side: a request to a running
  ``mailrouter-authd`` over its Unix socket (fork, LDAP connect, binds, reply),
* a POP3 login through real popa3d with the shipped PAM file (pam_exec starts
  ``mailrouter-pam-auth`` per login; ``mailrouter.sandbox.popa3d``),

for: unknown user, wrong password, disabled-looking non-canonical login and the
right password.  Prints medians and 90th percentiles in milliseconds.

Usage:  bench/bench_auth.py [--rounds N]       (as root, from the checkout)
"""

from __future__ import annotations

import argparse
import base64
import os
import poplib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailrouter import auth, config
from mailrouter.sandbox import demo
from mailrouter.sandbox.configs import write_config
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose ldap/ and popa3d/ files run
AUTHD = str(Path(sys.executable).parent / "mailrouter-authd")  # the venv running this script


def authd_ask(path: Path, login: str, password: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(
            b"AUTH " + base64.b64encode(login.encode()) + b" " + base64.b64encode(password.encode()) + b"\n"
        )
        client.shutdown(socket.SHUT_WR)
        return client.recv(100)


def pop3_login(port: int, login: str, password: str) -> bytes:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(login)
        return client.pass_(password)
    except poplib.error_proto as exc:
        return bytes(exc.args[0])
    finally:
        client.close()


def measure(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for call in cases.values():  # warm-up
        call()
    for _ in range(rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"  {'case':<22} {'median ms':>10} {'p90 ms':>10}")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {name:<22} {statistics.median(values):>10.1f} {p90:>10.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-"))
    data = demo.build()
    slapd = Slapd(work / "slapd", ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords)
    slapd.start()
    authd: subprocess.Popen[bytes] | None = None
    try:
        service = data.account("service")
        conf_path = write_config(work / "conf" / "mailrouter.toml", uris=[slapd.uri], base_dn=data.base_dn,
                                 bind_dn=service.dn, password=service.password)
        conf = config.load(str(conf_path))
        alice = data.account("alice@example.com")
        logins = {
            "unknown user": ("nobody@example.com", alice.password + "x"),
            "wrong password": ("alice@example.com", alice.password + "x"),
            "non-canonical login": ("ALICE@example.com", alice.password + "x"),
            "right password": ("alice@example.com", alice.password),
        }
        core = {
            name: (lambda login=login, password=password: auth.authenticate(conf, login, password))
            for name, (login, password) in logins.items()
        }
        report("core: mailrouter.auth.authenticate (in-process)", measure(core, args.rounds))

        sock = work / "auth.sock"
        authd = subprocess.Popen(
            [AUTHD, "--config", str(conf_path), "--socket", str(sock)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        over_socket = {
            name: (lambda login=login, password=password: authd_ask(sock, login, password))
            for name, (login, password) in logins.items()
        }
        assert authd_ask(sock, "alice@example.com", alice.password) == b"OK\n"
        report(
            "mailrouter-authd over its Unix socket (what Exim waits for)", measure(over_socket, args.rounds)
        )

        pop = Popa3d(work / "pop", str(conf_path), root=ROOT, tls=False)
        pop.start()
        try:
            assert pop3_login(pop.port, "alice@example.com", alice.password).startswith(b"+OK")
            pop3 = {
                name: (lambda login=login, password=password: pop3_login(pop.port, login, password))
                for name, (login, password) in logins.items()
            }
            report("POP3 login through popa3d + pam_exec (USER/PASS round trip)", measure(pop3, args.rounds))
        finally:
            pop.stop()
        print(f"\nrounds per case: {args.rounds}; cpus: {os.cpu_count()}")
    finally:
        if authd is not None:
            os.killpg(authd.pid, signal.SIGTERM)
            authd.wait(timeout=10)
        slapd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
