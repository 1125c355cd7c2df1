"""Routing and policy decisions, free of I/O except through a :class:`Directory`.

``mailrouter.lookup`` (the decision table behind ``mailrouter-lookup``, Exim's
``${run}`` hook, and ``mailrouter-lookupd``) is a thin shell around these
functions; the rules live here so that they can be read, and tested, in one place.

Rules, and why:

* **Redirect targets from LDAP are data, never instructions.**  A domain admin
  can write any ``mailAliasedName``.  Exim's redirect router would treat
  ``|cmd`` as a pipe, ``/path`` as a file, ``:include:/path`` as a file to read
  and ``:blackhole:``/``:fail:`` as actions.  So a target is passed to Exim only
  when it is a plain ``local@domain`` made of a conservative character set
  (:func:`redirect_target`); everything else is dropped.  An alias left with no
  usable target fails with a fixed text (never one derived from LDAP or from
  the envelope, which Exim would echo to the client).
* **Keys are canonical or nothing.**  Exim lower-cases local parts and domains
  before routing; anything that is then not a canonical name (``/``, ``..``,
  quotes, spaces, over-long, ...) cannot name an entry, so it is "not found"
  without a query -- and the catch-all refuses it instead of swallowing it.
* **Disabled is not absent.**  A disabled user or alias is refused with a 5xx;
  it never falls through to the catch-all.
* **An outbound rate limit never fails open.**  The limit of an authenticated
  sender is the first of: their own ``mailRateLimit``, their domain's, the
  setting ``default_rate_limit``; none anywhere is unlimited
  (:func:`rate_limit`).  A value that cannot be read is a temporary failure
  (the submission defers until an admin fixes it), never "no limit".
* **Quota at RCPT and DATA time follows aliases** to every local mailbox they
  reach, so a full mailbox behind an alias gets ``452`` (``552`` when the
  message can never fit) before the message is accepted (no backscatter).
  The check is a best effort: when the storage cannot be read by the SMTP
  process it says "not full" and the delivery hook, which is the authority,
  decides.  Both count with :mod:`mailrouter.mailbox.usage`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailrouter import names, quota, ratelimit
from mailrouter.config import SpoolConfig
from mailrouter.errors import ConfigError, GarbledQuota, GarbledRateLimit, InvalidName
from mailrouter.mailbox import spool, usage
from mailrouter.mailbox.addressdata import AddressData, format_address_data

if TYPE_CHECKING:
    # Types only: importing the directory layer loads ldap3 (~75 ms), which
    # the lookup hook pays only when it really has to ask LDAP.
    from mailrouter.directory import Directory, User

# Fixed texts for Exim redirect data.  ":fail:" texts are sent to the SMTP client
# at RCPT time (verify = recipient) and end up in bounces: never interpolate.
FAIL_DISABLED = ":fail: 5.2.1 mailbox disabled"
FAIL_NO_TARGET = ":fail: 5.1.1 address has no valid destination"
FAIL_BAD_LOCAL_PART = ":fail: 5.1.3 invalid local part"
FAIL_ALIAS_LOOP = ":fail: 5.4.6 alias loop"

# Aliases nest; a chain deeper than this is treated as a loop for quota purposes
# (Exim's own routing has its own ancestor check).
MAX_ALIAS_DEPTH = 10
# An alias fan-out larger than this is not followed further for the quota check.
MAX_EXPANDED_TARGETS = 200


def redirect_target(raw: str) -> str | None:
    """``raw`` as a safe Exim redirect item ``local@domain``, or ``None`` to drop it.

    Refuses pipes, files, ``:include:`` and every other special item by
    construction: the first character must be a letter, digit or ``_+=-``.
    """
    value = raw.strip()
    if len(value) > names.MAX_ADDRESS or value.count("@") != 1:
        return None
    local, _, domain = value.partition("@")
    domain = domain.lower()
    if not names.is_target_local_part(local):  # a dot-atom, upper case kept
        return None
    if not names.is_domain(domain):
        return None
    return f"{local}@{domain}"


def redirect_data(raw_targets: Iterable[str]) -> str:
    """Exim redirect data for an alias's ``mailAliasedName`` values."""
    seen: list[str] = []
    for raw in raw_targets:
        target = redirect_target(raw)
        if target is not None and target not in seen:
            seen.append(target)
    return ", ".join(seen) if seen else FAIL_NO_TARGET


def canonical_key(local: str, domain: str) -> tuple[str, str] | None:
    """``(local, domain)`` if both are canonical names, else ``None`` (cannot exist)."""
    if names.is_local_part(local) and names.is_domain(domain):
        return local, domain
    return None


def alias_answer(directory: Directory, local: str, domain: str) -> str | None:
    """Redirect data for the alias ``local@domain``; ``None`` when there is no alias."""
    if canonical_key(local, domain) is None:
        return None
    alias = directory.alias(local, domain)
    if alias is None:
        return None
    if not alias.active:
        return FAIL_DISABLED
    return redirect_data(alias.targets)


def active_user(directory: Directory, local: str, domain: str, extra: Sequence[str] = ()) -> User | None:
    """The user ``local@domain`` if it exists and is active (``extra``: attributes read along)."""
    if canonical_key(local, domain) is None:
        return None
    user = directory.user(local, domain, extra)
    return user if user is not None and user.active else None


def home_node(directory: Directory, local: str, domain: str) -> str | None:
    """The cluster node that stores active user ``local@domain``'s mailbox (its
    ``mailHost``, lower case), or None: no such active user, or no home (every node
    delivers).  A value that is not a host name raises :class:`ConfigError`
    (temporary: the mail waits for an admin, it is never routed on a guess)."""
    user = active_user(directory, local, domain)
    if user is None or user.home is None:
        return None
    home = user.home.strip().lower()
    if not names.is_node_name(home):
        raise ConfigError(f"{user.dn}: mailHost {user.home[:80]!r} is not a node name")
    return home


def catchall_answer(directory: Directory, local: str, domain: str) -> str | None:
    """Redirect data when the aliases and users routers declined ``local@domain``.

    Called only after both declined, so an existing entry here means something
    specific: a disabled user (refuse, do not swallow), an alias (Exim skipped
    the aliases router because of a loop), or a name that cannot exist.
    """
    if not names.is_domain(domain):
        return None
    if not names.is_local_part(local):
        # Refuse, never hand a hostile local part to the catch-all's mailbox.
        return FAIL_BAD_LOCAL_PART if directory.is_local_domain(domain) else None
    user = directory.user(local, domain)
    if user is not None and not user.active:
        return FAIL_DISABLED
    alias = directory.alias(local, domain)
    if alias is not None:
        return FAIL_ALIAS_LOOP if alias.active else FAIL_DISABLED
    catchall = directory.catchall(domain)
    if catchall is None or not catchall.active:
        return None
    return redirect_data(catchall.targets)


# -- address data for the delivery hook -------------------------------------

def mailbox_target(user: User, spool_config: SpoolConfig) -> AddressData:
    """Where and as whom ``user``'s mail is stored (the delivery's target)."""
    path, mailbox_format = spool.user_mailbox(user.local, user.domain, user.mailbox_format, spool_config)
    raw_quota = (user.quota or "0").strip() or "0"
    try:
        quota.parse_quota(raw_quota)
    except GarbledQuota as exc:
        # Temporary: an admin fixes the entry and the queued mail goes through.
        raise ConfigError(str(exc)) from exc
    uid, gid = spool.storage_ids(user.uid_number, user.gid_number, spool_config, who=user.dn)
    return AddressData(mailbox=path, format=mailbox_format, quota_raw=raw_quota, uid=uid, gid=gid)


def address_data(user: User, spool_config: SpoolConfig) -> str:
    """The one-line ``$address_data`` for the pipe transport (:mod:`mailrouter.mailbox.addressdata`)."""
    return format_address_data(mailbox_target(user, spool_config))


def delivery_target(
    directory: Directory, spool_config: SpoolConfig, local: str, domain: str
) -> AddressData | None:
    """Where and as whom mail for ``local@domain`` is stored; ``None``: no such active user.

    The one decision behind both delivery front ends: the ``user`` lookup (the
    pipe path's ``$address_data``) and ``mailrouter-lmtpd``'s RCPT, which LMTP
    gives only the address.  Everything about the target (path, format, quota,
    ids) is decided here, through :func:`mailbox_target`.
    """
    user = active_user(directory, local, domain)
    return mailbox_target(user, spool_config) if user is not None else None


# -- quota at RCPT time ------------------------------------------------------

@dataclass(frozen=True)
class Expansion:
    """Where an address ends up: active local users and everything else."""

    users: tuple[User, ...]
    other: tuple[str, ...]  # remote or unresolvable targets, informational


def expand(directory: Directory, local: str, domain: str) -> Expansion:
    """Follow aliases (and the catch-all) to the local users ``local@domain`` reaches.

    Mirrors the router order -- alias, user, catch-all -- with a visited set and
    a depth limit, so loops and huge fan-outs terminate.
    """
    users: dict[str, User] = {}
    other: list[str] = []
    visited: set[tuple[str, str]] = set()
    local_domains: dict[str, bool] = {}

    def is_local(dom: str) -> bool:
        if dom not in local_domains:
            local_domains[dom] = directory.is_local_domain(dom)
        return local_domains[dom]

    def walk(loc: str, dom: str, depth: int) -> None:
        if (loc, dom) in visited or depth > MAX_ALIAS_DEPTH or len(visited) > MAX_EXPANDED_TARGETS:
            return
        visited.add((loc, dom))
        if canonical_key(loc, dom) is None or not is_local(dom):
            other.append(f"{loc}@{dom}")
            return
        alias = directory.alias(loc, dom)
        if alias is not None:
            targets = alias.targets if alias.active else ()
        else:
            user = directory.user(loc, dom)
            if user is not None:
                if user.active:
                    users.setdefault(user.address, user)
                return
            catchall = directory.catchall(dom)
            targets = catchall.targets if catchall is not None and catchall.active else ()
        for raw in targets:
            target = redirect_target(raw)
            if target is None:
                continue
            tloc, _, tdom = target.rpartition("@")
            walk(tloc.lower(), tdom, depth + 1)

    walk(local, domain, 0)
    return Expansion(users=tuple(users.values()), other=tuple(other))


def is_over_quota(used: int, message_size: int, limit: int) -> bool:
    """Whether a message of ``message_size`` (<0: unknown) would exceed ``limit`` (0: none)."""
    if limit <= quota.UNLIMITED:
        return False
    return used + max(message_size, 0) > limit


# What a delivery stores beyond Exim's $message_size: the From_ line, the
# Return-path, Envelope-to and Delivery-date headers the pipe transport adds
# (each at most one 256-octet address long) and the blank separator -- well
# under this.  (">From" escaping is not counted: it is never a permanent reason.)
DELIVERY_ALLOWANCE = 4096

TOO_BIG = "toobig"  # the message alone exceeds a mailbox's whole quota: it can never fit
FULL = "full"  # a mailbox is too full for this message now


@dataclass(frozen=True)
class QuotaVerdict:
    """Why a message cannot be stored now: :data:`TOO_BIG` wins over :data:`FULL`."""

    word: str
    addresses: tuple[str, ...]  # the mailboxes of that verdict

    def __str__(self) -> str:
        return " ".join((self.word, *self.addresses))


def quota_verdict(
    directory: Directory, spool_config: SpoolConfig, local: str, domain: str, message_size: int
) -> QuotaVerdict | None:
    """Whether a message of ``message_size`` octets (<0: unknown) fits every mailbox
    ``local@domain`` reaches; ``None`` when it does.

    A known size is counted with :data:`DELIVERY_ALLOWANCE`, so a message this
    accepts is never refused by the delivery hook as larger than the whole
    quota (a bounce, possibly to a forged sender).  Unknown size (RCPT without
    SIZE): only a mailbox already over its quota is full.
    """
    counted = message_size + DELIVERY_ALLOWANCE if message_size >= 0 else -1
    too_big: list[str] = []
    full: list[str] = []
    for user in expand(directory, local, domain).users:
        try:
            limit = quota.parse_quota(user.quota)
        except GarbledQuota as exc:
            raise ConfigError(str(exc)) from exc
        if limit == quota.UNLIMITED:
            continue
        if counted > limit:
            too_big.append(user.address)
            continue
        try:
            path, mailbox_format = spool.user_mailbox(
                user.local, user.domain, user.mailbox_format, spool_config
            )
        except InvalidName:
            continue
        used = usage.mailbox_usage(path, mailbox_format)
        if used is not None and is_over_quota(used, counted, limit):
            full.append(user.address)
    if too_big:
        return QuotaVerdict(TOO_BIG, tuple(too_big))
    if full:
        return QuotaVerdict(FULL, tuple(full))
    return None


# -- host and sender policy --------------------------------------------------

def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_matches(ip: str, patterns: Iterable[str]) -> bool:
    """Whether the client ``ip`` is one of ``patterns`` (addresses or networks).

    Host names and anything else unparsable in LDAP are ignored: matching a
    name would need DNS, which an attacker may control.
    """
    address = parse_ip(ip)
    if address is None:
        return False
    for pattern in patterns:
        try:
            network = ipaddress.ip_network(pattern.strip(), strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


def sender_blacklisted(sender: str, senders: Iterable[str], domains: Iterable[str]) -> bool:
    """Whether ``sender`` is listed, or its domain (or a parent domain of it) is.

    Both the sender and the listed addresses are compared in the form routing
    uses (:func:`names.envelope_address`): quoting, escapes and case cannot
    make a listed sender look unlisted.  Listed domains are compared
    lower-cased, without leading or trailing dots (``.spam.example`` and
    ``spam.example`` both list the domain and its subdomains).
    """
    key = names.envelope_address(sender.strip())
    if key is None:
        return False
    if any(names.envelope_address(listed.strip()) == key for listed in senders):
        return True
    domain = key[1]
    for listed in domains:
        listed = listed.strip().lower().strip(".")
        if listed and (domain == listed or domain.endswith("." + listed)):
            return True
    return False


def owns_sender(directory: Directory, sender: str, auth_id: str) -> bool:
    """Whether the authenticated ``auth_id`` may use ``sender`` as MAIL FROM.

    Its own address, or an alias of the same domain that delivers to it;
    ``sender`` is compared in the form routing uses (:func:`names.envelope_address`).
    """
    key = names.envelope_address(sender)  # "alice"@Example.COM is alice@example.com
    if key is None:
        return False
    try:
        auth_local, auth_domain = names.address(auth_id.lower())
        sender_local, sender_domain = names.local_part(key[0]), names.domain(key[1])
    except InvalidName:
        return False
    if (sender_local, sender_domain) == (auth_local, auth_domain):
        return True
    if sender_domain != auth_domain:
        return False
    return sender_local in directory.aliases_delivering_to(f"{auth_local}@{auth_domain}", auth_domain)


# -- outbound rate limit -----------------------------------------------------

# The system-wide default (a mailSetting, one value).
DEFAULT_RATE_LIMIT_SETTING = "default_rate_limit"


@dataclass(frozen=True)
class RateLimitChoice:
    """The limit that applies to one sender and where it came from."""

    limit: ratelimit.RateLimit | None  # None: unlimited
    source: str  # "user", "domain", "default" or "none" (set nowhere)

    @property
    def text(self) -> str:
        return str(self.limit) if self.limit is not None else ratelimit.UNLIMITED


def _rate_limit_value(raw: str, where: str) -> ratelimit.RateLimit | None:
    try:
        return ratelimit.parse(raw)
    except GarbledRateLimit as exc:
        # Temporary: an admin fixes the entry and the client's retry goes through.
        raise ConfigError(f"{where}: {exc}") from exc


def rate_limit(directory: Directory, auth_id: str) -> RateLimitChoice:
    """The outbound limit of the authenticated ``auth_id`` (``local@domain``).

    An ``auth_id`` that is not one of our canonical addresses (no login gives
    one) gets the system default.  See :func:`effective_rate_limit`."""
    try:
        local, domain = names.address(auth_id)
    except InvalidName:
        return effective_rate_limit(directory, None, None)
    return effective_rate_limit(directory, local, domain)


def effective_rate_limit(directory: Directory, local: str | None, domain: str | None) -> RateLimitChoice:
    """The first that is set: the user's ``mailRateLimit`` (``local`` given),
    the domain's (``domain`` given), the setting ``default_rate_limit``;
    ``unlimited`` is a value (it stops the search), absence everywhere is
    unlimited.  A garbled value, or a setting with several values, raises
    ConfigError: never read as "no limit"."""
    if local is not None and domain is not None:
        raw = directory.user_rate_limit(local, domain)
        if raw is not None:
            return RateLimitChoice(_rate_limit_value(raw, f"mailRateLimit of {local}@{domain}"), "user")
    if domain is not None:
        raw = directory.domain_rate_limit(domain)
        if raw is not None:
            return RateLimitChoice(_rate_limit_value(raw, f"mailRateLimit of {domain}"), "domain")
    found = directory.setting(DEFAULT_RATE_LIMIT_SETTING)
    if len(found) > 1:
        raise ConfigError(f"setting {DEFAULT_RATE_LIMIT_SETTING} has {len(found)} values, expected one")
    if found:
        where = f"setting {DEFAULT_RATE_LIMIT_SETTING}"
        return RateLimitChoice(_rate_limit_value(found[0], where), "default")
    return RateLimitChoice(None, "none")
