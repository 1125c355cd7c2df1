"""Outbound rate limits as stored in ``mailRateLimit``: ``100 / 1h`` or ``unlimited``.

The one syntax of a stored value (checked by the hook before Exim sees it, so a
value Exim would misread never reaches its ``ratelimit`` condition)::

    COUNT " / " NUMBER UNIT        e.g. "100 / 1h", "3 / 2s", "2000 / 1d"
    "unlimited"

* COUNT: recipients per period, 2..1000000, decimal without leading zeros
  (Exim counts the recipient being checked and refuses at a rate of COUNT or
  more, so after a quiet spell the first recipient alone is a rate of 1: a
  COUNT of 1 would refuse every recipient, and is not a limit one can set);
* NUMBER UNIT: the period, an Exim time interval of one number and one unit,
  ``s`` ``m`` ``h`` ``d`` ``w`` (lower case), 1 s .. 31 days, no leading zeros;
* exactly one space on each side of the ``/``; nothing else (no tabs, no
  ``per_*`` options, no key: the Exim configuration adds those).

``unlimited`` is a value, not an absence: on a user it lifts the domain's and
the system default's limit for that user (a mailing-list robot); on a domain,
the system default's.  Absent means "ask the next level" (user, then domain,
then the setting ``default_rate_limit``; absent everywhere: unlimited).

Anything else is *garbled*: the hook treats it as a temporary failure (the
submission is deferred with 451 until an admin fixes the entry -- failing
closed, a broken limit never means no limit).  Admins type values leniently
(:func:`canonical`: any spacing and case) and the canonical form is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailrouter.errors import GarbledRateLimit

UNLIMITED = "unlimited"
MIN_COUNT = 2
MAX_COUNT = 1_000_000
MAX_PERIOD_SECONDS = 31 * 86400
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# The stored form, exactly.
_STORED = re.compile(r"([1-9][0-9]{0,6}) / ([1-9][0-9]{0,7})([smhdw])")
# What an admin may type: any spacing, any case, leading zeros tolerated.
_TYPED = re.compile(r"\s*([0-9]{1,9})\s*/\s*([0-9]{1,9})\s*([smhdw])\s*", re.IGNORECASE)

SYNTAX_HELP = ("COUNT / PERIOD: recipients per period, e.g. 100 / 1h (period: a number and s, m, h, d "
               "or w, 1s..31d; count 2..1000000), or unlimited")


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` recipients per ``period`` (``number`` ``unit``)."""

    count: int
    number: int
    unit: str

    @property
    def period(self) -> str:
        return f"{self.number}{self.unit}"

    @property
    def period_seconds(self) -> int:
        return self.number * UNIT_SECONDS[self.unit]

    def __str__(self) -> str:
        return f"{self.count} / {self.period}"


def _checked(count: int, number: int, unit: str, raw: str) -> RateLimit:
    limit = RateLimit(count, number, unit)
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise GarbledRateLimit(f"rate limit {raw!r}: the count must be {MIN_COUNT}..{MAX_COUNT}")
    if not 1 <= limit.period_seconds <= MAX_PERIOD_SECONDS:
        raise GarbledRateLimit(f"rate limit {raw!r}: the period must be 1s..31d")
    return limit


def parse(raw: str) -> RateLimit | None:
    """A stored ``mailRateLimit`` value: the limit, or ``None`` for ``unlimited``.

    Strict (the stored syntax above); :class:`GarbledRateLimit` otherwise."""
    if raw == UNLIMITED:
        return None
    match = _STORED.fullmatch(raw)
    if not match:
        raise GarbledRateLimit(f"unreadable mailRateLimit {raw!r}")
    return _checked(int(match.group(1)), int(match.group(2)), match.group(3), raw)


def canonical(typed: str) -> str:
    """The stored form of a value an admin typed (``100/1H`` -> ``100 / 1h``);
    :class:`GarbledRateLimit` with the reason when it is not a rate limit."""
    if typed.strip().lower() == UNLIMITED:
        return UNLIMITED
    match = _TYPED.fullmatch(typed)
    if not match:
        raise GarbledRateLimit(f"rate limit {typed!r} is not COUNT / PERIOD")
    return str(_checked(int(match.group(1)), int(match.group(2)), match.group(3).lower(), typed))
