"""Quota values as stored in ``mailQuota``: ``32M``, ``1G``, ``500K``, ``1048576``.

``0`` or an absent value means unlimited.  Anything else is *garbled*: callers
treat it as a temporary failure (an admin can fix the entry; bouncing the mail
would lose it) and log it.
"""

from __future__ import annotations

import re

from mailrouter.errors import GarbledQuota

UNLIMITED = 0
_QUOTA = re.compile(r"(\d{1,15})([KMG]?)B?", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_quota(raw: str | None) -> int:
    """Bytes allowed, or :data:`UNLIMITED` (0)."""
    if raw is None or raw.strip() == "":
        return UNLIMITED
    match = _QUOTA.fullmatch(raw.strip())
    if not match:
        raise GarbledQuota(f"unreadable mailQuota {raw!r}")
    return int(match.group(1)) * _FACTORS[match.group(2).upper()]
