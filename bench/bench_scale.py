#!/usr/bin/env python3
"""Lookup latency with 1 000 vs 100 000 users (and optionally 1 000 000).

Not a test: a benchmark that prints a table.  Each size gets its own real slapd
from the project's ldap/ files (same schema, same indexes, same ACLs), loaded
with slapadd; then, per size, the same request mix is timed *as a hook does it*:
a fresh Directory per request (connect + service bind + base read + unbind).

Usage: /opt/mailrouter/venv/bin/python bench/bench_scale.py [--sizes 1000,100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailrouter import entries
from mailrouter.config import LdapConfig
from mailrouter.directory import Directory
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose ldap/ files the slapds run

DOMAINS = 10


def bulk_ldif(users: int) -> str:
    """``users`` mail users spread over DOMAINS domains (password-less: lookups only)."""
    parts = []
    for index in range(DOMAINS):
        parts.append(entries.to_ldif([entries.domain_entry(f"d{index}.example", "o=top")]))
    for index in range(users):
        domain = f"d{index % DOMAINS}.example"
        entry = entries.user_entry(
            f"user{index}", domain, "o=top", password_hash=None, uid_number=8, gid_number=8,
            mailbox=f"/var/mail/user{index}@{domain}", quota="32M",
        )
        parts.append(entries.to_ldif([entry]))
    return "\n".join(parts)


def measure(config: LdapConfig, users: int, requests: int, rng: random.Random) -> list[float]:
    timings = []
    for _ in range(requests):
        index = rng.randrange(users)
        started = time.perf_counter()
        with Directory(config) as directory:
            found = directory.user(f"user{index}", f"d{index % DOMAINS}.example")
        timings.append(time.perf_counter() - started)
        if found is None:
            raise SystemExit(f"user{index} not found: the load failed")
    return timings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = demo.build(scheme="ssha")
    service = data.account("service")
    results = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{size}-") as workdir:
            started = time.perf_counter()
            slapd = Slapd(Path(workdir), ldif=[bulk_ldif(size)], root=ROOT,
                          seed_passwords=data.seed_passwords)
            slapd.configure()
            load_seconds = time.perf_counter() - started
            with slapd.start():
                config = LdapConfig(uris=(slapd.uri,), bind_dn=service.dn, bind_password=service.password)
                measure(config, size, 20, random.Random(1))  # warm the caches
                timings = measure(config, size, args.requests, random.Random(2))
            p95 = statistics.quantiles(timings, n=20)[18]
            results[size] = (statistics.median(timings), p95, load_seconds)
    base = results[sizes[0]][0]
    print(f"{'users':>10} {'median ms':>10} {'p95 ms':>8} {'ratio':>6} {'load s':>7}")
    for size in sizes:
        median, p95, load = results[size]
        print(f"{size:>10} {median * 1000:>10.2f} {p95 * 1000:>8.2f} {median / base:>6.2f} {load:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
