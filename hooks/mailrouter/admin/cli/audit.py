"""``mailrouter-admin audit [--domain D] [--since T] [--actor A]``."""

from __future__ import annotations

import argparse
from typing import Any

from mailrouter.admin import audit
from mailrouter.admin.cli.base import Cli, common_options
from mailrouter.admin.cli.output import table
from mailrouter.exitcodes import EX_OK


def change_text(change: dict[str, Any]) -> str:
    """``mail=replace a@x``, ``member+add uid=...``: one change as one short item."""
    sign = {"add": "+", "delete": "-", "replace": "=", "increment": "#"}[change["op"]]
    values = change["values"]
    return f"{change['attribute']}{sign}{','.join(values)}" if values else f"{change['attribute']}{sign}"


def show(cli: Cli) -> int:
    rows = audit.records(cli.session(), domain=cli.args.domain, since=cli.args.since, actor=cli.args.actor)

    def human() -> str:
        lines = [{
            "time": row["time"],
            "actor": row["actor"],
            "operation": row["operation"],
            "target": row["target"] + (f" -> {row['new_dn']}" if "new_dn" in row else ""),
            "changes": "; ".join(change_text(c) for c in row["changes"]),
        } for row in rows]
        return table(lines, ["time", "actor", "operation", "target", "changes"])

    cli.output.emit(rows, human)
    return EX_OK


def register(top: Any) -> None:
    p: argparse.ArgumentParser = top.add_parser(
        "audit", allow_abbrev=False,
        help="who changed what: slapd's audit log (global admins: all; domain admins: their domains)")
    common_options(p)
    p.set_defaults(handler=show)
    p.add_argument("--domain", metavar="D", help="only changes to domain D and its entries")
    p.add_argument("--since", metavar="T",
                   help="only changes since T: 7d, 12h, 30m ago, or an ISO date/time (UTC)")
    p.add_argument("--actor", metavar="A",
                   help="only changes made by A: a DN, an address or a global admin's name")
