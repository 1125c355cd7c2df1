#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): a mail login through our PAM helper vs Dovecot's native LDAP passdb.

Run as root from the checkout::

    /opt/mailrouter/venv/bin/python bench/bench_pop3.py [--sessions 40] [--schemes argon2,ssha]

For each password hash (the demo data's users hashed ``{ARGON2}`` -- the
deployed default -- or ``{SSHA}``), one slapd from the project's ldap/ files,
and on it, interleaved round by round, one session each of:

* **popa3d, lean**: stock popa3d (mailrouter.sandbox.popa3d) with the shipped
  ``popa3d/pam.d-popa3d-authd``: pam_exec runs ``mailrouter-pam-auth
  --authd-socket``, a standard-library client of a running ``mailrouter-authd``
  (persistent service connection, user bind on its own connection);
  USER/PASS + STAT + QUIT;
* **popa3d, full**: the shipped ``popa3d/pam.d-popa3d`` (the helper loads the
  configuration and ldap3 and asks LDAP itself);
* **popa3d + pam_permit**: the floor, no password check at all;
* **Dovecot, native LDAP**: Dovecot 2.3 (Debian's ``dovecot-imapd`` +
  ``dovecot-ldap``) with ``passdb ldap``: a search as the service account
  (``pass_filter`` on the user's domain entry), then a bind as the user on its
  own connection (``auth_bind = yes``), no auth cache -- the same LDAP work as
  ours, against the same slapd and the same hash.  ``dovecot-pop3d``
  conflicts with popa3d's package, so the session is IMAP over plain TCP on
  loopback: LOGIN + SELECT INBOX + LOGOUT, the counterpart of USER/PASS + STAT
  + QUIT (each opens the user's one-message mbox).

Each session is a new TCP connection and is timed from connect to close.
Prints the medians; bench/bench_all.py reuses :func:`run` for its table.
"""

from __future__ import annotations

import argparse
import grp
import imaplib
import os
import poplib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailrouter.sandbox import demo
from mailrouter.sandbox.configs import write_config
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MAIL_UID = MAIL_GID = 8
LOGIN = "alice@example.com"
MESSAGE = b"From bench@example.net Mon Nov 30 08:00:00 2026\nSubject: bench\n\nbody\n\n"
PAM_PERMIT = """\
# bench_pop3.py: the PAM floor -- popa3d with no password check at all.
auth     required  pam_permit.so
account  required  pam_permit.so
password required  pam_deny.so
session  required  pam_deny.so
"""
LABELS = {"argon2": "{ARGON2}", "ssha": "{SSHA}"}
LEAN = "popa3d + pam_exec pam-auth --authd-socket (lean)"
FULL = "popa3d + pam_exec pam-auth --config (full)"
FLOOR = "popa3d + pam_permit (floor)"
DOVECOT = "Dovecot IMAP, native LDAP passdb"

DOVECOT_CONF = """\
# bench_pop3.py: Dovecot with its own LDAP passdb, private, plain IMAP on loopback.
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %u
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 8
last_valid_uid = 8
first_valid_gid = 8
last_valid_gid = 8
mail_location = mbox:~/mail:INBOX={spool}/%u
auth_failure_delay = 0
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = ldap
  args = {work}/dovecot-ldap.conf.ext
}}
userdb {{
  driver = static
  args = uid=8 gid=8 home={work}/home/%u
}}
"""

DOVECOT_LDAP = """\
uris = {uri}
dn = {dn}
dnpass = {password}
auth_bind = yes
base = dc=%d,{base}
scope = onelevel
pass_filter = (&(objectClass=mailUser)(uid=%n))
# Keep the login as typed (the default would rename the user to the entry's uid).
pass_attrs = =user=%u
"""


@dataclass
class Result:
    case: str
    scheme: str  # the label, {ARGON2} or {SSHA}
    median_ms: float


class Dovecot:
    """A private Dovecot whose passdb is its own LDAP driver."""

    def __init__(self, work: Path, slapd: Slapd, data: demo.DemoDirectory, spool: Path) -> None:
        self.work = work
        self.port = free_port()
        for name in ("run", "state", "home"):
            (work / name).mkdir(mode=0o755, parents=True)
        home = work / "home" / LOGIN
        (home / "mail").mkdir(parents=True)
        for path in (home, home / "mail"):
            os.chown(path, MAIL_UID, MAIL_GID)
        service = data.account("service")
        ldap_conf = work / "dovecot-ldap.conf.ext"
        ldap_conf.write_text(DOVECOT_LDAP.format(uri=slapd.uri.rstrip("/"), dn=service.dn,
                                                 password=service.password, base=data.base_dn))
        os.chown(ldap_conf, 0, grp.getgrnam("dovecot").gr_gid)
        ldap_conf.chmod(0o640)
        conf = work / "dovecot.conf"
        conf.write_text(DOVECOT_CONF.format(work=work, spool=spool, port=self.port))
        self.process = subprocess.Popen(
            ["/usr/sbin/dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
            stderr=(work / "dovecot.stderr").open("wb"), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        if not wait_for_port(self.port, 15, self.process):
            self.stop()
            raise SystemExit("dovecot did not start: " + self.log())

    def log(self) -> str:
        return "\n".join((self.work / name).read_text(errors="replace")
                         for name in ("dovecot.log", "dovecot.stderr") if (self.work / name).exists())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Authd:
    """mailrouter-authd for the lean path, on a socket in the work dir."""

    def __init__(self, work: Path, config: Path) -> None:
        self.socket = work / "auth.sock"
        self.process = subprocess.Popen(
            [str(VENV_BIN / "mailrouter-authd"), "--config", str(config), "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("mailrouter-authd did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=15)


def pop3_session(port: int, password: str) -> None:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(LOGIN)
        client.pass_(password)
        if client.stat()[0] != 1:
            raise SystemExit("popa3d: the mailbox does not hold the one message")
        client.quit()
    finally:
        client.close()


def imap_session(port: int, password: str) -> None:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        client.login(LOGIN, password)
        status, data = client.select("INBOX")
        if status != "OK" or data != [b"1"]:
            raise SystemExit(f"dovecot: SELECT INBOX gave {status} {data}")
    except BaseException:
        client.shutdown()
        raise
    client.logout()  # (closes the connection)


def write_mailbox(spool: Path) -> None:
    path = spool / LOGIN
    path.write_bytes(MESSAGE)
    os.chown(path, MAIL_UID, MAIL_GID)
    path.chmod(0o600)


def run(work: Path, scheme: str, sessions: int) -> list[Result]:
    """The medians of every case for users hashed with ``scheme`` (argon2 | ssha)."""
    label = LABELS[scheme]
    work = work / f"login-{scheme}"
    work.mkdir(parents=True)
    work.chmod(0o755)
    data = demo.build(scheme=scheme)
    password = data.account(LOGIN).password
    slapd = Slapd(work / "slapd", ldif=[data.ldif], root=ROOT, seed_passwords=data.seed_passwords).start()
    stoppers: list[Callable[[], None]] = [slapd.stop]
    try:
        service = data.account("service")
        # The data's own scheme, or the first login would rehash it (mailrouter.auth).
        conf = write_config(work / "conf" / "mailrouter.toml", uris=[slapd.uri], base_dn=data.base_dn,
                            bind_dn=service.dn, password=service.password, password_scheme=scheme)
        authd = Authd(work, conf)
        stoppers.append(authd.stop)
        lean = Popa3d(work / "pop-lean", str(conf), root=ROOT, tls=False, authd_socket=str(authd.socket))
        full = Popa3d(work / "pop-full", str(conf), root=ROOT, tls=False)
        floor = Popa3d(work / "pop-floor", str(conf), root=ROOT, tls=False)
        floor.configure()
        (floor.pam_dir / "popa3d").write_text(PAM_PERMIT, encoding="utf-8")  # its private pam.d only
        for pop in (lean, full, floor):
            pop.start()
            stoppers.append(pop.stop)
            write_mailbox(pop.spool)
        spool = work / "imap-spool"  # like Debian's /var/mail: root:mail 2775 (dotlocks)
        spool.mkdir()
        os.chown(spool, 0, MAIL_GID)
        spool.chmod(0o2775)
        write_mailbox(spool)
        dovecot = Dovecot(work / "dovecot", slapd, data, spool)
        stoppers.append(dovecot.stop)
        cases: dict[str, Callable[[], None]] = {
            LEAN: lambda: pop3_session(lean.port, password),
            FULL: lambda: pop3_session(full.port, password),
            FLOOR: lambda: pop3_session(floor.port, password),
            DOVECOT: lambda: imap_session(dovecot.port, password),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for session in cases.values():
            session()  # warm-up; raises if refused
        for _ in range(sessions):
            for name, session in cases.items():
                started = time.perf_counter()
                session()
                times[name].append(time.perf_counter() - started)
        return [Result(name, label, statistics.median(values) * 1000) for name, values in times.items()]
    finally:
        for stop in reversed(stoppers):
            stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40, help="sessions per case and scheme")
    parser.add_argument("--schemes", default="argon2,ssha")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (private popa3d, Dovecot and slapd)")
    work = Path(tempfile.mkdtemp(prefix="mailrouter-bench-pop3-"))
    work.chmod(0o755)
    try:
        results = [r for scheme in args.schemes.split(",") for r in run(work, scheme, args.sessions)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'case':<52} {'hash':<9} {'median ms':>10}")
    for result in results:
        print(f"{result.case:<52} {result.scheme:<9} {result.median_ms:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
