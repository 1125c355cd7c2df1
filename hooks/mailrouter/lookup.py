"""mailrouter-lookup -- the one LDAP lookup program behind Exim's ``${run}``.

Synopsis::

    mailrouter-lookup [--config PATH] KIND ARG...

Kinds (Exim lower-cases local parts and domains before routing; keys that are
not canonical names cannot exist and are answered "no" without a query):

======================================  ==========================================================
``domain DOMAIN``                       0 + DOMAIN if it is a local (mailDomain) domain
``backup-mx DOMAIN``                    0 + DOMAIN if listed in the setting ``backup_mx_domains``
``alias LOCAL DOMAIN``                  0 + Exim redirect data (``a@x, b@y`` or ``:fail: ...``)
``user LOCAL DOMAIN``                   0 + the address data line (below) of an *active* user
``catchall LOCAL DOMAIN``               0 + redirect data once aliases and users declined:
                                        the catch-all's targets, or ``:fail:`` for a disabled
                                        user/alias, an alias loop or a hostile local part
``quota LOCAL DOMAIN SIZE``             0 + the full addresses if the message (SIZE octets, -1 =
                                        unknown) would overfill a mailbox LOCAL@DOMAIN reaches
                                        (directly or through aliases); 1 when none would be full
``relay-host IP``                       0 if IP is in the setting ``host_accept_relay``
``blacklisted-host IP``                 0 if IP is in the setting ``blacklisted_hosts``
``blacklisted-sender ADDRESS``          0 if ADDRESS is in ``blacklisted_senders`` or its domain
                                        (or a parent) in ``blacklisted_domains``
``sender-owner SENDER AUTHID``          0 if AUTHID may send as SENDER (itself, or an alias of
                                        its domain delivering to it; always 0 when
                                        ``auth.sender_ownership`` is false)
======================================  ==========================================================

Address data (one line, the contract with ``mailrouter-deliver``)::

    mailbox=<absolute path> format=<mbox|maildir> quota=<raw mailQuota or 0> uid=<int> gid=<int>

The mailbox path is built from the configured template and the canonical
local part and domain, never taken from LDAP.

Exit codes:
    0   the answer is on stdout (one line)
    1   LDAP answered and there is no such thing (or the predicate is false)
    75  anything else: LDAP down or slow, bad configuration, bad arguments, any
        unexpected exception (mailrouter.entry maps escapes and import failures)

fds: stdin is ignored; stdout carries only the answer; stderr is never written
(the console-script guard points it at /dev/null first), because Exim merges
it into ``$value``.  Environment: none used (Exim gives no PATH).  No secret is
ever taken from argv: the service password comes from the config's
``bind_password_file``.  LDAP timeouts come from the config and are bounded
far inside Exim's 60 s ``${run}`` limit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailrouter import config as config_module
from mailrouter import names, routing
from mailrouter.config import Config
from mailrouter.errors import MailrouterError, TemporaryFailure

if TYPE_CHECKING:
    from mailrouter.directory import Directory

EX_OK = 0
EX_NOTFOUND = 1
EX_TEMPFAIL = 75

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
    return "@" not in args[0]  # the null sender and unqualified junk are never listed


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
    user = routing.active_user(directory, args[0], args[1])
    return routing.address_data(user, config.spool) if user is not None else None


def _catchall(directory: Directory, _config: Config, args: list[str]) -> Answer:
    return routing.catchall_answer(directory, args[0], args[1])


def _quota(directory: Directory, config: Config, args: list[str]) -> Answer:
    local, domain, size_text = args
    try:
        size = int(size_text)
    except ValueError:
        size = -1
    full = routing.full_mailboxes(directory, config.spool, local, domain, size)
    return " ".join(full) if full else None


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


KINDS: dict[str, Kind] = {
    "domain": Kind(1, _domain, _bad_domain),
    "backup-mx": Kind(1, _backup_mx, _bad_domain),
    "alias": Kind(2, _alias, _bad_address),
    "user": Kind(2, _user, _bad_address),
    "catchall": Kind(2, _catchall, _bad_catchall_key),
    "quota": Kind(3, _quota, _bad_address),
    "relay-host": Kind(1, _relay_host, _bad_ip),
    "blacklisted-host": Kind(1, _blacklisted_host, _bad_ip),
    "blacklisted-sender": Kind(1, _blacklisted_sender, _bad_sender),
    "sender-owner": Kind(2, _sender_owner, _never),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage to stderr and exiting 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise TemporaryFailure(f"usage: {message}")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="mailrouter-lookup", add_help=False)
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH)
    parser.add_argument("kind", choices=sorted(KINDS))
    # "--" guard: keys are data, a key such as "--config" must not be an option.
    parser.add_argument("args", nargs=argparse.REMAINDER)
    return parser.parse_args(list(argv))


def answer(config: Config, kind: str, args: list[str]) -> Answer:
    """Run one lookup; raises TemporaryFailure (incl. DirectoryUnavailable) on trouble."""
    spec = KINDS[kind]
    if len(args) != spec.arity:
        raise TemporaryFailure(f"{kind} takes {spec.arity} arguments")
    if any(len(a) > MAX_ARGUMENT for a in args) or spec.impossible(args):
        return None  # cannot name anything we store; no need to ask LDAP
    from mailrouter.directory import Directory  # loads ldap3: only when LDAP is needed

    with Directory(config.ldap) as directory:
        return spec.handler(directory, config, args)


def main(argv: list[str]) -> int:
    try:
        options = _parse(argv)
        config = config_module.load(options.config)
        result = answer(config, options.kind, list(options.args))
    except MailrouterError:
        # Every error we raise on purpose here is temporary for Exim: a
        # definite "no" is a None answer, never an exception.
        return EX_TEMPFAIL
    if result is None:
        return EX_NOTFOUND
    # One line, no embedded newline: Exim's $value is the whole stdout.
    sys.stdout.write(result.replace("\n", " ").replace("\r", " ") + "\n")
    sys.stdout.flush()
    return EX_OK
