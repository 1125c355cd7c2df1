"""mailrouter-admin -- administer the mail hub as a delegated admin.

SYNOPSIS
    mailrouter-admin [--config PATH] [--bind-dn WHO] [--password-file FILE]
                     [--use-service-account] [--json] COMMAND SUBCOMMAND [ARGS]

    From a checkout: ``bin/mailrouter-admin ...`` (same arguments).

WHO YOU ARE
    Every change is made by binding to LDAP *as the acting admin*; slapd's ACLs
    (ldap/acl.conf), not this program, decide what that person may do, and a
    refusal is reported as one line such as
    ``not allowed to add users in dc=example.org (bound as uid=...)``.

    --bind-dn WHO       a DN (``uid=admin,o=top``), a mail address
                        (``postmaster@example.org`` = ``uid=postmaster,dc=example.org,BASE``)
                        or a bare name (``admin`` = ``uid=admin,BASE``, a global admin).
                        Default: $MAILROUTER_BIND_DN.
    --password-file F   the bind password is the first line of F (``-`` = stdin).
                        Without it the password is prompted for (getpass).
                        There is no way to give a password in argv: argv is
                        readable by every local user.
    --use-service-account
                        bind with the config's read-only service account
                        (``[ldap] bind_dn`` + ``bind_password_file``); only
                        useful for list/show.  Used only when asked for.

    ``test address`` and ``test auth`` run the hooks' own code, which binds as
    the service account like Exim and the POP3 server do; they need no admin bind.

COMMANDS
    domain add DOMAIN [--description TEXT] | remove DOMAIN [--recursive] | list | show DOMAIN
    user   add ADDRESS [--new-password-file F | --no-password] [--quota Q] [--name TEXT]
                       [--disabled] [--admin]
           remove ADDRESS | list DOMAIN | show ADDRESS | passwd ADDRESS [--new-password-file F]
           quota ADDRESS QUOTA | enable ADDRESS | disable ADDRESS
    alias  add ADDRESS TARGET... | remove ADDRESS | list DOMAIN | show ADDRESS
           add-target ADDRESS TARGET... | remove-target ADDRESS TARGET...
    catchall set DOMAIN TARGET... | clear DOMAIN | show DOMAIN
           (the catch-all is the alias named "default" of the domain)
    setting get NAME | set NAME VALUE... | add NAME VALUE... | remove NAME VALUE... | list
           NAME is one of host_accept_relay, blacklisted_hosts, blacklisted_domains,
           blacklisted_senders, backup_mx_domains
    admin  grant ADDRESS [--domain DOMAIN]      domain admin (member of cn=admin,dc=DOMAIN,BASE;
                                                the group is created on the first grant)
           revoke ADDRESS [--domain DOMAIN]     (the group is deleted with its last member)
           grant --global NAME [--create [--new-password-file F]]
                                                global admin (member of cn=admin,BASE);
                                                --create adds the account uid=NAME,BASE first
           revoke --global NAME | list [DOMAIN]
    test   address ADDRESS [--exim --exim-config PATH [--mailrouter-bin DIR]]
                                   what Exim would do: router, targets, mailbox, quota state,
                                   from the lookup hook's own answers (mailrouter.lookup)
                                   in the routers' order; --exim also runs ``exim -bt``
                                   with the --exim-config file in a private spool (root)
           auth ADDRESS [--secret-file F]   the login check POP3/IMAP/SMTP AUTH use
           smtp HOST[:PORT] [--from A] [--to A]... [--starttls] [--auth-user U --secret-file F] [--send]
           pop3 HOST[:PORT] USER [--secret-file F] [--tls]
    import qmail DIR --domain DOMAIN [--assign FILE] [--apply] [--skip-invalid] [--progress]
                     DIR/users/assign (=local:... lines become users), DIR/alias/.qmail-* and
                     DIR/.qmail-* (forwarding lines become aliases, .qmail-default the catch-all)
           aliases FILE --domain DOMAIN [--apply] [--skip-invalid] [--progress]
                     /etc/aliases syntax ("name: target, target", continuation lines)
           A dry run (the default) prints the plan and writes nothing; --apply writes it.
           Importing twice changes nothing the second time.  Program (|cmd), file (/path)
           and :include: deliveries are never imported: an input holding one is refused as
           a whole unless --skip-invalid (then those items are listed and left out).
    export ldif DOMAIN [--output FILE]    the domain's entries (password hashes are not
                                          readable by anyone, so not exported)

INPUT RULES (checked before anything is written)
    Domains are IDNA: a U-label (bücher.example) is converted to its A-label
    (xn--bcher-kva.example).  Local parts are lower-cased and must be RFC 5321
    sized (<= 64 octets) and use only [a-z0-9._+=-] without a leading, trailing
    or double dot.  Alias targets must be addresses; ``|command``, ``/file``,
    ``:include:`` and ``:fail:``-style items are refused.  Quotas: ``32M``, ``1G``,
    ``500K``, a byte count, or 0 (unlimited).  A multi-step operation (``user add
    --admin``, ``user remove`` of an admin, ``admin grant --global --create``,
    an import) that fails part-way undoes the steps already made.

PASSWORDS
    New passwords come from --new-password-file F (first line; ``-`` = stdin,
    read after the bind password when both use stdin) or a prompt asked twice;
    without a terminal there is no prompt, the command fails instead.
    ``user add`` stores a hash made with the config's ``auth.password_scheme``;
    ``user passwd`` uses the Password Modify operation (RFC 3062), so slapd
    hashes with its ``password-hash`` ({ARGON2}) and its ACLs decide: a user may
    change their own password, a domain admin those of their domain.

OUTPUT
    Human-readable tables on stdout by default; ``--json`` prints one JSON
    document instead.  Errors are one line on stderr (also with --json), never
    a traceback; an import that finds invalid items lists each on its own line
    first.  ``import --progress`` (or a terminal on stderr and at least 20
    changes) draws a progress bar on stderr.

FILES / ENVIRONMENT
    --config PATH (default /etc/mailrouter/mailrouter.toml), $MAILROUTER_BIND_DN.

EXIT STATUS
    0   done (test auth/smtp/pop3: the login or every recipient was accepted)
    1   refused by slapd, or invalid input (nothing written), or a bad config;
        test auth/smtp/pop3: a login or recipient was refused
    2   usage error
    75  LDAP unavailable (no server answered), or the SMTP/POP3 server under
        test did not answer; try again later
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mailrouter import config as config_module
from mailrouter import directory as dirmod
from mailrouter import entries, names, passwords, quota
from mailrouter.config import Config
from mailrouter.directory import LdapRefused, Session
from mailrouter.errors import (
    AdminError,
    ConfigError,
    DirectoryUnavailable,
    InvalidName,
    TemporaryFailure,
    UsageError,
)
from mailrouter.exitcodes import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_USAGE
from mailrouter.mailbox import spool

SETTINGS = (
    "host_accept_relay",
    "blacklisted_hosts",
    "blacklisted_domains",
    "blacklisted_senders",
    "backup_mx_domains",
)
CATCHALL = dirmod.CATCHALL_NAME

# An import of at least this many items shows a progress bar on a terminal.
PROGRESS_THRESHOLD = 20

# The local part of an alias target: the same conservative atext subset as our
# own names, but case kept (a remote server may care).  Nothing that Exim's
# redirect router would read as a file, pipe, include, comment or list syntax.
_TARGET_LOCAL = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")


# -- errors -------------------------------------------------------------------
# -- input normalisation ---------------------------------------------------------
def normalise_domain(text: str) -> str:
    """The canonical A-label form of a domain typed by an admin (U-labels accepted)."""
    value = text.strip().rstrip(".").lower()
    if not value:
        raise AdminError("invalid domain '': empty")
    try:
        if not value.isascii():
            # Python's codec implements IDNA 2003 (nameprep + punycode).
            value = value.encode("idna").decode("ascii").lower()
        else:
            # An A-label must decode, or it is not IDNA at all.
            for label in value.split("."):
                if label.startswith("xn--"):
                    label.encode("ascii").decode("idna")
    except (UnicodeError, ValueError) as exc:
        raise AdminError(f"invalid domain {text!r}: not a valid IDNA name ({exc})") from None
    try:
        return names.domain(value)
    except InvalidName as exc:
        raise AdminError(f"invalid domain {text!r}: {exc}") from None


def normalise_local(text: str) -> str:
    value = text.strip().lower()
    try:
        return names.local_part(value)
    except InvalidName as exc:
        raise AdminError(f"invalid local part {text!r}: {exc}") from None


def normalise_address(text: str) -> tuple[str, str]:
    """``(local, domain)`` of one of *our* addresses (a user or alias to create)."""
    local, at, dom = text.strip().rpartition("@")
    if not at or not local:
        raise AdminError(f"invalid address {text!r}: expected local@domain")
    return normalise_local(local), normalise_domain(dom)


def normalise_target(text: str, default_domain: str | None = None) -> str:
    """An alias target: a plain address, never a command, file or include."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    bare = value.lstrip('"').lstrip()
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        value = value[1:-1].strip()
    if bare.startswith("|"):
        raise AdminError(f"alias target {text!r} is a command: only addresses are allowed")
    if bare.startswith(("/", "./", "~")):
        raise AdminError(f"alias target {text!r} is a file: only addresses are allowed")
    if bare.lower().startswith(":include:"):
        raise AdminError(f"alias target {text!r} is an :include: list: only addresses are allowed")
    if bare.startswith(":"):
        raise AdminError(f"alias target {text!r} is a special item: only addresses are allowed")
    local, at, dom = value.rpartition("@")
    if not at:
        if default_domain is None:
            raise AdminError(f"alias target {text!r} is not an address (local@domain)")
        local, dom = value, default_domain
    if (
        not local
        or len(local.encode("utf-8", "surrogatepass")) > names.MAX_LOCAL_PART
        or not _TARGET_LOCAL.fullmatch(local)
    ):
        raise AdminError(
            f"alias target {text!r}: local part must be 1..64 characters of "
            "[A-Za-z0-9._+=-] without a leading, trailing or double dot"
        )
    try:
        domain = normalise_domain(dom)
    except AdminError as exc:
        raise AdminError(f"alias target {text!r}: {exc}") from None
    result = f"{local}@{domain}"
    if len(result) > names.MAX_ADDRESS:
        raise AdminError(f"alias target {text!r} is longer than {names.MAX_ADDRESS} characters")
    return result


def normalise_targets(values: Iterable[str], default_domain: str | None = None) -> list[str]:
    result: list[str] = []
    for value in values:
        target = normalise_target(value, default_domain)
        if target not in result:
            result.append(target)
    return result


def normalise_quota(text: str) -> str:
    value = text.strip().upper()
    if not value:
        raise AdminError("invalid quota '': empty")
    if value in ("UNLIMITED", "NONE"):
        return "0"
    try:
        quota.parse_quota(value)
    except quota.GarbledQuota:
        raise AdminError(
            f"invalid quota {text!r}: use a byte count or a number with K, M or G (32M, 1G); 0 = unlimited"
        ) from None
    return value[:-1] if value.endswith("B") and len(value) > 1 and value[-2] in "KMG" else value


def normalise_setting_value(name: str, text: str) -> str:
    value = text.strip()
    if name in ("host_accept_relay", "blacklisted_hosts"):
        try:
            if "/" in value:
                return str(ipaddress.ip_network(value, strict=True))
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise AdminError(
                f"invalid {name} value {text!r}: expected an IP address or network/bits"
            ) from None
    if name in ("blacklisted_domains", "backup_mx_domains"):
        return normalise_domain(value)
    return normalise_target(value)


def setting_name(text: str) -> str:
    if text not in SETTINGS:
        raise AdminError(f"unknown setting {text!r}; known: {', '.join(SETTINGS)}")
    return text


# -- small helpers ---------------------------------------------------------------
def _values(attributes: dict[str, Any], name: str) -> list[str]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            items = value if isinstance(value, (list, tuple)) else [value]
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]
    return []


def _first(attributes: dict[str, Any], name: str) -> str | None:
    values = _values(attributes, name)
    return values[0] if values else None


def _rdn_value(dn: str) -> str:
    return dn.split(",", 1)[0].split("=", 1)[1]


def read_secret_file(path: str, what: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            text = Path(path).read_text(encoding="utf-8").split("\n", 1)[0]
    except OSError as exc:
        raise AdminError(f"cannot read {what} file {path}: {exc.strerror}") from None
    text = text.rstrip("\r\n")
    if not text:
        raise AdminError(f"{what} file {path} is empty")
    return text


def prompt_secret(prompt: str, confirm: bool) -> str:
    # getpass falls back to echoing stdin without a terminal: never do that.
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise AdminError("no terminal to ask for a password: use a --*password-file option") from None
    secret = getpass.getpass(prompt)
    if not secret:
        raise AdminError("empty password refused")
    if confirm and getpass.getpass("again: ") != secret:
        raise AdminError("the two passwords differ")
    return secret


class Progress:
    """``[#####.....] 50/100 label`` redrawn in place on stderr."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool, stream: IO[str]) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream
        self.count = 0

    def step(self, label: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        filled = self.WIDTH * self.count // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.count}/{self.total} {label[:40]:<40}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -- the acting admin's session, with undo -------------------------------------------
@dataclass
class Step:
    """One write already made, with what undoes it."""

    description: str
    undo: Callable[[], None]


@dataclass
class Context:
    config: Config
    args: argparse.Namespace
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    _session: Session | None = None
    bound_dn: str = ""
    steps: list[Step] = field(default_factory=list)

    # -- identity ----------------------------------------------------------------
    @property
    def base_dn(self) -> str:
        return self.config.ldap.base_dn

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def resolve_dn(self, who: str) -> str:
        """A DN, an address (a domain user) or a bare name (``uid=NAME,BASE``)."""
        who = who.strip()
        if "=" in who:
            return who
        if "@" in who:
            local, domain = normalise_address(who)
            return self.user_dn(local, domain)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", who):
            raise AdminError(f"invalid account name {who!r}")
        return entries.person_entry(who, self.base_dn, None).dn

    def session(self) -> Session:
        if self._session is None:
            if getattr(self.args, "use_service_account", False):
                dn = self.config.ldap.bind_dn
                password = self.config.ldap.service_password()  # read only now: asked for
                if not dn or not password:
                    raise AdminError("the config has no service account (ldap.bind_dn)")
            else:
                who = getattr(self.args, "bind_dn", None) or os.environ.get("MAILROUTER_BIND_DN")
                if not who:
                    raise UsageError("say who you are: --bind-dn DN|ADDRESS|NAME (or $MAILROUTER_BIND_DN)")
                dn = self.resolve_dn(who)
                password_file = getattr(self.args, "password_file", None)
                if password_file:
                    password = read_secret_file(password_file, "password")
                else:
                    password = prompt_secret(f"LDAP password for {dn}: ", confirm=False)
            self.bound_dn = dn
            session = Session(self.config.ldap, dn, password)
            try:
                session.bind()
            except LdapRefused:
                session.close()
                raise AdminError(f"bind as {dn} refused: invalid credentials") from None
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- refusals ------------------------------------------------------------------
    def refusal(self, exc: LdapRefused, action: str, subject: str, missing: str | None) -> AdminError:
        code = exc.code
        if code == 50:
            message = f"not allowed to {action} (bound as {self.bound_dn})"
        elif code == 68:
            message = f"{subject} already exists"
        elif code == 32:
            message = f"cannot {action}: {missing or 'no such entry ' + exc.dn}"
        elif code == 66:
            message = f"cannot {action}: {subject} still has entries below it"
        elif code == 49:
            message = f"bind as {self.bound_dn} refused: invalid credentials"
        else:
            reason = dirmod.REFUSAL_CODES.get(code, f"result {code}")
            message = f"cannot {action}: {reason} ({exc.dn})"
        return AdminError(message)

    def _do(self, run: Callable[[], None], action: str, subject: str, missing: str | None) -> None:
        try:
            run()
        except LdapRefused as exc:
            raise self.refusal(exc, action, subject, missing) from None

    # -- writes, each remembering its undo ----------------------------------------------
    def add(self, entry: entries.Entry, action: str, subject: str, missing: str | None = None) -> None:
        session = self.session()
        self._do(lambda: session.add(entry.dn, entry.attributes), action, subject, missing)
        self.steps.append(Step(f"add {entry.dn}", lambda: session.delete(entry.dn)))

    def modify(
        self,
        dn: str,
        changes: dict[str, tuple[str, list[str]]],
        undo: dict[str, tuple[str, list[str]]] | None,
        action: str,
        subject: str,
        missing: str | None = None,
    ) -> None:
        session = self.session()
        self._do(lambda: session.modify(dn, changes), action, subject, missing)
        if undo is not None:
            self.steps.append(Step(f"modify {dn}", lambda: session.modify(dn, undo)))

    def delete(
        self, dn: str, restore: dict[str, list[str]] | None, action: str, subject: str,
        missing: str | None = None,
    ) -> None:
        session = self.session()
        self._do(lambda: session.delete(dn), action, subject, missing)
        if restore is not None:
            self.steps.append(Step(f"delete {dn}", lambda: session.add(dn, restore)))

    def commit(self) -> None:
        """The operation is complete: nothing to undo any more."""
        self.steps.clear()

    def rollback(self) -> list[str]:
        """Undo the steps of a failed operation, newest first; returns the ones that failed."""
        failed = []
        while self.steps:
            step = self.steps.pop()
            try:
                step.undo()
            except (LdapRefused, DirectoryUnavailable) as exc:
                failed.append(f"{step.description}: {exc}")
        return failed

    # -- reads -------------------------------------------------------------------------
    def read(self, dn: str, object_class: str, attributes: Sequence[str]) -> dict[str, Any] | None:
        return self.session().directory.read(dn, object_class, attributes)

    def search(
        self, base: str, search_filter: str, attributes: Sequence[str], subtree: bool = False
    ) -> list[tuple[str, dict[str, Any]]]:
        try:
            return self.session().search(base, search_filter, attributes, subtree)
        except LdapRefused as exc:
            raise self.refusal(exc, f"search {base}", base, None) from None

    # -- DNs (built and escaped by the directory layer; no connection is made) ------
    @property
    def dns(self) -> dirmod.Directory:
        return dirmod.Directory(self.config.ldap)

    def domain_dn(self, domain: str) -> str:
        return self.dns.domain_dn(domain)

    def user_dn(self, local: str, domain: str) -> str:
        return self.dns.user_dn(local, domain)

    def alias_dn(self, name: str, domain: str) -> str:
        return self.dns.alias_dn(name, domain)

    def group_dn(self, domain: str | None) -> str:
        return f"cn=admin,{self.domain_dn(domain) if domain else self.base_dn}"

    def setting_dn(self, name: str) -> str:
        return self.dns.setting_dn(name)

    def require_domain(self, domain: str) -> None:
        if self.read(self.domain_dn(domain), "mailDomain", ["dc"]) is None:
            raise AdminError(f"no such domain {domain}")

    # -- output ----------------------------------------------------------------------------
    def emit(self, data: Any, human: str | Callable[[], str]) -> None:
        if self.json:
            self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        else:
            text = human() if callable(human) else human
            if text:
                self.out.write(text if text.endswith("\n") else text + "\n")

    def done(self, message: str, **data: Any) -> int:
        self.emit({"ok": True, "message": message, **data}, message)
        return EX_OK


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def pairs(data: dict[str, Any]) -> str:
    width = max(len(k) for k in data)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in data.items())


# -- domains --------------------------------------------------------------------------
def cmd_domain_add(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    entry = entries.domain_entry(domain, ctx.base_dn, ctx.args.description)
    ctx.add(entry, f"add domains under {ctx.base_dn}", f"domain {domain}")
    return ctx.done(f"added domain {domain}", domain=domain, dn=entry.dn)


def cmd_domain_remove(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    dn = ctx.domain_dn(domain)
    session = ctx.session()
    action = f"remove domain {domain}"
    try:
        # slapd checks the ACL before it checks for children: a refusal here
        # (50) means nothing may be removed; "non-leaf" (66) means we may.
        session.delete(dn)
        return ctx.done(f"removed domain {domain}", domain=domain, removed=[dn])
    except LdapRefused as exc:
        if exc.code != 66:
            raise ctx.refusal(exc, action, f"domain {domain}", f"no such domain {domain}") from None
    if not ctx.args.recursive:
        raise AdminError(
            f"domain {domain} still has users, aliases or admins; remove them or use --recursive"
        )
    below = ctx.search(dn, "(objectClass=*)", ["1.1"], subtree=True)
    victims = sorted((d for d, _ in below if d.lower() != dn.lower()), key=lambda d: -d.count(","))
    for victim in [*victims, dn]:
        ctx.delete(victim, None, action, f"domain {domain}")
    return ctx.done(
        f"removed domain {domain} and {len(victims)} entries below it", domain=domain, removed=[*victims, dn]
    )


def cmd_domain_list(ctx: Context) -> int:
    found = ctx.search(ctx.base_dn, "(objectClass=mailDomain)", ["dc", "description", "mailAccountStatus"])
    rows = sorted(
        (
            {
                "domain": _first(a, "dc"),
                "status": _first(a, "mailAccountStatus") or "active",
                "description": _first(a, "description"),
            }
            for _, a in found
        ),
        key=lambda r: r["domain"] or "",
    )
    ctx.emit(rows, lambda: table(rows, ["domain", "status", "description"]))
    return EX_OK


def _domain_info(ctx: Context, domain: str) -> dict[str, Any]:
    dn = ctx.domain_dn(domain)
    attributes = ctx.read(dn, "mailDomain", ["dc", "description", "mailAccountStatus"])
    if attributes is None:
        raise AdminError(f"no such domain {domain}")
    users = ctx.search(dn, "(objectClass=mailUser)", ["uid"])
    aliases = ctx.search(dn, "(objectClass=mailAlias)", ["mailAlias", "mailAliasedName"])
    group = ctx.read(ctx.group_dn(domain), "groupOfNames", ["member"])
    catchall = [a for _, a in aliases if _first(a, "mailAlias") == CATCHALL]
    return {
        "domain": domain,
        "dn": dn,
        "description": _first(attributes, "description"),
        "status": _first(attributes, "mailAccountStatus") or "active",
        "users": len(users),
        "aliases": len([a for _, a in aliases if _first(a, "mailAlias") != CATCHALL]),
        "catchall": _values(catchall[0], "mailAliasedName") if catchall else [],
        "admins": sorted(_values(group, "member")) if group else [],
    }


def cmd_domain_show(ctx: Context) -> int:
    info = _domain_info(ctx, normalise_domain(ctx.args.domain))
    ctx.emit(info, lambda: pairs(info))
    return EX_OK


# -- users ------------------------------------------------------------------------------
USER_READ = ("uid", "dc", "mail", "cn", "mailQuota", "mailAccountStatus", "mailMessageStore",
             "uidNumber", "gidNumber")


def _new_password(ctx: Context, *, allow_none: bool) -> str | None:
    path = getattr(ctx.args, "new_password_file", None)
    if path:
        return read_secret_file(path, "new password")
    if allow_none and getattr(ctx.args, "no_password", False):
        return None
    return prompt_secret("new password: ", confirm=True)


def _grant_domain(ctx: Context, member_dn: str, domain: str) -> bool:
    """Make ``member_dn`` an admin of ``domain``; False when it already was."""
    group_dn = ctx.group_dn(domain)
    action = f"change the admins of {domain}"
    group = ctx.read(group_dn, "groupOfNames", ["member"])
    if group is None:
        entry = entries.admin_group_entry(domain, ctx.base_dn, [member_dn])
        ctx.add(entry, action, f"admin group of {domain}", f"no such domain {domain}")
        return True
    if member_dn.lower() in (m.lower() for m in _values(group, "member")):
        return False
    ctx.modify(
        group_dn, {"member": (dirmod.MODIFY_ADD, [member_dn])},
        {"member": (dirmod.MODIFY_DELETE, [member_dn])}, action, f"admin group of {domain}",
    )
    return True


def _revoke(ctx: Context, member_dn: str, group_dn: str, label: str) -> bool:
    """Remove ``member_dn`` from ``group_dn``; the group goes with its last member."""
    action = f"change the admins of {label}"
    group = ctx.read(group_dn, "groupOfNames", ["member", "description"])
    members = _values(group, "member") if group else []
    matching = [m for m in members if m.lower() == member_dn.lower()]
    if not matching:
        return False
    if len(members) == 1:
        # groupOfNames needs a member: the last one leaves with the group.
        assert group is not None
        restore = {"objectClass": ["groupOfNames"], "cn": ["admin"], "member": members}
        if _values(group, "description"):
            restore["description"] = _values(group, "description")
        ctx.delete(group_dn, restore, action, f"admin group of {label}")
    else:
        ctx.modify(
            group_dn, {"member": (dirmod.MODIFY_DELETE, matching)},
            {"member": (dirmod.MODIFY_ADD, matching)}, action, f"admin group of {label}",
        )
    return True


def cmd_user_add(ctx: Context) -> int:
    local, domain = normalise_address(ctx.args.address)
    quota_value = normalise_quota(ctx.args.quota) if ctx.args.quota is not None else None
    ctx.session()  # bind (and ask for the admin's password) before asking for the new one
    password = _new_password(ctx, allow_none=True)
    try:
        mailbox = spool.mailbox_path(ctx.config.spool.template(), local, domain)
    except InvalidName as exc:
        raise AdminError(f"invalid address {local}@{domain}: {exc}") from None
    password_hash = passwords.hash_password(password, ctx.config.auth.password_scheme) if password else None
    entry = entries.user_entry(
        local, domain, ctx.base_dn,
        password_hash=password_hash,
        uid_number=ctx.config.spool.storage_uid,
        gid_number=ctx.config.spool.storage_gid,
        mailbox=mailbox,
        quota=quota_value,
        active=not ctx.args.disabled,
        full_name=ctx.args.name,
    )
    ctx.add(entry, f"add users in {ctx.domain_dn(domain)}", f"user {local}@{domain}",
            f"no such domain {domain}")
    if ctx.args.admin:
        _grant_domain(ctx, entry.dn, domain)
    ctx.commit()
    extra = " (domain admin)" if ctx.args.admin else ""
    return ctx.done(f"added user {local}@{domain}{extra}", address=f"{local}@{domain}", dn=entry.dn,
                    admin=bool(ctx.args.admin))


def cmd_user_remove(ctx: Context) -> int:
    local, domain = normalise_address(ctx.args.address)
    dn = ctx.user_dn(local, domain)
    if ctx.read(dn, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{domain}")
    # Admin membership goes first (undoable); the delete, which cannot be undone
    # with its password hash, is the last step.
    revoked = _revoke(ctx, dn, ctx.group_dn(domain), domain)
    ctx.delete(dn, None, f"remove users in {ctx.domain_dn(domain)}", f"user {local}@{domain}")
    ctx.commit()
    return ctx.done(f"removed user {local}@{domain}", address=f"{local}@{domain}", was_admin=revoked)


def _user_row(attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": _first(attributes, "mail"),
        "name": _first(attributes, "cn"),
        "quota": _first(attributes, "mailQuota") or "0",
        "status": _first(attributes, "mailAccountStatus") or "active",
    }


def cmd_user_list(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    ctx.require_domain(domain)
    found = ctx.search(ctx.domain_dn(domain), "(objectClass=mailUser)", USER_READ)
    rows = sorted((_user_row(a) for _, a in found), key=lambda r: r["address"] or "")
    ctx.emit(rows, lambda: table(rows, ["address", "status", "quota", "name"]))
    return EX_OK


def cmd_user_show(ctx: Context) -> int:
    local, domain = normalise_address(ctx.args.address)
    dn = ctx.user_dn(local, domain)
    attributes = ctx.read(dn, "mailUser", USER_READ)
    if attributes is None:
        raise AdminError(f"no such user {local}@{domain}")
    group = ctx.read(ctx.group_dn(domain), "groupOfNames", ["member"])
    info = {
        **_user_row(attributes),
        "dn": dn,
        "mailbox": _first(attributes, "mailMessageStore"),
        "uid": _first(attributes, "uidNumber"),
        "gid": _first(attributes, "gidNumber"),
        "domain_admin": bool(group) and dn.lower() in (m.lower() for m in _values(group or {}, "member")),
    }
    ctx.emit(info, lambda: pairs(info))
    return EX_OK


def _user_modify(ctx: Context, attribute: str, value: str, verb: str) -> tuple[str, str]:
    local, domain = normalise_address(ctx.args.address)
    dn = ctx.user_dn(local, domain)
    if ctx.read(dn, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{domain}")
    ctx.modify(dn, {attribute: (dirmod.MODIFY_REPLACE, [value])}, None,
               f"{verb} of {local}@{domain}", f"user {local}@{domain}")
    return local, domain


def cmd_user_passwd(ctx: Context) -> int:
    local, domain = normalise_address(ctx.args.address)
    dn = ctx.user_dn(local, domain)
    session = ctx.session()
    password = _new_password(ctx, allow_none=False)
    assert password is not None
    # RFC 3062: slapd hashes with its password-hash ({ARGON2}); self-service works
    # through the "by self =wx" ACL, an admin's through the admin clauses.
    ctx._do(lambda: session.password_modify(dn, password), f"change the password of {local}@{domain}",
            f"user {local}@{domain}", f"no such user {local}@{domain}")
    return ctx.done(f"changed the password of {local}@{domain}", address=f"{local}@{domain}")


def cmd_user_quota(ctx: Context) -> int:
    value = normalise_quota(ctx.args.quota)
    local, domain = _user_modify(ctx, "mailQuota", value, "change the quota")
    return ctx.done(f"quota of {local}@{domain} is now {value}", address=f"{local}@{domain}", quota=value)


def cmd_user_enable(ctx: Context) -> int:
    status = "active" if ctx.args.command2 == "enable" else "disabled"
    local, domain = _user_modify(ctx, "mailAccountStatus", status, f"{ctx.args.command2} the account")
    return ctx.done(f"{local}@{domain} is now {status}", address=f"{local}@{domain}", status=status)


# -- aliases -----------------------------------------------------------------------------
def _read_alias(ctx: Context, name: str, domain: str) -> list[str] | None:
    attributes = ctx.read(ctx.alias_dn(name, domain), "mailAlias", ["mailAlias", "mailAliasedName"])
    if attributes is None:
        return None
    return _values(attributes, "mailAliasedName")


def _alias_add(ctx: Context, name: str, domain: str, targets: list[str], what: str) -> entries.Entry:
    if not targets:
        raise AdminError(f"{what} needs at least one target")
    entry = entries.alias_entry(name, domain, ctx.base_dn, targets)
    ctx.add(entry, f"add aliases in {ctx.domain_dn(domain)}", what, f"no such domain {domain}")
    return entry


def cmd_alias_add(ctx: Context) -> int:
    name, domain = normalise_address(ctx.args.address)
    targets = normalise_targets(ctx.args.targets)
    entry = _alias_add(ctx, name, domain, targets, f"alias {name}@{domain}")
    # The aliases router runs before the users router: say so when this hides a mailbox.
    shadows = ctx.read(ctx.user_dn(name, domain), "mailUser", ["uid"]) is not None
    note = f" (note: it takes precedence over the user {name}@{domain})" if shadows else ""
    return ctx.done(f"added alias {name}@{domain} -> {', '.join(targets)}{note}",
                    address=f"{name}@{domain}", dn=entry.dn, targets=targets, shadows_user=shadows)


def cmd_alias_remove(ctx: Context) -> int:
    name, domain = normalise_address(ctx.args.address)
    ctx.delete(ctx.alias_dn(name, domain), None, f"remove aliases in {ctx.domain_dn(domain)}",
               f"alias {name}@{domain}", f"no such alias {name}@{domain}")
    return ctx.done(f"removed alias {name}@{domain}", address=f"{name}@{domain}")


def cmd_alias_list(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    ctx.require_domain(domain)
    found = ctx.search(ctx.domain_dn(domain), "(objectClass=mailAlias)",
                       ["mailAlias", "mailAliasedName", "mailAccountStatus"])
    rows = sorted(
        (
            {
                "alias": f"{_first(a, 'mailAlias')}@{domain}",
                "catchall": _first(a, "mailAlias") == CATCHALL,
                "status": _first(a, "mailAccountStatus") or "active",
                "targets": _values(a, "mailAliasedName"),
            }
            for _, a in found
        ),
        key=lambda r: str(r["alias"]),
    )
    ctx.emit(rows, lambda: table(rows, ["alias", "status", "catchall", "targets"]))
    return EX_OK


def cmd_alias_show(ctx: Context) -> int:
    name, domain = normalise_address(ctx.args.address)
    targets = _read_alias(ctx, name, domain)
    if targets is None:
        raise AdminError(f"no such alias {name}@{domain}")
    info = {"alias": f"{name}@{domain}", "dn": ctx.alias_dn(name, domain), "catchall": name == CATCHALL,
            "targets": targets}
    ctx.emit(info, lambda: pairs(info))
    return EX_OK


def cmd_alias_targets(ctx: Context) -> int:
    name, domain = normalise_address(ctx.args.address)
    targets = normalise_targets(ctx.args.targets)
    current = _read_alias(ctx, name, domain)
    if current is None:
        raise AdminError(f"no such alias {name}@{domain}")
    adding = ctx.args.command2 == "add-target"
    lowered = {t.lower(): t for t in current}
    if adding:
        change = [t for t in targets if t.lower() not in lowered]
    else:
        missing = [t for t in targets if t.lower() not in lowered]
        if missing:
            raise AdminError(f"alias {name}@{domain} has no target {', '.join(missing)}")
        change = [lowered[t.lower()] for t in targets]
        if len(change) == len(current):
            raise AdminError(f"alias {name}@{domain} would have no target left; use 'alias remove'")
    if change:
        kind = dirmod.MODIFY_ADD if adding else dirmod.MODIFY_DELETE
        ctx.modify(ctx.alias_dn(name, domain), {"mailAliasedName": (kind, change)}, None,
                   f"change aliases in {ctx.domain_dn(domain)}", f"alias {name}@{domain}")
    verb = "added" if adding else "removed"
    return ctx.done(f"{verb} {len(change)} target(s) of {name}@{domain}", address=f"{name}@{domain}",
                    changed=change)


# -- catch-all ---------------------------------------------------------------------------------
def cmd_catchall_set(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    targets = normalise_targets(ctx.args.targets)
    if not targets:
        raise AdminError("a catch-all needs at least one target")
    current = _read_alias(ctx, CATCHALL, domain)
    if current is None:
        _alias_add(ctx, CATCHALL, domain, targets, f"the catch-all of {domain}")
    else:
        ctx.modify(ctx.alias_dn(CATCHALL, domain), {"mailAliasedName": (dirmod.MODIFY_REPLACE, targets)},
                   None, f"change aliases in {ctx.domain_dn(domain)}", f"the catch-all of {domain}")
    return ctx.done(f"catch-all of {domain} -> {', '.join(targets)}", domain=domain, targets=targets)


def cmd_catchall_clear(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    if _read_alias(ctx, CATCHALL, domain) is None:
        return ctx.done(f"{domain} has no catch-all", domain=domain, changed=False)
    ctx.delete(ctx.alias_dn(CATCHALL, domain), None, f"remove aliases in {ctx.domain_dn(domain)}",
               f"the catch-all of {domain}")
    return ctx.done(f"removed the catch-all of {domain}", domain=domain, changed=True)


def cmd_catchall_show(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    targets = _read_alias(ctx, CATCHALL, domain)
    info = {"domain": domain, "targets": targets or []}
    ctx.emit(info, lambda: pairs(info))
    return EX_OK


# -- settings ------------------------------------------------------------------------------------
def _read_setting(ctx: Context, name: str) -> list[str] | None:
    attributes = ctx.read(ctx.setting_dn(name), "mailSetting", ["mailSetting", "mailSettingValue"])
    return None if attributes is None else _values(attributes, "mailSettingValue")


def cmd_setting_get(ctx: Context) -> int:
    name = setting_name(ctx.args.name)
    values = _read_setting(ctx, name) or []
    ctx.emit({"setting": name, "values": values}, lambda: "\n".join(values) or "(none)")
    return EX_OK


def cmd_setting_list(ctx: Context) -> int:
    rows = [{"setting": name, "values": _read_setting(ctx, name) or []} for name in SETTINGS]
    ctx.emit(rows, lambda: table(rows, ["setting", "values"]))
    return EX_OK


def cmd_setting_change(ctx: Context) -> int:
    name = setting_name(ctx.args.name)
    mode = ctx.args.command2
    values: list[str] = []
    for raw in ctx.args.values:
        value = normalise_setting_value(name, raw)
        if value not in values:
            values.append(value)
    current = _read_setting(ctx, name)
    action = f"change system settings ({name})"
    dn = ctx.setting_dn(name)
    if current is None:
        if mode == "remove":
            return ctx.done(f"{name} has no values", setting=name, values=[])
        entry = entries.Entry(dn, {"objectClass": ["mailSetting"], "mailSetting": [name],
                                   "mailSettingValue": values})
        ctx.add(entry, action, f"setting {name}")
        return ctx.done(f"{name} = {', '.join(values)}", setting=name, values=values)
    lowered = {v.lower(): v for v in current}
    if mode == "set":
        new = values
        change: dict[str, tuple[str, list[str]]] = {"mailSettingValue": (dirmod.MODIFY_REPLACE, values)}
    elif mode == "add":
        fresh = [v for v in values if v.lower() not in lowered]
        new = current + fresh
        change = {"mailSettingValue": (dirmod.MODIFY_ADD, fresh)} if fresh else {}
    else:
        gone = [lowered[v.lower()] for v in values if v.lower() in lowered]
        new = [v for v in current if v not in gone]
        change = {"mailSettingValue": (dirmod.MODIFY_DELETE, gone)} if gone else {}
    if change:
        ctx.modify(dn, change, None, action, f"setting {name}")
    return ctx.done(f"{name} = {', '.join(new) or '(none)'}", setting=name, values=new)


# -- admins ------------------------------------------------------------------------------------
def _global_member(ctx: Context) -> str:
    name = ctx.args.who
    if "@" in name:
        # acl.conf: a global admin inside dc=A could have its password reset by A's admins.
        raise AdminError("global admins are accounts directly under the base (a name, not an address)")
    return ctx.resolve_dn(name)


def cmd_admin_grant(ctx: Context) -> int:
    if ctx.args.global_:
        member = _global_member(ctx)
        if ctx.args.create:
            password = _new_password(ctx, allow_none=False)
            assert password is not None
            password_hash = passwords.hash_password(password, ctx.config.auth.password_scheme)
            entry = entries.person_entry(_rdn_value(member), ctx.base_dn, password_hash)
            ctx.add(entry, f"add accounts under {ctx.base_dn}", f"account {entry.dn}")
        elif ctx.read(member, "top", ["1.1"]) is None:
            raise AdminError(f"no such account {member}; add --create to create it")
        group_dn = ctx.group_dn(None)
        group = ctx.read(group_dn, "groupOfNames", ["member"])
        members = [m.lower() for m in _values(group or {}, "member")]
        changed = member.lower() not in members
        if changed:
            if group is None:
                ctx.add(entries.admin_group_entry(None, ctx.base_dn, [member]),
                        "change the global admins", "the global admin group")
            else:
                ctx.modify(group_dn, {"member": (dirmod.MODIFY_ADD, [member])},
                           {"member": (dirmod.MODIFY_DELETE, [member])},
                           "change the global admins", "the global admin group")
        ctx.commit()
        return ctx.done(f"{member} is a global admin", member=member, changed=changed)
    local, home = normalise_address(ctx.args.who)
    domain = normalise_domain(ctx.args.domain) if ctx.args.domain else home
    member = ctx.user_dn(local, home)
    if ctx.read(member, "mailUser", ["uid"]) is None:
        raise AdminError(f"no such user {local}@{home}")
    changed = _grant_domain(ctx, member, domain)
    ctx.commit()
    return ctx.done(f"{ctx.args.who} is an admin of {domain}", member=member, domain=domain, changed=changed)


def cmd_admin_revoke(ctx: Context) -> int:
    if ctx.args.global_:
        member = _global_member(ctx)
        group = ctx.read(ctx.group_dn(None), "groupOfNames", ["member"])
        members = _values(group or {}, "member")
        if len(members) == 1 and members[0].lower() == member.lower():
            raise AdminError("refusing to revoke the last global admin")
        changed = _revoke(ctx, member, ctx.group_dn(None), "every domain")
        ctx.commit()
        return ctx.done(f"{member} is not a global admin", member=member, changed=changed)
    local, home = normalise_address(ctx.args.who)
    domain = normalise_domain(ctx.args.domain) if ctx.args.domain else home
    member = ctx.user_dn(local, home)
    changed = _revoke(ctx, member, ctx.group_dn(domain), domain)
    ctx.commit()
    return ctx.done(f"{ctx.args.who} is not an admin of {domain}", member=member, domain=domain,
                    changed=changed)


def cmd_admin_list(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain) if ctx.args.domain else None
    group = ctx.read(ctx.group_dn(domain), "groupOfNames", ["member"])
    members = sorted(_values(group or {}, "member"))
    label = domain or "(global)"
    ctx.emit({"domain": domain, "admins": members}, lambda: "\n".join(members) or f"{label}: no admins")
    return EX_OK


# -- import ------------------------------------------------------------------------------------
@dataclass
class Plan:
    domain: str
    users: list[str] = field(default_factory=list)  # local parts to create
    aliases: dict[str, list[str]] = field(default_factory=dict)  # name -> targets
    invalid: list[str] = field(default_factory=list)  # "where: why"
    notes: list[str] = field(default_factory=list)


@dataclass
class Action:
    kind: str  # "add user" | "add alias" | "update alias"
    name: str
    targets: list[str] = field(default_factory=list)
    old: list[str] = field(default_factory=list)


def parse_assign(text: str, where: str, plan: Plan) -> None:
    """qmail users/assign: ``=local:user:uid:gid:home:dash:ext:`` lines, ended by ``.``."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line == ".":
            break
        if not line or line.startswith("#"):
            continue
        if line.startswith("+"):
            plan.notes.append(f"{where}:{number}: wildcard assignment {line.split(':', 1)[0]} not imported")
            continue
        if not line.startswith("="):
            plan.invalid.append(f"{where}:{number}: not an assign line")
            continue
        local = line[1:].split(":", 1)[0]
        try:
            name = normalise_local(local)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        if name not in plan.users:
            plan.users.append(name)


def parse_dot_qmail(name: str, text: str, where: str, plan: Plan) -> None:
    """One ``.qmail-NAME`` file: ``&addr``/``addr`` lines forward; anything else is refused."""
    # qmail-local looks up ".qmail-ext" with the address's dots turned into colons.
    raw_name = name.replace(":", ".")
    try:
        alias = normalise_local(raw_name)
    except AdminError as exc:
        plan.invalid.append(f"{where}: {exc}")
        return
    targets: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = line[1:] if line.startswith("&") else line
        try:
            target = normalise_target(item, plan.domain)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        if target not in targets:
            targets.append(target)
    if targets:
        _plan_alias(plan, alias, targets)


def _plan_alias(plan: Plan, alias: str, targets: list[str]) -> None:
    merged = plan.aliases.setdefault(alias, [])
    merged.extend(t for t in targets if t not in merged)


def parse_aliases(text: str, where: str, plan: Plan) -> None:
    """/etc/aliases: ``name: a, b``; lines starting with white space continue the previous one."""
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and logical:
            start, previous = logical[-1]
            logical[-1] = (start, previous + " " + line.strip())
        else:
            logical.append((number, line.strip()))
    for number, line in logical:
        name, colon, rest = line.partition(":")
        if not colon:
            plan.invalid.append(f"{where}:{number}: no ':' after the alias name")
            continue
        try:
            alias = normalise_local(name)
        except AdminError as exc:
            plan.invalid.append(f"{where}:{number}: {exc}")
            continue
        targets: list[str] = []
        bad = False
        for item in _split_alias_targets(rest):
            try:
                target = normalise_target(item, plan.domain)
            except AdminError as exc:
                plan.invalid.append(f"{where}:{number}: {exc}")
                bad = True
                continue
            if target not in targets:
                targets.append(target)
        if not targets and not bad:
            plan.invalid.append(f"{where}:{number}: alias {alias} has no target")
        if targets:
            _plan_alias(plan, alias, targets)


def _split_alias_targets(text: str) -> list[str]:
    """Comma-separated, honouring double quotes ("|cmd, with comma")."""
    items, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def plan_qmail(root: Path, domain: str, assign: Path | None) -> Plan:
    plan = Plan(domain)
    assign = assign or (root / "users" / "assign")
    if assign.is_file():
        parse_assign(_read_text(assign), str(assign), plan)
    directories = [d for d in (root / "alias", root) if d.is_dir()]
    if not directories and not assign.is_file():
        raise AdminError(f"{root}: no users/assign and no .qmail-* files")
    for directory in directories:
        for path in sorted(directory.glob(".qmail-*")):
            if path.is_symlink() or not path.is_file():
                plan.notes.append(f"{path}: not a regular file, skipped")
                continue
            parse_dot_qmail(path.name[len(".qmail-"):], _read_text(path), str(path), plan)
    return plan


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}") from None


def diff_plan(ctx: Context, plan: Plan) -> tuple[list[Action], int]:
    """What the directory lacks; also the number of items already in place."""
    ctx.require_domain(plan.domain)
    dn = ctx.domain_dn(plan.domain)
    users = {_first(a, "uid") for _, a in ctx.search(dn, "(objectClass=mailUser)", ["uid"])}
    aliases = {
        _first(a, "mailAlias"): _values(a, "mailAliasedName")
        for _, a in ctx.search(dn, "(objectClass=mailAlias)", ["mailAlias", "mailAliasedName"])
    }
    actions: list[Action] = []
    unchanged = 0
    for local in sorted(plan.users):
        if local in users:
            unchanged += 1
        else:
            actions.append(Action("add user", local))
    for name in sorted(plan.aliases):
        targets = plan.aliases[name]
        if name not in aliases:
            actions.append(Action("add alias", name, targets))
        elif sorted(t.lower() for t in aliases[name]) != sorted(t.lower() for t in targets):
            actions.append(Action("update alias", name, targets, aliases[name]))
        else:
            unchanged += 1
    return actions, unchanged


def apply_action(ctx: Context, action: Action, domain: str) -> None:
    if action.kind == "add user":
        entry = entries.user_entry(
            action.name, domain, ctx.base_dn, password_hash=None,
            uid_number=ctx.config.spool.storage_uid, gid_number=ctx.config.spool.storage_gid,
            mailbox=spool.mailbox_path(ctx.config.spool.template(), action.name, domain),
        )
        ctx.add(entry, f"add users in {ctx.domain_dn(domain)}", f"user {action.name}@{domain}")
    elif action.kind == "add alias":
        _alias_add(ctx, action.name, domain, action.targets, f"alias {action.name}@{domain}")
    else:
        ctx.modify(
            ctx.alias_dn(action.name, domain),
            {"mailAliasedName": (dirmod.MODIFY_REPLACE, action.targets)},
            {"mailAliasedName": (dirmod.MODIFY_REPLACE, action.old)} if action.old else None,
            f"change aliases in {ctx.domain_dn(domain)}", f"alias {action.name}@{domain}",
        )


def run_import(ctx: Context, plan: Plan) -> int:
    args = ctx.args
    if plan.invalid and not args.skip_invalid:
        for problem in plan.invalid:
            ctx.err.write(f"mailrouter-admin: {problem}\n")
        raise AdminError(
            f"{len(plan.invalid)} invalid item(s): nothing imported (--skip-invalid to leave them out)"
        )
    actions, unchanged = diff_plan(ctx, plan)
    applied = 0
    if args.apply and actions:
        forced = bool(args.progress)
        progress = Progress(len(actions), forced or (ctx.err.isatty() and len(actions) >= PROGRESS_THRESHOLD),
                            ctx.err)
        for action in actions:
            apply_action(ctx, action, plan.domain)
            applied += 1
            progress.step(f"{action.kind} {action.name}")
        progress.done()
        ctx.commit()
    data = {
        "domain": plan.domain,
        "apply": bool(args.apply),
        "actions": [
            {"action": a.kind, "address": f"{a.name}@{plan.domain}", "targets": a.targets} for a in actions
        ],
        "applied": applied,
        "unchanged": unchanged,
        "skipped_invalid": plan.invalid,
        "notes": plan.notes,
    }

    def human() -> str:
        lines = [
            f"{a.kind} {a.name}@{plan.domain}" + (f" -> {', '.join(a.targets)}" if a.targets else "")
            for a in actions
        ]
        lines += [f"skipped (invalid): {p}" for p in plan.invalid]
        lines += [f"note: {n}" for n in plan.notes]
        if args.apply:
            lines.append(f"applied {applied} change(s); {unchanged} already in place")
        else:
            lines.append(f"dry run: {len(actions)} change(s) planned, {unchanged} already in place; "
                         "--apply to write them")
        return "\n".join(lines)

    ctx.emit(data, human)
    return EX_OK


def cmd_import_qmail(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    root = Path(ctx.args.path)
    if not root.is_dir():
        raise AdminError(f"{root} is not a directory")
    plan = plan_qmail(root, domain, Path(ctx.args.assign) if ctx.args.assign else None)
    return run_import(ctx, plan)


def cmd_import_aliases(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    plan = Plan(domain)
    parse_aliases(_read_text(Path(ctx.args.path)), ctx.args.path, plan)
    return run_import(ctx, plan)


# -- export -------------------------------------------------------------------------------------
def cmd_export_ldif(ctx: Context) -> int:
    domain = normalise_domain(ctx.args.domain)
    dn = ctx.domain_dn(domain)
    found = ctx.search(dn, "(objectClass=*)", ["*"], subtree=True)
    if not found:
        raise AdminError(f"no such domain {domain}")
    found.sort(key=lambda item: (item[0].count(","), item[0].lower()))
    exported = [
        entries.Entry(entry_dn, {name: _values(attributes, name) for name in attributes})
        for entry_dn, attributes in found
    ]
    text = entries.to_ldif(exported)
    if ctx.args.output:
        Path(ctx.args.output).write_text(text, encoding="utf-8")
        return ctx.done(f"exported {len(exported)} entries of {domain} to {ctx.args.output}",
                        domain=domain, entries=len(exported))
    if ctx.json:
        ctx.emit({"domain": domain, "entries": len(exported), "ldif": text}, "")
    else:
        ctx.out.write(text)
    return EX_OK


# -- test tools --------------------------------------------------------------------------------
def _secret(ctx: Context, prompt: str) -> str:
    path = getattr(ctx.args, "secret_file", None)
    return read_secret_file(path, "secret") if path else prompt_secret(prompt, confirm=False)


def route_address(config: Config, local: str, domain: str) -> dict[str, Any]:
    """What Exim's routers decide for ``local@domain``: the hook's own answers
    (``mailrouter.lookup.answer``, the code behind every ``${run}``) asked in the
    order of exim/mailrouter.conf -- local domain, aliases, users, catchall."""
    from mailrouter import lookup, routing

    result: dict[str, Any] = {"address": f"{local}@{domain}"}

    def ask(kind: str, *args: str) -> str | None:
        return lookup.answer(config, kind, list(args))

    if ask("domain", domain) is None:
        backup = ask("backup-mx", domain) is not None
        result.update(
            local_domain=False,
            router="remote",
            outcome="relayed as a backup MX" if backup
            else "not a local domain: remote delivery, only for clients allowed to relay",
        )
        return result
    result["local_domain"] = True
    for router, kind in (("aliases", "alias"), ("users", "user"), ("catchall", "catchall")):
        data = ask(kind, local, domain)
        if data is None:
            continue
        result["router"] = router
        if kind == "user":
            fields = dict(item.split("=", 1) for item in data.split())
            limit = quota.parse_quota(fields.get("quota"))
            used = routing.mailbox_size(fields["mailbox"], fields["format"])
            result.update(
                address_data=data,
                mailbox=fields["mailbox"],
                format=fields["format"],
                uid=int(fields["uid"]),
                gid=int(fields["gid"]),
                quota=fields.get("quota", "0"),
                quota_bytes=limit,
                used_bytes=used,
                over_quota=used is not None and routing.is_over_quota(used, 0, limit),
                outcome="delivered to the mailbox by mailrouter-deliver",
            )
            if result["over_quota"]:
                result["outcome"] = "deferred at RCPT (452): mailbox full"
        elif data.startswith(":fail:"):
            result.update(outcome="refused: " + data[len(":fail:"):].strip())
        else:
            result.update(targets=[t.strip() for t in data.split(",") if t.strip()], outcome="redirected")
            full = ask("quota", local, domain, "-1")
            if full:
                result.update(full_mailboxes=full.split(), outcome="deferred at RCPT (452): mailbox full")
        return result
    result.update(router=None, outcome="unknown user: refused with 550")
    return result


def cmd_test_address(ctx: Context) -> int:
    text = ctx.args.address.strip()
    local_raw, at, dom = text.rpartition("@")
    if not at:
        raise AdminError(f"invalid address {text!r}: expected local@domain")
    domain = normalise_domain(dom)
    local = local_raw.lower()
    if not names.is_local_part(local):
        info: dict[str, Any] = {"address": f"{local}@{domain}", "router": None,
                                "outcome": "refused: not a valid local part here"}
    else:
        info = route_address(ctx.config, local, domain)
    if ctx.args.exim:
        info["exim"] = run_exim_bt(ctx, f"{local}@{domain}")
    def human() -> str:
        text = pairs({k: v for k, v in info.items() if k not in ("state", "exim")})
        if "state" in info:
            text += "\n" + pairs({f"mailbox {k}": v for k, v in info["state"].items()})
        if "exim" in info:
            text += "\n--- exim -bt (rc {rc}: {meaning}) ---\n{output}".format(**info["exim"])
        return text

    ctx.emit(info, human)
    return EX_OK


def run_exim_bt(ctx: Context, address: str) -> dict[str, Any]:
    """``exim -bt`` with the project's Exim config and this config, in a private spool."""
    import tempfile

    from mailrouter.errors import DaemonError
    from mailrouter.sandbox import exim as exim_testbed

    if ctx.config.path is None or any(c.isspace() for c in ctx.config.path):
        raise AdminError("--exim needs a config file path without white space")
    if os.geteuid() != 0:
        raise AdminError("--exim must run as root (Exim honours -C only for root)")
    if not ctx.args.exim_config:  # never guessed from the install or the cwd
        raise AdminError("--exim needs --exim-config PATH (e.g. a checkout's exim/mailrouter.conf)")
    exim_config = Path(ctx.args.exim_config)
    bin_dir = ctx.args.mailrouter_bin or str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="mailrouter-bt-") as work:
        # Traversable by Debian-exim: Exim runs some lookups as that user.
        os.chmod(work, 0o711)  # noqa: S103
        exim = exim_testbed.Exim(
            Path(work), exim_config,
            macros={"MAILROUTER_CONFIG": os.path.abspath(ctx.config.path), "MAILROUTER_BIN": bin_dir},
        )
        try:
            done = exim.address_test(address)
        except (OSError, DaemonError) as exc:
            raise AdminError(f"cannot run exim: {exc}") from None
    meaning = {0: "routed", 1: "deferred", 2: "undeliverable"}.get(done.returncode, "error")
    return {"rc": done.returncode, "meaning": meaning, "output": done.output}


def cmd_test_auth(ctx: Context) -> int:
    from mailrouter import auth

    login = ctx.args.address.strip()
    password = _secret(ctx, f"password for {login}: ")
    result = auth.authenticate(ctx.config, login, password)
    if result.verdict is auth.Verdict.TEMPORARY:
        raise DirectoryUnavailable(result.reason)
    info = {"login": login, "verdict": result.verdict.name.lower(), "reason": result.reason}
    ctx.emit(info, lambda: pairs(info))
    return EX_OK if result.ok else EX_REFUSED


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _host_port(text: str, default: int) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return text.strip("[]"), default


def cmd_test_smtp(ctx: Context) -> int:
    import smtplib
    import ssl

    host, port = _host_port(ctx.args.server, 25)
    transcript: list[dict[str, Any]] = []
    ok = True
    sender = normalise_target(ctx.args.sender) if ctx.args.sender else ""
    recipients = [normalise_target(t) for t in ctx.args.to]
    try:
        with smtplib.SMTP(host, port, timeout=ctx.args.timeout) as client:
            code, text = client.ehlo("mailrouter-admin.invalid")
            transcript.append({"step": "EHLO", "code": code, "text": _decode(text)})
            if ctx.args.starttls:
                context = ssl.create_default_context()
                if ctx.args.insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                code, text = client.starttls(context=context)
                transcript.append({"step": "STARTTLS", "code": code, "text": _decode(text)})
                client.ehlo("mailrouter-admin.invalid")
            if ctx.args.auth_user:
                secret = _secret(ctx, f"password for {ctx.args.auth_user}: ")
                try:
                    code, reply = client.login(ctx.args.auth_user, secret)
                except smtplib.SMTPAuthenticationError as exc:
                    code, reply, ok = exc.smtp_code, _decode(exc.smtp_error).encode(), False
                transcript.append({"step": "AUTH", "code": code, "text": _decode(reply)})
            if ok and (recipients or sender):
                code, text = client.mail(sender)
                transcript.append({"step": f"MAIL FROM:<{sender}>", "code": code,
                                   "text": _decode(text)})
                ok = ok and code == 250
                accepted = []
                for rcpt in recipients:
                    code, text = client.rcpt(rcpt)
                    transcript.append({"step": f"RCPT TO:<{rcpt}>", "code": code,
                                       "text": _decode(text)})
                    if code in (250, 251):
                        accepted.append(rcpt)
                    else:
                        ok = False
                if ctx.args.send and accepted and ok:
                    body = (f"From: <{sender}>\r\nTo: {', '.join(accepted)}\r\n"
                            "Subject: mailrouter-admin test\r\n\r\nA test message from mailrouter-admin.\r\n")
                    code, text = client.data(body.encode("utf-8"))
                    transcript.append({"step": "DATA", "code": code, "text": _decode(text)})
                    ok = code == 250
                else:
                    client.rset()
    except (OSError, smtplib.SMTPException) as exc:
        raise TemporaryFailure(f"SMTP server {host}:{port}: {exc}") from None
    ctx.emit({"server": f"{host}:{port}", "ok": ok, "transcript": transcript},
             lambda: "\n".join(f"{t['code']} {t['step']}: {t['text'].splitlines()[0] if t['text'] else ''}"
                               for t in transcript))
    return EX_OK if ok else EX_REFUSED


def cmd_test_pop3(ctx: Context) -> int:
    import poplib
    import ssl

    host, port = _host_port(ctx.args.server, 995 if ctx.args.tls else 110)
    user = ctx.args.user
    secret = _secret(ctx, f"password for {user}: ")
    info: dict[str, Any] = {"server": f"{host}:{port}", "user": user}
    try:
        if ctx.args.tls:
            context = ssl.create_default_context()
            if ctx.args.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client: poplib.POP3 = poplib.POP3_SSL(host, port, timeout=ctx.args.timeout, context=context)
        else:
            client = poplib.POP3(host, port, timeout=ctx.args.timeout)
        try:
            info["greeting"] = client.getwelcome().decode(errors="replace")
            client.user(user)
            try:
                client.pass_(secret)
            except poplib.error_proto as exc:
                info.update(ok=False, error=str(exc))
            else:
                messages, size = client.stat()
                info.update(ok=True, messages=messages, size=size)
        finally:
            try:
                client.quit()
            except (OSError, poplib.error_proto):
                pass
    except (OSError, poplib.error_proto) as exc:
        raise TemporaryFailure(f"POP3 server {host}:{port}: {exc}") from None
    ctx.emit(info, lambda: pairs(info))
    return EX_OK if info.get("ok") else EX_REFUSED


# -- argument parsing ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS defaults: the options work before or after the subcommand
    # without the subparser's defaults overwriting the top level's values.
    s = argparse.SUPPRESS
    parser.add_argument("--config", default=s,
                        help=f"TOML config (default {config_module.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--bind-dn", default=s, help="who acts: DN, address or global admin name")
    parser.add_argument("--password-file", default=s, help="bind password: first line of FILE ('-' = stdin)")
    parser.add_argument("--use-service-account", action="store_true", default=s,
                        help="bind as the config's read-only service account")
    parser.add_argument("--json", action="store_true", default=s, help="JSON output for scripts")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations anywhere: "--password x" must never be taken for
    # "--password-file x", nor any other prefix for an option.
    parser = _Parser(prog="mailrouter-admin", description="Administer mailrouter as a delegated admin.",
                     allow_abbrev=False,
                     epilog="Exit status: 0 done, 1 refused or invalid, 2 usage, 75 LDAP unavailable.")
    _common(parser)
    top = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def group(name: str, help_text: str) -> Any:
        sub = top.add_parser(name, help=help_text, allow_abbrev=False)
        return sub.add_subparsers(dest="command2", required=True, parser_class=_Parser)

    def leaf(
        groupp: Any, name: str, handler: Callable[[Context], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = groupp.add_parser(name, help=help_text, allow_abbrev=False)
        _common(sub)
        sub.set_defaults(handler=handler)
        return sub

    g = group("domain", "virtual domains")
    p = leaf(g, "add", cmd_domain_add, "add a domain")
    p.add_argument("domain")
    p.add_argument("--description")
    p = leaf(g, "remove", cmd_domain_remove, "remove a domain")
    p.add_argument("domain")
    p.add_argument("--recursive", action="store_true", help="also its users, aliases and admin group")
    leaf(g, "list", cmd_domain_list, "list domains")
    p = leaf(g, "show", cmd_domain_show, "show a domain")
    p.add_argument("domain")

    g = group("user", "mailbox users")
    p = leaf(g, "add", cmd_user_add, "add a user")
    p.add_argument("address")
    p.add_argument("--new-password-file", help="the user's password: first line of FILE")
    p.add_argument("--no-password", action="store_true", help="no password (cannot log in yet)")
    p.add_argument("--quota")
    p.add_argument("--name", help="full name (cn)")
    p.add_argument("--disabled", action="store_true")
    p.add_argument("--admin", action="store_true", help="also make the user an admin of the domain")
    p = leaf(g, "remove", cmd_user_remove, "remove a user")
    p.add_argument("address")
    p = leaf(g, "list", cmd_user_list, "list the users of a domain")
    p.add_argument("domain")
    p = leaf(g, "show", cmd_user_show, "show a user")
    p.add_argument("address")
    p = leaf(g, "passwd", cmd_user_passwd, "set a user's password")
    p.add_argument("address")
    p.add_argument("--new-password-file", help="first line of FILE; default: prompt")
    p = leaf(g, "quota", cmd_user_quota, "set a user's quota")
    p.add_argument("address")
    p.add_argument("quota")
    for name in ("enable", "disable"):
        p = leaf(g, name, cmd_user_enable, f"{name} an account")
        p.add_argument("address")

    g = group("alias", "aliases")
    p = leaf(g, "add", cmd_alias_add, "add an alias")
    p.add_argument("address")
    p.add_argument("targets", nargs="+")
    p = leaf(g, "remove", cmd_alias_remove, "remove an alias")
    p.add_argument("address")
    p = leaf(g, "list", cmd_alias_list, "list the aliases of a domain")
    p.add_argument("domain")
    p = leaf(g, "show", cmd_alias_show, "show an alias")
    p.add_argument("address")
    for name in ("add-target", "remove-target"):
        p = leaf(g, name, cmd_alias_targets, f"{name.split('-')[0]} targets")
        p.add_argument("address")
        p.add_argument("targets", nargs="+")

    g = group("catchall", "the catch-all (alias 'default') of a domain")
    p = leaf(g, "set", cmd_catchall_set, "set the catch-all targets")
    p.add_argument("domain")
    p.add_argument("targets", nargs="+")
    p = leaf(g, "clear", cmd_catchall_clear, "remove the catch-all")
    p.add_argument("domain")
    p = leaf(g, "show", cmd_catchall_show, "show the catch-all")
    p.add_argument("domain")

    g = group("setting", "system settings")
    p = leaf(g, "get", cmd_setting_get, "values of a setting")
    p.add_argument("name")
    leaf(g, "list", cmd_setting_list, "every setting")
    for name in ("set", "add", "remove"):
        p = leaf(g, name, cmd_setting_change, f"{name} values")
        p.add_argument("name")
        p.add_argument("values", nargs="+" if name != "set" else "*")

    g = group("admin", "domain and global admins")
    for name, handler in (("grant", cmd_admin_grant), ("revoke", cmd_admin_revoke)):
        p = leaf(g, name, handler, f"{name} admin rights")
        p.add_argument("who", help="user address (domain admin) or account name (--global)")
        p.add_argument("--domain", help="domain to administer (default: the user's own)")
        p.add_argument("--global", dest="global_", action="store_true", help="global admin")
        if name == "grant":
            p.add_argument("--create", action="store_true", help="create the global admin account first")
            p.add_argument("--new-password-file", help="password of the created account")
    p = leaf(g, "list", cmd_admin_list, "admins of a domain (or the global admins)")
    p.add_argument("domain", nargs="?")

    g = group("test", "check what the hub does")
    p = leaf(g, "address", cmd_test_address, "what Exim would do with an address")
    p.add_argument("address")
    p.add_argument("--exim", action="store_true", help="also run exim -bt with the project's config")
    p.add_argument("--exim-config", help="the Exim config to test, e.g. a checkout's exim/mailrouter.conf")
    p.add_argument("--mailrouter-bin", help="directory of the hooks (default: this Python's bin/)")
    p = leaf(g, "auth", cmd_test_auth, "check a login the way POP3/IMAP/SMTP AUTH do")
    p.add_argument("address")
    p.add_argument("--secret-file", help="password: first line of FILE; default: prompt")
    p = leaf(g, "smtp", cmd_test_smtp, "talk SMTP to a running hub")
    p.add_argument("server", help="HOST[:PORT]")
    p.add_argument("--from", dest="sender")
    p.add_argument("--to", action="append", default=[])
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    p.add_argument("--auth-user")
    p.add_argument("--secret-file")
    p.add_argument("--send", action="store_true", help="send a test message, not just RCPT checks")
    p.add_argument("--timeout", type=float, default=30.0)
    p = leaf(g, "pop3", cmd_test_pop3, "log in to a running POP3 server")
    p.add_argument("server", help="HOST[:PORT]")
    p.add_argument("user")
    p.add_argument("--secret-file")
    p.add_argument("--tls", action="store_true", help="POP3S")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)

    g = group("import", "import from qmail or aliases files")
    for name, handler, what in (("qmail", cmd_import_qmail, "a qmail tree (users/assign, .qmail-*)"),
                                ("aliases", cmd_import_aliases, "an /etc/aliases-style file")):
        p = leaf(g, name, handler, f"import {what}")
        p.add_argument("path")
        p.add_argument("--domain", required=True)
        if name == "qmail":
            p.add_argument("--assign", help="users/assign file (default DIR/users/assign)")
        p.add_argument("--apply", action="store_true", help="write (default: dry run)")
        p.add_argument("--skip-invalid", action="store_true",
                       help="leave invalid items out instead of refusing")
        p.add_argument("--progress", action="store_true", help="progress bar even when stderr is no terminal")

    g = group("export", "export a domain")
    p = leaf(g, "ldif", cmd_export_ldif, "LDIF of a domain")
    p.add_argument("domain")
    p.add_argument("--output")
    return parser


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    err = sys.stderr

    def fail(code: int, message: str) -> int:
        err.write(f"mailrouter-admin: {message}\n")
        return code

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return fail(EX_USAGE, str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    ctx: Context | None = None
    try:
        configuration = config_module.load(getattr(args, "config", None))
        ctx = Context(configuration, args)
        code = int(args.handler(ctx))
        return code
    except UsageError as exc:
        return fail(EX_USAGE, str(exc))
    except (AdminError, InvalidName, LdapRefused) as exc:
        return fail(EX_REFUSED, _with_rollback(ctx, str(exc)))
    except DirectoryUnavailable as exc:
        return fail(EX_TEMPFAIL, _with_rollback(ctx, f"LDAP unavailable, try again later: {exc}"))
    except ConfigError as exc:
        return fail(EX_REFUSED, f"bad configuration: {exc}")
    except TemporaryFailure as exc:
        return fail(EX_TEMPFAIL, _with_rollback(ctx, f"temporary failure, try again later: {exc}"))
    except KeyboardInterrupt:
        return fail(EX_REFUSED, _with_rollback(ctx, "interrupted"))
    except (EOFError, OSError) as exc:
        return fail(EX_REFUSED, _with_rollback(ctx, str(exc)))
    finally:
        if ctx is not None:
            ctx.close()


def _with_rollback(ctx: Context | None, message: str) -> str:
    if ctx is None or not ctx.steps:
        return message
    count = len(ctx.steps)
    failed = ctx.rollback()
    if failed:
        return f"{message}; ROLLBACK INCOMPLETE, fix by hand: {'; '.join(failed)}"
    return f"{message} (undid {count} earlier change(s))"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
