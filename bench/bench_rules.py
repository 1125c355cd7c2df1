#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): what the mail rules (issue 16) add to a local delivery's lookups.

Every local delivery now asks the ``sieve`` lookup before the ``user`` lookup
(also for users without a script), and a message that would get a vacation
reply asks ``vacation``.  This times each lookup as the hooks make it --
``mailrouter.lookup.answer``: a fresh Directory, connect, service bind, the
reads -- against a private slapd from the project's ldap/ files with the
sandbox's demo data (dave@example.org on vacation, carol@example.org with a
Sieve script), the kinds interleaved in rounds.  The ``${run}`` hook adds a
Python start (~100 ms) to each; lookupd adds ~1 ms of socket relay.

Usage, as root from the checkout:

    /opt/mailrouter/venv/bin/python bench/bench_rules.py [--rounds 15] [--requests 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailrouter import lookup
from mailrouter.config import Config, LdapConfig, SpoolConfig
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose ldap/ files the slapd runs

CASES = {
    "user alice (before: the delivery's lookup)": ("user", ["alice", "example.com"]),
    "sieve alice (no script: every delivery)": ("sieve", ["alice", "example.com"]),
    "sieve carol (a script)": ("sieve", ["carol", "example.org"]),
    "vacation dave (in effect)": ("vacation", ["dave", "example.org"]),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=100, help="lookups per kind per round")
    args = parser.parse_args(argv)
    data = demo.build(scheme="ssha", with_rules=True)  # a fast service bind: the lookups are measured
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-rules-"))
    slapd = Slapd(work, ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords).start()
    service = data.account("service")
    config = Config(
        ldap=LdapConfig(uris=(slapd.uri,), base_dn=data.base_dn, bind_dn=service.dn,
                        bind_password=service.password),
        spool=SpoolConfig(mbox_template=f"{work}/mail/{{local}}@{{domain}}"),
    )
    times: dict[str, list[float]] = {name: [] for name in CASES}
    try:
        for name, (kind, keys) in CASES.items():  # each answers as meant, before anything is timed
            if (lookup.answer(config, kind, keys) is None) != ("no script" in name):
                raise SystemExit(f"{name}: not the expected answer")
        for _ in range(args.rounds):
            for name, (kind, keys) in CASES.items():
                for _ in range(args.requests):
                    started = time.perf_counter()
                    lookup.answer(config, kind, keys)
                    times[name].append(time.perf_counter() - started)
    finally:
        slapd.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    before = medians["user alice (before: the delivery's lookup)"]
    print(f"{'lookup, fresh Directory':44s} {'median':>9s}  ratio to user")
    for name, median in medians.items():
        print(f"{name:44s} {median * 1000:6.3f} ms  {median / before:.2f}")
    now = before + medians["sieve alice (no script: every delivery)"]
    print(f"{'a delivery to a user: user + sieve / user':44s} {now * 1000:6.3f} ms  {now / before:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
