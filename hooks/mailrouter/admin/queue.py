"""Exim's queue: list, show, flush, thaw and remove messages.

Every function takes the Exim command line first (:func:`mailrouter.admin.eximcmd.exim_argv`:
the system's ``exim4``, or ``$MAILROUTER_EXIM`` for a hub such as the sandbox)
and runs Exim's own queue options; nothing here reads or writes the spool
directly.  Returns JSON-ready data; raises only AdminError (``invalid`` for a
malformed message id, ``not_found`` for an id not in the queue, ``refused`` when
Exim cannot be run or refuses -- typically not root, or not an Exim admin user).

    list            exim -bp    [{"id", "age", "size", "sender", "frozen", "recipients"}]
                                (``age`` and ``size`` as Exim prints them: ``25m``, ``1.2K``;
                                each recipient ``{"address", "delivered"}``)
    show ID         exim -Mvh / -Mvl (/ -Mvb)   the entry of ``list`` plus ``headers``
                                (one string per header line, folded lines joined),
                                ``log`` (the message's own log lines) and, asked for, ``body``
    flush           exim -qf    force a delivery attempt of every message now
                                (``-qff`` with frozen: frozen messages too)
    thaw ID         exim -Mt
    remove ID       exim -Mrm   (no bounce is sent)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mailrouter.admin import eximcmd
from mailrouter.errors import AdminError

# Exim 4.96 ids are 6-6-2 base-62 characters; 4.97 and later 6-11-4.
MESSAGE_ID = re.compile(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}")
_HEAD = re.compile(
    r"^\s*(\S+)\s+(\S+)\s+(" + MESSAGE_ID.pattern + r")\s+<(.*?)>(\s+\*\*\* frozen \*\*\*)?\s*$"
)
_RECIPIENT = re.compile(r"^\s+(\+?D\s+)?(\S+)\s*$")
# A header line of the spool's -H file: 3-digit length, a flag ("*" = deleted), a space.
_SPOOL_HEADER = re.compile(r"^\d{3}(.) (.*)$")


def message_id(text: str) -> str:
    value = text.strip()
    if not MESSAGE_ID.fullmatch(value):
        raise AdminError(f"invalid message id {text!r}: expected one as `queue list` shows it "
                         "(like 1xXuRS-0008QK-0C)", field="id")
    return value


def _exim(exim: Sequence[str], *args: str) -> eximcmd.Ran:
    ran = eximcmd.run([*exim, *args])
    if eximcmd.configuration_error(ran.output):
        raise AdminError(f"exim: {ran.output.strip()}", kind="refused")
    return ran


def parse_queue(text: str) -> list[dict[str, Any]]:
    """``exim -bp`` output as a list of messages."""
    messages: list[dict[str, Any]] = []
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            age, size, ident, sender, frozen = head.groups()
            messages.append({"id": ident, "age": age, "size": size, "sender": sender,
                             "frozen": bool(frozen), "recipients": []})
            continue
        recipient = _RECIPIENT.match(line)
        if recipient and messages:
            messages[-1]["recipients"].append({"address": recipient.group(2),
                                               "delivered": bool(recipient.group(1))})
    return messages


def list_queue(exim: Sequence[str]) -> list[dict[str, Any]]:
    ran = _exim(exim, "-bp")
    if ran.rc != 0:
        raise AdminError(f"exim -bp failed (rc {ran.rc}): {ran.output.strip()}", kind="refused")
    return parse_queue(ran.output)


def _find(exim: Sequence[str], ident: str) -> dict[str, Any]:
    for message in list_queue(exim):
        if message["id"] == ident:
            return message
    raise AdminError(f"no message {ident} in the queue", kind="not_found", field="id")


def parse_spool_headers(text: str) -> list[str]:
    """The live headers of an ``exim -Mvh`` listing (deleted ones left out)."""
    _, _, block = text.partition("\n\n")
    headers: list[str] = []
    live = False
    for line in block.splitlines():
        found = _SPOOL_HEADER.match(line)
        if found:
            live = found.group(1) != "*"
            if live:
                headers.append(found.group(2))
        elif line[:1] in (" ", "\t") and live and headers:
            headers[-1] += " " + line.strip()
    return headers


def show_message(exim: Sequence[str], text_id: str, body: bool = False) -> dict[str, Any]:
    ident = message_id(text_id)
    info = _find(exim, ident)
    info["headers"] = parse_spool_headers(_exim(exim, "-Mvh", ident).output)
    log = _exim(exim, "-Mvl", ident)
    info["log"] = log.output.splitlines() if log.rc == 0 else []
    if body:
        ran = _exim(exim, "-Mvb", ident)
        # The first line names the spool file (ID-D), not the message.
        info["body"] = ran.output.partition("\n")[2] if ran.rc == 0 else None
    return info


def flush(exim: Sequence[str], frozen: bool = False) -> dict[str, Any]:
    """One forced queue run (``-qf``; ``-qff`` also tries frozen messages); the queue after it."""
    ran = _exim(exim, "-qff" if frozen else "-qf")
    if ran.rc != 0:
        raise AdminError(f"exim queue run failed (rc {ran.rc}): {ran.output.strip()}", kind="refused")
    left = list_queue(exim)
    return {"ok": True, "message": f"queue run done; {len(left)} message(s) still queued",
            "queued": len(left), "messages": left}


def _change(exim: Sequence[str], text_id: str, option: str, verb: str) -> dict[str, Any]:
    ident = message_id(text_id)
    _find(exim, ident)  # not_found before Exim's own, vaguer, words
    ran = _exim(exim, option, ident)
    if ran.rc != 0:
        raise AdminError(f"cannot {verb} {ident}: {ran.output.strip()}", kind="refused")
    return {"ok": True, "message": ran.output.strip() or f"{verb} {ident}", "id": ident}


def thaw(exim: Sequence[str], text_id: str) -> dict[str, Any]:
    return _change(exim, text_id, "-Mt", "thaw")


def remove(exim: Sequence[str], text_id: str) -> dict[str, Any]:
    return _change(exim, text_id, "-Mrm", "remove")
