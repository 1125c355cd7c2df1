#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): the cluster of README "More than one machine", on loopback.

Runs ``mailrouter-sandbox up --nodes N`` (the same code an admin runs) and measures:

* **replication delay**: a domain added on provider 1 (as the global admin, as
  ``mailrouter-admin domain add`` does) until every node's own lookup (the
  ``domain`` lookup of lookupd/the hook, with the node's configuration: its
  replica first) answers that it is local -- per round, the slowest node;
* **failover per lookup**: a ``user`` lookup with node 1's configuration while
  node 1's replica runs, is stopped (connection refused: the next URI at once)
  and is frozen (SIGSTOP: the connection is accepted by the kernel, the bind
  waits for ``ldap.operation_timeout``);
* **throughput through the front door**: MESSAGES messages over SMTP to
  HAProxy (CONNECTIONS parallel connections) for the demo users -- homed on
  node 1, on node 2, or without a home -- until every one is in a mailbox, with
  1, 2 and 3 nodes.

Usage, as root from the checkout (about 3 minutes):

    /opt/mailrouter/venv/bin/python bench/bench_cluster.py [--rounds 20] [--messages 150] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailrouter import config as config_module
from mailrouter import lookup
from mailrouter.config import LdapConfig
from mailrouter.directory import Session
from mailrouter.errors import TemporaryFailure
from mailrouter.sandbox import cli

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose ldap/, exim/, cluster/ files run
RECIPIENTS = ["alice@example.com", "bob@example.com", "carol@example.org", "dave@example.org",
              "postmaster@example.com", "postmaster@example.org"]


def quiet(_text: str) -> None:
    pass


def start(nodes: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"mailrouter-bench-cluster{nodes}-"))
    code, info = cli.up(directory, ROOT, quiet, nodes=nodes)
    if code != 0 or info is None:
        raise SystemExit(f"up --nodes {nodes} failed")
    return info


def stop(info: dict[str, Any]) -> None:
    cli.down(Path(info["dir"]), keep=False)


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def replication_delay(info: dict[str, Any], rounds: int) -> list[float]:
    """Seconds from a domain add on provider 1 until every node's lookup sees it."""
    configs = [config_module.load(n["config"]) for n in info["nodes"]]
    writer = LdapConfig(uris=(info["ldap_servers"]["provider1"],), base_dn=info["base_dn"])
    delays = []
    with Session(writer, info["admin_dn"], info["admin_password"]) as session:
        for number in range(rounds):
            domain = f"bench{number}-{os.getpid()}.example"
            began = time.perf_counter()
            session.add(f"dc={domain},{info['base_dn']}", {"objectClass": ["mailDomain"], "dc": [domain]})
            pending = list(configs)
            while pending:
                pending = [c for c in pending if lookup.answer(c, "domain", [domain]) is None]
                if time.perf_counter() - began > 30:
                    raise SystemExit(f"{domain} not replicated to every node within 30 s")
            delays.append(time.perf_counter() - began)
    return delays


def pid_of(info: dict[str, Any], name: str) -> int:
    state = json.loads((Path(info["dir"]) / cli.STATE_FILE).read_text())
    return int(next(s["pid"] for s in state["started"] if s["name"] == name))


def failover(info: dict[str, Any], lookups: int) -> dict[str, list[float]]:
    """Seconds per ``user`` lookup with node 1's configuration: replica up, stopped, frozen."""
    node1 = config_module.load(info["nodes"][0]["config"])

    def one() -> None:
        if lookup.answer(node1, "user", ["alice", "example.com"]) is None:
            raise SystemExit("alice not found")

    times: dict[str, list[float]] = {"replica up": [timed(one) for _ in range(lookups)]}
    cli.ldap(Path(info["dir"]), "stop", "replica1")
    try:
        times["replica stopped"] = [timed(one) for _ in range(lookups)]
    finally:
        cli.ldap(Path(info["dir"]), "start", "replica1")
    pid = pid_of(info, "slapd-replica1")
    os.kill(pid, signal.SIGSTOP)
    try:
        times["replica frozen"] = [timed(one) for _ in range(max(3, lookups // 20))]
    finally:
        os.kill(pid, signal.SIGCONT)
    return times


def delivered(info: dict[str, Any], tag: str) -> int:
    count = 0
    for entry in info["nodes"]:
        for mailbox in Path(entry["spool_dir"]).glob("*@*"):
            count += mailbox.read_bytes().count(f"Subject: {tag}".encode())
    return count


def throughput(info: dict[str, Any], messages: int, connections: int) -> float:
    """Messages per second through the front door, from the first connection to the last delivery."""
    tag = f"bench-{os.getpid()}-{len(info['nodes'])}"
    per_connection = messages // connections
    errors: list[BaseException] = []

    def sender(number: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", info["smtp_port"], timeout=60) as client:
                for index in range(per_connection):
                    recipient = RECIPIENTS[(number + index) % len(RECIPIENTS)]
                    client.sendmail("sender@remote.example", [recipient],
                                    f"Subject: {tag} {number}.{index}\n\nbench\n")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    total = per_connection * connections
    began = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"sending failed: {errors[0]!r}")
    while delivered(info, tag) < total:
        if time.perf_counter() - began > 300:
            raise SystemExit(f"only {delivered(info, tag)} of {total} delivered in 300 s")
        time.sleep(0.05)
    return total / (time.perf_counter() - began)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="domains added for the replication delay")
    parser.add_argument("--lookups", type=int, default=100, help="lookups per failover case")
    parser.add_argument("--messages", type=int, default=150, help="messages per throughput run")
    parser.add_argument("--connections", type=int, default=6, help="parallel SMTP connections")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cluster: run as root (the sandbox's daemons need it)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
    }
    info = start(2)
    try:
        delays = replication_delay(info, args.rounds)
        results["replication_delay_s"] = {"median": statistics.median(delays), "max": max(delays)}
        results["failover_s_per_lookup"] = {
            case: {"median": statistics.median(values), "max": max(values)}
            for case, values in failover(info, args.lookups).items()
        }
    finally:
        stop(info)
    results["front_door_msgs_per_s"] = {}
    for nodes in (1, 2, 3):
        info = start(nodes)
        try:
            results["front_door_msgs_per_s"][str(nodes)] = throughput(info, args.messages, args.connections)
        finally:
            stop(info)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"machine: {results['machine']}")
    delay = results["replication_delay_s"]
    print(f"replication delay (domain added -> every node's lookup)  median {delay['median'] * 1000:.0f} ms"
          f"  max {delay['max'] * 1000:.0f} ms  (goal < 2 s)")
    for case, value in results["failover_s_per_lookup"].items():
        print(f"user lookup on node 1, {case:16s}  median {value['median'] * 1000:7.1f} ms"
              f"  max {value['max'] * 1000:7.1f} ms  (goal < 1 s)")
    for nodes, rate in results["front_door_msgs_per_s"].items():
        print(f"front door, {nodes} node(s): {rate:6.1f} msg/s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except TemporaryFailure as exc:
        print(f"bench_cluster: {exc}", file=sys.stderr)
        sys.exit(75)
