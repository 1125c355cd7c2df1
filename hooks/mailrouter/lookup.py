"""The lookup decision table: every question Exim's routers and ACLs ask, answered.

One table (:data:`KINDS`), one entry point (:func:`answer`), used by every
front end -- the ``${run}`` hook (``mailrouter.cmd.lookup``, whose docstring
is the manual of the kinds and of the address-data line), the socket server
(``mailrouter.cmd.lookupd``) and ``mailrouter-admin test address`` -- so the
three can never disagree.  Nothing here parses argv or writes output.

Answers: a one-line ``str`` (exit 0 / ``OK``), ``None`` for "LDAP answered:
no such thing" (exit 1 / ``NO``); every trouble raises
:class:`~mailrouter.errors.TemporaryFailure` (exit 75 / ``TEMP``).
Keys that cannot name anything we store are answered ``None`` without
importing ldap3 or asking LDAP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailrouter import names, routing, rules
from mailrouter.config import Config
from mailrouter.errors import ConfigError, TemporaryFailure
from mailrouter.mailbox.addressdata import format_address_data

if TYPE_CHECKING:
    from mailrouter.directory import Directory

# No key we store is this long; a longer argument is answered "no" without a query.
MAX_ARGUMENT = 1024

Answer = str | None  # None: "no such thing" (exit 1)


@dataclass(frozen=True)
class Kind:
    arity: int
    handler: Callable[[Directory, Config, list[str]], Answer]
    # True when the arguments alone prove the answer is "no": no LDAP query,
    # and no ldap3 import (most of the hook's start-up time).
    impossible: Callable[[list[str]], bool]


def _bad_domain(args: list[str]) -> bool:
    return not names.is_domain(args[0])


def _bad_address(args: list[str]) -> bool:
    return routing.canonical_key(args[0], args[1]) is None


def _bad_catchall_key(args: list[str]) -> bool:
    # A bad local part still needs LDAP: the catch-all refuses it in local domains.
    return not names.is_domain(args[1])


def _bad_ip(args: list[str]) -> bool:
    return routing.parse_ip(args[0]) is None


def _bad_sender(args: list[str]) -> bool:
    # The null sender and unqualified junk are never listed.
    return names.envelope_address(args[0]) is None


def _never(_args: list[str]) -> bool:
    return False


def _domain(directory: Directory, _config: Config, args: list[str]) -> Answer:
    domain = args[0]
    return domain if directory.is_local_domain(domain) else None


def _backup_mx(directory: Directory, _config: Config, args: list[str]) -> Answer:
    domain = args[0]
    listed = {value.strip().lower() for value in directory.setting("backup_mx_domains")}
    return domain if domain in listed else None


def _alias(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return routing.alias_answer(directory, args[0], args[1])


def _user(directory: Directory, config: Config, args: list[str]) -> Answer:
    target = routing.delivery_target(directory, config.spool, args[0], args[1])
    return format_address_data(target) if target is not None else None


def _vacation(directory: Directory, _config: Config, args: list[str]) -> Answer:
    """The reply of an active user whose vacation is in effect now (mailrouter.rules)."""
    user = routing.active_user(directory, args[0], args[1], rules.VACATION_ATTRIBUTES)
    if user is None:
        return None
    found = rules.vacation_from(user.extra)
    if not found.in_effect(datetime.now(UTC)):
        return None
    values = directory.setting(rules.INTERVAL_SETTING)
    try:
        repeat = rules.interval(values[0] if values else None)
    except rules.RuleError as exc:
        raise ConfigError(f"setting {rules.INTERVAL_SETTING}: {exc}") from exc
    return rules.vacation_answer(user.address, found, repeat)


def _sieve(directory: Directory, config: Config, args: list[str]) -> Answer:
    """An active user's Sieve script (when it passes mailrouter.rules) and address data."""
    user = routing.active_user(directory, args[0], args[1], (rules.SIEVE_SCRIPT,))
    if user is None:
        return None
    script = user.extra[rules.SIEVE_SCRIPT]
    if not script:
        return None
    target = routing.mailbox_target(user, config.spool)
    try:
        rules.check_script(script, maildir=target.format == "maildir")
    except rules.RuleError:
        return None  # written around our tools: not run, the mail goes to the inbox
    return rules.sieve_answer(script, format_address_data(target))


def _home(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return routing.home_node(directory, args[0], args[1])


def _catchall(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return routing.catchall_answer(directory, args[0], args[1])


def _quota(directory: Directory, config: Config, args: list[str]) -> Answer:
    local, domain, size_text = args
    try:
        size = int(size_text)
    except ValueError:
        size = -1
    verdict = routing.quota_verdict(directory, config.spool, local, domain, size)
    return str(verdict) if verdict is not None else None


def _predicate(result: bool) -> Answer:
    return "yes" if result else None


def _relay_host(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return _predicate(routing.host_matches(args[0], directory.setting("host_accept_relay")))


def _blacklisted_host(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return _predicate(routing.host_matches(args[0], directory.setting("blacklisted_hosts")))


def _blacklisted_sender(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return _predicate(
        routing.sender_blacklisted(
            args[0],
            directory.setting("blacklisted_senders"),
            directory.setting("blacklisted_domains"),
        )
    )


def _sender_owner(directory: Directory, config: Config, args: list[str]) -> Answer:
    if not config.auth.sender_ownership:
        return "yes"
    return _predicate(routing.owns_sender(directory, args[0], args[1]))


def _rate_limit(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return routing.rate_limit(directory, args[0]).text


KINDS: dict[str, Kind] = {
    "domain": Kind(1, _domain, _bad_domain),
    "backup-mx": Kind(1, _backup_mx, _bad_domain),
    "alias": Kind(2, _alias, _bad_address),
    "user": Kind(2, _user, _bad_address),
    "catchall": Kind(2, _catchall, _bad_catchall_key),
    "vacation": Kind(2, _vacation, _bad_address),
    "sieve": Kind(2, _sieve, _bad_address),
    "home": Kind(2, _home, _bad_address),
    "quota": Kind(3, _quota, _bad_address),
    "relay-host": Kind(1, _relay_host, _bad_ip),
    "blacklisted-host": Kind(1, _blacklisted_host, _bad_ip),
    "blacklisted-sender": Kind(1, _blacklisted_sender, _bad_sender),
    "sender-owner": Kind(2, _sender_owner, _never),
    "ratelimit": Kind(1, _rate_limit, _never),
}


def answer(
    config: Config, kind: str, args: list[str], directory: Directory | None = None
) -> Answer:
    """Run one lookup; raises TemporaryFailure (incl. DirectoryUnavailable) on trouble.

    ``directory``: a worker's :class:`~mailrouter.directory.PersistentDirectory`
    (lookupd); ``None`` for a fresh connection and bind (the ``${run}`` hook)."""
    spec = KINDS[kind]
    if len(args) != spec.arity:
        raise TemporaryFailure(f"{kind} takes {spec.arity} arguments")
    if any(len(a) > MAX_ARGUMENT for a in args) or spec.impossible(args):
        return None  # cannot name anything we store; no need to ask LDAP
    if directory is None:
        from mailrouter.directory import Directory  # loads ldap3: only when LDAP is needed

        directory = Directory(config.ldap)
    with directory:
        return spec.handler(directory, config, args)
