"""Reading a caller's input from a descriptor, bounded: the one loop the executables share."""

from __future__ import annotations

import os


def read_at_most(fd: int, limit: int) -> bytes:
    """Everything on ``fd`` up to end of input, but never more than ``limit + 1`` bytes:
    one byte over the limit is enough for the caller to tell "too long" from "just fits"."""
    chunks = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, limit + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
