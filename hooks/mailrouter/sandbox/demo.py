"""Demo directory content: the sandbox seeds it, the tests start from it.

Two domains (example.com, example.org), a global admin, a postmaster (domain
admin) and two users per domain, an alias with two targets and a catch-all in
example.org, and one outbound rate limit: dave@example.org may send to 100
recipients per hour (``mailRateLimit``).  Passwords are random per call and
stored hashed, like any other.
With ``rules`` (the sandbox; not the tests' data set, whose deliveries must not
change): one example of each mail rule (issue 16) -- dave@example.org is on
vacation (:data:`VACATION`) and carol@example.org has a Sieve filter
(:data:`SIEVE_SCRIPT`: ``[junk]`` in the subject is discarded, ``[for dave]``
redirected to dave, everything else kept).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from mailrouter import entries, passwords, rules
from mailrouter.directory import password_stamp

VACATION = {
    rules.VACATION_ACTIVE: "TRUE",
    rules.VACATION_SUBJECT: "Out of office",
    rules.VACATION_TEXT: "Dave is away this week and reads his mail on Monday.\n",
}
SIEVE_SCRIPT = """# carol's filter: the sandbox's example (mbox mailboxes: keep, discard, redirect)
if header :contains "subject" "[junk]" {
  discard;
  stop;
}
if header :contains "subject" "[for dave]" {
  redirect "dave@example.org";
  stop;
}
keep;
"""
RULES = {"dave@example.org": VACATION, "carol@example.org": {rules.SIEVE_SCRIPT: SIEVE_SCRIPT}}

GLOBAL_ADMIN_DN_TEMPLATE = "uid=admin,{base}"
SERVICE_DN_TEMPLATE = "uid=mailrouter,{base}"


@dataclass
class Account:
    dn: str
    password: str
    role: str  # "global-admin" | "domain-admin" | "user" | "service"
    address: str | None = None

    def as_json(self) -> dict[str, str]:
        data = {"dn": self.dn, "password": self.password, "role": self.role}
        if self.address:
            data["address"] = self.address
        return data


@dataclass
class DemoDirectory:
    base_dn: str
    seed_passwords: dict[str, str]  # DN -> hash, for accounts that live in seed.ldif
    ldif: str
    accounts: list[Account] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    catchall: dict[str, list[str]] = field(default_factory=dict)
    rate_limits: dict[str, str] = field(default_factory=dict)  # address -> its own mailRateLimit

    def account(self, address_or_role: str) -> Account:
        for account in self.accounts:
            if address_or_role in (account.address, account.role, account.dn):
                return account
        raise KeyError(address_or_role)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def build(
    base_dn: str = "o=top",
    mbox_template: str = "/var/mail/{local}@{domain}",
    storage_uid: int = 8,
    storage_gid: int = 8,
    scheme: str = "argon2",
    quota: str = "10M",
    with_rules: bool = False,
) -> DemoDirectory:
    """Build the demo directory; see the module docstring for what it holds."""
    accounts: list[Account] = []
    objects: list[entries.Entry] = []

    # One outbound limit, so the feature shows (user show, the web's user page).
    rate_limits = {"dave@example.org": "100 / 1h"}

    def user(local: str, domain: str, role: str) -> None:
        password = new_password()
        entry = entries.user_entry(
            local,
            domain,
            base_dn,
            password_hash=passwords.hash_password(password, scheme),
            # slapadd sets no pwdChangedTime: the label holds until a later write.
            password_stamp=password_stamp(passwords.scheme_label(scheme), None),
            uid_number=storage_uid,
            gid_number=storage_gid,
            mailbox=mbox_template.format(local=local, domain=domain),
            quota=quota,
        )
        limit = rate_limits.get(f"{local}@{domain}")
        if limit is not None:
            entry.attributes["mailRateLimit"] = [limit]
        if with_rules:
            seeded = RULES.get(f"{local}@{domain}", {})
            entry.attributes.update({name: [value] for name, value in seeded.items()})
        objects.append(entry)
        accounts.append(Account(entry.dn, password, role, f"{local}@{domain}"))

    for domain in ("example.com", "example.org"):
        objects.append(entries.domain_entry(domain, base_dn))
        user("postmaster", domain, "domain-admin")
        local_names = ("alice", "bob") if domain == "example.com" else ("carol", "dave")
        for local in local_names:
            user(local, domain, "user")
        objects.append(
            entries.admin_group_entry(domain, base_dn, [f"uid=postmaster,dc={domain},{base_dn}"])
        )

    aliases = {"team@example.com": ["alice@example.com", "bob@example.com"]}
    catchall = {"example.org": ["carol@example.org"]}
    objects.append(entries.alias_entry("team", "example.com", base_dn, aliases["team@example.com"]))
    objects.append(entries.alias_entry("default", "example.org", base_dn, catchall["example.org"]))

    admin_password = new_password()
    service_password = new_password()
    admin_dn = GLOBAL_ADMIN_DN_TEMPLATE.format(base=base_dn)
    service_dn = SERVICE_DN_TEMPLATE.format(base=base_dn)
    accounts.insert(0, Account(admin_dn, admin_password, "global-admin"))
    accounts.append(Account(service_dn, service_password, "service"))
    seed_passwords = {
        admin_dn: passwords.hash_password(admin_password, scheme),
        # The hooks bind as the service account on every request: a slow hash
        # there costs slapd ~150 ms per lookup, and a long random machine secret
        # gains nothing from it.  People's passwords get ``scheme``.
        service_dn: passwords.hash_password(service_password, "ssha"),
    }
    return DemoDirectory(
        base_dn=base_dn,
        seed_passwords=seed_passwords,
        ldif=entries.to_ldif(objects),
        accounts=accounts,
        aliases=aliases,
        catchall=catchall,
        rate_limits=rate_limits,
    )
