"""Home node per mailbox (issue 20, item 2): two real Exim instances on 127.0.0.2 and 127.0.0.3.

Both run the shipped exim/mailrouter.conf in cluster mode (MAILROUTER_NODE_NAME
node1 / node2) against one slapd with the data set plus users whose mailHost
names a node.  A node that is not a user's home relays to the home node over
SMTP with TLS (verified against the cluster CA); the home node delivers; a
user without mailHost is delivered wherever the mail arrives; an unknown home
host and a loop defer with a clear log line and never bounce; RCPT answers the
same on both nodes (unknown, disabled, a full mailbox on the home node).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import hook_config, hub_exim, needs_root, own_copy, service_config, start_slapd
from dataset import DISABLED_LOGIN, Dataset
from mailrouter import entries, passwords
from mailrouter.directory import Session
from mailrouter.errors import LdapRefused
from mailrouter.sandbox.exim import EXIM_USER, Exim, make_readable_dir
from mailrouter.sandbox.slapd import Slapd, free_port
from mailrouter.sandbox.tls import make_certificates

pytestmark = [needs_root, pytest.mark.slow]  # two Exims, TLS between them, queue runs

NODES = {"node1": "127.0.0.2", "node2": "127.0.0.3"}
# Users and their mailHost (None: no home, any node delivers).
HOMED = {"on1": "node1", "on2": "node2", "lost": "node9", "full2": "node2"}


@dataclass
class Node:
    name: str
    address: str
    exim: Exim
    spool: Path

    def mailbox(self, local: str) -> Path:
        return self.spool / f"{local}@example.com"


@dataclass
class Cluster:
    nodes: dict[str, Node]
    slapd: Slapd
    data: Dataset


def homed_ldif(base_dn: str) -> str:
    blocks = []
    for local, home in HOMED.items():
        entry = entries.user_entry(
            local, "example.com", base_dn, password_hash=passwords.hash_password("x-" + local, "ssha"),
            uid_number=8, gid_number=8, mailbox=f"/var/mail/{local}@example.com",
            quota="1K" if local == "full2" else "10M",
        )
        blocks.append(entries.to_ldif([entry]).rstrip("\n") + f"\nmailHost: {home}\n")
    return "\n".join(blocks)


def free_port_on_all(addresses: list[str]) -> int:
    """One port number free on every address (each member listens on the cluster port)."""
    while True:
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port


@pytest.fixture(scope="module")
def cluster(dataset: Dataset) -> Iterator[Cluster]:
    data = own_copy(dataset)
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-home-node-"))  # Exim's hooks must traverse it
    workdir.chmod(0o755)
    slapd: Slapd = start_slapd(workdir / "slapd", data, homed_ldif(data.base_dn))
    certificates = make_certificates(workdir / "tls", key_group=EXIM_USER)
    port = free_port_on_all(list(NODES.values()))
    members = " ".join(f"{name}={address}" for name, address in NODES.items())
    nodes: dict[str, Node] = {}
    try:
        for name, address in NODES.items():
            make_readable_dir(workdir / name).chmod(0o755)  # the delivery hook runs as mail
            spool = make_readable_dir(workdir / name / "mail")
            spool.chmod(0o1777)
            config = hook_config(workdir / name / "mailrouter.toml", data, [slapd.uri], spool, timeouts=3)
            exim = hub_exim(
                workdir / name, config,
                MAILROUTER_NODE_NAME=name, MAILROUTER_CLUSTER_MEMBERS=members,
                MAILROUTER_CLUSTER_PORT=str(port), MAILROUTER_CLUSTER_CA=str(certificates.ca_cert),
                MAILROUTER_TLS_CERT=str(certificates.cert), MAILROUTER_TLS_KEY=str(certificates.key),
                MAILROUTER_RETRY_TIMES="F,4d,1s",
            )
            nodes[name] = Node(name, address, exim, spool)
            exim.start_daemon([port], queue_interval="1s", host=address)
        yield Cluster(nodes, slapd, data)
    finally:
        for node in nodes.values():
            node.exim.close()
        slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def send(node: Node, recipient: str, marker: str, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP(node.address, node.exim.ports[0], timeout=30, source_address=(source, 0)) as client:
        client.sendmail("sender@remote.example", [recipient], f"Subject: {marker}\n\n{marker}\n")


def rcpt(node: Node, recipient: str, source: str = "127.0.0.1") -> tuple[int, str]:
    with smtplib.SMTP(node.address, node.exim.ports[0], timeout=30, source_address=(source, 0)) as client:
        client.ehlo()
        client.mail("sender@remote.example")
        code, text = client.rcpt(recipient)
        return code, text.decode()


def wait_for(path: Path, marker: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    pytest.fail(f"{marker} never reached {path}")


def test_mail_for_a_user_homed_elsewhere_is_relayed_with_tls_and_delivered_there(
        cluster: Cluster) -> None:
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    send(node1, "on2@example.com", "relayed-to-2")
    wait_for(node2.mailbox("on2"), "relayed-to-2")
    assert not node1.mailbox("on2").exists()
    log = node1.exim.main_log()
    relay = [line for line in log.splitlines() if "on2@example.com" in line and " => " in line]
    assert relay and "R=home_node T=cluster_smtp" in relay[-1] and f"[{node2.address}]" in relay[-1]
    assert " X=TLS" in relay[-1] and "CV=yes" in relay[-1], relay[-1]  # encrypted, certificate verified


def test_the_home_node_delivers_locally_and_no_home_means_any_node(cluster: Cluster) -> None:
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    send(node1, "on1@example.com", "home-is-1")
    wait_for(node1.mailbox("on1"), "home-is-1")
    send(node2, "bob@example.com", "bob-via-2")  # bob has no mailHost
    send(node1, "bob@example.com", "bob-via-1")
    wait_for(node2.mailbox("bob"), "bob-via-2")
    wait_for(node1.mailbox("bob"), "bob-via-1")
    assert not node2.mailbox("on1").exists()


def test_an_unknown_home_host_defers_with_a_clear_log_line(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        code, _text = rcpt(node, "lost@example.com")
        assert code == 451
        assert "home node node9 is not a cluster member, deferring" in node.exim.main_log()


def test_a_loop_between_members_defers_and_never_bounces(cluster: Cluster) -> None:
    """Mail relayed by member node1 to node2 for a user node2 thinks is homed on node1."""
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    code, _text = rcpt(node2, "on1@example.com", source=node1.address)
    assert code == 451
    assert f"home node node1, relayed here by cluster member {node1.address}: routing loop" \
        in node2.exim.main_log()
    assert node2.exim.queue_count() == 0 and "<= <>" not in node2.exim.main_log()  # nothing bounced


def test_rcpt_answers_the_same_on_every_node(cluster: Cluster) -> None:
    """Unknown and disabled users from LDAP; a full mailbox from its home node's own check."""
    node2 = cluster.nodes["node2"]
    node2.mailbox("full2").write_bytes(b"From x  Mon Jan  1 00:00:00 2024\n" + b"x" * 4096 + b"\n\n")
    os.chown(node2.mailbox("full2"), 8, 8)
    node2.mailbox("full2").chmod(0o600)
    answers = {
        name: {rcpt_to: rcpt(node, rcpt_to)[0] for rcpt_to in
               ("nobody@example.com", DISABLED_LOGIN, "full2@example.com", "on2@example.com")}
        for name, node in cluster.nodes.items()
    }
    # The full mailbox: 452 from its home node, Exim's generic 451 after the callout
    # from the other node (exim/mailrouter.conf): temporary everywhere, the mail waits.
    assert answers["node2"].pop("full2@example.com") == 452
    assert answers["node1"].pop("full2@example.com") == 451
    log = cluster.nodes["node1"].exim.main_log()
    assert "after RCPT TO:<full2@example.com>: 452 4.2.2 Mailbox full" in log
    assert answers["node1"] == answers["node2"] == {
        "nobody@example.com": 550, DISABLED_LOGIN: 550, "on2@example.com": 250}, answers


def test_only_global_admins_choose_a_home_node(cluster: Cluster) -> None:
    """acl.conf rule 3e: where a mailbox is stored is the operator's choice."""
    slapd, data = cluster.slapd, cluster.data
    dn = f"uid=on2,dc=example.com,{data.base_dn}"
    postmaster = data.account("postmaster@example.com")
    with Session(service_config(slapd, data), postmaster.dn, postmaster.password) as session:
        with pytest.raises(LdapRefused) as refused:
            session.modify(dn, {"mailHost": ("replace", ["node1"])})
        assert refused.value.code == 50
        assert session.directory.user("on2", "example.com").home == "node2"  # type: ignore[union-attr]
    admin = data.account("global-admin")
    with Session(service_config(slapd, data), admin.dn, admin.password) as session:
        session.modify(dn, {"mailHost": ("replace", ["node2"])})


def test_mail_for_a_stopped_home_node_waits_on_the_other_and_arrives_when_it_returns(
        cluster: Cluster) -> None:
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    node2.exim.stop_daemon()
    try:
        send(node1, "on2@example.com", "while-2-was-down")  # accepted: no callout to a node that is down
        time.sleep(3)  # queue runs on node 1 try (and defer) meanwhile
        assert node1.exim.queue_count() == 1
        assert "while-2-was-down" not in (node2.mailbox("on2").read_text() if node2.mailbox("on2").exists()
                                          else "")
    finally:
        node2.exim.start_daemon(node2.exim.ports, queue_interval="1s", host=node2.address)
    wait_for(node2.mailbox("on2"), "while-2-was-down", timeout=30)
    assert "<= <>" not in node1.exim.main_log()  # nothing bounced
