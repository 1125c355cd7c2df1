"""mailrouter-sandbox -- the whole hub on loopback, in one directory, as root.

SYNOPSIS
    mailrouter-sandbox --root CHECKOUT up [--dir DIR] [--nodes N]
    mailrouter-sandbox env --dir DIR
    mailrouter-sandbox status --dir DIR
    mailrouter-sandbox down --dir DIR [--keep]
    mailrouter-sandbox --root CHECKOUT demo [--dir DIR]
    mailrouter-sandbox ldap stop|start --dir DIR [--server NAME]

--root CHECKOUT
    The mailrouter checkout whose ldap/, exim/ and popa3d/ files the daemons
    run with; required by up and demo (bin/mailrouter-sandbox passes its own
    checkout).  Never guessed from the installed package or the current
    directory.  `ldap start` reuses the one recorded by `up`.

up
    In DIR (default: a new directory under /tmp) starts slapd with the project's
    schema, ACLs and seed plus demo data; the auth and lookup sockets
    (mailrouter-authd, mailrouter-lookupd: Exim uses the socket fast path); the
    delivery socket (mailrouter-lmtpd: Exim stores local mail over LMTP); the Exim
    daemon with the project's exim/ config (SMTP, submission with STARTTLS, SMTPS);
    popa3d for POP3 (socat) and POP3S (stunnel) with the project's PAM config;
    Dovecot for IMAP (STARTTLS) and IMAPS with the project's dovecot/ config for its
    version (2.3: checkpassword; 2.4: its LDAP passdb, mbox users) --
    all on free loopback ports, with a throwaway CA.  Demo data: example.com and
    example.org, a global admin, a postmaster (domain admin) and two users per
    domain, an alias with two targets and a catch-all in example.org, one
    outbound rate limit (dave@example.org: 100 / 1h), a vacation reply
    (dave@example.org) and a Sieve filter (carol@example.org); random
    passwords, stored hashed.  Prints ONE JSON object on stdout, nothing else:

      {"dir", "ldap_uri", "base_dn", "admin_dn", "admin_password", "smtp_port",
       "submission_port", "smtps_port", "pop3_port", "pop3s_port", "ca_cert",
       "spool_dir", "exim", "accounts": [{"address", "dn", "password", "role"}],
       "aliases": {"alias@domain": [targets]}, "catchall": {"domain": [targets]},
       "mail_rules": {"vacation": [addresses], "sieve": [addresses]},
       "web_url", "config", "exim_config", "tls_host", "audit_base",
       "rate_limits": {"address": "COUNT / PERIOD"}, "lmtp_socket", "imap_port",
       "imaps_port", "webmail_url"}

    Keys are only ever added, never renamed or dropped.  "config" is the hooks'
    TOML (what ``mailrouter-admin --config`` wants); "exim_config" the Exim
    configuration file (a wrapper: the sandbox's macros, then exim/mailrouter.conf);
    "lmtp_socket" is mailrouter-lmtpd's socket (Exim's lmtp transport delivers
    local mail there; the server stores it as the storage account).
    "imap_port" (STARTTLS before LOGIN; Dovecot exempts clients on its own
    address, 127.0.0.1) and "imaps_port" serve every
    user's mailbox in its format (mbox users: the very file POP3 reads; Maildir
    users, ``mailrouter-admin user add --format maildir``: IMAP only).
    "webmail_url" is Roundcube (plain HTTP on loopback) on that IMAPS port and
    the submission port; every user logs in with their address and password.
    "tls_host" a host name the certificates match ("localhost"; they match IP
    127.0.0.1 too, but clients such as fetchmail check names only).
    "audit_base" is the suffix of slapd's audit log (``mailrouter-admin audit``
    reads it; ``ldapsearch -b`` it as the global admin).

    "web_url" is the web interface (https on loopback, certificate from the
    sandbox CA in "ca_cert"); every account above logs in there.  Users added
    while the sandbox runs log in over POP3 at once: the PAM helper writes a
    user's record at login, as in production (no refresher runs here; the
    production timer only sweeps records of removed users, which PAM refuses
    anyway).

    "exim" is a shell command line that runs exim with the sandbox config
    (append arguments such as -bt ADDRESS or -qf).  Daemons keep running after
    `up` exits; DIR/sandbox.json remembers them.
up --nodes N
    N = 2 or 3: the cluster of README "More than one machine" on loopback
    addresses only (mailrouter.sandbox.nodes): two LDAP providers
    (multi-provider, delta-syncrepl) on 127.0.0.1 and, per node on 127.0.0.(i+1),
    a read-only replica, authd, lookupd, Exim in cluster mode, popa3d and
    perdition; HAProxy on 127.0.0.1 is the front door.  The JSON keeps every key
    above, for the front door ("smtp_port" ... "pop3s_port" are HAProxy's;
    "ldap_uri" is the first provider; "config", "exim", "spool_dir" are node 1's)
    and adds "nodes": [{"name", "address", "mail_host", "replica_uri",
    "smtp_port", "submission_port", "smtps_port", "pop3_port", "pop3s_port",
    "perdition_pop3_port", "perdition_pop3s_port", "config", "spool_dir",
    "exim", "exim_config"}], "ldap_servers" {NAME: URI} (provider1, provider2,
    replica1...), "ldap_write_uris" and "replicator_password".  Demo users with
    a home ("home" in "accounts"): alice and carol on node1, bob and dave on
    node2.
env
    Prints shell exports that point every bin/ tool at the sandbox in DIR:
    ``eval "$(mailrouter-sandbox env --dir DIR)"`` sets MAILROUTER_CONFIG (the
    hooks' TOML), MAILROUTER_BIND_DN and MAILROUTER_PASSWORD_FILE (the global
    admin and a 0600 file with their password) and MAILROUTER_EXIM (the Exim
    command line, for ``mailrouter-admin queue`` and ``test address --exim``).
status
    Prints one JSON object: each daemon, its PID and whether it still runs.
down
    Stops everything `up` started (by process group, checked against the start
    time recorded at `up`, so a recycled PID is never signalled) and removes DIR
    unless --keep.  The host is left as it was: nothing in /etc changes and no
    system service is started or stopped, ever.
ldap stop|start [--server NAME]
    Stops slapd, or starts it again on the same port with the same data, to
    watch the hub defer (451 at SMTP time, queued deliveries) and recover by
    itself: Exim's queue runner (every 2 s here, retry every 5 s) delivers
    what waited, with no `exim -qf`.  In a cluster, --server names one slapd
    of "ldap_servers" (provider1, provider2, replica1, ...; default provider1).
demo
    `up`, then sends a message with STARTTLS + AUTH on the submission port and
    fetches it over POP3S, printing what happened and how to connect; the
    sandbox keeps running (stop it with `down`).

RELAYING
    The seed's host_accept_relay setting (127.0.0.1 and ::1) lets every client on
    127.0.0.1 relay to any domain without AUTH.  To see "550 5.7.1 Relaying
    denied", connect from another loopback address (bind the client to
    127.0.0.2), or remove 127.0.0.1 with ``mailrouter-admin setting remove
    host_accept_relay 127.0.0.1``.

EXIT CODES
    0 done; 1 failed (an `up` that fails stops whatever it had started);
    2 usage.  Diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import poplib
import pwd
import shlex
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailrouter import rules
from mailrouter.admin.audit import AUDIT_BASE
from mailrouter.sandbox import demo, tls
from mailrouter.sandbox.configs import write_config
from mailrouter.sandbox.dovecot import Dovecot, shipped_name
from mailrouter.sandbox.exim import EXIM_USER, Exim
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd, free_port
from mailrouter.sandbox.web import WebServer, web_settings
from mailrouter.sandbox.webmail import Webmail

STATE_FILE = "sandbox.json"
ADMIN_SECRET = "admin.secret"  # the global admin's password, for MAILROUTER_PASSWORD_FILE
TLS_HOST = "localhost"  # a name the certificates match (tls.make_certificates)
RELAY_NOTE = (
    "relaying   every client on 127.0.0.1 may relay without AUTH (the seed's host_accept_relay: "
    "127.0.0.1, ::1); connect from 127.0.0.2 to see \"550 5.7.1 Relaying denied\""
)
STOP_TIMEOUT = 10.0
# Exim's queue runner and retry times here: a message deferred (LDAP stopped,
# mailbox locked) is tried again within seconds, with no `exim -q` by hand.
# Production uses the config's defaults and the daemon's -q5m (exim/mailrouter.conf).
QUEUE_INTERVAL = "2s"
RETRY_TIMES = "F,4d,5s"


@dataclass
class Started:
    """A daemon's process group, and how to tell it from a recycled PID."""

    name: str
    pid: int
    start_time: str

    @classmethod
    def of(cls, name: str, pid: int) -> Started:
        return cls(name, pid, _start_time(pid))


@dataclass
class Sandbox:
    directory: Path
    root: Path  # the checkout the daemons run from (--root)
    started: list[Started] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def record(self, name: str, pid: int) -> None:
        self.started.append(Started.of(name, pid))
        self.save()

    def save(self) -> None:
        state = {
            "root": str(self.root),
            "started": [vars(s) for s in self.started],
            "info": self.info,
        }
        path = self.directory / STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds passwords
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)

    @classmethod
    def load(cls, directory: Path) -> Sandbox:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        return cls(
            directory, Path(state["root"]), [Started(**s) for s in state["started"]], state.get("info", {})
        )


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: the process's start time in clock ticks.

    "" for no such process, and for a zombie: it has exited, and whoever
    reaps it (init, a subreaper, some of which poll every few seconds) is no
    reason to wait for it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]


def is_running(started: Started) -> bool:
    return bool(started.start_time) and _start_time(started.pid) == started.start_time


def stop_group(started: Started) -> None:
    if not is_running(started):
        return
    for sig, wait in ((signal.SIGCONT, 0.0), (signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.killpg(started.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(started.pid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            if not is_running(started):
                return
            time.sleep(0.05)


def stop_all(sandbox: Sandbox) -> None:
    for started in reversed(sandbox.started):
        stop_group(started)


def sweep(directory: Path) -> None:
    """Stop every process whose command line names ``directory``.

    Only for a failed `up`: an interruption can land after a daemon started and
    before its PID was recorded.  The directory is brand new, so whatever names
    it is ours.  (`down` stops by recorded PID only.)
    """
    marker = os.fsencode(str(directory) + "/")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            pid = int(entry.name)
            # SIGKILL at once: a stray of a failed start has nothing to flush.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a group leader (exim -bd) and its children
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- bringing it up -----------------------------------------------------------
def bring_up(directory: Path, sandbox: Sandbox, log: Callable[[str], None]) -> dict[str, Any]:
    root = sandbox.root
    directory.chmod(0o755)  # Debian-exim and mail must reach the config and the spool
    certificates = tls.make_certificates(directory / "tls", host=TLS_HOST, key_group=EXIM_USER)

    spool = directory / "mail"
    spool.mkdir(exist_ok=True)
    mail = pwd.getpwnam("mail")
    os.chown(spool, 0, mail.pw_gid)
    spool.chmod(0o2775)

    data = demo.build(mbox_template=f"{spool}/{{local}}@{{domain}}", with_rules=True)
    log("starting slapd")
    slapd = Slapd(directory / "ldap", ldif=[data.ldif], root=root, seed_passwords=data.seed_passwords)
    slapd.start()
    assert slapd.process is not None
    sandbox.record("slapd", slapd.process.pid)
    service = data.account("service")
    web_port = free_port()
    # The secret is 0640 root:Debian-exim (SMTP-time lookups); deliveries run as
    # "mail", which never needs it.
    settings: dict[str, Any] = {
        "uris": [slapd.uri],
        "base_dn": data.base_dn,
        "bind_dn": service.dn,
        "password": service.password,
        "mbox_template": f"{spool}/{{local}}@{{domain}}",
        "maildir_template": f"{spool}/{{domain}}/{{local}}/Maildir",
        "auth_socket": str(directory / "auth.sock"),
        "operation_timeout": 3.0,
    }
    config = write_config(
        directory / "mailrouter.toml",
        web=web_settings(directory, web_port, certificates.cert, certificates.key),
        **settings,
    )
    # Dovecot runs mailrouter-checkpassword as "dovecot": the same settings, with the
    # secret 0640 root:dovecot (production: one file readable by both groups).
    dovecot_config = write_config(directory / "dovecot" / "mailrouter.toml", group="dovecot", **settings)

    # The web's port is written into the config before anything listens on it:
    # start it first, so no later free_port() of ours can hand the same port out.
    log("starting mailrouter-web (gunicorn, HTTPS)")
    web = WebServer(directory, config, web_port).start()
    assert web.process is not None
    sandbox.record("web", web.process.pid)
    components = start_services(directory, sandbox, config, certificates, log)
    components["web_url"] = f"https://127.0.0.1:{web_port}/"
    log(f"starting dovecot (IMAP with STARTTLS, IMAPS; dovecot/{shipped_name()})")
    dovecot = Dovecot(directory / "dovecot", dovecot_config, certificates, root=root,
                      ldap_uri=slapd.uri, spool=spool).start()
    assert dovecot.process is not None
    sandbox.record("dovecot", dovecot.process.pid)
    components.update(imap_port=dovecot.imap_port, imaps_port=dovecot.imaps_port)
    log("starting roundcube (php -S, as www-data)")
    webmail = Webmail(directory / "webmail", root=root, host=TLS_HOST, imaps_port=dovecot.imaps_port,
                      submission_port=components["submission_port"], ca_cert=certificates.ca_cert).start()
    assert webmail.process is not None
    sandbox.record("webmail", webmail.process.pid)
    components["webmail_url"] = webmail.url

    admin = data.account("global-admin")
    fd = os.open(directory / ADMIN_SECRET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(admin.password + "\n")
    return {
        "dir": str(directory),
        "ldap_uri": slapd.uri,
        "base_dn": data.base_dn,
        "admin_dn": admin.dn,
        "admin_password": admin.password,
        **components,
        "ca_cert": str(certificates.ca_cert),
        "spool_dir": str(spool),
        "accounts": [a.as_json() for a in data.accounts if a.role != "service"],
        "aliases": data.aliases,
        "catchall": data.catchall,
        "rate_limits": data.rate_limits,
        "mail_rules": {"vacation": [a for a, r in demo.RULES.items() if rules.VACATION_ACTIVE in r],
                       "sieve": [a for a, r in demo.RULES.items() if rules.SIEVE_SCRIPT in r]},
        "config": str(config),
        "tls_host": TLS_HOST,
        "audit_base": AUDIT_BASE,
    }


def start_socket_server(
    sandbox: Sandbox, name: str, directory: Path, argv: list[str], socket_path: Path
) -> None:
    """Start one of our socket servers in its own session; wait for its socket."""
    log_path = directory / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    sandbox.record(name, process.pid)
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mailrouter-{name} did not start: " + log_path.read_text())
        time.sleep(0.02)


def start_services(
    directory: Path,
    sandbox: Sandbox,
    config: Path,
    certificates: tls.Certificates,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Start the auth socket, Exim and popa3d; return their part of the JSON."""
    root = sandbox.root
    bin_dir = str(Path(sys.executable).parent)
    socket_path = directory / "auth.sock"
    log("starting mailrouter-authd")
    start_socket_server(
        sandbox, "authd", directory,
        [f"{bin_dir}/mailrouter-authd", "--config", str(config), "--socket", str(socket_path)],
        socket_path,
    )

    lookup_socket = directory / "lookup.sock"
    log("starting mailrouter-lookupd (the socket fast path for Exim's lookups)")
    start_socket_server(
        sandbox, "lookupd", directory,
        [f"{bin_dir}/mailrouter-lookupd", "--config", str(config), "--socket", str(lookup_socket)],
        lookup_socket,
    )

    lmtp_socket = directory / "lmtp.sock"
    log("starting mailrouter-lmtpd (local delivery over LMTP)")
    start_socket_server(
        sandbox, "lmtpd", directory,
        [f"{bin_dir}/mailrouter-lmtpd", "--config", str(config), "--socket", str(lmtp_socket)],
        lmtp_socket,
    )

    smtp_port, submission_port, smtps_port = free_port(), free_port(), free_port()
    exim = Exim(
        directory / "exim",
        root / "exim" / "mailrouter.conf",
        macros={
            "MAILROUTER_BIN": bin_dir,
            "MAILROUTER_CONFIG": str(config),
            "MAILROUTER_AUTH_SOCKET": str(socket_path),
            "MAILROUTER_LOOKUP_VIA": "socket",
            "MAILROUTER_LOOKUP_SOCKET": str(lookup_socket),
            "MAILROUTER_DELIVERY_VIA": "lmtp",
            "MAILROUTER_LMTP_SOCKET": str(lmtp_socket),
            "MAILROUTER_TLS_CERT": str(certificates.cert),
            "MAILROUTER_TLS_KEY": str(certificates.key),
            "MAILROUTER_SMTP_PORTS": f"{smtp_port} : {submission_port} : {smtps_port}",
            "MAILROUTER_SMTPS_PORTS": str(smtps_port),
            "MAILROUTER_HOSTNAME": "localhost",
            # Remote addresses go to a closed loopback port: they stay queued
            # (deferred) and nothing ever leaves the machine.
            "MAILROUTER_RELAY_HOST": "127.0.0.1",
            "MAILROUTER_RELAY_PORT": str(free_port()),
            "MAILROUTER_RETRY_TIMES": RETRY_TIMES,
        },
    )
    log(f"starting exim (queue runner every {QUEUE_INTERVAL})")
    exim.start_daemon([smtp_port, submission_port, smtps_port], queue_interval=QUEUE_INTERVAL)
    assert exim.daemon_pid is not None
    sandbox.record("exim", exim.daemon_pid)

    log("starting popa3d (POP3 via socat, POP3S via stunnel; PAM asks mailrouter-authd)")
    # The lean PAM path (popa3d/pam.d-popa3d-authd): the authd above answers the logins.
    popa3d = Popa3d(directory, str(config), root=root, bin_dir=bin_dir, certificates=certificates,
                    authd_socket=str(socket_path))
    popa3d.start()
    for index, pid in enumerate(popa3d.pids()):
        sandbox.record(f"popa3d-front-{index}", pid)
    return {
        "smtp_port": smtp_port,
        "submission_port": submission_port,
        "smtps_port": smtps_port,
        "pop3_port": popa3d.port,
        "pop3s_port": popa3d.tls_port,
        "exim": shlex.join(exim.argv()),
        "exim_config": str(exim.wrapper),
        "lmtp_socket": str(lmtp_socket),
    }


def up(directory: Path | None, root: Path, log: Callable[[str], None],
       nodes: int = 0) -> tuple[int, dict[str, Any] | None]:
    if os.geteuid() != 0:
        log("mailrouter-sandbox: run as root (slapd, Exim and popa3d need it)")
        return 1, None
    created = directory is None
    target = Path(tempfile.mkdtemp(prefix="mailrouter-sandbox-")) if directory is None else directory
    target.mkdir(parents=True, exist_ok=True)
    if (target / STATE_FILE).exists() and any(is_running(s) for s in Sandbox.load(target).started):
        log(f"mailrouter-sandbox: a sandbox already runs in {target}; `down --dir {target}` first")
        return 1, None
    sandbox = Sandbox(target, root)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if nodes:
            from mailrouter.sandbox.nodes import bring_up_cluster  # only for a cluster

            info = bring_up_cluster(target, sandbox, nodes, log)
        else:
            info = bring_up(target, sandbox, log)
        sandbox.info = info
        sandbox.save()
        return 0, info
    except BaseException as exc:  # noqa: BLE001 - an interrupted `up` leaves no daemon behind
        stop_all(sandbox)
        sweep(target)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            log("mailrouter-sandbox: interrupted; everything started was stopped")
        else:
            log(f"mailrouter-sandbox: up failed: {exc}")
        return 1, None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def status(directory: Path) -> dict[str, Any]:
    sandbox = Sandbox.load(directory)
    return {
        "dir": str(directory),
        "daemons": {s.name: {"pid": s.pid, "running": is_running(s)} for s in sandbox.started},
    }


def ldap(directory: Path, action: str, server: str | None = None) -> None:
    """Stop slapd, or start it again exactly as `up` did (same port, same data).

    In a cluster (``up --nodes``) ``server`` names one of ``ldap_servers``."""
    sandbox = Sandbox.load(directory)
    servers = sandbox.info.get("ldap_servers")
    if servers is not None:
        from mailrouter.sandbox import nodes  # a cluster: one of its slapds

        name = server or "provider1"
        if name not in servers:
            raise ValueError(f"no LDAP server {name!r}; the sandbox has {', '.join(servers)}")
        current = next(s for s in sandbox.started if s.name == f"slapd-{name}")
        if action == "stop":
            stop_group(current)
        elif not is_running(current):
            pid = nodes.restart_slapd(directory, sandbox.root, name, servers[name])
            sandbox.started[sandbox.started.index(current)] = Started.of(f"slapd-{name}", pid)
            sandbox.save()
        return
    if server is not None:
        raise ValueError("--server names a slapd of a cluster (up --nodes); this sandbox has one")
    current = next(s for s in sandbox.started if s.name == "slapd")
    if action == "stop":
        stop_group(current)
        return
    if is_running(current):
        return
    slapd = Slapd(directory / "ldap", root=sandbox.root)
    slapd.port = int(sandbox.info["ldap_uri"].rsplit(":", 1)[1].strip("/"))
    slapd.restart()
    assert slapd.process is not None
    sandbox.started[sandbox.started.index(current)] = Started.of("slapd", slapd.process.pid)
    sandbox.save()


def env(directory: Path) -> str:
    """The shell exports of `env` (values quoted for sh)."""
    info = Sandbox.load(directory).info
    exports = {
        "MAILROUTER_CONFIG": info.get("config", str(directory / "mailrouter.toml")),  # older sandboxes
        "MAILROUTER_BIND_DN": info["admin_dn"],
        "MAILROUTER_PASSWORD_FILE": str(directory / ADMIN_SECRET),
        "MAILROUTER_EXIM": info["exim"],
    }
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in exports.items())


def down(directory: Path, keep: bool) -> None:
    stop_all(Sandbox.load(directory))
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)


# -- the demo -----------------------------------------------------------------
def run_demo(info: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Send alice -> team@example.com over submission, fetch it as bob over POP3S."""
    alice = next(a for a in info["accounts"] if a.get("address") == "alice@example.com")
    bob = next(a for a in info["accounts"] if a.get("address") == "bob@example.com")
    context = ssl.create_default_context(cafile=info["ca_cert"])
    subject = f"mailrouter demo {time.time():.0f}"
    message = EmailMessage()
    message["From"] = alice["address"]
    message["To"] = "team@example.com"
    message["Subject"] = subject
    message.set_content("Hello from the mailrouter sandbox.\n")
    submission = ("127.0.0.1", info["submission_port"])
    with smtplib.SMTP(*submission, local_hostname="demo.localhost", timeout=30) as smtp:
        smtp.starttls(context=context)  # verified against the CA, for IP 127.0.0.1
        smtp.login(alice["address"], alice["password"])
        smtp.send_message(message)
    log(f"sent '{subject}' from alice@example.com to team@example.com (submission, STARTTLS + AUTH)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pop = poplib.POP3_SSL("127.0.0.1", info["pop3s_port"], context=context, timeout=30)
        try:
            pop.user(bob["address"])
            pop.pass_(bob["password"])
            count = len(pop.list()[1])
            for number in range(1, count + 1):
                lines = pop.retr(number)[1]
                if any(subject.encode() in line for line in lines):
                    log(f"fetched it as bob@example.com over POP3S (message {number} of {count})")
                    return True
        finally:
            pop.quit()
        time.sleep(0.5)
    log("the demo message did not arrive within 30 s; see the Exim logs in " + info["dir"])
    return False


def connection_help(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"sandbox in {info['dir']}",
            f"  LDAP        {info['ldap_uri']}  base {info['base_dn']}  admin {info['admin_dn']}",
            f"  SMTP        127.0.0.1:{info['smtp_port']}  submission :{info['submission_port']}"
            f" (STARTTLS)  SMTPS :{info['smtps_port']}",
            f"  POP3        127.0.0.1:{info['pop3_port']}  POP3S :{info['pop3s_port']}",
            f"  IMAP        127.0.0.1:{info['imap_port']} (STARTTLS)  IMAPS :{info['imaps_port']}",
            f"  webmail     {info['webmail_url']}  (Roundcube; users log in with their address)",
            f"  CA          {info['ca_cert']}",
            f"  web         {info['web_url']}  (log in as admin, postmaster@example.com or a user)",
            f"  accounts    {Path(info['dir']) / STATE_FILE} (passwords; mode 0600)",
            f"  config      {info['config']}  (mailrouter-admin --config; or, for every tool:"
            f" eval \"$(mailrouter-sandbox env --dir {shlex.quote(info['dir'])})\")",
            f"  exim        {info['exim']} -bt alice@example.com",
            f"  delivery    mailrouter-lmtpd on {info.get('lmtp_socket', '-')} (Exim's lmtp transport;"
            f" its log: {Path(info['dir']) / 'lmtpd.log'})",
            f"  {RELAY_NOTE}",
            f"  stop        mailrouter-sandbox down --dir {shlex.quote(info['dir'])}",
        ]
    )


def console() -> int:
    """The ``mailrouter-sandbox`` console script.  Here, not in mailrouter.cmd.guard:
    the sandbox is no hook, and nothing outside this package imports it."""
    return main(sys.argv[1:])


SUBCOMMANDS = {
    "up": "start slapd, Exim, popa3d, Dovecot, Roundcube, the sockets and the web interface; print JSON",
    "demo": "up, then send a message (submission, STARTTLS + AUTH) and fetch it (POP3S)",
    "env": "print shell exports that point every bin/ tool at this sandbox (eval them)",
    "status": "print each daemon, its PID and whether it runs (JSON)",
    "down": "stop everything up started and remove DIR",
    "ldap": "stop or start slapd, to watch the hub defer and recover",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailrouter-sandbox", description="The whole hub on loopback, in one directory, as root.",
        epilog="Manual: man mailrouter-sandbox (or pydoc mailrouter.sandbox.cli).  "
        "Exit: 0 done, 1 failed, 2 usage.",
    )
    parser.add_argument(
        "--root", type=Path, help="the checkout with ldap/, exim/, popa3d/ (needed by up and demo; "
        "bin/mailrouter-sandbox passes its own)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in SUBCOMMANDS.items():
        command = commands.add_parser(name, help=text, description=text)
        if name in ("up", "demo"):
            command.add_argument("--dir", type=Path, help="the sandbox directory (default: new, in /tmp)")
        else:
            command.add_argument("--dir", type=Path, required=True,
                                 help="the directory `up` printed as \"dir\"")
        if name == "down":
            command.add_argument("--keep", action="store_true", help="keep DIR (logs, mailboxes)")
        if name == "ldap":
            command.add_argument("action", choices=("stop", "start"), help="stop or start slapd")
            command.add_argument("--server", help="in a cluster: which slapd (provider1, provider2, "
                                 "replica1, ...; default provider1)")
        if name == "up":
            command.add_argument("--nodes", type=int, choices=(2, 3),
                                 help="a cluster of N mail nodes behind a front door (README "
                                 "\"More than one machine\")")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.command in ("status", "down", "ldap", "env"):
        if not (args.dir / STATE_FILE).exists():
            log(f"mailrouter-sandbox: no sandbox in {args.dir}")
            return 1
        if args.command == "status":
            print(json.dumps(status(args.dir)))
        elif args.command == "env":
            sys.stdout.write(env(args.dir.resolve()))
        elif args.command == "ldap":
            try:
                ldap(args.dir, args.action, args.server)
            except ValueError as exc:
                log(f"mailrouter-sandbox: {exc}")
                return 1
        else:
            down(args.dir, args.keep)
        return 0

    if args.root is None or not (args.root / "ldap" / "slapd.conf").is_file():
        parser.error(f"{args.command} needs --root CHECKOUT: the directory holding ldap/slapd.conf")
    code, info = up(args.dir.resolve() if args.dir else None, args.root.resolve(), log,
                    getattr(args, "nodes", None) or 0)
    if code != 0 or info is None:
        return code
    if args.command == "up":
        print(json.dumps(info))
        return 0
    ok = run_demo(info, log)
    log(connection_help(info))
    return 0 if ok else 1
