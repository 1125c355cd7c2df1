"""``mailrouter-admin alias add|set|remove|list|show|add-target|remove-target``."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import aliases
from mailrouter.admin.cli.base import Cli, group, leaf, page_options
from mailrouter.admin.cli.output import pairs
from mailrouter.exitcodes import EX_OK


def add(cli: Cli) -> int:
    return cli.output.done(aliases.add_alias(cli.session(), cli.args.address, cli.args.targets))


def put(cli: Cli) -> int:
    return cli.output.done(aliases.put_alias(cli.session(), cli.args.address, cli.args.targets))


def remove(cli: Cli) -> int:
    return cli.output.done(aliases.remove_alias(cli.session(), cli.args.address))


def list_(cli: Cli) -> int:
    page = aliases.list_aliases(cli.session(), cli.args.domain, cli.args.contains, cli.args.offset,
                                cli.args.limit)
    return cli.output.page(page, ["alias", "status", "catchall", "targets"])


def show(cli: Cli) -> int:
    info = aliases.show_alias(cli.session(), cli.args.address)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK


def targets(cli: Cli) -> int:
    change = aliases.add_targets if cli.args.command2 == "add-target" else aliases.remove_targets
    return cli.output.done(change(cli.session(), cli.args.address, cli.args.targets))


ALIAS_HELP = "the alias address, local@domain"
TARGETS_HELP = "target addresses (local@domain; never a |command, /file or :include:)"


def register(top: Any) -> None:
    g = group(top, "alias", "aliases (an address that forwards to other addresses)")
    p = leaf(g, "add", add, "add an alias (refused if it would loop back to itself)")
    p.add_argument("address", help=ALIAS_HELP)
    p.add_argument("targets", nargs="+", metavar="target", help=TARGETS_HELP)
    p = leaf(g, "set", put, "create an alias or replace all its targets")
    p.add_argument("address", help=ALIAS_HELP)
    p.add_argument("targets", nargs="+", metavar="target", help=TARGETS_HELP)
    p = leaf(g, "remove", remove, "remove an alias")
    p.add_argument("address", help=ALIAS_HELP)
    p = leaf(g, "list", list_, "list the aliases of a domain (the catch-all included)")
    p.add_argument("domain", help="the domain")
    page_options(p, "alias names")
    p = leaf(g, "show", show, "show an alias and its targets")
    p.add_argument("address", help=ALIAS_HELP)
    for verb in ("add-target", "remove-target"):
        p = leaf(g, verb, targets, f"{verb.split('-')[0]} targets of an existing alias")
        p.add_argument("address", help=ALIAS_HELP)
        p.add_argument("targets", nargs="+", metavar="target", help=TARGETS_HELP)
