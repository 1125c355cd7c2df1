"""The replicated directory (issue 20, item 1) through real slapds from ldap/ and ldap/replication/.

Two providers in multi-provider mode with delta-syncrepl and a read-only replica
(consumer) per node, started by :mod:`mailrouter.sandbox.cluster`: a write on
either provider reaches the other and every replica; a write sent to a replica
is refused with a clear message and written nowhere; writes and password
checks go to ``ldap.write_uris`` while reads use ``ldap.uris``; the
replicator reads what replication needs and writes nothing; with one provider
stopped writes go to the other and the pair converges after the restart.
Timings are measured in bench/bench_cluster.py, never asserted here.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from conftest import BIN, ROOT, VENV_ENV, hook_config, needs_root, own_copy, service_config
from dataset import Dataset
from mailrouter import auth
from mailrouter.config import AuthConfig, Config, LdapConfig, load
from mailrouter.directory import Directory, Session
from mailrouter.errors import LdapRefused, ReadOnlyReplica
from mailrouter.sandbox import cluster, demo
from mailrouter.sandbox.slapd import Slapd

pytestmark = needs_root

BASE = "o=top"
REPLICATOR_PASSWORD = "replicator-secret-1"
CONVERGE = 15.0  # seconds a test waits for replication before it fails (no timing asserted)


@pytest.fixture(scope="module")
def data(dataset: Dataset) -> Dataset:
    return own_copy(dataset)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory,
              data: Dataset) -> Iterator[cluster.ReplicatedDirectory]:
    servers = cluster.start_directory(
        tmp_path_factory.mktemp("replication"), root=ROOT, ldif=[data.ldif],
        seed_passwords=data.seed_passwords, nodes=2, replicator_password=REPLICATOR_PASSWORD,
        cn_config=True,  # provider 2 and replica 2 from cn=config: every test covers both forms
    )
    try:
        yield servers
    finally:
        servers.stop()


def on(server: Slapd, data: demo.DemoDirectory) -> LdapConfig:
    return service_config(server, data)  # type: ignore[arg-type]


def admin(data: demo.DemoDirectory, uris: tuple[str, ...], write_uris: tuple[str, ...] = ()) -> Session:
    account = data.account("global-admin")
    config = LdapConfig(uris=uris, write_uris=write_uris, base_dn=BASE,
                        connect_timeout=2, operation_timeout=2)
    return Session(config, account.dn, account.password)


def read(server: Slapd, data: demo.DemoDirectory, dn: str, *attributes: str) -> dict[str, list[str]] | None:
    """``dn`` on ``server`` as the global admin (None: not there)."""
    with admin(data, (server.uri,)) as session:
        found = session.search(dn.split(",", 1)[1], f"({dn.split(',', 1)[0]})", list(attributes) or ["*"])
    for entry_dn, attrs in found:
        if entry_dn.lower() == dn.lower():
            return {k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in attrs.items()}
    return None


def has(server: Slapd, data: demo.DemoDirectory, dn: str,
        attribute: str = "", value: str | None = None) -> bool:
    """``dn`` is on ``server`` (with exactly ``value`` as its ``attribute`` when given)."""
    found = read(server, data, dn, *([attribute] if attribute else []))
    if found is None or not attribute:
        return found is not None
    return found.get(attribute, []) == ([value] if value is not None else [])


def domain(name: str) -> dict[str, list[str]]:
    return {"objectClass": ["mailDomain"], "dc": [name]}


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CONVERGE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not replicated within {CONVERGE} s: {what}")
        time.sleep(0.05)


def everywhere(directory: cluster.ReplicatedDirectory) -> list[Slapd]:
    return [*directory.providers, *directory.replicas]


def test_a_write_on_either_provider_reaches_every_server(directory: cluster.ReplicatedDirectory,
                                                         data: Dataset) -> None:
    first, second = directory.providers
    with admin(data, (first.uri,)) as session:
        session.add(f"dc=repl-one.example,{BASE}", domain("repl-one.example"))
    with admin(data, (second.uri,)) as session:
        session.add(f"dc=repl-two.example,{BASE}", domain("repl-two.example"))
    for server in everywhere(directory):
        for name in ("repl-one.example", "repl-two.example"):
            dn = f"dc={name},{BASE}"
            wait_until(partial(has, server, data, dn), f"{dn} on {server.uri}")
    # Delta-syncrepl ships one changed attribute: a modify on the second provider.
    with admin(data, (second.uri,)) as session:
        session.modify(f"dc=repl-one.example,{BASE}", {"description": ("replace", ["changed on 2"])})
    for server in everywhere(directory):
        wait_until(partial(has, server, data, f"dc=repl-one.example,{BASE}", "description", "changed on 2"),
                   f"modify on {server.uri}")


def test_a_write_sent_to_a_replica_is_refused_and_written_nowhere(directory: cluster.ReplicatedDirectory,
                                                                  data: Dataset) -> None:
    replica = directory.replicas[0]
    dn = f"dc=example.com,{BASE}"
    with pytest.raises(ReadOnlyReplica) as refused:
        with admin(data, (replica.uri,)) as session:
            session.modify(dn, {"description": ("replace", ["sent to a replica"])})
    message = str(refused.value)
    assert "read-only replica" in message and "ldap.write_uris" in message
    for provider in directory.providers:
        assert provider.uri.rstrip("/") in message
    time.sleep(1)  # long enough for replication (it takes milliseconds): nothing to replicate
    for server in everywhere(directory):
        assert "sent to a replica" not in (read(server, data, dn, "description") or {}).get("description", [])


def test_the_admin_cli_reports_a_replica_in_write_uris(directory: cluster.ReplicatedDirectory,
                                                       data: Dataset, tmp_path: Path) -> None:
    """The real executable: a misconfigured write list gives one clear line and rc 1, no write."""
    replica = directory.replicas[0]
    config = hook_config(tmp_path / "mailrouter.toml", data, [replica.uri], write_uris=[replica.uri])
    secret = tmp_path / "admin.secret"
    secret.write_text(data.account("global-admin").password + "\n")
    secret.chmod(0o600)
    done = subprocess.run(
        [str(BIN / "mailrouter-admin"), "--config", str(config), "--bind-dn", data.account("global-admin").dn,
         "--password-file", str(secret), "domain", "add", "via-replica.example"],
        capture_output=True, text=True, env={**VENV_ENV, "PATH": "/usr/bin:/bin"}, check=False,
    )
    assert done.returncode == 1, done
    assert "read-only replica" in done.stderr and "ldap.write_uris" in done.stderr
    time.sleep(1)
    for server in everywhere(directory):
        assert read(server, data, f"dc=via-replica.example,{BASE}") is None


def test_reads_use_the_replica_and_writes_the_providers(directory: cluster.ReplicatedDirectory,
                                                        data: Dataset, tmp_path: Path) -> None:
    """A node's config: the admin CLI writes (to a provider) and the node's hooks read it back."""
    config_path = hook_config(tmp_path / "mailrouter.toml", data, directory.read_uris(1),
                              write_uris=list(directory.provider_uris))
    config = load(str(config_path))
    assert config.ldap.uris[0] == directory.replicas[0].uri
    secret = tmp_path / "admin.secret"
    secret.write_text(data.account("global-admin").password + "\n")
    secret.chmod(0o600)
    done = subprocess.run(
        [str(BIN / "mailrouter-admin"), "--config", str(config_path), "--bind-dn",
         data.account("global-admin").dn, "--password-file", str(secret),
         "domain", "add", "node-one.example"],
        capture_output=True, text=True, env={**VENV_ENV, "PATH": "/usr/bin:/bin"}, check=False,
    )
    assert done.returncode == 0, done
    with Directory(config.ldap) as node:
        wait_until(lambda: node.is_local_domain("node-one.example"), "the new domain on replica 1")
        assert node.connected_uri == directory.replicas[0].uri


def test_password_changes_replicate_as_hashes(directory: cluster.ReplicatedDirectory, data: Dataset) -> None:
    """Password Modify on one provider: the other provider and a replica get the {ARGON2} hash
    (never cleartext), and the new password binds there."""
    first, second = directory.providers
    user = data.account("bob@example.com")
    with Session(on(first, data), user.dn, user.password) as session:
        session.password_modify(user.dn, "bobs-new-password-1", user.password)
    for server in (second, directory.replicas[1]):
        wait_until(partial(Directory(on(server, data)).check_password, user.dn, "bobs-new-password-1"),
                   f"bob's new password on {server.uri}")
    dump = second.dump()
    block = next(b for b in dump.split("\n\n") if b.lower().startswith(f"dn: {user.dn.lower()}"))
    hashes = [line for line in block.splitlines() if line.lower().startswith("userpassword")]
    assert hashes and "bobs-new-password-1" not in block
    user.password = "bobs-new-password-1"


def test_password_checks_go_to_a_provider_so_lockout_counts(directory: cluster.ReplicatedDirectory,
                                                            data: Dataset) -> None:
    """Reads from the replica, the bind at a provider: ppolicy records the failure there
    (a read-only replica would not), and replication brings it back to the replica."""
    replica, provider = directory.replicas[0], directory.providers[0]
    user = data.account("carol@example.org")
    with admin(data, (provider.uri,)) as session:  # the suite's data exempts everyone from lockout
        session.modify(user.dn, {"pwdPolicySubentry": ("delete", [])})
    wait_until(lambda: not (read(replica, data, user.dn, "pwdPolicySubentry") or {}).get("pwdPolicySubentry"),
               "carol's default policy on the replica")
    ldap = LdapConfig(uris=(replica.uri,), write_uris=(provider.uri,), base_dn=BASE,
                      bind_dn=data.account("service").dn, bind_password=data.account("service").password)
    result = auth.authenticate(Config(ldap=ldap), "carol@example.org", user.password + "-wrong")
    assert result.verdict is auth.Verdict.REFUSED, result
    assert (read(provider, data, user.dn, "pwdFailureTime") or {}).get("pwdFailureTime")
    wait_until(lambda: bool((read(replica, data, user.dn, "pwdFailureTime") or {}).get("pwdFailureTime")),
               "pwdFailureTime on the replica")


def test_the_rehash_on_login_writes_to_a_provider(directory: cluster.ReplicatedDirectory,
                                                  data: Dataset) -> None:
    """A node reads from its replica; the rehash after a login is a write: it goes to a provider."""
    replica, provider = directory.replicas[0], directory.providers[1]
    user = data.account("dave@example.org")  # stored as {ARGON2}: an ssha config rehashes it
    ldap = LdapConfig(uris=(replica.uri,), write_uris=(provider.uri,), base_dn=BASE,
                      bind_dn=data.account("service").dn, bind_password=data.account("service").password)
    result = auth.authenticate(Config(ldap=ldap, auth=AuthConfig(password_scheme="ssha")),
                               "dave@example.org", user.password)
    assert result.verdict is auth.Verdict.OK and "rehashed" in result.reason, result.reason
    for server in everywhere(directory):
        wait_until(partial(label_is, server, data, user.dn, "{SSHA}"), f"the new label on {server.uri}")


def label_is(server: Slapd, data: demo.DemoDirectory, dn: str, prefix: str) -> bool:
    labels = (read(server, data, dn, "mailPasswordScheme") or {}).get("mailPasswordScheme", [])
    return any(value.startswith(prefix) for value in labels)


def test_the_replicator_reads_what_replication_needs_and_writes_nothing(
        directory: cluster.ReplicatedDirectory, data: Dataset) -> None:
    provider = directory.providers[0]
    replicator = LdapConfig(uris=(provider.uri,), base_dn=BASE, bind_dn=cluster.REPLICATOR_DN,
                            bind_password=REPLICATOR_PASSWORD)
    alice = data.account("alice@example.com")
    with Session(replicator, cluster.REPLICATOR_DN, REPLICATOR_PASSWORD) as session:
        entry = dict(session.search(f"dc=example.com,{BASE}", "(uid=alice)", ["userPassword", "entryCSN"]))
        assert entry[alice.dn]["userPassword"] and entry[alice.dn]["entryCSN"]  # a replica needs both
        log = session.search("cn=deltalog", "(objectClass=*)", ["reqDN"])
        assert log, "the replication log is readable by the replicator"
        for write in (
            lambda: session.modify(alice.dn, {"description": ("replace", ["by the replicator"])}),
            lambda: session.add(f"dc=by-replicator.example,{BASE}", {"objectClass": ["mailDomain"],
                                                                      "dc": ["by-replicator.example"]}),
            lambda: session.delete(f"mailAlias=team,dc=example.com,{BASE}"),
        ):
            with pytest.raises(LdapRefused) as refused:
                write()
            assert refused.value.code == 50  # insufficient access
        assert session.search("cn=config", "(objectClass=*)", ["*"]) == []
    # Nobody else reads the replication log: it holds every written value.
    for who in ("service", "global-admin"):
        account = data.account(who)
        with Session(on(provider, data), account.dn, account.password) as session:
            assert session.search("cn=deltalog", "(objectClass=*)", ["*"]) == []


def test_one_provider_down_writes_go_to_the_other_and_the_pair_converges(
        directory: cluster.ReplicatedDirectory, data: Dataset) -> None:
    first, second = directory.providers
    writers = directory.provider_uris
    first.stop()
    try:
        with admin(data, writers, writers) as session:
            session.add(f"dc=while-down.example,{BASE}", domain("while-down.example"))
            session.modify(f"dc=example.org,{BASE}", {"description": ("replace", ["while one was down"])})
        for server in (second, *directory.replicas):
            wait_until(partial(has, server, data, f"dc=while-down.example,{BASE}"),
                       f"the write on {server.uri} while provider 1 is down")
    finally:
        first.restart()
    wait_until(partial(has, first, data, f"dc=while-down.example,{BASE}"), "provider 1 catching up")

    def entries(server: Slapd) -> list[str]:
        # Every entry with every attribute the global admin reads and its entryCSN:
        # equal = the same data, change for change.  Not the suffix's entryCSN: each
        # server's own slapadd -w / contextCSN bookkeeping stamps o=top locally.
        with admin(data, (server.uri,)) as session:
            found = session.search(BASE, "(objectClass=*)", ["*", "entryCSN"], subtree=True)
        return sorted(
            repr((dn.lower(), sorted((k, sorted(map(str, v))) for k, v in attrs.items()
                                     if not (k == "entryCSN" and dn.lower() == BASE))))
            for dn, attrs in found
        )

    def same(one: Slapd, other: Slapd) -> bool:
        return entries(one) == entries(other)

    wait_until(partial(same, first, second), "the providers' entries and CSNs equal")
    for replica in directory.replicas:
        wait_until(partial(same, replica, first), f"{replica.uri} equal to the providers")


def audit_log(server: Slapd) -> list[tuple[str, dict[str, list[bytes]]]]:
    """``server``'s audit log (cn=accesslog) as slapd stored it, read offline (slapcat),
    every value decoded (base64 too)."""
    done = subprocess.run(["/usr/sbin/slapcat", "-f", str(server.conf_path), "-b", "cn=accesslog",
                           "-o", "ldif_wrap=no"], capture_output=True, timeout=60, check=True)
    records = []
    for block in done.stdout.decode("utf-8", "replace").split("\n\n"):
        attributes: dict[str, list[bytes]] = {}
        dn = ""
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition(":")
            raw = base64.b64decode(value[2:]) if value.startswith(":") else value[1:].lstrip().encode()
            if name == "dn":
                dn = raw.decode()
            else:
                attributes.setdefault(name.lower(), []).append(raw)
        if dn:
            records.append((dn, attributes))
    return records


def about(records: list[tuple[str, dict[str, list[bytes]]]], dn: str) -> list[dict[str, list[bytes]]]:
    return [a for _, a in records if [v.decode().lower() for v in a.get("reqdn", [])] == [dn.lower()]]


def test_the_audit_log_records_each_write_once_on_the_provider_that_took_it(
        directory: cluster.ReplicatedDirectory, data: Dataset) -> None:
    """An admin write on provider 1 is in provider 1's audit log with its actor, in no
    other server's (replicated changes are the other server's records); no server's
    audit log holds a password value or hash; referential integrity (slapo-refint,
    whose repairs are never replicated) holds on every server; the replicator
    cannot read the audit log."""
    first, second = directory.providers
    actor = data.account("global-admin").dn
    target = f"dc=audited-once.example,{BASE}"
    group = f"cn=repl-refint,dc=example.com,{BASE}"
    gone = f"dc=refint-gone.example,{BASE}"
    cleartext = "audited-cleartext-1"
    user = data.account("alice@example.com")
    with admin(data, (first.uri,)) as session:
        session.add(target, domain("audited-once.example"))
        session.add(gone, domain("refint-gone.example"))
        session.add(group, {"objectClass": ["groupOfNames"], "cn": ["repl-refint"],
                            "member": [gone, actor]})
        session.modify(user.dn, {"userPassword": ("replace", [cleartext])})
    for server in everywhere(directory):
        wait_until(partial(has, server, data, group), f"{group} on {server.uri}")
    with Session(on(first, data), user.dn, cleartext) as session:
        session.password_modify(user.dn, cleartext + "-2", cleartext)
    user.password = cleartext + "-2"
    with admin(data, (second.uri,)) as session:
        session.delete(gone)  # on provider 2: refint repairs the group there and everywhere else

    def no_stale_member(server: Slapd) -> bool:
        members = [m.lower() for m in (read(server, data, group, "member") or {}).get("member", [])]
        return members == [actor.lower()]

    for server in everywhere(directory):
        wait_until(partial(no_stale_member, server), f"no stale member on {server.uri}")
        wait_until(partial(Directory(on(server, data)).check_password, user.dn, user.password),
                   f"the new password on {server.uri}")
    # The hashes every server stores now (the secret values that must stay out of any log).
    block = next(b for b in second.dump().split("\n\n") if b.lower().startswith(f"dn: {user.dn.lower()}"))
    secrets = [cleartext.encode(), (cleartext + "-2").encode()] + [
        line.split(":", 1)[1].strip().encode() for line in block.splitlines()
        if line.lower().startswith(("userpassword:", "pwdhistory:"))]
    assert len(secrets) > 2
    for server in everywhere(directory):
        records = audit_log(server)
        mine = about(records, target)
        if server is first:
            assert len(mine) == 1, mine
            assert mine[0]["reqtype"] == [b"add"] and mine[0]["reqauthzid"] == [actor.encode()]
            changed = about(records, user.dn)
            assert changed and all(b"<withheld>" in b"".join(r.get("reqmod", [])) for r in changed)
        else:
            assert mine == [], f"{server.uri} recorded provider 1's write again: {mine}"
        if server is second:
            assert len(about(records, gone)) == 1  # the delete it took, once
        for dn, attributes in records:
            for values in attributes.values():
                for value in values:
                    assert not any(secret in value for secret in secrets), (server.uri, dn)
    with Session(LdapConfig(uris=(first.uri,), base_dn=BASE), cluster.REPLICATOR_DN,
                 REPLICATOR_PASSWORD) as session:
        assert session.search("cn=accesslog", "(objectClass=*)", ["*"]) == []
