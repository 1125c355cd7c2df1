"""The cluster of issue 20 (item 5) through `bin/mailrouter-sandbox up --nodes 2`, as an admin starts it.

Two LDAP providers, two nodes (each: replica, Exim, authd, lookupd, popa3d,
perdition) and HAProxy in front, all on loopback.  What is proved here:

* a user homed on node 2 gets mail submitted on node 1 and reads it over POP3S
  through the front door (HAProxy -> perdition -> node 2's popa3d);
* a domain and a user added through the admin CLI (to a provider) serve mail on
  every node (the delay is measured by bench/bench_cluster.py, not asserted);
* with one provider stopped the admin's writes succeed on the other, and after
  its restart both providers hold the same entries;
* with a node's own replica stopped, that node's hooks fail over to the
  providers: mail is accepted and delivered, nothing bounces.

(A stopped home node: tests/integration/test_home_node.py.)
"""

from __future__ import annotations

import json
import os
import poplib
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, ROOT, VENV_ENV, needs_root
from mailrouter.config import LdapConfig
from mailrouter.directory import Session

pytestmark = [needs_root, pytest.mark.slow]

SANDBOX = str(ROOT / "bin" / "mailrouter-sandbox")
FRONT_DOOR_KEYS = {
    "dir", "ldap_uri", "base_dn", "admin_dn", "admin_password", "smtp_port", "submission_port",
    "smtps_port", "pop3_port", "pop3s_port", "ca_cert", "spool_dir", "exim", "accounts", "aliases",
    "catchall", "web_url", "config", "exim_config", "tls_host",
}
NODE_KEYS = {"name", "address", "mail_host", "replica_uri", "smtp_port", "submission_port", "smtps_port",
             "pop3_port", "pop3s_port", "config", "spool_dir"}
WAIT = 30.0
ENV = {**os.environ, **VENV_ENV}


def sandbox(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOX, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=ENV)


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    done = sandbox("up", "--nodes", "2")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    try:
        yield info
    finally:
        down = sandbox("down", "--dir", info["dir"])
        assert down.returncode == 0, down.stderr


def account(info: dict[str, Any], address: str) -> dict[str, str]:
    return next(a for a in info["accounts"] if a.get("address") == address)


def node(info: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in info["nodes"] if n["name"] == name)


def admin(info: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    """mailrouter-admin with node 1's configuration (reads its replica, writes the providers)."""
    return subprocess.run(
        [str(BIN / "mailrouter-admin"), "--config", info["config"], "--bind-dn", info["admin_dn"],
         "--password-file", str(Path(info["dir"]) / "admin.secret"), *argv],
        capture_output=True, text=True, timeout=60, check=False, env=ENV,
    )


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        time.sleep(0.2)


def rcpt(address: str, port: int, recipient: str) -> int:
    with smtplib.SMTP(address, port, timeout=30) as client:
        client.ehlo()
        client.mail("sender@remote.example")
        return client.rcpt(recipient)[0]


def pop3s_subjects(info: dict[str, Any], login: str) -> list[str]:
    """Every Subject in ``login``'s mailbox, fetched through the front door's POP3S."""
    context = ssl.create_default_context(cafile=info["ca_cert"])
    client = poplib.POP3_SSL("127.0.0.1", info["pop3s_port"], context=context, timeout=30)
    try:
        client.user(login)
        client.pass_(account(info, login)["password"])
        subjects = []
        for number in range(1, len(client.list()[1]) + 1):
            for line in client.top(number, 0)[1]:
                if line.lower().startswith(b"subject:"):
                    subjects.append(line.split(b":", 1)[1].strip().decode())
        return subjects
    finally:
        client.quit()


def entries(info: dict[str, Any], uri: str) -> list[str]:
    config = LdapConfig(uris=(uri,), base_dn=info["base_dn"], connect_timeout=2, operation_timeout=5)
    with Session(config, info["admin_dn"], info["admin_password"]) as session:
        found = session.search(info["base_dn"], "(objectClass=*)", ["*"], subtree=True)
    return sorted(repr((dn.lower(), sorted((k, sorted(map(str, v))) for k, v in attrs.items())))
                  for dn, attrs in found)


def test_up_keeps_the_front_door_keys_and_adds_the_nodes(hub: dict[str, Any]) -> None:
    assert FRONT_DOOR_KEYS <= hub.keys()
    assert [n["name"] for n in hub["nodes"]] == ["node1", "node2"]
    for entry in hub["nodes"]:
        assert NODE_KEYS <= entry.keys()
        assert entry["address"].startswith("127.") and entry["replica_uri"].startswith(f"ldap://{entry['address']}:")
    assert set(hub["ldap_servers"]) == {"provider1", "provider2", "replica1", "replica2"}
    assert all(uri.startswith("ldap://127.") for uri in hub["ldap_servers"].values())


def test_a_user_homed_on_node2_gets_mail_sent_to_node1_and_reads_it_through_the_front_door(
        hub: dict[str, Any]) -> None:
    subject = f"to-node2-{uuid.uuid4().hex[:8]}"
    first = node(hub, "node1")
    with smtplib.SMTP(first["address"], first["smtp_port"], timeout=30) as client:
        client.sendmail("sender@remote.example", ["bob@example.com"], f"Subject: {subject}\n\nhello\n")
    wait_until(lambda: subject in pop3s_subjects(hub, "bob@example.com"), "bob reads it via the front door")
    assert (Path(node(hub, "node2")["spool_dir"]) / "bob@example.com").exists()
    assert not (Path(first["spool_dir"]) / "bob@example.com").exists()


def test_a_domain_added_on_a_provider_serves_mail_on_every_node(hub: dict[str, Any], tmp_path: Path) -> None:
    domain = f"d{uuid.uuid4().hex[:8]}.example"
    secret = tmp_path / "new.secret"
    secret.write_text("a-new-users-password-1\n")
    assert admin(hub, "domain", "add", domain).returncode == 0
    done = admin(hub, "user", "add", f"new@{domain}", "--new-password-file", str(secret))
    assert done.returncode == 0, done.stderr
    for entry in hub["nodes"]:
        wait_until(lambda entry=entry: rcpt(entry["address"], entry["smtp_port"], f"new@{domain}") == 250,
                   f"new@{domain} accepted on {entry['name']}")


def test_one_provider_stopped_writes_go_to_the_other_and_both_converge(hub: dict[str, Any]) -> None:
    servers = hub["ldap_servers"]
    domain = f"p1down-{uuid.uuid4().hex[:8]}.example"
    assert sandbox("ldap", "stop", "--dir", hub["dir"], "--server", "provider1").returncode == 0
    try:
        done = admin(hub, "domain", "add", domain)
        assert done.returncode == 0, done.stderr
    finally:
        assert sandbox("ldap", "start", "--dir", hub["dir"], "--server", "provider1").returncode == 0
    wait_until(lambda: entries(hub, servers["provider1"]) == entries(hub, servers["provider2"]),
               "provider 1 holds what provider 2 holds")
    assert any(domain in entry for entry in entries(hub, servers["provider1"]))


def test_a_nodes_replica_stopped_its_hooks_fail_over_and_nothing_bounces(hub: dict[str, Any]) -> None:
    first = node(hub, "node1")
    subject = f"replica-down-{uuid.uuid4().hex[:8]}"
    assert sandbox("ldap", "stop", "--dir", hub["dir"], "--server", "replica1").returncode == 0
    try:
        with smtplib.SMTP(first["address"], first["smtp_port"], timeout=60) as client:
            client.sendmail("sender@remote.example", ["alice@example.com"], f"Subject: {subject}\n\nhi\n")
        mailbox = Path(first["spool_dir"]) / "alice@example.com"
        wait_until(lambda: mailbox.exists() and subject in mailbox.read_text(errors="replace"),
                   "alice's mail delivered on node 1 with its replica down")
    finally:
        assert sandbox("ldap", "start", "--dir", hub["dir"], "--server", "replica1").returncode == 0
    log = (Path(first["exim_config"]).parent / "log" / "mainlog").read_text(errors="replace")
    assert "<= <>" not in log and " ** " not in log  # no bounce, no failed address


def test_exim_behind_the_front_door_sees_the_clients_own_address(hub: dict[str, Any]) -> None:
    """PROXY protocol: host_accept_relay (127.0.0.1 in the seed) judges the client, not HAProxy."""
    answers = {}
    for client in ("127.0.0.1", "127.0.0.5"):
        with smtplib.SMTP("127.0.0.1", hub["smtp_port"], timeout=30, source_address=(client, 0)) as smtp:
            smtp.ehlo()
            smtp.mail("sender@remote.example")
            answers[client] = smtp.rcpt("someone@elsewhere.example")[0]
    assert answers == {"127.0.0.1": 250, "127.0.0.5": 550}
    logs = "".join((Path(n["exim_config"]).parent / "log" / "mainlog").read_text(errors="replace")
                   for n in hub["nodes"])
    assert "[127.0.0.5] F=<sender@remote.example> rejected RCPT <someone@elsewhere.example>" in logs


def test_plain_pop3_through_the_front_door_reaches_the_home_node(hub: dict[str, Any]) -> None:
    subject = f"pop3-{uuid.uuid4().hex[:8]}"
    second = node(hub, "node2")
    with smtplib.SMTP(second["address"], second["smtp_port"], timeout=30) as client:
        client.sendmail("sender@remote.example", ["alice@example.com"], f"Subject: {subject}\n\nhi\n")

    def arrived() -> bool:
        pop = poplib.POP3("127.0.0.1", hub["pop3_port"], timeout=30)
        try:
            pop.user("alice@example.com")
            pop.pass_(account(hub, "alice@example.com")["password"])
            return any(subject.encode() in line for n in range(1, len(pop.list()[1]) + 1)
                       for line in pop.top(n, 0)[1])
        finally:
            pop.quit()

    wait_until(arrived, "alice (home node 1) reads over plain POP3 what node 2 received")
