"""``mailrouter-admin export ldif DOMAIN [--output FILE]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailrouter.admin import export
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.exitcodes import EX_OK


def ldif(cli: Cli) -> int:
    result = export.export_ldif(cli.session(), cli.args.domain)
    if cli.args.output:
        Path(cli.args.output).write_text(result["ldif"], encoding="utf-8")
        message = f"exported {result['entries']} entries of {result['domain']} to {cli.args.output}"
        return cli.output.done({"ok": True, "message": message, "domain": result["domain"],
                                "entries": result["entries"]})
    if cli.json:
        cli.output.emit(result, "")
    else:
        cli.output.out.write(result["ldif"])
    return EX_OK


def register(top: Any) -> None:
    g = group(top, "export", "export a domain")
    p = leaf(g, "ldif", ldif, "LDIF of a domain (password hashes are readable by no one: not exported)")
    p.add_argument("domain", help="the domain")
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
