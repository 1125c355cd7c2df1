"""``mailrouter-admin queue list|show|flush|thaw|remove``: Exim's queue.

Runs Exim's own queue options (see :mod:`mailrouter.admin.queue`) with the
system's ``exim4`` or ``--exim-command``/``$MAILROUTER_EXIM`` (the sandbox's
command, from ``mailrouter-sandbox env``).  Needs root or an Exim admin user;
no LDAP bind.
"""

from __future__ import annotations

from typing import Any

from mailrouter.admin import eximcmd, queue
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.admin.cli.output import pairs, table
from mailrouter.admin.cli.test import EXIM_COMMAND_HELP
from mailrouter.exitcodes import EX_OK


def _exim(cli: Cli) -> list[str]:
    return eximcmd.exim_argv(cli.args.exim_command)


def _rows(messages: list[dict[str, Any]]) -> str:
    rows = [{**m, "recipients": [r["address"] + (" (delivered)" if r["delivered"] else "")
                                 for r in m["recipients"]]}
            for m in messages]
    return table(rows, ["id", "age", "size", "frozen", "sender", "recipients"])


def list_(cli: Cli) -> int:
    messages = queue.list_queue(_exim(cli))
    cli.output.emit(messages, lambda: _rows(messages))
    return EX_OK


def show(cli: Cli) -> int:
    info = queue.show_message(_exim(cli), cli.args.id, body=cli.args.body)

    def human() -> str:
        head = pairs({k: v for k, v in info.items() if k not in ("headers", "log", "body")})
        parts = [head, "--- headers ---", *info["headers"], "--- log ---", *info["log"]]
        if cli.args.body:
            parts += ["--- body ---", info.get("body") or ""]
        return "\n".join(parts)

    cli.output.emit(info, human)
    return EX_OK


def flush(cli: Cli) -> int:
    result = queue.flush(_exim(cli), frozen=cli.args.frozen)
    if cli.json:
        cli.output.emit(result, "")
        return EX_OK
    cli.output.emit(result, lambda: result["message"] + ("\n" + _rows(result["messages"])
                                                         if result["messages"] else ""))
    return EX_OK


def thaw(cli: Cli) -> int:
    return cli.output.done(queue.thaw(_exim(cli), cli.args.id))


def remove(cli: Cli) -> int:
    return cli.output.done(queue.remove(_exim(cli), cli.args.id))


ID_HELP = "a message id as `queue list` shows it (like 1xXuRS-0008QK-0C)"


def register(top: Any) -> None:
    g = group(top, "queue", "Exim's queue: list, show, flush, thaw, remove (root or an Exim admin)")
    commands = [
        ("list", list_, "every queued message: id, age, size, frozen, sender, recipients"),
        ("show", show, "one message: its entry, headers and Exim's log lines for it"),
        ("flush", flush, "try to deliver every queued message now (exim -qf)"),
        ("thaw", thaw, "thaw a frozen message (it is tried again at the next queue run)"),
        ("remove", remove, "remove a message from the queue, without a bounce"),
    ]
    for name, handler, help_text in commands:
        p = leaf(g, name, handler, help_text)
        if name in ("show", "thaw", "remove"):
            p.add_argument("id", help=ID_HELP)
        if name == "show":
            p.add_argument("--body", action="store_true", help="also print the message body")
        if name == "flush":
            p.add_argument("--frozen", action="store_true", help="frozen messages too (exim -qff)")
        p.add_argument("--exim-command", metavar="CMD", help=EXIM_COMMAND_HELP)
