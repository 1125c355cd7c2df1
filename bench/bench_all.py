#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): mailrouter against Exim's and PAM's own paths, one table.

Run as root from the checkout, one command::

    /opt/mailrouter/venv/bin/python bench/bench_all.py [--quick]

Each pair is measured side by side in the same run, interleaved round by round
so that drift hits both alike, on the same slapd and data:

* **routing lookup** -- the ``user`` lookup (the one every local recipient
  needs), as N expansions in one ``exim -be`` (stdin, so no secret is on a
  command line) with the project's ``exim/mailrouter.conf``:
  ``${run}`` of ``mailrouter-lookup``; ``${readsocket}`` to a running
  ``mailrouter-lookupd``; Exim's native ``${lookup ldap}`` for the same entry
  and attributes (each query made distinct so Exim's lookup cache cannot
  answer it).  Per lookup = (time of the ``exim -be`` - time of one with N
  trivial expansions) / N.  Exim keeps its LDAP connection open within a
  process, so "native, open connection" is a search on an open, bound
  connection (what later lookups of one SMTP session or delivery run cost);
  "native, new connection" sends lookup i to port i of the same slapd
  (listening on N ports), so each is connect + bind + search -- what the
  first lookup of each Exim process costs: the reference of the target.
  Which is which, precisely: both are N lookups inside ONE ``exim -be`` run;
  "open connection" asks one port, so Exim's connection cache serves all but
  the first from the connection it keeps open ("reused"), "new connection"
  asks N ports, so every lookup opens and binds its own.  ``mailrouter-lookupd``
  keeps one service connection per worker too (``directory.PersistentDirectory``),
  so the fair pair is socket vs native-reused; native-new is the issue's target.
* **delivery** -- messages per second of one ``exim -qf`` queue run through
  real Exim into mbox: the pipe transport running ``mailrouter-deliver``, the
  lmtp transport feeding a running ``mailrouter-lmtpd`` (which looks each
  recipient up in slapd) vs Exim's appendfile; then lmtp vs appendfile with
  the queue split over 10 ``exim -M`` processes at once, each mostly to its
  own mailbox (bench/bench_delivery.py's ``delivery_rig`` and ``throughput``).
* **POP3** -- bench/bench_pop3.py: USER/PASS + STAT + QUIT through real
  popa3d with our helper, lean (``pam.d-popa3d-authd``: a stdlib client of
  ``mailrouter-authd``) and full (``pam.d-popa3d``), vs Dovecot 2.3's native
  LDAP passdb (search as the service account + bind as the user, no auth
  cache) on the same slapd and the same hash, as an IMAP LOGIN + SELECT INBOX
  + LOGOUT session (``dovecot-pop3d`` conflicts with popa3d); for users hashed
  {ARGON2} (as deployed) and {SSHA}; plus popa3d with ``pam_permit.so`` (the
  floor: no password check at all).
* **scale** -- one user lookup as the hooks make it (fresh Directory: connect,
  service bind, base read) against a slapd with 1 000 vs 100 000 users built
  from the project's ldap/ files and indexes (bench/bench_scale.py).
* **sockets** -- ``mailrouter-lookupd`` and ``mailrouter-authd`` with 0 and
  100 idle connections held open (bench/bench_sockets.py): a burst of 100
  requests at once (answered per second, worst latency, how many got nothing
  within Exim's deadline) and requests one at a time (worst latency).

Prints one table of absolute medians, then one line per comparison (ours,
the reference, the ratio, the target of issues 8 and 15).  ``--json`` prints
the comparisons instead, one JSON object each: ``name``, ``ours``,
``reference``, ``ratio``, ``unit`` (plus ``target`` and ``met``);
bench/readme_table.py turns that into README's performance table.  Everything
lives in a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_delivery  # noqa: E402 - sibling benchmark, reused as a library
import bench_pop3  # noqa: E402
import bench_scale  # noqa: E402
import bench_sockets  # noqa: E402

from mailrouter.config import LdapConfig  # noqa: E402
from mailrouter.sandbox import demo  # noqa: E402
from mailrouter.sandbox.configs import write_config  # noqa: E402
from mailrouter.sandbox.exim import Exim  # noqa: E402
from mailrouter.sandbox.slapd import SLAPD, Slapd, free_port, wait_for_port  # noqa: E402

VENV_BIN = str(Path(sys.executable).parent)  # the venv running this script
BASE = "o=top"
USER_ATTRIBUTES = "uid,dc,mail,uidNumber,gidNumber,mailQuota,mailAccountStatus,mailMessageStore"


@dataclass
class Row:
    """A measurement (``section``, ``case``, ``value``, ``unit``), or a comparison
    of two (section ``"compare"``): then ``name``, ``ours``, ``reference`` and
    ``ratio`` (= ``value``) are set, ``unit`` is that of ours and the reference."""

    section: str
    case: str
    value: float
    unit: str
    name: str = ""
    ours: float | None = None
    reference: float | None = None
    ratio: float | None = None
    target: str = ""  # e.g. "<= 1.5"; "" for information only
    met: bool | None = None

    def comparison(self) -> dict[str, object]:
        """The ``--json`` object of a comparison row."""
        return {"name": self.name, "ours": self.ours, "reference": self.reference, "ratio": self.ratio,
                "unit": self.unit, "target": self.target or None, "met": self.met}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- routing lookups ------------------------------------------------------------

@contextmanager
def lookupd(config: Path, sock: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrouter.cmd.lookupd", "--config", str(config), "--socket", str(sock)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mailrouter-lookupd did not start")
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def timed_expansions(exim: Exim, lines: list[str], expect: str | None) -> float:
    """Seconds for one ``exim -be`` expanding ``lines`` (read from stdin)."""
    started = time.perf_counter()
    result = exim.run("-be", stdin="".join(line + "\n" for line in lines))
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"exim -be failed: {result.output[-2000:]}")
    if expect is not None:
        # "> " + result per line (plus blank lines from ${run}'s trailing newline, and a last prompt).
        answers = [line for line in result.stdout.splitlines() if line.startswith("> ") and line[2:].strip()]
        if len(answers) != len(lines) or any(expect not in answer for answer in answers):
            raise SystemExit(f"unexpected expansion results: {result.stdout[:2000]}")
    return elapsed


@contextmanager
def slapd_on_many_ports(workdir: Path, data: demo.DemoDirectory, count: int) -> Iterator[list[int]]:
    """One slapd (project files, ``data``) listening on ``count`` loopback ports.

    Exim keeps one LDAP connection per server and port open for the life of
    the process; N lookups to N ports of one slapd therefore make N new
    connections (connect + bind + search) to the same server and data.
    """
    slapd = Slapd(workdir, ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords)
    slapd.configure()
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    urls = " ".join(f"ldap://127.0.0.1:{port}/" for port in ports)
    with (workdir / "slapd.log").open("ab") as log:
        process = subprocess.Popen([SLAPD, "-d", "0", "-f", str(slapd.conf_path), "-h", urls],
                                   stdout=log, stderr=log, start_new_session=True)
    try:
        if not all(wait_for_port(port, 15, process) for port in (ports[0], ports[-1])):
            raise SystemExit("slapd did not start: " + (workdir / "slapd.log").read_text(errors="replace"))
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=30)


def bench_lookups(work: Path, data: demo.DemoDirectory, count: int, rounds: int) -> list[Row]:
    with slapd_on_many_ports(work / "slapd", data, count) as ports:
        service = data.account("service")
        config = write_config(
            work / "mailrouter.toml", uris=[f"ldap://127.0.0.1:{ports[0]}/"], base_dn=BASE,
            bind_dn=service.dn, password=service.password, mbox_template=f"{work}/mail/{{local}}@{{domain}}",
        )
        sock = work / "lookup.sock"
        exim = Exim(work / "exim", ROOT / "exim" / "mailrouter.conf", {
            "MAILROUTER_BIN": VENV_BIN,
            "MAILROUTER_CONFIG": str(config),
            "MAILROUTER_LOOKUP_VIA": "socket",
            "MAILROUTER_LOOKUP_SOCKET": str(sock),
            "MAILROUTER_RELAY_HOST": "127.0.0.1",
        }).prepare()
        user_dn = f"uid=alice,dc=example.com,{BASE}"

        def native(index: int, port: int = ports[0]) -> str:
            # A distinct filter per query: Exim caches lookup *results* per query string.
            url = (f"ldap://127.0.0.1:{port}/{user_dn}?{USER_ATTRIBUTES}?base?"
                   f"(&(objectClass=mailUser)(!(cn=bench{index})))")
            return f'${{lookup ldap{{user="{service.dn}" pass={service.password} {url}}}{{$value}}{{TEMP}}}}'

        def native_new_connection(index: int) -> str:
            return native(index, ports[index % len(ports)])

        run = (f"${{run{{{VENV_BIN}/mailrouter-lookup --config {config} user alice example.com}}"
               "{$value}{TEMP}}")
        request = f"user {b64('alice')} {b64('example.com')}\\n"
        readsocket = f"${{readsocket{{{sock}}}{{{request}}}{{5s}}{{}}{{TEMP}}}}"
        cases: dict[str, tuple[Callable[[int], str], str, int]] = {
            "${run} mailrouter-lookup": (lambda _i: run, "mailbox=", max(20, count // 5)),
            "${readsocket} mailrouter-lookupd": (lambda _i: readsocket, "OK mailbox=", count),
            "${lookup ldap} native, open connection": (native, "mailQuota=", count),
            "${lookup ldap} native, new connection": (native_new_connection, "mailQuota=", count),
        }
        per_lookup: dict[str, list[float]] = {name: [] for name in cases}
        with lookupd(config, sock):
            for make, expect, _n in cases.values():  # warm-up, and a check of every answer
                timed_expansions(exim, [make(i) for i in range(3)], expect)
            for _ in range(rounds):
                for name, (make, expect, n) in cases.items():
                    baseline = timed_expansions(exim, ["${if eq{1}{1}{x}{y}}"] * n, None)
                    elapsed = timed_expansions(exim, [make(i) for i in range(n)], expect)
                    per_lookup[name].append((elapsed - baseline) / n)
        return [Row("lookup", name, statistics.median(values) * 1000, "ms/lookup")
                for name, values in per_lookup.items()]


# -- delivery -----------------------------------------------------------------------

def bench_deliveries(work: Path, messages: int, rounds: int, data: demo.DemoDirectory) -> list[Row]:
    root = work / "delivery"
    root.mkdir()
    root.chmod(0o755)
    rig = bench_delivery.delivery_rig(root, data)
    senders = bench_delivery.SENDERS
    cases = {  # name -> (recipient, parallel delivery processes)
        "pipe -> mailrouter-deliver": ("ours@example.com", 1),
        "lmtp -> mailrouter-lmtpd": ("lmtp@example.com", 1),
        "appendfile (stock Exim)": ("stock@example.com", 1),
        f"lmtp -> mailrouter-lmtpd, {senders} senders": ("lmtp@example.com", senders),
        f"appendfile (stock Exim), {senders} senders": ("stock@example.com", senders),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(rounds):
            for name, (recipient, parallel) in cases.items():
                rates[name].append(bench_delivery.throughput(rig.exim, recipient, messages, parallel))
    finally:
        rig.close()
    return [Row("delivery", name, statistics.median(values), "msg/s") for name, values in rates.items()]


# -- POP3 -----------------------------------------------------------------------------

def bench_logins(work: Path, sessions: int) -> list[Row]:
    """bench/bench_pop3.py's cases, for {ARGON2} and {SSHA} users."""
    return [Row("pop3", f"{result.case} {result.scheme}", result.median_ms, "ms/session")
            for scheme in ("argon2", "ssha") for result in bench_pop3.run(work, scheme, sessions)]


# -- scale ------------------------------------------------------------------------------

def bench_scale_rows(work: Path, data: demo.DemoDirectory, sizes: list[int], requests: int) -> list[Row]:
    """All sizes' slapds run at once; requests alternate between them in rounds."""
    service = data.account("service")
    slapds: dict[int, Slapd] = {}
    loads: dict[int, float] = {}
    try:
        for size in sizes:
            started = time.perf_counter()
            slapd = Slapd(work / f"slapd-{size}", ldif=[bench_scale.bulk_ldif(size)], root=ROOT,
                          seed_passwords=data.seed_passwords)
            slapd.configure()
            loads[size] = time.perf_counter() - started
            slapds[size] = slapd.start()
        configs = {
            size: LdapConfig(uris=(slapd.uri,), bind_dn=service.dn, bind_password=service.password)
            for size, slapd in slapds.items()
        }
        timings: dict[int, list[float]] = {size: [] for size in sizes}
        rng = random.Random(2)
        for size in sizes:
            bench_scale.measure(configs[size], size, 20, random.Random(1))  # warm the caches
        rounds = 10
        for _ in range(rounds):
            for size in sizes:
                timings[size] += bench_scale.measure(configs[size], size, max(1, requests // rounds), rng)
    finally:
        for slapd in slapds.values():
            slapd.stop()
    return [
        Row("scale", f"{size} users (slapadd {loads[size]:.0f} s)", statistics.median(timings[size]) * 1000,
            "ms/lookup")
        for size in sizes
    ]


# -- socket servers under idle peers ------------------------------------------------------

SOCKET_CASES = ("answered per s", "worst latency", "nothing in time", "worst latency (one at a time)")


def bench_socket_rows(work: Path, idle: int, burst: int, sequential: int) -> list[Row]:
    root = work / "sockets"
    root.mkdir()
    root.chmod(0o755)
    return [
        Row("sockets", f"{row.server}, {row.idle} idle: {row.case}", row.value, row.unit)
        for row in bench_sockets.run(root, idle, burst, sequential)
        if row.case in SOCKET_CASES
    ]


# -- report --------------------------------------------------------------------------------

def find(rows: list[Row], section: str, prefix: str) -> Row | None:
    for row in rows:
        if row.section == section and row.case.startswith(prefix):
            return row
    return None


Check = Callable[[float], bool]


def at_most(limit: float) -> tuple[str, Check]:
    return f"<= {limit:g}", lambda value: value <= limit


def at_least(limit: float) -> tuple[str, Check]:
    return f">= {limit:g}", lambda value: value >= limit


INFO: tuple[str, Check | None] = ("", None)
POP3_LEAN, POP3_FULL = bench_pop3.LEAN, bench_pop3.FULL
# (name, (section, prefix of ours), (section, prefix of the reference), target): one rule for
# the table, the JSON and README's table (bench/readme_table.py).
COMPARISONS: list[tuple[str, tuple[str, str], tuple[str, str], tuple[str, Check | None]]] = [
    ("socket lookup vs native ${lookup ldap}, new connection",
     ("lookup", "${readsocket"), ("lookup", "${lookup ldap} native, new"), at_most(1.5)),
    ("socket lookup vs native ${lookup ldap}, reused connection",
     ("lookup", "${readsocket"), ("lookup", "${lookup ldap} native, open"), INFO),
    ("${run} lookup vs socket lookup", ("lookup", "${run"), ("lookup", "${readsocket"), INFO),
    ("pipe delivery vs appendfile (msg/s)", ("delivery", "pipe"), ("delivery", "appendfile"), at_least(0.7)),
    ("lmtp delivery vs appendfile (msg/s)",
     ("delivery", "lmtp -> mailrouter-lmtpd"), ("delivery", "appendfile (stock Exim)"), at_least(0.85)),
    (f"lmtp delivery vs appendfile, {bench_delivery.SENDERS} senders (msg/s)",
     ("delivery", f"lmtp -> mailrouter-lmtpd, {bench_delivery.SENDERS} senders"),
     ("delivery", f"appendfile (stock Exim), {bench_delivery.SENDERS} senders"), at_least(0.85)),
    ("POP3 login, lean helper vs Dovecot native LDAP {ARGON2}",
     ("pop3", f"{POP3_LEAN} {{ARGON2}}"), ("pop3", f"{bench_pop3.DOVECOT} {{ARGON2}}"), at_most(1.1)),
    ("POP3 login, lean helper vs Dovecot native LDAP {SSHA}",
     ("pop3", f"{POP3_LEAN} {{SSHA}}"), ("pop3", f"{bench_pop3.DOVECOT} {{SSHA}}"), at_most(1.1)),
    ("POP3 login, full helper vs Dovecot native LDAP {ARGON2}",
     ("pop3", f"{POP3_FULL} {{ARGON2}}"), ("pop3", f"{bench_pop3.DOVECOT} {{ARGON2}}"), INFO),
    ("POP3 login, lean helper vs pam_permit floor {ARGON2}",
     ("pop3", f"{POP3_LEAN} {{ARGON2}}"), ("pop3", f"{bench_pop3.FLOOR} {{ARGON2}}"), INFO),
    ("POP3 login, lean helper vs pam_permit floor {SSHA}",
     ("pop3", f"{POP3_LEAN} {{SSHA}}"), ("pop3", f"{bench_pop3.FLOOR} {{SSHA}}"), INFO),
]


def compare(rows: list[Row]) -> list[Row]:
    """One comparison row per pair of COMPARISONS measured in this run (plus scale's)."""
    found: list[Row] = []

    def add(name: str, ours: Row, reference: Row, target: tuple[str, Check | None]) -> None:
        ratio = ours.value / reference.value if reference.value else float("inf")
        text, check = target
        found.append(Row("compare", name, ratio, ours.unit, name=name, ours=ours.value,
                         reference=reference.value, ratio=ratio, target=text,
                         met=None if check is None else check(ratio)))

    for name, (section, prefix), (ref_section, ref_prefix), target in COMPARISONS:
        ours, reference = find(rows, section, prefix), find(rows, ref_section, ref_prefix)
        if ours is not None and reference is not None:
            add(name, ours, reference, target)
    scale = [row for row in rows if row.section == "scale"]
    for row in scale[1:]:
        size = int(row.case.split()[0])
        add(f"lookup among {size} vs {scale[0].case.split()[0]} users", row, scale[0],
            at_most(1.1) if size == 100000 else INFO)
    return found


def report(rows: list[Row], comparisons: list[Row], seconds: float) -> None:
    print(f"\nmailrouter benchmark -- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
          f"{platform.platform()}, Python {platform.python_version()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}  ({seconds:.0f} s)\n")
    print(f"{'section':<9} {'case':<60} {'median':>10}  unit")
    for row in rows:
        print(f"{row.section:<9} {row.case:<60} {row.value:>10.2f}  {row.unit}")
    print(f"\n{'comparison':<60} {'ours':>9} {'ref.':>9} {'ratio':>7}  {'target':<7} met")
    for row in comparisons:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        print(f"{row.name:<60} {row.ours:>9.2f} {row.reference:>9.2f} {row.value:>7.2f}  "
              f"{row.target or '(info)':<7} {met}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lookups", type=int, default=200, help="expansions per exim -be (${run}: a fifth)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100, help="messages per transport per round")
    parser.add_argument("--delivery-rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=40, help="POP3 sessions per case")
    parser.add_argument("--sizes", default="1000,100000,1000000", help="the first is the reference")
    parser.add_argument("--scale-requests", type=int, default=300)
    parser.add_argument("--idle", type=int, default=100, help="idle connections (sockets)")
    parser.add_argument("--burst", type=int, default=100, help="requests at once (sockets)")
    parser.add_argument("--only", default="lookup,delivery,pop3,scale,sockets")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, not figures")
    parser.add_argument("--json", action="store_true",
                        help="print the comparisons as JSON (name, ours, reference, ratio, unit)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lookups, args.rounds, args.messages, args.delivery_rounds = 50, 2, 20, 1
        args.sessions, args.sizes, args.scale_requests = 10, "1000,5000", 50
        args.idle, args.burst = 20, 20
    if os.geteuid() != 0:
        raise SystemExit("run as root (private Exim, slapd and popa3d in mount namespaces)")
    only = set(args.only.split(","))
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-all-"))
    work.chmod(0o755)  # hooks run as Debian-exim and mail
    rows: list[Row] = []
    try:
        # The service account's hash decides what a bind costs slapd: {ARGON2}
        # (the deployed default for *user* passwords) costs ~150 ms of slapd CPU
        # per bind.  A long random service secret needs no slow hash: the
        # lookup figures use {SSHA} for it; POP3 logins check the users' hashes
        # as deployed ({ARGON2}) and {SSHA} (bench_pop3 builds its own data).
        fast_bind = demo.build(scheme="ssha")
        if "lookup" in only:
            rows += bench_lookups(work, fast_bind, args.lookups, args.rounds)
        if "delivery" in only:
            rows += bench_deliveries(work, args.messages, args.delivery_rounds, fast_bind)
        if "pop3" in only:
            # As deployed ({ARGON2} user hashes), and with {SSHA} hashes to show
            # how much of the gap is the password hash rather than the helper.
            rows += bench_logins(work, args.sessions)
        if "scale" in only:
            sizes = [int(size) for size in args.sizes.split(",")]
            rows += bench_scale_rows(work, fast_bind, sizes, args.scale_requests)
        if "sockets" in only:
            rows += bench_socket_rows(work, args.idle, args.burst, 5 if args.quick else 10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    comparisons = compare(rows)
    if args.json:
        print(json.dumps([row.comparison() for row in comparisons], indent=1))
    else:
        report(rows, comparisons, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
