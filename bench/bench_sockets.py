#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): do idle or slow peers starve the socket servers?

Starts a private slapd from the project's ldap/ files with the demo data, then
the installed ``mailrouter-lookupd`` (``--workers 8``, as the systemd unit runs
it) and ``mailrouter-authd`` (its defaults) on private sockets, and measures
each with 0 and with ``--idle`` (default 100) idle connections held open.  An
idle connection connects and sends nothing; whenever the server closes one, a
new one replaces it at once (what a stuck or hostile peer would do).

Per server and idle count:

* **burst** -- ``--burst`` (default 100) requests sent at the same moment, each
  with the client deadline Exim would give it (lookupd: 30 s, the config's
  ``MAILROUTER_LOOKUP_TIMEOUT``; authd: 5 s, the authenticators' readsocket):
  how many got their answer, how many a ``TEMP`` and how many nothing in time;
  answered requests per second of wall time; the worst latency;
* **one at a time** -- ``--sequential`` (default 10) requests one after another:
  median and worst latency.

Requests: lookupd ``user alice example.com`` (expects ``OK mailbox=...``);
authd alice with her right password (expects ``OK``), twice: ``authd`` against
``{ARGON2}`` hashes as deployed (each check costs slapd ~100-150 ms of CPU: the
burst figure is the machine's hashing capacity, not the server's), and
``authd-ssha`` against ``{SSHA}`` hashes (cheap: what is left is the server).

Usage (root, from the checkout)::

    bench/bench_sockets.py [--idle N] [--burst N] [--sequential N] [--json]

``--json`` prints the rows as one JSON list instead of a table (bench_all.py
uses :func:`run`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from mailrouter.sandbox import demo  # noqa: E402
from mailrouter.sandbox.configs import write_config  # noqa: E402
from mailrouter.sandbox.slapd import Slapd  # noqa: E402

BIN = Path(sys.executable).parent  # the venv running this script: its installed executables
DEADLINES = {"lookupd": 30.0, "authd": 5.0, "authd-ssha": 5.0}  # what Exim waits (exim/mailrouter.conf)


@dataclass
class Row:
    server: str
    idle: int
    case: str
    value: float
    unit: str


def ask(path: Path, request: bytes, deadline: float) -> tuple[bytes | None, float]:
    """One request as Exim's ${readsocket} makes it; ``(reply or None, seconds)``."""
    started = time.perf_counter()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(deadline)
            while True:
                # Exim's connect blocks while the backlog is full (until its
                # deadline); a socket with a timeout gets EAGAIN instead: retry.
                try:
                    client.connect(str(path))
                    break
                except BlockingIOError:
                    if time.perf_counter() - started > deadline:
                        raise
                    time.sleep(0.005)
            client.settimeout(max(0.01, deadline - (time.perf_counter() - started)))
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
                client.settimeout(max(0.01, deadline - (time.perf_counter() - started)))
    except OSError:
        return None, time.perf_counter() - started
    return reply, time.perf_counter() - started


class Idlers:
    """Keeps ``count`` idle connections to ``path`` open from a thread of its own."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.count = count
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Idlers:
        if self.count:
            self._thread.start()
            deadline = time.monotonic() + 10
            while self.reopened < self.count and time.monotonic() < deadline:
                time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _connect(self) -> socket.socket | None:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)  # a full backlog must not stop the idler
        try:
            client.connect(str(self.path))
        except OSError:
            client.close()
            return None
        return client

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        open_count = 0
        try:
            while not self._stop.is_set():
                while open_count < self.count:
                    client = self._connect()
                    if client is None:
                        break
                    selector.register(client, selectors.EVENT_READ)
                    open_count += 1
                    self.reopened += 1
                for key, _events in selector.select(timeout=0.05):
                    client = key.fileobj
                    assert isinstance(client, socket.socket)
                    selector.unregister(client)
                    client.close()  # the server answered or closed it: replace it
                    open_count -= 1
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


def burst(path: Path, request: bytes, expect: bytes, count: int, deadline: float) -> dict[str, float]:
    results: list[tuple[bytes | None, float]] = []
    lock = threading.Lock()
    gate = threading.Barrier(count + 1)

    def one() -> None:
        gate.wait()
        result = ask(path, request, deadline)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    answered = [latency for reply, latency in results if reply is not None and reply.startswith(expect)]
    temp = sum(1 for reply, _ in results if reply == b"TEMP\n")
    return {
        "answered": len(answered),
        "temp": temp,
        "nothing in time": count - len(answered) - temp,
        "answered per s": len(answered) / wall,
        "worst latency": max(latency for _, latency in results),
    }


def sequential(path: Path, request: bytes, expect: bytes, count: int, deadline: float) -> dict[str, float]:
    latencies = []
    missed = 0
    for _ in range(count):
        reply, latency = ask(path, request, deadline)
        latencies.append(latency)
        if reply is None or not reply.startswith(expect):
            missed += 1
    return {"median latency": statistics.median(latencies), "worst latency": max(latencies),
            "unanswered": missed}


@contextmanager
def server(argv: list[str], sock: Path) -> Iterator[None]:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not start")
            time.sleep(0.02)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def run(work: Path, idle: int, burst_size: int, sequential_count: int,
        log: Callable[[str], None] = lambda _m: None) -> list[Row]:
    data = {"argon2": demo.build(), "ssha": demo.build(scheme="ssha")}
    slapds: list[Slapd] = []
    rows: list[Row] = []
    try:
        configs = {}
        for scheme, directory in data.items():
            slapd = Slapd(work / f"slapd-{scheme}", ldif=[directory.ldif], root=ROOT,
                          seed_passwords=directory.seed_passwords)
            slapds.append(slapd.start())
            service = directory.account("service")
            # The data's own scheme, or the first login would rehash it (mailrouter.auth).
            configs[scheme] = write_config(
                work / f"mailrouter-{scheme}.toml", uris=[slapd.uri], base_dn=directory.base_dn,
                bind_dn=service.dn, password=service.password,
                mbox_template=f"{work}/mail/{{local}}@{{domain}}", password_scheme=scheme,
            )

        def auth_request(scheme: str) -> bytes:
            password = data[scheme].account("alice@example.com").password
            return b"AUTH " + b64("alice@example.com") + b" " + b64(password) + b"\n"

        servers = {
            "lookupd": ([str(BIN / "mailrouter-lookupd"), "--workers", "8"], configs["argon2"],
                        b"user " + b64("alice") + b" " + b64("example.com") + b"\n", b"OK mailbox="),
            "authd": ([str(BIN / "mailrouter-authd")], configs["argon2"], auth_request("argon2"), b"OK\n"),
            "authd-ssha": ([str(BIN / "mailrouter-authd")], configs["ssha"], auth_request("ssha"), b"OK\n"),
        }
        for name, (argv, config, request, expect) in servers.items():
            sock = work / f"{name}.sock"
            with server([*argv, "--config", str(config), "--socket", str(sock)], sock):
                reply, _ = ask(sock, request, 30)
                if reply is None or not reply.startswith(expect):
                    raise SystemExit(f"{name} answered {reply!r}")
                for idle_count in (0, idle):
                    with Idlers(sock, idle_count) as idlers:
                        log(f"{name}, {idle_count} idle: burst of {burst_size}")
                        figures = burst(sock, request, expect, burst_size, DEADLINES[name])
                        log(f"{name}, {idle_count} idle: {sequential_count} one at a time")
                        figures |= {f"{key} (one at a time)": value for key, value in
                                    sequential(sock, request, expect, sequential_count,
                                               DEADLINES[name]).items()}
                        figures["idle connections opened"] = idlers.reopened
                    for case, value in figures.items():
                        unit = "s" if "latency" in case else ("req/s" if "per s" in case else "count")
                        rows.append(Row(name, idle_count, case, value, unit))
    finally:
        for slapd in slapds:
            slapd.stop()
    return rows


def report(rows: list[Row]) -> None:
    print(f"\n{'server':<10} {'idle':>5}  {'case':<38} {'value':>9}  unit")
    for row in rows:
        print(f"{row.server:<10} {row.idle:>5}  {row.case:<38} {row.value:>9.3f}  {row.unit}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (the servers' sockets belong to group Debian-exim)")
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-sockets-"))
    work.chmod(0o755)
    try:
        rows = run(work, args.idle, args.burst, args.sequential,
                   log=lambda message: print(message, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=1))
    else:
        print(f"cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.1f}; python: {sys.executable}")
        report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
