"""Delegated administration, enforced by slapd: the permission matrix.

A real slapd runs with exactly ldap/slapd.conf, ldap/acl.conf, ldap/mailrouter.schema
and ldap/seed.ldif (the files the README tells admins to deploy), plus the suite's
data set, whose a.example / b.example hold one account per actor (tests/dataset.py).
Every cell is one real LDAP operation by one actor, with slapd's exact result code
(checked: a cell that asks slapd nothing fails).  Anonymous has no entry of its
own: its "own" operations claim user_a's.
Operations are made independent of each other: each actor deletes its own victim,
adds its own new user, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import ldap3
import pytest
from ldap3 import ANONYMOUS, BASE, MODIFY_ADD, MODIFY_REPLACE, NONE, SIMPLE, Connection, Server

from conftest import start_slapd
from dataset import ACL_A, ACL_ACCOUNTS, ACL_ACTORS, ACL_B, Dataset, acl_password
from mailrouter import entries, passwords
from mailrouter.directory import person_dn, user_dn
from mailrouter.sandbox.slapd import Slapd

BASE_DN = "o=top"
A, B = ACL_A, ACL_B
SCHEME = "ssha"  # fast to hash; the argon2 path is covered by test_directory

# Result codes (RFC 4511)
OK, INSUFFICIENT, VALUE_EXISTS, INVISIBLE = 0, 50, 20, 32
EXISTS = VALUE_EXISTS
AUTH_REQUIRED = 8  # slapd refuses every anonymous update before looking at ACLs
INAPPROPRIATE_AUTH = 48  # an anonymous bind: "disallow bind_anon"
SCHEMA = 65  # objectClassViolation: the global admin is no mail user, it has no quota
HIDDEN = "hidden"  # the search succeeds but the attribute is not returned

ACTORS = ACL_ACTORS


STORAGE_ID = 8  # Debian's "mail": the ids every account gets from the admin library


def user(local: str, domain: str, password: str | None = None, uid_number: int = STORAGE_ID,
         gid_number: int = STORAGE_ID) -> entries.Entry:
    return entries.user_entry(
        local,
        domain,
        BASE_DN,
        password_hash=passwords.hash_password(password, SCHEME) if password else None,
        uid_number=uid_number,
        gid_number=gid_number,
        mailbox=f"/var/mail/{local}@{domain}",
        quota="10M",
    )


ACTOR_DN: dict[str, str | None] = {
    "anonymous": None,
    **{actor: user_dn(local, domain, BASE_DN) for actor, (local, domain) in ACL_ACCOUNTS.items()},
    "global": person_dn("admin", BASE_DN),  # the seed's global admin
}
PASSWORD = {actor: acl_password(actor) for actor in ACTORS}
# Whose entry an actor's "own" operations touch: anonymous has none, and claims user_a's.
OWN = {actor: ACTOR_DN[actor] or ACTOR_DN["user_a"] for actor in ACTORS}


@pytest.fixture(scope="module")
def matrix_slapd(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Slapd]:
    """A writable slapd with the data set (a.example / b.example are the matrix's),
    the global admin's password set to the matrix's."""
    global_dn = ACTOR_DN["global"]
    assert global_dn is not None and global_dn in dataset.seed_passwords
    seed = {**dataset.seed_passwords, global_dn: passwords.hash_password(PASSWORD["global"], SCHEME)}
    server = start_slapd(Path(tmp_path_factory.mktemp("acl")), dataset, seed_passwords=seed)
    try:
        yield server
    finally:
        server.stop()


def connect(slapd: Slapd, actor: str) -> Connection:
    server = Server(slapd.uri.rstrip("/"), get_info=NONE, connect_timeout=5)
    dn = ACTOR_DN[actor]
    # collect_usage: test_permission checks that every cell really asked slapd.
    if dn is None:
        connection = Connection(server, raise_exceptions=False, collect_usage=True)
        connection.open()  # no bind at all: operations run as anonymous
        return connection
    connection = Connection(server, user=dn, password=PASSWORD[actor], raise_exceptions=False,
                            collect_usage=True)
    assert connection.bind(), f"{actor} could not bind: {connection.result}"
    return connection


def slug(actor: str) -> str:
    return actor.replace("_", "-")


# -- operations: each returns slapd's result code (or HIDDEN / NA) ----------
def read_password(c: Connection, actor: str) -> object:
    c.search(f"uid=pwvictim,dc={A},{BASE_DN}", "(objectClass=*)", BASE, attributes=["userPassword", "uid"])
    code = c.result["result"]
    if code != OK:
        return code
    attrs = c.response[0]["attributes"] if c.response else {}
    return "READABLE" if attrs.get("userPassword") else HIDDEN


def read_entry_in(domain: str) -> Callable[[Connection, str], object]:
    """Read B's (or A's) admin entry; slapd's code, or a search that found nothing."""

    def operation(c: Connection, actor: str) -> object:
        c.search(f"uid=boss,dc={domain},{BASE_DN}", "(objectClass=*)", BASE, attributes=["uid"])
        code = c.result["result"]
        found = [r for r in c.response or [] if r.get("type") == "searchResEntry"]
        return code if code != OK or found else "nothing"

    return operation


def bind(c: Connection, actor: str) -> object:
    """A fresh bind as the actor; for anonymous an explicit anonymous bind (RFC 4513 5.1.1)."""
    dn = ACTOR_DN[actor]
    c.rebind(user=dn or "", password=PASSWORD[actor] if dn else "",
             authentication=SIMPLE if dn else ANONYMOUS)
    return c.result["result"]


def replace_own_password(c: Connection, actor: str) -> object:
    new_hash = passwords.hash_password(PASSWORD[actor], SCHEME)  # same password, new hash
    c.modify(OWN[actor], {"userPassword": [(MODIFY_REPLACE, [new_hash])]})
    return c.result["result"]


def replace_other_password(c: Connection, actor: str) -> object:
    new_hash = passwords.hash_password("victim-password", SCHEME)
    c.modify(f"uid=pwvictim,dc={A},{BASE_DN}", {"userPassword": [(MODIFY_REPLACE, [new_hash])]})
    return c.result["result"]


def add_user_in(domain: str) -> Callable[[Connection, str], object]:
    def operation(c: Connection, actor: str) -> object:
        entry = user(f"new-{slug(actor)}", domain, "x-password")
        c.add(entry.dn, attributes=entry.attributes)
        return c.result["result"]

    return operation


def add_user_in_a_with(tag: str, **changes: int | str) -> Callable[[Connection, str], object]:
    """Add a user in A whose system identity differs from the storage account's."""
    def operation(c: Connection, actor: str) -> object:
        entry = user(f"{tag}-{slug(actor)}", A, "x-password")
        attributes = dict(entry.attributes)
        for name, value in changes.items():
            attributes[name] = [str(value)]
        c.add(entry.dn, attributes=attributes)
        return c.result["result"]

    return operation


def set_attribute_of_a_user_in_a(attribute: str, value: str) -> Callable[[Connection, str], object]:
    def operation(c: Connection, actor: str) -> object:
        c.modify(f"uid=idvictim-{slug(actor)},dc={A},{BASE_DN}", {attribute: [(MODIFY_REPLACE, [value])]})
        return c.result["result"]

    return operation


def delete_owned_user_in_a(c: Connection, actor: str) -> object:
    c.delete(f"uid=owned-{slug(actor)},dc={A},{BASE_DN}")
    return c.result["result"]


def set_own(attribute: str, value: str) -> Callable[[Connection, str], object]:
    def operation(c: Connection, actor: str) -> object:
        # Anonymous claims user_a's entry; the global admin is no mail user (schema).
        c.modify(OWN[actor], {attribute: [(MODIFY_REPLACE, [value])]})
        return c.result["result"]

    return operation


def delete_user_in_a(c: Connection, actor: str) -> object:
    c.delete(f"uid=victim-{slug(actor)},dc={A},{BASE_DN}")
    return c.result["result"]


def modify_domain_a(c: Connection, actor: str) -> object:
    c.modify(f"dc={A},{BASE_DN}", {"description": [(MODIFY_REPLACE, [f"edited by {actor}"])]})
    return c.result["result"]


def set_domain_a(attribute: str, value: str) -> Callable[[Connection, str], object]:
    def operation(c: Connection, actor: str) -> object:
        c.modify(f"dc={A},{BASE_DN}", {attribute: [(MODIFY_REPLACE, [value])]})
        return c.result["result"]

    return operation


def add_self_to(group_dn: str) -> Callable[[Connection, str], object]:
    def operation(c: Connection, actor: str) -> object:
        c.modify(group_dn, {"member": [(MODIFY_ADD, [OWN[actor]])]})
        return c.result["result"]

    return operation


def modify_setting(c: Connection, actor: str) -> object:
    c.modify(
        f"mailSetting=host_accept_relay,{BASE_DN}",
        {"mailSettingValue": [(MODIFY_ADD, [f"198.51.100.{ACTORS.index(actor) + 1}"])]},
    )
    return c.result["result"]


def add_domain(c: Connection, actor: str) -> object:
    entry = entries.domain_entry(f"new-{slug(actor)}.example", BASE_DN)
    c.add(entry.dn, attributes=entry.attributes)
    return c.result["result"]


def raise_own_quota(c: Connection, actor: str) -> object:
    c.modify(OWN[actor], {"mailQuota": [(MODIFY_REPLACE, ["10G"])]})
    return c.result["result"]


NO = INSUFFICIENT
U = AUTH_REQUIRED
# operation: (function, {actor: expected})
MATRIX: dict[str, tuple[Callable[[Connection, str], object], list[object]]] = {
    #                                   anon  user_a  pm_a  admin_a admin_b global
    # admin_b: the whole of domain A is invisible to B's admin (tenants are isolated)
    "read a userPassword": (read_password, [INVISIBLE, HIDDEN, HIDDEN, HIDDEN, INVISIBLE, HIDDEN]),
    "read a user of A": (read_entry_in(A), [INVISIBLE, OK, OK, OK, INVISIBLE, OK]),
    "read a user of B": (read_entry_in(B), [INVISIBLE, INVISIBLE, INVISIBLE, INVISIBLE, OK, OK]),
    "bind": (bind, [INAPPROPRIATE_AUTH, OK, OK, OK, OK, OK]),
    "replace own password": (replace_own_password, [U, OK, OK, OK, OK, OK]),
    "replace another user's password": (replace_other_password, [U, NO, OK, OK, NO, OK]),
    "add a user in A": (add_user_in(A), [U, NO, OK, OK, NO, OK]),
    "delete a user in A": (delete_user_in_a, [U, NO, OK, OK, NO, OK]),
    "add a user in B": (add_user_in(B), [U, NO, NO, NO, OK, OK]),
    "modify the domain entry of A": (modify_domain_a, [U, NO, OK, OK, NO, OK]),
    # admin_b is already in B's group: slapd answers "value exists", not "denied"
    "add self to cn=admin,dc=B": (add_self_to(f"cn=admin,dc={B},{BASE_DN}"), [U, NO, NO, NO, EXISTS, OK]),
    "add self to cn=admin,o=top": (add_self_to(f"cn=admin,{BASE_DN}"), [U, NO, NO, NO, NO, EXISTS]),
    "modify a mailSetting": (modify_setting, [U, NO, NO, NO, NO, OK]),
    "add a new domain": (add_domain, [U, NO, NO, NO, NO, OK]),
    "raise own quota": (raise_own_quota, [U, NO, OK, OK, OK, SCHEMA]),
    # The system identity (uid/gid mail is stored as with spool.per_user_ids, home,
    # shell): global admins only.  Domain admins add accounts with the storage
    # account's ids ("add a user in A" above) and nothing else.
    "add a user in A with uid 5000": (add_user_in_a_with("uid", uidNumber=5000), [U, NO, NO, NO, NO, OK]),
    "add a user in A with gid 0": (add_user_in_a_with("gid", gidNumber=0), [U, NO, NO, NO, NO, OK]),
    "add a user in A with a shell": (add_user_in_a_with("sh", loginShell="/bin/sh"), [U, NO, NO, NO, NO, OK]),
    "add a user in A with a home": (add_user_in_a_with("home", homeDirectory="/"), [U, NO, NO, NO, NO, OK]),
    "set a uidNumber in A": (set_attribute_of_a_user_in_a("uidNumber", "5000"), [U, NO, NO, NO, NO, OK]),
    "set a uidNumber in A to the storage id": (set_attribute_of_a_user_in_a("uidNumber", "8"),
                                                [U, NO, NO, NO, NO, OK]),
    "set a gidNumber in A": (set_attribute_of_a_user_in_a("gidNumber", "5000"), [U, NO, NO, NO, NO, OK]),
    "set a loginShell in A": (set_attribute_of_a_user_in_a("loginShell", "/bin/sh"), [U, NO, NO, NO, NO, OK]),
    "set a homeDirectory in A": (set_attribute_of_a_user_in_a("homeDirectory", "/"), [U, NO, NO, NO, NO, OK]),
    "set own uidNumber": (set_own("uidNumber", "5000"), [U, NO, NO, NO, NO, SCHEMA]),
    "delete a user with its own uid in A": (delete_owned_user_in_a, [U, NO, NO, NO, NO, OK]),
    # Outbound rate limits (mailRateLimit): the domain's admins and global admins, never the user.
    "raise own rate limit": (set_own("mailRateLimit", "unlimited"), [U, NO, OK, OK, OK, SCHEMA]),
    "set the rate limit of a user in A": (set_attribute_of_a_user_in_a("mailRateLimit", "1000 / 1h"),
                                          [U, NO, OK, OK, NO, OK]),
    "set the rate limit of domain A": (set_domain_a("mailRateLimit", "500 / 1h"), [U, NO, OK, OK, NO, OK]),
}

CELLS = [
    pytest.param(operation, actor, expected[index], id=f"{operation}-{actor}")
    for operation, (_, expected) in MATRIX.items()
    for index, actor in enumerate(ACTORS)
]


@pytest.mark.parametrize(("operation", "actor", "expected"), CELLS)
def test_permission(matrix_slapd: Slapd, operation: str, actor: str, expected: object) -> None:
    function = MATRIX[operation][0]
    connection = connect(matrix_slapd, actor)
    try:
        before = connection.usage.operations
        assert function(connection, actor) == expected
        assert connection.usage.operations > before, "the cell asked slapd nothing"
    finally:
        connection.unbind()


def test_password_hash_is_invisible_even_to_self(matrix_slapd: Slapd) -> None:
    connection = connect(matrix_slapd, "user_a")
    try:
        connection.search(ACTOR_DN["user_a"], "(objectClass=*)", BASE, attributes=["*", "+"])
        attributes = {k.lower() for k in connection.response[0]["attributes"]}
        assert "userpassword" not in attributes
        assert "mailquota" in attributes  # the entry itself is readable
    finally:
        connection.unbind()


def test_anonymous_reads_nothing_but_may_authenticate(matrix_slapd: Slapd) -> None:
    connection = connect(matrix_slapd, "anonymous")
    try:
        connection.search(BASE_DN, "(objectClass=*)", ldap3.SUBTREE, attributes=["uid"])
        found = [r for r in connection.response or [] if r.get("type") == "searchResEntry"]
        assert found == []
    finally:
        connection.unbind()
    server = Server(matrix_slapd.uri.rstrip("/"), get_info=NONE)
    bound = Connection(server, user=ACTOR_DN["user_a"], password=PASSWORD["user_a"], raise_exceptions=False)
    assert bound.bind()
    bound.unbind()

