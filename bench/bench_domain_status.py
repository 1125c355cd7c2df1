#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): what ``domain disable`` costs a user lookup.

An entry of a disabled domain counts as disabled (``Directory.user``/``alias``
ask ``Directory.domain_active`` for every *active* entry they find).  This
times one user lookup as a hook makes it -- a fresh Directory: connect,
service bind, base read, and now the domain's status -- against a private
slapd from the project's ldap/ files, three ways interleaved in rounds:

* no domain check (the lookup before ``domain disable`` existed),
* the domain's status by a base read of ``dc=DOMAIN`` (ldap3 decodes an entry),
* the domain's status by an LDAP Compare (what ``domain_active`` does).

Usage, as root from the checkout:

    /opt/mailrouter/venv/bin/python bench/bench_domain_status.py [--rounds 15] [--requests 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailrouter.config import LdapConfig
from mailrouter.directory import Directory, first
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose ldap/ files the slapd runs


def by_read(directory: Directory, domain: str) -> bool:
    found = directory.read(directory.domain_dn(domain), "mailDomain", ["mailAccountStatus"])
    return found is None or (first(found, "mailAccountStatus") or "active") == "active"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=100, help="lookups per way per round")
    args = parser.parse_args(argv)
    data = demo.build(scheme="ssha")  # a fast service bind: the lookup, not the hash, is measured
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-domain-"))
    slapd = Slapd(work, ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords).start()
    service = data.account("service")
    config = LdapConfig(uris=(slapd.uri,), base_dn=data.base_dn, bind_dn=service.dn,
                        bind_password=service.password)
    compare = Directory.domain_active
    ways: dict[str, Callable[[Directory, str], bool]] = {
        "no domain check (before)": lambda _directory, _domain: True,
        "domain status by base read": by_read,
        "domain status by Compare (now)": compare,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(args.rounds):
            for name, way in ways.items():
                Directory.domain_active = way  # type: ignore[method-assign]
                for _ in range(args.requests):
                    started = time.perf_counter()
                    with Directory(config) as directory:
                        if directory.user("alice", "example.com") is None:
                            raise SystemExit("alice@example.com not found")
                    times[name].append(time.perf_counter() - started)
    finally:
        Directory.domain_active = compare  # type: ignore[method-assign]
        slapd.stop()
        shutil.rmtree(work, ignore_errors=True)
    reference = statistics.median(times["no domain check (before)"])
    print(f"{'user lookup, fresh Directory':34s} {'median':>9s}  ratio")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:34s} {median * 1000:6.3f} ms  {median / reference:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
