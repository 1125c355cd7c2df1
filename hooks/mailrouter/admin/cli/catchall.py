"""``mailrouter-admin catchall set|clear|show``."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import catchall
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.admin.cli.output import pairs
from mailrouter.exitcodes import EX_OK


def set_(cli: Cli) -> int:
    return cli.output.done(catchall.set_catchall(cli.session(), cli.args.domain, cli.args.targets))


def clear(cli: Cli) -> int:
    return cli.output.done(catchall.clear_catchall(cli.session(), cli.args.domain))


def show(cli: Cli) -> int:
    info = catchall.show_catchall(cli.session(), cli.args.domain)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK


def register(top: Any) -> None:
    g = group(top, "catchall", "the catch-all (alias 'default') of a domain")
    p = leaf(g, "set", set_, "set the catch-all targets (mail to every unknown local part goes there)")
    p.add_argument("domain", help="the domain")
    p.add_argument("targets", nargs="+", metavar="target", help="target addresses (local@domain)")
    p = leaf(g, "clear", clear, "remove the catch-all (unknown local parts are refused again)")
    p.add_argument("domain", help="the domain")
    p = leaf(g, "show", show, "show the catch-all")
    p.add_argument("domain", help="the domain")
