"""A replicated directory on loopback: the provider pair and one read-only replica per node.

Built only from the shipped files (``ldap/slapd.conf``, ``ldap/acl.conf``,
``ldap/replication/``), for ``mailrouter-sandbox up --nodes N``, the cluster
tests and the benchmarks.  The first provider is loaded with the seed, the data
and ``ldap/replication/replicator.ldif`` (``slapadd -S 1 -w``); every other
server is loaded with its dump, so all start from the same entryUUIDs and
contextCSN and replication only carries what changes later.

Addresses: the providers listen on 127.0.0.1, node ``i`` (1-based) on
``127.0.0.(i + 1)`` -- loopback only (Linux routes all of 127/8 to ``lo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailrouter import passwords
from mailrouter.sandbox.slapd import Replication, Slapd, free_port

REPLICATOR_DN = "uid=replicator,o=top"
PROVIDER_HOST = "127.0.0.1"


def node_address(index: int) -> str:
    """The loopback address of node ``index`` (1, 2, 3): 127.0.0.2, .3, .4."""
    return f"127.0.0.{index + 1}"


def replicator_ldif(root: Path, password: str) -> str:
    """The shipped replicator entry with an {SSHA} hash of ``password`` (every replica binds with it)."""
    text = (root / "ldap" / "replication" / "replicator.ldif").read_text(encoding="utf-8")
    return text.rstrip("\n") + f"\nuserPassword: {passwords.hash_password(password, 'ssha')}\n"


@dataclass
class ReplicatedDirectory:
    """Two providers (``providers[0]``, ``providers[1]``) and ``replicas[i]`` for node i+1."""

    providers: list[Slapd] = field(default_factory=list)
    replicas: list[Slapd] = field(default_factory=list)
    replicator_password: str = ""

    @property
    def provider_uris(self) -> tuple[str, ...]:
        return tuple(server.uri for server in self.providers)

    def read_uris(self, node: int) -> tuple[str, ...]:
        """What node ``node`` (1-based) reads: its own replica first, then the providers."""
        return (self.replicas[node - 1].uri, *self.provider_uris)

    def servers(self) -> dict[str, Slapd]:
        """Every slapd by name: ``provider1``, ``provider2``, ``replica1`` ..."""
        named = {f"provider{i + 1}": server for i, server in enumerate(self.providers)}
        named |= {f"replica{i + 1}": server for i, server in enumerate(self.replicas)}
        return named

    def stop(self) -> None:
        for server in [*self.replicas, *self.providers]:
            server.stop()


def start_directory(
    workdir: Path,
    *,
    root: Path,
    ldif: list[str],
    seed_passwords: dict[str, str],
    nodes: int,
    replicator_password: str,
    cn_config: bool = False,
) -> ReplicatedDirectory:
    """Start the provider pair and ``nodes`` replicas; on failure stop what started.

    ``cn_config``: the second provider and the even-numbered replicas run from
    cn=config (converted from their rendered slapd.conf), the others from
    slapd.conf -- one cluster proves both forms work together."""
    cluster = ReplicatedDirectory(replicator_password=replicator_password)
    ports = [free_port(PROVIDER_HOST), free_port(PROVIDER_HOST)]
    while ports[1] == ports[0]:
        ports[1] = free_port(PROVIDER_HOST)
    uris = [f"ldap://{PROVIDER_HOST}:{port}/" for port in ports]
    try:
        first = Slapd(
            workdir / "provider1", root=root, host=PROVIDER_HOST,
            ldif=[*ldif, replicator_ldif(root, replicator_password)], seed_passwords=seed_passwords,
            replication=Replication("provider", (uris[1],), replicator_password, server_id=1),
        )
        cluster.providers.append(first)
        first.configure()
        dump = first.dump()
        second = Slapd(
            workdir / "provider2", root=root, host=PROVIDER_HOST, preload=dump, cn_config=cn_config,
            replication=Replication("provider", (uris[0],), replicator_password, server_id=2),
        )
        cluster.providers.append(second)
        for index in range(1, nodes + 1):
            cluster.replicas.append(Slapd(
                workdir / f"replica{index}", root=root, host=node_address(index), preload=dump,
                cn_config=cn_config and index % 2 == 0,
                replication=Replication("consumer", tuple(uris), replicator_password),
            ))
        first.start(ports[0])
        second.start(ports[1])
        for replica in cluster.replicas:
            replica.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
