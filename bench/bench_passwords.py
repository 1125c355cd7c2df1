#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): what the password work of issue 14 costs.

Starts private slapds from the project's ldap/ files with the demo data and
times, in milliseconds (medians, interleaved rounds so drift hits all alike):

* every hook request's LDAP part (connect, service bind, one user read) on the
  shipped slapd.conf and on the same file without the ppolicy overlay: the
  price of ppolicy on the hot path;
* ``mailrouter.auth.authenticate`` for the right password of an account whose
  hash is current (nothing to do), the first login of an {SSHA} account (the
  rehash: a hash, a user bind, two writes), a wrong password, and the right
  password of a locked account (slapd skips the hash; the core spends one).

Usage:  bench/bench_passwords.py [--rounds N]      (from the checkout)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hooks"))

from mailrouter import auth, entries, passwords  # noqa: E402
from mailrouter.config import AuthConfig, Config, LdapConfig  # noqa: E402
from mailrouter.directory import Directory, password_stamp  # noqa: E402
from mailrouter.sandbox import demo  # noqa: E402
from mailrouter.sandbox.slapd import Slapd  # noqa: E402

LOCKED_POLICY = "cn=bench-lockout,ou=policies,o=top"


def without_ppolicy(work: Path) -> Path:
    """A copy of ldap/ whose slapd.conf has no ppolicy overlay (the module stays: the seed needs it)."""
    root = work / "no-ppolicy"
    shutil.copytree(ROOT / "ldap", root / "ldap")
    conf = root / "ldap" / "slapd.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join(line for line in lines if not line.startswith(("overlay", "ppolicy_"))) + "\n")
    return root


def median_ms(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def ssha_users(data: demo.DemoDirectory, count: int) -> tuple[str, dict[str, str]]:
    chosen = {f"old{i}": demo.new_password() for i in range(count)}
    users = [
        entries.user_entry(local, "example.com", data.base_dn,
                           password_hash=passwords.hash_password(pw, "ssha"),
                           uid_number=8, gid_number=8, mailbox=f"/var/mail/{local}@example.com")
        for local, pw in chosen.items()
    ]
    return entries.to_ldif(users), chosen


def locked_user(data: demo.DemoDirectory, password: str) -> str:
    entry = entries.user_entry("locked", "example.com", data.base_dn,
                               password_hash=passwords.hash_password(password),
                               uid_number=8, gid_number=8, mailbox="/var/mail/locked@example.com",
                               password_stamp=password_stamp(passwords.scheme_label("argon2"), None))
    policy = (f"dn: {LOCKED_POLICY}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\n"
              "cn: bench-lockout\npwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: 1\n"
              "pwdLockoutDuration: 3600\n")
    return policy + "\n" + entries.to_ldif([entry]).rstrip("\n") + f"\npwdPolicySubentry: {LOCKED_POLICY}\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-passwords-"))
    data = demo.build()
    service = data.account("service")
    old_ldif, olds = ssha_users(data, args.rounds + 1)
    locked_password = demo.new_password()
    slapds = {
        "shipped slapd.conf (ppolicy)": Slapd(work / "with",
                                              ldif=[data.ldif, old_ldif, locked_user(data, locked_password)],
                                              root=ROOT, seed_passwords=data.seed_passwords),
        "without the ppolicy overlay": Slapd(work / "without", ldif=[data.ldif], root=without_ppolicy(work),
                                             seed_passwords=data.seed_passwords),
    }
    try:
        for slapd in slapds.values():
            slapd.start()
        requests = {}
        for name, slapd in slapds.items():
            ldap = LdapConfig(uris=(slapd.uri,), bind_dn=service.dn, bind_password=service.password)

            def request(ldap: LdapConfig = ldap) -> None:
                with Directory(ldap) as directory:
                    directory.user("alice", "example.com")

            requests[name] = request
        for call in requests.values():
            call()  # warm-up
        print("hook request: connect + service bind + user read")
        for name, value in median_ms(requests, args.rounds * 10).items():
            print(f"  {name:<34} {value:8.2f} ms")

        slapd = slapds["shipped slapd.conf (ppolicy)"]
        conf = Config(ldap=LdapConfig(uris=(slapd.uri,), bind_dn=service.dn, bind_password=service.password),
                      auth=AuthConfig())
        alice = data.account("alice@example.com")
        pending = iter(olds.items())
        auth.authenticate(conf, "locked@example.com", locked_password + "x")  # locks it (pwdMaxFailure 1)

        def first_login_of_an_ssha_account() -> None:
            local, password = next(pending)
            assert auth.authenticate(conf, f"{local}@example.com", password).reason.startswith("ok; rehashed")

        logins: dict[str, Callable[[], object]] = {
            "right password, hash current": lambda: auth.authenticate(conf, "alice@example.com",
                                                                      alice.password),
            "first login of {SSHA}, rehashed": first_login_of_an_ssha_account,
            "wrong password": lambda: auth.authenticate(conf, "alice@example.com", alice.password + "x"),
            "locked account, right password": lambda: auth.authenticate(conf, "locked@example.com",
                                                                        locked_password),
        }
        print("mailrouter.auth.authenticate (in-process)")
        for name, value in median_ms(logins, args.rounds).items():
            print(f"  {name:<34} {value:8.2f} ms")
    finally:
        for slapd in slapds.values():
            slapd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
