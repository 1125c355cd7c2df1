#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): can a client tell "no such user" from "wrong password"
by the clock -- whatever login or password it sends?

Starts a private slapd from the project's ldap/ files with the demo data
({ARGON2} hashes, as deployed), then times, interleaved so that drift hits all
cases alike:

* the authentication core (``mailrouter.auth.authenticate_raw``) in-process, and
* the whole SMTP AUTH path's server side: a request to a running
  ``mailrouter-authd`` over its Unix socket (fork, LDAP connect, binds, reply),
* a POP3 login through real popa3d with the shipped PAM file (pam_exec starts
  ``mailrouter-pam-auth`` per login; ``mailrouter.sandbox.popa3d``),

for: unknown user, wrong password, non-canonical login, the right password,
and the odd inputs of issue 13 (a password with a control character -- LF,
SOH, U+2028 --, one of 5 000 bytes, one that is not UTF-8, one with a NUL, and
a 5 000-byte login), each for the known user (alice) and an unknown one.
Prints medians and 90th percentiles in milliseconds, and each case's verdict
(``NO`` everywhere but the right password; POP3 cannot carry LF or NUL).

Usage:  bench/bench_auth.py [--rounds N]       (as root, from the checkout)
"""

from __future__ import annotations

import argparse
import base64
import os
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


def authd_ask(path: Path, login: bytes, password: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(b"AUTH " + base64.b64encode(login) + b" " + base64.b64encode(password) + b"\n")
        client.shutdown(socket.SHUT_WR)
        return client.recv(100).strip()


def pop3_login(port: int, login: bytes, password: bytes) -> bytes:
    """USER/PASS with the octets as given; the reply to PASS (or the earlier -ERR)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        replies = sock.makefile("rb")
        replies.readline()
        for command in (b"USER " + login, b"PASS " + password):
            sock.sendall(command + b"\r\n")
            reply = replies.readline().rstrip(b"\r\n")
            if not reply.startswith(b"+OK") or command.startswith(b"PASS"):
                sock.sendall(b"QUIT\r\n")
                return reply
    return b""


Timings = dict[str, list[float]]


def measure(cases: dict[str, Callable[[], object]], rounds: int) -> tuple[Timings, dict[str, str]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    answers = {name: str(call())[:44] for name, call in cases.items()}  # warm-up, and what each gets
    for _ in range(rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return times, answers


def report(title: str, result: tuple[Timings, dict[str, str]]) -> None:
    times, answers = result
    print(f"\n{title}")
    print(f"  {'case':<34} {'median ms':>10} {'p90 ms':>10}  answer")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {name:<34} {statistics.median(values):>10.1f} {p90:>10.1f}  {answers[name]}")


def cases_for(right: bytes) -> dict[str, tuple[bytes, bytes]]:
    known, unknown = b"alice@example.com", b"nobody@example.com"
    cases = {
        "unknown user": (unknown, right + b"x"),
        "wrong password": (known, right + b"x"),
        "non-canonical login": (b"ALICE@example.com", right + b"x"),
        "right password": (known, right),
    }
    odd = {
        "LF": b"pass\nword-1",
        "SOH": b"pass\x01word-1",
        "U+2028": "pass\u2028word-1".encode(),
        "5000 bytes": b"p" * 5000,
        "not UTF-8": b"pass\xffword-1",
        "NUL": b"pass\x00word-1",
    }
    for name, password in odd.items():
        cases[f"known, password {name}"] = (known, password)
        cases[f"unknown, password {name}"] = (unknown, password)
    cases["login of 5000 bytes"] = (b"a" * 4988 + b"@example.com", right)
    cases["login not UTF-8"] = (b"al\xffice@example.com", right)
    return cases


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-"))
    work.chmod(0o755)
    data = demo.build()
    slapd = Slapd(work / "slapd", ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords)
    slapd.start()
    authd: subprocess.Popen[bytes] | None = None
    try:
        service = data.account("service")
        conf_path = write_config(work / "conf" / "mailrouter.toml", uris=[slapd.uri], base_dn=data.base_dn,
                                 bind_dn=service.dn, password=service.password)
        conf = config.load(str(conf_path))
        logins = cases_for(data.account("alice@example.com").password.encode())
        core = {
            name: (lambda login=login, password=password:
                   auth.authenticate_raw(conf, login, password).verdict.value)
            for name, (login, password) in logins.items()
        }
        report("core: mailrouter.auth.authenticate_raw (in-process)", measure(core, args.rounds))

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
            name: (lambda login=login, password=password: authd_ask(sock, login, password).decode())
            for name, (login, password) in logins.items()
        }
        report(
            "mailrouter-authd over its Unix socket (what Exim waits for)", measure(over_socket, args.rounds)
        )

        pop = Popa3d(work / "pop", str(conf_path), root=ROOT, tls=False)
        pop.start()
        try:
            pop3 = {
                name: (lambda login=login, password=password: pop3_login(pop.port, login, password).decode())
                for name, (login, password) in logins.items()
                if b"\n" not in login + password and b"\x00" not in login + password
            }
            report("POP3 login through popa3d + pam_exec (USER/PASS round trip)", measure(pop3, args.rounds))
        finally:
            pop.stop()
        print(f"\nrounds per case: {args.rounds}; cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.1f}")
    finally:
        if authd is not None:
            os.killpg(authd.pid, signal.SIGTERM)
            authd.wait(timeout=10)
        slapd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
