"""``mailrouter-sandbox up --nodes N``: the cluster of README "More than one machine" on loopback.

What runs (every address is loopback: 127.0.0.1 for the providers and the
front door, 127.0.0.(i+1) for node i, 127.0.0.10 as the front door's source):

* the replicated directory (:mod:`mailrouter.sandbox.cluster`): two providers
  and one read-only replica per node;
* per node, on its own address: its hooks' config (reads: its replica, then the
  providers; writes: the providers), mailrouter-authd and -lookupd, Exim in
  cluster mode (``MAILROUTER_NODE_NAME``: the node's ``mailHost`` value, here its
  address, so that perdition can connect to it without DNS), popa3d (POP3 and
  POP3S) over the node's own spool, and perdition (POP3, POP3S) that sends each
  login to its home node;
* HAProxy on 127.0.0.1 (``cluster/haproxy.cfg``): the front door for SMTP,
  submission, SMTPS (PROXY protocol into Exim), POP3 and POP3S (to perdition).

The demo users get homes: alice@example.com and carol@example.org live on node 1,
bob@example.com and dave@example.org on node 2 (when there is one: the
benchmark also runs a single node), the postmasters have none (every node
delivers to them).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailrouter.errors import DaemonError
from mailrouter.sandbox import cluster, demo, tls
from mailrouter.sandbox.configs import write_config
from mailrouter.sandbox.exim import EXIM_USER, Exim
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd, free_port, wait_for_port

if TYPE_CHECKING:
    from mailrouter.sandbox.cli import Sandbox

HAPROXY = "/usr/sbin/haproxy"
PERDITION_POP3 = "/usr/sbin/perdition.pop3"
PERDITION_POP3S = "/usr/sbin/perdition.pop3s"
FRONT = "127.0.0.1"
PROXY_SOURCE = "127.0.0.10"  # HAProxy connects to the nodes from here; Exim's hosts_proxy
MIN_NODES, MAX_NODES = 1, 3  # the CLI offers 2 and 3; bench_cluster.py also runs 1
HOMES = {  # demo user -> node index (1-based)
    "alice@example.com": 1, "carol@example.org": 1, "bob@example.com": 2, "dave@example.org": 2,
}
START_TIMEOUT = 10.0


@dataclass
class NodePorts:
    """The ports every node listens on (the same number on each node's address)."""

    smtp: int
    submission: int
    smtps: int
    pop3: int  # popa3d
    pop3s: int  # popa3d behind stunnel: perdition's backend
    proxy_pop3: int  # perdition
    proxy_pop3s: int


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``@NAME@`` replaced; an unknown or unfilled one is an error."""
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise DaemonError(f"placeholder @{name}@ has no value")
        return values[name]

    return re.sub(r"@([A-Z0-9_]+)@", fill, template)


def render_haproxy(template: str, values: dict[str, str], nodes: list[dict[str, str]]) -> str:
    """cluster/haproxy.cfg: each line naming a node (@NODE_...@) once per node."""
    lines: list[str] = []
    for line in template.splitlines():
        if "@NODE_" in line and not line.lstrip().startswith("#"):
            lines.extend(render(line, {**values, **node}) for node in nodes)
        else:
            lines.append(render(line, values) if not line.lstrip().startswith("#") else line)
    return "\n".join(lines) + "\n"


def common_ports(addresses: list[str], count: int) -> list[int]:
    """``count`` distinct port numbers, each free on every one of ``addresses``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(addresses[0])
        if port in ports:
            continue
        try:
            for address in addresses[1:]:
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        ports.append(port)
    return ports


def with_homes(ldif: str, homes: dict[str, str]) -> str:
    """``ldif`` with ``mailHost: HOST`` added to the entries whose DN is a key of ``homes``."""
    blocks = ldif.split("\n\n")
    for index, block in enumerate(blocks):
        for line in block.splitlines():
            if line.startswith("dn: ") and line[4:].strip() in homes:
                blocks[index] = block.rstrip("\n") + f"\nmailHost: {homes[line[4:].strip()]}"
    return "\n\n".join(blocks)


def _spawn(sandbox: Sandbox, name: str, argv: list[str], log_path: Path,
           address: str, ports: list[int]) -> None:
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    sandbox.record(name, process.pid)
    for port in ports:
        if not wait_for_port(port, START_TIMEOUT, process, address):
            raise DaemonError(f"{name} did not start: " + log_path.read_text("utf-8", "replace")[-2000:])


def start_perdition(sandbox: Sandbox, workdir: Path, name: str, address: str, ports: NodePorts,
                    ldap_uri: str, data: demo.DemoDirectory, certificates: tls.Certificates,
                    root: Path) -> None:
    """perdition.pop3 and perdition.pop3s on ``address``, with cluster/perdition.conf."""
    service = data.account("service")
    conf = workdir / "perdition.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # a password
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render((root / "cluster" / "perdition.conf").read_text(encoding="utf-8"), {
            "LDAP_URIS": ldap_uri.rstrip("/"),
            "SERVICE_DN_URL": service.dn.replace(",", "%2c"),
            "SERVICE_PASSWORD": service.password,
            "NODE_ADDRESS": address,
            "BACKEND_POP3S_PORT": str(ports.pop3s),
            "CA_FILE": str(certificates.ca_cert),
        }))
    common = [
        "-f", str(conf), "--no_daemon", "-F", "+",
        # The sandbox's nodes are named by their addresses (no DNS lookups), and its
        # one certificate names localhost, not each node: the chain is still verified.
        "--no_lookup", "--ssl_no_cn_verify",
    ]
    _spawn(sandbox, f"{name}-perdition-pop3",
           [PERDITION_POP3, *common, "-b", f"{address}:{ports.proxy_pop3}",
            "--ssl_mode", "ssl_outgoing", "--pid_file", str(workdir / "perdition-pop3.pid")],
           workdir / "perdition-pop3.log", address, [ports.proxy_pop3])
    _spawn(sandbox, f"{name}-perdition-pop3s",
           [PERDITION_POP3S, *common, "-b", f"{address}:{ports.proxy_pop3s}", "--ssl_mode", "ssl_all",
            "--ssl_cert_file", str(certificates.cert), "--ssl_key_file", str(certificates.key),
            "--pid_file", str(workdir / "perdition-pop3s.pid")],
           workdir / "perdition-pop3s.log", address, [ports.proxy_pop3s])


def bring_up_cluster(directory: Path, sandbox: Sandbox, nodes: int,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Start everything; return the ``up`` JSON (today's keys for the front door, plus ``nodes``)."""
    from mailrouter.sandbox import cli  # the single-node parts: sockets, web, constants
    from mailrouter.sandbox.web import WebServer, web_settings

    if not MIN_NODES <= nodes <= MAX_NODES:
        raise DaemonError(f"--nodes must be {MIN_NODES}..{MAX_NODES}")
    root = sandbox.root
    directory.chmod(0o755)
    certificates = tls.make_certificates(directory / "tls", host=cli.TLS_HOST, key_group=EXIM_USER)
    addresses = [cluster.node_address(index) for index in range(1, nodes + 1)]
    names = [f"node{index}" for index in range(1, nodes + 1)]
    mail = pwd.getpwnam("mail")

    # Demo data (mailbox paths are per node, from each node's own template).
    data = demo.build(mbox_template="/var/mail/{local}@{domain}")
    homes = {data.account(address).dn: addresses[node - 1]
             for address, node in HOMES.items() if node <= nodes}
    replicator_password = demo.new_password()
    log(f"starting the directory: 2 providers, {nodes} replicas")
    ldap_dir = directory / "ldap"
    directory_servers = cluster.start_directory(
        ldap_dir, root=root, ldif=[with_homes(data.ldif, homes)], seed_passwords=data.seed_passwords,
        nodes=nodes, replicator_password=replicator_password,
    )
    for server_name, server in directory_servers.servers().items():
        assert server.process is not None
        sandbox.record(f"slapd-{server_name}", server.process.pid)

    service = data.account("service")
    ports = NodePorts(*common_ports(addresses, 7))
    bin_dir = str(Path(sys.executable).parent)
    node_info: list[dict[str, Any]] = []
    configs: list[Path] = []
    first_exim: Exim | None = None
    web_port = free_port()
    members = " ".join(f"{address}={address}" for address in addresses)
    for index, (name, address) in enumerate(zip(names, addresses, strict=True), start=1):
        node_dir = directory / name
        node_dir.mkdir()
        node_dir.chmod(0o755)
        spool = node_dir / "mail"
        spool.mkdir()
        os.chown(spool, 0, mail.pw_gid)
        spool.chmod(0o2775)
        config = write_config(
            node_dir / "mailrouter.toml",
            uris=directory_servers.read_uris(index),
            write_uris=directory_servers.provider_uris,
            base_dn=data.base_dn, bind_dn=service.dn, password=service.password,
            mbox_template=f"{spool}/{{local}}@{{domain}}",
            auth_socket=str(node_dir / "auth.sock"),
            operation_timeout=3.0, connect_timeout=1.0,
            web=web_settings(directory, web_port, certificates.cert, certificates.key) if index == 1
            else None,
        )
        configs.append(config)
        if index == 1:
            # Its port is in the config before anything listens on it: start it at once,
            # so no later free_port() can hand the same port out (as the single-node up).
            log("starting mailrouter-web (gunicorn, HTTPS; node 1's configuration)")
            web = WebServer(directory, config, web_port).start()
            assert web.process is not None
            sandbox.record("web", web.process.pid)
        log(f"starting {name} on {address}: authd, lookupd, exim, popa3d, perdition")
        for server_name in ("authd", "lookupd"):
            sock = node_dir / ("auth.sock" if server_name == "authd" else "lookup.sock")
            cli.start_socket_server(
                sandbox, f"{name}-{server_name}", node_dir,
                [f"{bin_dir}/mailrouter-{server_name}", "--config", str(config), "--socket", str(sock)], sock,
            )
        exim = Exim(node_dir / "exim", root / "exim" / "mailrouter.conf", macros={
            "MAILROUTER_BIN": bin_dir,
            "MAILROUTER_CONFIG": str(config),
            "MAILROUTER_AUTH_SOCKET": str(node_dir / "auth.sock"),
            "MAILROUTER_LOOKUP_VIA": "socket",
            "MAILROUTER_LOOKUP_SOCKET": str(node_dir / "lookup.sock"),
            "MAILROUTER_TLS_CERT": str(certificates.cert),
            "MAILROUTER_TLS_KEY": str(certificates.key),
            "MAILROUTER_SMTP_PORTS": f"{ports.smtp} : {ports.submission} : {ports.smtps}",
            "MAILROUTER_SMTPS_PORTS": str(ports.smtps),
            "MAILROUTER_HOSTNAME": f"{name}.localhost",
            "MAILROUTER_RELAY_HOST": "127.0.0.1",
            "MAILROUTER_RELAY_PORT": str(free_port()),
            "MAILROUTER_RETRY_TIMES": cli.RETRY_TIMES,
            "MAILROUTER_NODE_NAME": address,
            "MAILROUTER_CLUSTER_MEMBERS": members,
            "MAILROUTER_CLUSTER_PORT": str(ports.smtp),
            "MAILROUTER_CLUSTER_CA": str(certificates.ca_cert),
            "MAILROUTER_PROXY_HOSTS": PROXY_SOURCE,
        })
        exim.start_daemon([ports.smtp, ports.submission, ports.smtps], queue_interval=cli.QUEUE_INTERVAL,
                          host=address)
        assert exim.daemon_pid is not None
        sandbox.record(f"{name}-exim", exim.daemon_pid)
        first_exim = first_exim or exim
        popa3d = Popa3d(node_dir, str(config), root=root, bin_dir=bin_dir, certificates=certificates,
                        spool=spool, host=address)
        popa3d.port, popa3d.tls_port = ports.pop3, ports.pop3s
        popa3d.start()
        for number, pid in enumerate(popa3d.pids()):
            sandbox.record(f"{name}-popa3d-front-{number}", pid)
        start_perdition(sandbox, node_dir, name, address, ports,
                        directory_servers.replicas[index - 1].uri, data, certificates, root)
        node_info.append({
            "name": name,
            "address": address,
            "mail_host": address,  # the mailHost value that makes a user live here
            "replica_uri": directory_servers.replicas[index - 1].uri,
            "smtp_port": ports.smtp, "submission_port": ports.submission, "smtps_port": ports.smtps,
            "pop3_port": ports.pop3, "pop3s_port": ports.pop3s,
            "perdition_pop3_port": ports.proxy_pop3, "perdition_pop3s_port": ports.proxy_pop3s,
            "config": str(config), "spool_dir": str(spool),
            "exim": shlex.join(exim.argv()), "exim_config": str(exim.wrapper),
        })

    log("starting haproxy (the front door)")
    front = dict(zip(("SMTP_PORT", "SUBMISSION_PORT", "SMTPS_PORT", "POP3_PORT", "POP3S_PORT"),
                     map(str, common_ports([FRONT], 5)), strict=True))
    haproxy_conf = directory / "haproxy.cfg"
    haproxy_conf.write_text(render_haproxy(
        (root / "cluster" / "haproxy.cfg").read_text(encoding="utf-8"),
        {"LISTEN": FRONT, "PROXY_SOURCE": PROXY_SOURCE, **front},
        [{"NODE_NAME": node["name"], "NODE_ADDRESS": node["address"],
          "NODE_SMTP_PORT": str(ports.smtp), "NODE_SUBMISSION_PORT": str(ports.submission),
          "NODE_SMTPS_PORT": str(ports.smtps), "NODE_POP3_PORT": str(ports.proxy_pop3),
          "NODE_POP3S_PORT": str(ports.proxy_pop3s)} for node in node_info],
    ), encoding="utf-8")
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(haproxy_conf)], check=True, capture_output=True)
    _spawn(sandbox, "haproxy", [HAPROXY, "-db", "-f", str(haproxy_conf)], directory / "haproxy.log",
           FRONT, [int(port) for port in front.values()])
    wait_for_backends(directory / "haproxy.log")

    admin = data.account("global-admin")
    fd = os.open(directory / cli.ADMIN_SECRET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(admin.password + "\n")
    assert first_exim is not None
    accounts = []
    for account in data.accounts:
        if account.role == "service":
            continue
        entry = account.as_json()
        if account.address in HOMES and HOMES[account.address] <= nodes:
            entry["home"] = names[HOMES[account.address] - 1]
        accounts.append(entry)
    return {
        "dir": str(directory),
        "ldap_uri": directory_servers.providers[0].uri,
        "base_dn": data.base_dn,
        "admin_dn": admin.dn,
        "admin_password": admin.password,
        "smtp_port": int(front["SMTP_PORT"]),
        "submission_port": int(front["SUBMISSION_PORT"]),
        "smtps_port": int(front["SMTPS_PORT"]),
        "pop3_port": int(front["POP3_PORT"]),
        "pop3s_port": int(front["POP3S_PORT"]),
        "ca_cert": str(certificates.ca_cert),
        "spool_dir": node_info[0]["spool_dir"],
        "exim": node_info[0]["exim"],
        "exim_config": node_info[0]["exim_config"],
        "accounts": accounts,
        "aliases": data.aliases,
        "catchall": data.catchall,
        "web_url": f"https://127.0.0.1:{web_port}/",
        "config": str(configs[0]),
        "tls_host": cli.TLS_HOST,
        "nodes": node_info,
        "ldap_servers": {name: server.uri for name, server in directory_servers.servers().items()},
        "ldap_write_uris": list(directory_servers.provider_uris),
        "replicator_password": replicator_password,
    }


def wait_for_backends(log_path: Path) -> None:
    """Give HAProxy's first health checks (every 2 s) time to run; fail if one marks a node down."""
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        if "is DOWN" in log_path.read_text("utf-8", "replace"):
            raise DaemonError("haproxy marks a node down: " + log_path.read_text("utf-8", "replace")[-2000:])
        time.sleep(0.1)


def restart_slapd(directory: Path, root: Path, name: str, uri: str) -> int:
    """Start the cluster's slapd ``name`` (provider1, replica2, ...) again on its address and port."""
    host, port = uri.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    server = Slapd(directory / "ldap" / name, root=root, host=host)
    server.port = int(port)
    server.restart()
    assert server.process is not None
    return server.process.pid
