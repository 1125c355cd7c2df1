"""The one fixture data set of the suite: the sandbox's demo directory plus every edge case.

Every slapd a test starts is loaded with exactly this (``conftest.start_slapd``),
so a case written for one front end (the lookup hook, lookupd, Exim's routers,
the ACL matrix, the directory layer) can be asked of any other.  What is here:

* the demo (:mod:`mailrouter.sandbox.demo`): example.com (postmaster, alice, bob,
  alias team), example.org (postmaster, carol, dave, catch-all -> carol), the
  global admin and the service account;
* routing edge cases in example.com / example.org / an IDN domain: disabled
  users and aliases, full and garbled quotas, alias chains, loops, hostile
  targets (some naming :attr:`Dataset.marker`, a file that must never appear);
* directory edge cases: uids that need DN escaping;
* the ACL matrix's own two domains, a.example and b.example, with one account
  per actor (known passwords) and a victim per actor.

Entries created here carry a hostile ``mailMessageStore`` (/etc/passwd) and
uid/gid 5000: the hooks must use neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ldap3.utils.dn import escape_rdn

from mailrouter import entries, passwords
from mailrouter.directory import user_dn
from mailrouter.sandbox import demo

BASE = "o=top"
FAST = "ssha"  # fast hashes for the edge-case accounts; people in the demo get argon2
LONG_LOCAL = "l" * 64
DISABLED_LOGIN = "frozen@example.com"
DISABLED_PASSWORD = "disabled-but-correct-1"

# Stored uid values that need DN escaping; each must be found exactly, and only itself.
ODD_UIDS = [
    "a,b", "x+y", 'q"uote', "back\\slash", "<angle>", "semi;colon", "eq=ual", "#hash", "star*", "par(en)",
]

# The ACL matrix: domain A and B, one account per actor (the global admin is the demo's).
ACL_A, ACL_B = "a.example", "b.example"
ACL_ACTORS = ["anonymous", "user_a", "postmaster_a", "admin_a", "admin_b", "global"]
ACL_ACCOUNTS = {  # actor -> (local, domain)
    "user_a": ("alice", ACL_A),
    "postmaster_a": ("postmaster", ACL_A),
    "admin_a": ("boss", ACL_A),
    "admin_b": ("boss", ACL_B),
}
ACL_VICTIM_PASSWORD = "victim-password"


def acl_password(actor: str) -> str:
    return f"pw-{actor}-Secret"


@dataclass
class Dataset(demo.DemoDirectory):
    """The demo directory, its LDIF extended with the edge cases; ``marker`` as above."""

    marker: Path = Path("/nonexistent")


def _user(local: str, domain: str, password: str | None = None, **kwargs: object) -> entries.Entry:
    return entries.user_entry(
        local,
        domain,
        BASE,
        password_hash=passwords.hash_password(password, FAST) if password else None,
        uid_number=5000,
        gid_number=5000,
        mailbox="/etc/passwd",  # what a hostile admin might write: never used
        **kwargs,  # type: ignore[arg-type]
    )


def _alias(name: str, domain: str, targets: list[str], active: bool = True) -> entries.Entry:
    entry = entries.alias_entry(name, domain, BASE, targets)
    if not active:
        entry.attributes["mailAccountStatus"] = ["disabled"]
    return entry


def _odd_user(uid: str) -> entries.Entry:
    return entries.Entry(
        f"uid={escape_rdn(uid)},dc=example.com,{BASE}",
        {
            "objectClass": ["mailUser", "posixAccount"],
            "uid": [uid],
            "dc": ["example.com"],
            "mail": ["odd@example.com"],
            "cn": [uid],
            "uidNumber": ["8"],
            "gidNumber": ["8"],
            "homeDirectory": ["/nonexistent"],
        },
    )


def routing_entries(marker: Path) -> list[entries.Entry]:
    com, org, idn = "example.com", "example.org", "xn--bcher-kva.example"
    garbled = _user("garbled", com)
    garbled.attributes["mailQuota"] = ["lots"]
    # Hostile targets a domain admin could write: each would make Exim run a
    # command, write a file or read one if it ever reached the redirect router.
    marked = [
        f"|/usr/bin/touch {marker}",
        f"/{marker}",
        f":include:{marker}",
        f'"|/usr/bin/touch {marker}"',
        ":blackhole:",
    ]
    return [
        _user("disabled", com, active=False),
        _user("fulluser", com, quota="1K"),
        garbled,
        _user(LONG_LOCAL, com),
        _user("dora", org, active=False),
        entries.user_entry(
            "frozen", com, BASE, password_hash=passwords.hash_password(DISABLED_PASSWORD, "argon2"),
            uid_number=8, gid_number=8, mailbox="/var/mail/frozen@example.com", active=False,
        ),
        _alias("gone", com, ["alice@example.com"], active=False),
        _alias("one", com, ["alice@example.com"]),
        _alias("mixed", com, ["bob@example.com", "someone@remote.example"]),
        _alias("nested", com, ["team@example.com"]),
        _alias("loopa", com, ["loopb@example.com"]),
        _alias("loopb", com, ["loopa@example.com"]),
        _alias("fullalias", com, ["fulluser@example.com"]),
        _alias("partlyfull", com, ["alice@example.com", "fulluser@example.com"]),
        # fullchain -> fullnested -> fulluser (and a remote address, no quota here)
        _alias("fullchain", com, ["fullnested@example.com"]),
        _user("halffull", com, quota="100K"),  # 60K used (see test_exim_routing's world)
        _alias("halfalias", com, ["halffull@example.com"]),
        _user("small", com, quota="20K"),
        _alias("fullnested", com, ["fulluser@example.com", "x@remote.example"]),
        _alias("hostile", com, [*marked, "alice@example.com"]),
        _alias("hostileonly", com, marked),
        _alias(
            "oddtargets",
            com,
            [
                "|/bin/sh -c id",
                "/etc/passwd",
                ":include:/etc/passwd",
                ":fail: gotcha",
                '"|/bin/id"',
                "a@b@example.com",
                "x@example.com, y@example.com",
                "bob@EXAMPLE.COM",
                "Remote.User@Remote.Example",
            ],
        ),
        _alias("pipeonly", com, ["|/bin/id"]),
        _alias("info", org, ["dave@example.org"]),
        entries.domain_entry(idn, BASE),
        _user("hans", idn),
    ]


def _storage_user(local: str, domain: str, password: str | None = None, uid: int = 8) -> entries.Entry:
    """An account as the admin library writes it: the storage account's ids (8 = mail),
    home /nonexistent, shell nologin -- what a domain admin may add and delete (acl.conf 3)."""
    return entries.user_entry(
        local, domain, BASE,
        password_hash=passwords.hash_password(password, FAST) if password else None,
        uid_number=uid, gid_number=uid, mailbox=f"/var/mail/{local}@{domain}", quota="10M",
    )


def acl_entries() -> list[entries.Entry]:
    objects = [entries.domain_entry(ACL_A, BASE), entries.domain_entry(ACL_B, BASE)]
    objects += [
        _storage_user(local, domain, acl_password(actor))
        for actor, (local, domain) in ACL_ACCOUNTS.items()
    ]
    objects.append(_storage_user("pwvictim", ACL_A, ACL_VICTIM_PASSWORD))
    objects += [
        entries.admin_group_entry(ACL_A, BASE, [user_dn("boss", ACL_A, BASE)]),
        entries.admin_group_entry(ACL_B, BASE, [user_dn("boss", ACL_B, BASE)]),
    ]
    slugs = [actor.replace("_", "-") for actor in ACL_ACTORS]
    objects += [_storage_user(f"victim-{slug}", ACL_A) for slug in slugs]
    objects += [_storage_user(f"idvictim-{slug}", ACL_A) for slug in slugs]
    # An account a global admin gave its own system identity (spool.per_user_ids).
    objects += [_storage_user(f"owned-{slug}", ACL_A, uid=5000) for slug in slugs]
    return objects


def exempt_from_lockout(ldif: str) -> str:
    """Every mail user of the suite's shared data gets the seed's no-lockout policy:
    refusal tests try wrong passwords on alice by the dozen, and a lockout (ppolicy's
    default: 10 failures) would break every later test that logs in as her.  The
    lockout itself is tested on accounts of their own (test_passwords.py)."""
    blocks = []
    for block in ldif.strip("\n").split("\n\n"):
        if "\nobjectClass: mailUser" in block:
            block += f"\npwdPolicySubentry: cn=no-lockout,ou=policies,{BASE}"
        blocks.append(block)
    return "\n\n".join(blocks) + "\n"


def build(marker: Path, scheme: str = "argon2") -> Dataset:
    """The data set; ``marker`` is the file hostile aliases would create.

    ``scheme`` hashes the demo's people (unit tests, which bind nobody, take a fast one).
    """
    base = demo.build(base_dn=BASE, scheme=scheme)
    extra = routing_entries(marker) + [_odd_user(uid) for uid in ODD_UIDS] + acl_entries()
    accounts = list(base.accounts)
    accounts.append(demo.Account(user_dn("frozen", "example.com", BASE), DISABLED_PASSWORD,
                                 "disabled-user", DISABLED_LOGIN))
    for actor, (local, domain) in ACL_ACCOUNTS.items():
        accounts.append(demo.Account(user_dn(local, domain, BASE), acl_password(actor),
                                     f"acl-{actor}", f"{local}@{domain}"))
    ldif = base.ldif.rstrip("\n") + "\n\n" + entries.to_ldif(extra)
    return Dataset(
        base_dn=base.base_dn,
        seed_passwords=base.seed_passwords,
        ldif=exempt_from_lockout(ldif),
        accounts=accounts,
        aliases=base.aliases,
        catchall=base.catchall,
        marker=marker,
    )
