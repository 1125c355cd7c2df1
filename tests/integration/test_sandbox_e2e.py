"""End to end through `bin/mailrouter-sandbox`: SMTP in, POP3 out, on the real daemons.

The sandbox is started exactly as an admin starts it (the bin/ wrapper, as a
subprocess) and stopped with `down` whatever happens.  Each test uses its own
subject and checks, over POP3, that its message arrived exactly once and can be
deleted.  Nothing leaves the machine: remote addresses are routed to a closed
loopback port and stay queued.
"""

from __future__ import annotations

import json
import os
import poplib
import shlex
import signal
import smtplib
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, ROOT, VENV_ENV, needs_root
from mailrouter.config import LdapConfig
from mailrouter.directory import Session

pytestmark = [needs_root, pytest.mark.slow]  # each case is a whole hub; CI runs them

SANDBOX = str(ROOT / "bin" / "mailrouter-sandbox")
CONTRACT_KEYS = {
    "dir", "ldap_uri", "base_dn", "admin_dn", "admin_password", "smtp_port", "submission_port",
    "smtps_port", "pop3_port", "pop3s_port", "ca_cert", "spool_dir", "exim", "accounts", "aliases",
    "catchall", "web_url", "config", "exim_config", "tls_host", "audit_base", "rate_limits",
    "lmtp_socket", "imap_port", "imaps_port", "webmail_url", "mail_rules",
}
ARRIVAL_TIMEOUT = 60.0


SANDBOX_ENV = {**os.environ, **VENV_ENV}  # the wrapper runs the venv under test


def sandbox_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDBOX, *args], capture_output=True, text=True, timeout=timeout, check=False, env=SANDBOX_ENV
    )


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    done = sandbox_command("up")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)  # the whole of stdout is one JSON object
    try:
        yield info
    finally:
        down = sandbox_command("down", "--dir", info["dir"])
        assert down.returncode == 0, down.stderr


def account(info: dict[str, Any], address: str) -> dict[str, str]:
    return next(a for a in info["accounts"] if a.get("address") == address)


def admin_session(info: dict[str, Any]) -> Session:
    config = LdapConfig(uris=(info["ldap_uri"],), base_dn=info["base_dn"])
    return Session(config, info["admin_dn"], info["admin_password"])


def message(subject: str, to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "sender@client.example"
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content(f"{subject}\nFrom the end-to-end test.\n")
    return mail


def connect_smtp(info: dict[str, Any]) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", info["smtp_port"], local_hostname="client.example", timeout=60)
    smtp.ehlo()  # smtplib's mail() does not greet by itself
    return smtp


def send(info: dict[str, Any], subject: str, *recipients: str) -> None:
    with connect_smtp(info) as smtp:
        refused = smtp.send_message(message(subject, ", ".join(recipients)), to_addrs=list(recipients))
    assert refused == {}


def pop3(info: dict[str, Any], tls: bool) -> poplib.POP3:
    if tls:
        context = ssl.create_default_context(cafile=info["ca_cert"])
        return poplib.POP3_SSL("127.0.0.1", info["pop3s_port"], context=context, timeout=30)
    return poplib.POP3("127.0.0.1", info["pop3_port"], timeout=30)


def fetch_and_delete(info: dict[str, Any], address: str, subject: str, tls: bool = False) -> int:
    """Wait for ``subject`` in ``address``'s mailbox; return how many copies were there, deleted."""
    user = account(info, address)
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        session = pop3(info, tls)
        session.user(address)
        session.pass_(user["password"])
        matching = []
        for number in range(1, len(session.list()[1]) + 1):
            lines = session.retr(number)[1]
            if f"Subject: {subject}".encode() in lines:
                matching.append(number)
        for number in matching:
            session.dele(number)
        session.quit()  # commits the deletions
        if matching or time.monotonic() > deadline:
            return len(matching)
        time.sleep(0.5)


def exim(info: dict[str, Any], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*shlex.split(info["exim"]), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)


def subject_for(test: str) -> str:
    return f"e2e {test} {uuid.uuid4().hex[:8]}"


def test_up_needs_the_checkout_named() -> None:
    """The sandbox never guesses which checkout's ldap/, exim/, popa3d/ to run."""
    bare = str(BIN / "mailrouter-sandbox")
    done = subprocess.run([bare, "up"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "up needs --root CHECKOUT" in done.stderr, done
    done = subprocess.run([bare, "--root", "/nonexistent", "demo"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "demo needs --root CHECKOUT" in done.stderr, done


def test_up_prints_the_documented_json(hub: dict[str, Any]) -> None:
    assert set(hub) == CONTRACT_KEYS
    roles = sorted(a["role"] for a in hub["accounts"])
    assert roles == ["domain-admin"] * 2 + ["global-admin"] + ["user"] * 4
    assert hub["aliases"] == {"team@example.com": ["alice@example.com", "bob@example.com"]}
    assert hub["catchall"] == {"example.org": ["carol@example.org"]}
    assert hub["rate_limits"] == {"dave@example.org": "100 / 1h"}
    assert all("address" in a for a in hub["accounts"] if a["role"] != "global-admin")
    assert hub["mail_rules"] == {"vacation": ["dave@example.org"], "sieve": ["carol@example.org"]}
    status = json.loads(sandbox_command("status", "--dir", hub["dir"]).stdout)
    assert status["daemons"] and all(d["running"] for d in status["daemons"].values())
    assert "lmtpd" in status["daemons"] and Path(hub["lmtp_socket"]).is_socket()


def test_the_sandbox_slapd_keeps_the_audit_log(hub: dict[str, Any]) -> None:
    """Issue 17: the sandbox runs the shipped audit log; mailrouter-admin reads it."""
    assert hub["audit_base"] == "cn=accesslog"
    admin = [str(ROOT / "bin" / "mailrouter-admin"), "--config", hub["config"], "--bind-dn", hub["admin_dn"],
             "--password-file", str(Path(hub["dir"]) / "admin.secret"), "--json"]
    env = {**os.environ, **VENV_ENV}
    added = subprocess.run([*admin, "user", "add", "audited@example.com", "--no-password"],
                           capture_output=True, text=True, timeout=60, check=False, env=env)
    assert added.returncode == 0, added.stderr
    shown = subprocess.run([*admin, "audit", "--domain", "example.com", "--since", "1h"],
                           capture_output=True, text=True, timeout=60, check=False, env=env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [(r["operation"], r["actor_dn"]) for r in rows if r["target"] == "audited@example.com"] == [
        ("add", hub["admin_dn"])]


def test_the_seeded_vacation_and_filter_work(hub: dict[str, Any]) -> None:
    """The demo's mail rules (issue 16): carol's filter redirects "[for dave]" to dave, who is
    on vacation and answers the sender (queued for the closed relay: nothing leaves)."""
    subject = subject_for("[for dave]")
    send(hub, subject, "carol@example.org")
    assert fetch_and_delete(hub, "dave@example.org", subject) == 1
    subject = subject_for("vacation")
    send(hub, subject, "dave@example.org")
    assert fetch_and_delete(hub, "dave@example.org", subject) == 1
    mainlog = Path(hub["dir"]) / "exim" / "log" / "mainlog"
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while "R=mailrouter_vacation T=mailrouter_vacation_reply" not in mainlog.read_text():
        assert time.monotonic() < deadline, mainlog.read_text()[-2000:]
        time.sleep(0.2)


def test_alias_with_two_local_targets_and_a_remote_one(hub: dict[str, Any]) -> None:
    with admin_session(hub) as session:
        session.add(
            f"mailAlias=mixed,dc=example.com,{hub['base_dn']}",
            {
                "objectClass": ["mailAlias"],
                "mailAlias": ["mixed"],
                "dc": ["example.com"],
                "mailAliasedName": ["alice@example.com", "bob@example.com", "someone@remote.example"],
            },
        )
    subject = subject_for("alias")
    send(hub, subject, "mixed@example.com")
    assert fetch_and_delete(hub, "alice@example.com", subject) == 1
    assert fetch_and_delete(hub, "bob@example.com", subject, tls=True) == 1
    # The remote child is deferred (closed relay port), so the alias stays queued.
    assert "mixed@example.com" in exim(hub, "-bp").stdout
    mainlog = (Path(hub["dir"]) / "exim" / "log" / "mainlog").read_text()
    assert "== someone@remote.example <mixed@example.com>" in mainlog
    assert "R=users T=mailrouter_lmtp" in mainlog  # the sandbox stores local mail over LMTP


def test_catchall_only_for_unknown_local_parts(hub: dict[str, Any]) -> None:
    subject = subject_for("catchall")
    send(hub, subject, "no-such-user@example.org")
    assert fetch_and_delete(hub, "carol@example.org", subject) == 1
    with connect_smtp(hub) as smtp:
        smtp.mail("sender@client.example")
        code, _ = smtp.rcpt("no-such-user@example.com")  # example.com has no catch-all
    assert code == 550


def test_full_mailbox_is_refused_at_rcpt_with_452(hub: dict[str, Any]) -> None:
    subject = subject_for("quota")
    send(hub, subject, "dave@example.org")
    mailbox = Path(hub["spool_dir"]) / "dave@example.org"
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while not (mailbox.exists() and mailbox.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.2)  # delivered first: a quota below its size would bounce it (77)
    dave_dn = account(hub, "dave@example.org")["dn"]
    with admin_session(hub) as session:
        session.modify(dave_dn, {"mailQuota": ("replace", ["10"])})  # smaller than what he has
    try:
        with connect_smtp(hub) as smtp:
            smtp.mail("sender@client.example")
            code, text = smtp.rcpt("dave@example.org")
        assert code == 452 and b"4.2.2" in text
    finally:
        with admin_session(hub) as session:
            session.modify(dave_dn, {"mailQuota": ("replace", ["10M"])})
    assert fetch_and_delete(hub, "dave@example.org", subject) == 1


def test_ldap_stopped_mid_way_defers_then_delivers(hub: dict[str, Any]) -> None:
    subject = subject_for("ldap-down")
    assert sandbox_command("ldap", "stop", "--dir", hub["dir"]).returncode == 0
    try:
        # Accepted into the queue (reception asks no LDAP) ...
        queued = exim(hub, "-odq", "-f", "sender@client.example", "alice@example.com",
                      stdin=message(subject, "alice@example.com").as_string())
        assert queued.returncode == 0, queued.stderr
        # ... delivery attempted while it is down: deferred, not bounced, not lost.
        exim(hub, "-qf")
        assert "alice@example.com" in exim(hub, "-bp").stdout
        with connect_smtp(hub) as smtp:
            smtp.mail("sender@client.example")
            code, _ = smtp.rcpt("bob@example.com")
        assert code == 451  # LDAP trouble at SMTP time: temporary, never 5xx
    finally:
        assert sandbox_command("ldap", "start", "--dir", hub["dir"]).returncode == 0
    exim(hub, "-qf")
    assert fetch_and_delete(hub, "alice@example.com", subject) == 1
    assert "alice@example.com" not in exim(hub, "-bp").stdout


def test_fifteen_messages_in_one_connection_all_arrive(hub: dict[str, Any]) -> None:
    subjects = [subject_for(f"burst-{n}") for n in range(15)]
    with connect_smtp(hub) as smtp:
        for subject in subjects:
            refused = smtp.send_message(message(subject, "carol@example.org"), to_addrs=["carol@example.org"])
            assert refused == {}
    # No exim -q here: every one is delivered by itself.
    assert [fetch_and_delete(hub, "carol@example.org", subject) for subject in subjects] == [1] * 15


def test_mail_deferred_while_ldap_is_down_is_delivered_once_it_is_back(hub: dict[str, Any]) -> None:
    subject = subject_for("ldap-retry")
    mainlog = Path(hub["dir"]) / "exim" / "log" / "mainlog"
    assert sandbox_command("ldap", "stop", "--dir", hub["dir"]).returncode == 0
    try:
        # A local submission is taken in without LDAP; its delivery defers.
        offset = mainlog.stat().st_size
        queued = exim(hub, "-f", "sender@client.example", "dave@example.org",
                      stdin=message(subject, "dave@example.org").as_string())
        assert queued.returncode == 0, queued.stderr
        log = mainlog.read_text()[offset:].splitlines()
        received = [line for line in log if " <= sender@client.example " in line]
        message_id = received[0].split()[2]
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while f"{message_id} == dave@example.org" not in mainlog.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"{message_id} == dave@example.org" in mainlog.read_text()
    finally:
        assert sandbox_command("ldap", "start", "--dir", hub["dir"]).returncode == 0
    # No exim -q: the daemon's queue runner retries it.
    assert fetch_and_delete(hub, "dave@example.org", subject) == 1
    assert message_id not in exim(hub, "-bp").stdout


def test_an_interrupted_up_leaves_no_daemon_behind() -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailrouter-e2e-"))
    try:
        process = subprocess.Popen([SANDBOX, "up", "--dir", str(directory)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=SANDBOX_ENV)
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("starting exim"):
                break
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 1
        assert "everything started was stopped" in errors
        marker = str(directory).encode()
        survivors = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        survivors.append(entry.name)
                except OSError:
                    pass
        assert survivors == []
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_down_stops_everything_and_removes_the_directory() -> None:
    done = sandbox_command("up")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    daemons = json.loads(sandbox_command("status", "--dir", info["dir"]).stdout)["daemons"]
    pids = [daemon["pid"] for daemon in daemons.values()]
    assert sandbox_command("down", "--dir", info["dir"]).returncode == 0
    assert not os.path.exists(info["dir"])
    for pid in pids:
        # Gone, or a zombie: it has exited and waits for its reaper (init here).
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"pid {pid} still running (state {state})"
