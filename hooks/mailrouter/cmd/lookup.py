"""mailrouter-lookup -- the one LDAP lookup program behind Exim's ``${run}``.

Synopsis::

    mailrouter-lookup [--config PATH] KIND ARG...

``--config`` defaults to ``/etc/mailrouter/mailrouter.toml``.  Everything after
KIND is data, never an option.  The decisions themselves live in
:mod:`mailrouter.lookup` (shared with ``mailrouter-lookupd`` and
``mailrouter-admin test address``); this is their manual.

Kinds (Exim lower-cases local parts and domains before routing; keys that are
not canonical names, or longer than 1024 characters, cannot exist and are
answered "no" without a query).  The predicates -- ``relay-host``,
``blacklisted-host``, ``blacklisted-sender``, ``sender-owner`` -- print ``yes``:

======================================  ==========================================================
``domain DOMAIN``                       0 + DOMAIN if it is a local (mailDomain) domain
``backup-mx DOMAIN``                    0 + DOMAIN if listed in the setting ``backup_mx_domains``
``alias LOCAL DOMAIN``                  0 + Exim redirect data (``a@x, b@y`` or ``:fail: ...``)
``user LOCAL DOMAIN``                   0 + the address data line (below) of an *active* user
``catchall LOCAL DOMAIN``               0 + redirect data once aliases and users declined:
                                        the catch-all's targets, or ``:fail:`` for a disabled
                                        user/alias, an alias loop or a hostile local part
``vacation LOCAL DOMAIN``               0 + ``address=A repeat=T subject=B64 text=B64`` when the
                                        active user's vacation is in effect now (dates, the
                                        setting ``vacation_interval``; :mod:`mailrouter.rules`)
``sieve LOCAL DOMAIN``                  0 + ``sieve=B64`` (the filter, ``# Sieve filter`` first)
                                        and the address data line, when the active user has a
                                        script that passes :mod:`mailrouter.rules`; 1 otherwise
``home LOCAL DOMAIN``                   0 + the home node (``mailHost``, lower case) of an *active*
                                        user; 1 when the user has none (every node delivers) or
                                        is not an active user; 75 for a mailHost that is not a
                                        host name.  Asked by the cluster router (README "More
                                        than one machine") only
``quota LOCAL DOMAIN SIZE``             0 + ``toobig ADDRESS...`` when the message (SIZE octets)
                                        is larger than the whole quota of a mailbox LOCAL@DOMAIN
                                        reaches (directly or through aliases), else ``full
                                        ADDRESS...`` when it would overfill one now (SIZE -1 =
                                        unknown: only a mailbox already over quota); 1 when it
                                        fits everywhere.  SIZE is counted with 4 KiB for what
                                        delivery adds (``routing.DELIVERY_ALLOWANCE``)
``relay-host IP``                       0 if IP is in the setting ``host_accept_relay``
``blacklisted-host IP``                 0 if IP is in the setting ``blacklisted_hosts``
``blacklisted-sender ADDRESS``          0 if ADDRESS is in ``blacklisted_senders`` or its domain
                                        (or a parent) in ``blacklisted_domains``
``sender-owner SENDER AUTHID``          0 if AUTHID may send as SENDER (itself, or an alias of
                                        its domain delivering to it; always 0 when
                                        ``auth.sender_ownership`` is false)
``ratelimit AUTHID``                    0 + the outbound limit of the authenticated AUTHID:
                                        ``COUNT / PERIOD`` (``100 / 1h``) or ``unlimited`` --
                                        its own ``mailRateLimit``, else its domain's, else the
                                        setting ``default_rate_limit``, else ``unlimited``
                                        (``mailrouter.routing.rate_limit``).  Never 1; a
                                        garbled value is 75 (Exim then defers: never "no limit")
======================================  ==========================================================

ADDRESS and SENDER are taken as Exim holds them (``$sender_address``: the
client's quoting, escapes and case) and compared in the one form routing uses,
:func:`mailrouter.names.envelope_address` -- ``"spammer"@Bad.Example`` is
``spammer@bad.example``, for the entries of ``blacklisted_senders`` too.

Address data (one line, the contract with ``mailrouter-deliver``)::

    mailbox=<absolute path> format=<mbox|maildir> quota=<raw mailQuota or 0> uid=<int> gid=<int>

The mailbox path is built from the configured template and the canonical
local part and domain, never taken from LDAP.

Exit codes:
    0   the answer is on stdout (one line)
    1   LDAP answered and there is no such thing (or the predicate is false)
    75  anything else: LDAP down or slow, bad configuration (a garbled mailQuota
        or unusable per-user ids included), bad arguments (unknown KIND, wrong
        number of ARGs), any unexpected exception (mailrouter.cmd.guard maps
        escapes and import failures)

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
from collections.abc import Sequence

from mailrouter import config as config_module
from mailrouter.errors import MailrouterError, TemporaryFailure
from mailrouter.exitcodes import EX_NOTFOUND, EX_OK, EX_TEMPFAIL
from mailrouter.lookup import KINDS, answer


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
