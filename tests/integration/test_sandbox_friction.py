"""Issue 18 against the sandbox, started as an admin starts it (bin/mailrouter-sandbox up).

`env` makes every bin/ tool talk to the sandbox; the queue commands run the
sandbox's Exim; real clients (swaks, curl) connect by the host name the
certificate matches; the relaying note.  Passwords never go on a command line
here either: swaks reads it from $SWAKS_OPT_auth_password, curl from a netrc file.
"""

from __future__ import annotations

import json
import os
import shlex
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, VENV_ENV, needs_root
from mailrouter.sandbox import cli as sandbox_cli

pytestmark = needs_root

SANDBOX = str(ROOT / "bin" / "mailrouter-sandbox")
SANDBOX_ENV = {**os.environ, **VENV_ENV}  # the bin/ wrappers run the venv under test
ADMIN = str(ROOT / "bin" / "mailrouter-admin")


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    done = subprocess.run([SANDBOX, "up"], capture_output=True, text=True, timeout=120, check=False,
                          env=SANDBOX_ENV)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    try:
        yield info
    finally:
        subprocess.run([SANDBOX, "down", "--dir", info["dir"]], capture_output=True, timeout=120, check=False,
                       env=SANDBOX_ENV)


def password(info: dict[str, Any], address: str) -> str:
    return str(next(a["password"] for a in info["accounts"] if a.get("address") == address))


def admin(info: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    """bin/mailrouter-admin in a shell that evaluated `mailrouter-sandbox env` -- and nothing else."""
    script = f'eval "$({shlex.quote(SANDBOX)} env --dir {shlex.quote(info["dir"])})" && exec "$@"'
    env = {k: v for k, v in SANDBOX_ENV.items() if not k.startswith("MAILROUTER_") or k == "MAILROUTER_VENV"}
    return subprocess.run(["sh", "-c", script, "sh", ADMIN, *argv], capture_output=True, text=True,
                          timeout=180, check=False, env=env)


def exim(info: dict[str, Any], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*shlex.split(info["exim"]), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def queue_message(info: dict[str, Any], subject: str, *recipients: str) -> str:
    """Put a message in the queue without delivering it; its id."""
    done = exim(info, "-odq", "-f", "sender@client.example", *recipients,
                stdin=f"Subject: {subject}\n\n{subject}\n")
    assert done.returncode == 0, done.stderr
    ids = [m["id"] for m in json.loads(admin(info, "--json", "queue", "list").stdout)
           if any(r["address"] in recipients for r in m["recipients"])]
    listed = {m_id: exim(info, "-Mvh", m_id).stdout for m_id in ids}
    return next(m_id for m_id, header in listed.items() if f"Subject: {subject}" in header)


# -- 1. the up JSON names the config; env points every tool at the sandbox -------------------------------
def test_item1_up_names_the_config_and_env_exports_it(hub: dict[str, Any]) -> None:
    assert hub["config"] == str(Path(hub["dir"]) / "mailrouter.toml") and Path(hub["config"]).is_file()
    assert hub["exim_config"] == str(Path(hub["dir"]) / "exim" / "exim.conf")
    assert hub["tls_host"] == "localhost"
    done = admin(hub, "--json", "user", "list", "example.com")
    assert done.returncode == 0, done.stderr
    assert "alice@example.com" in [row["address"] for row in json.loads(done.stdout)]
    exported = subprocess.run(
        ["sh", "-c", f'eval "$({shlex.quote(SANDBOX)} env --dir {shlex.quote(hub["dir"])})" && '
         'echo "$MAILROUTER_CONFIG $MAILROUTER_BIND_DN"'], capture_output=True, text=True, check=True,
        env=SANDBOX_ENV)
    assert exported.stdout.split() == [hub["config"], hub["admin_dn"]]


# -- 2. queue commands -------------------------------------------------------------------------------
def test_item2_queue_list_show_thaw_remove_flush(hub: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    remote = queue_message(hub, f"remote {tag}", f"far-{tag}@remote.example")
    shown = json.loads(admin(hub, "--json", "queue", "show", remote).stdout)
    assert shown["sender"] == "sender@client.example" and not shown["frozen"]
    assert f"Subject: remote {tag}" in shown["headers"]
    assert shown["recipients"] == [{"address": f"far-{tag}@remote.example", "delivered": False}]

    assert exim(hub, "-Mf", remote).returncode == 0  # frozen, as a failing bounce would be
    frozen = {m["id"]: m["frozen"] for m in json.loads(admin(hub, "--json", "queue", "list").stdout)}
    assert frozen[remote] is True
    thawed = admin(hub, "queue", "thaw", remote)
    assert thawed.returncode == 0, thawed.stderr
    frozen = {m["id"]: m["frozen"] for m in json.loads(admin(hub, "--json", "queue", "list").stdout)}
    assert frozen[remote] is False

    local = queue_message(hub, f"local {tag}", "alice@example.com")
    flushed = admin(hub, "--json", "queue", "flush")
    assert flushed.returncode == 0, flushed.stderr
    left = {m["id"] for m in json.loads(flushed.stdout)["messages"]}
    assert local not in left and remote in left  # delivered; the remote one still defers (closed port)

    removed = admin(hub, "queue", "remove", remote)
    assert removed.returncode == 0, removed.stderr
    assert remote not in {m["id"] for m in json.loads(admin(hub, "--json", "queue", "list").stdout)}
    missing = admin(hub, "--json", "queue", "thaw", remote)
    assert missing.returncode == 1 and json.loads(missing.stdout)["kind"] == "not_found"
    bad = admin(hub, "--json", "queue", "remove", "-qff")
    assert bad.returncode in (1, 2) and "error" in json.loads(bad.stdout)


# -- 3. test address --exim with the sandbox's own Exim ------------------------------------------------
def test_item3_test_address_runs_the_sandbox_exim(hub: dict[str, Any]) -> None:
    done = admin(hub, "--json", "test", "address", "friend@remote.example", "--exim")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["exim"]["rc"] == 0 and "router = remote" in info["exim"]["output"], info
    assert "Unrouteable" not in info["exim"]["output"] and "note" not in info


# -- 9. --ca-file for test smtp / test pop3 -------------------------------------------------------------
def test_item9_ca_file_verifies_the_sandbox_certificate(hub: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "alice"
    secret.write_text(password(hub, "alice@example.com") + "\n", encoding="utf-8")
    server = f"{hub['tls_host']}:{hub['pop3s_port']}"
    ok = admin(hub, "--json", "test", "pop3", server, "alice@example.com", "--tls",
               "--ca-file", hub["ca_cert"], "--secret-file", str(secret))
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True, ok.stderr
    unverified = admin(hub, "test", "pop3", server, "alice@example.com", "--tls",
                       "--secret-file", str(secret))
    assert unverified.returncode == 1, unverified  # definite, not "try again later"
    assert "--ca-file" in unverified.stderr
    smtp = admin(hub, "test", "smtp", f"{hub['tls_host']}:{hub['submission_port']}", "--starttls",
                 "--ca-file", hub["ca_cert"], "--auth-user", "alice@example.com",
                 "--secret-file", str(secret), "--from", "alice@example.com", "--to", "bob@example.com")
    assert smtp.returncode == 0, smtp


# -- 10. relaying from 127.0.0.1, and how to see it refused -----------------------------------------------
def test_item10_relaying_note_and_127_0_0_2(hub: dict[str, Any]) -> None:
    help_text = sandbox_cli.connection_help(hub)
    assert "127.0.0.2" in help_text and "Relaying denied" in help_text and "host_accept_relay" in help_text
    assert "mailrouter-sandbox env" in help_text

    def rcpt(source: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", hub["smtp_port"], local_hostname="client.example", timeout=30,
                          source_address=(source, 0)) as smtp:
            smtp.ehlo()
            smtp.mail("sender@client.example")
            return smtp.rcpt("someone@remote.example")

    assert rcpt("127.0.0.1")[0] == 250
    code, text = rcpt("127.0.0.2")
    assert code == 550 and b"Relaying denied" in text


# -- 11. real clients: swaks --tls, curl smtp:// and pop3s:// by the certificate's host name ----------------
def arrived(hub: dict[str, Any], address: str, subject: str, netrc: Path) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = subprocess.run(["curl", "-sS", "--cacert", hub["ca_cert"], "--netrc-file", str(netrc),
                                  f"pop3s://{hub['tls_host']}:{hub['pop3s_port']}/"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
        for number in (line.split()[0] for line in listing.splitlines() if line.strip()):
            message = subprocess.run(["curl", "-sS", "--cacert", hub["ca_cert"], "--netrc-file", str(netrc),
                                      f"pop3s://{hub['tls_host']}:{hub['pop3s_port']}/{number}"],
                                     capture_output=True, text=True, timeout=60, check=True).stdout
            if f"Subject: {subject}" in message:
                return True
        time.sleep(0.5)
    return False


def netrc_for(hub: dict[str, Any], tmp_path: Path, address: str) -> Path:
    path = tmp_path / f"netrc-{address}"
    path.write_text(f"machine {hub['tls_host']} login {address} password {password(hub, address)}\n",
                    encoding="utf-8")
    path.chmod(0o600)
    return path


def test_item11_swaks_tls_and_curl(hub: dict[str, Any], tmp_path: Path) -> None:
    bob = netrc_for(hub, tmp_path, "bob@example.com")
    subject = f"swaks {uuid.uuid4().hex[:8]}"
    swaks = subprocess.run(
        ["swaks", "--server", hub["tls_host"], "--port", str(hub["submission_port"]), "--tls", "--tls-verify",
         "--tls-ca-path", hub["ca_cert"], "--auth", "PLAIN", "--auth-user", "alice@example.com",
         "--from", "alice@example.com", "--to", "bob@example.com", "--h-Subject", subject],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SWAKS_OPT_auth_password": password(hub, "alice@example.com")},
    )
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    assert arrived(hub, "bob@example.com", subject, bob)

    subject = f"curl {uuid.uuid4().hex[:8]}"
    message = tmp_path / "message"
    message.write_text(f"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\r\nhi\r\n",
                       encoding="utf-8")
    curl = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--cacert", hub["ca_cert"],
         "--netrc-file", str(netrc_for(hub, tmp_path, "alice@example.com")),
         "--mail-from", "alice@example.com", "--mail-rcpt", "bob@example.com", "--upload-file", str(message),
         f"smtp://{hub['tls_host']}:{hub['submission_port']}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert curl.returncode == 0, curl.stderr
    assert arrived(hub, "bob@example.com", subject, bob)
