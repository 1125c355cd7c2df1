"""``mailrouter-admin domain add|remove|list|show|disable|enable|ratelimit``."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import domains, ratelimits
from mailrouter.admin.cli.base import Cli, group, leaf, page_options
from mailrouter.admin.cli.output import pairs
from mailrouter.exitcodes import EX_OK


def add(cli: Cli) -> int:
    return cli.output.done(domains.add_domain(cli.session(), cli.args.domain, cli.args.description))


def remove(cli: Cli) -> int:
    return cli.output.done(domains.remove_domain(cli.session(), cli.args.domain, cli.args.recursive))


def list_(cli: Cli) -> int:
    page = domains.list_domains(cli.session(), cli.args.contains, cli.args.offset, cli.args.limit,
                                counts=cli.args.counts)
    columns = ["domain", "status", "users", "aliases", "description"] if cli.args.counts else \
        ["domain", "status", "description"]
    return cli.output.page(page, columns)


def show(cli: Cli) -> int:
    info = domains.show_domain(cli.session(), cli.args.domain)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK


def enable(cli: Cli) -> int:
    return cli.output.done(domains.set_domain_enabled(cli.session(), cli.args.domain,
                                                      cli.args.command2 == "enable"))


def ratelimit(cli: Cli) -> int:
    limit = " ".join(cli.args.limit)  # "100 / 1h" may come as three words
    return cli.output.done(ratelimits.set_domain_rate_limit(cli.session(), cli.args.domain, limit))


DOMAIN_HELP = "the domain name (a U-label such as bücher.example becomes its xn-- form)"


def register(top: Any) -> None:
    g = group(top, "domain", "virtual domains")
    p = leaf(g, "add", add, "add a domain")
    p.add_argument("domain", help=DOMAIN_HELP)
    p.add_argument("--description", metavar="TEXT", help="a note for the admins")
    p = leaf(g, "remove", remove, "remove a domain")
    p.add_argument("domain", help=DOMAIN_HELP)
    p.add_argument("--recursive", action="store_true", help="also its users, aliases and admin group")
    p = leaf(g, "list", list_, "list domains")
    page_options(p, "domains")
    p.add_argument("--counts", action="store_true", help="also count each domain's users and aliases")
    p = leaf(g, "show", show, "show a domain: status, counts, catch-all, admins")
    p.add_argument("domain", help=DOMAIN_HELP)
    p = leaf(g, "disable", enable, "refuse mail and logins for the whole domain, keeping all data "
             "(global admins only)")
    p.add_argument("domain", help=DOMAIN_HELP)
    p = leaf(g, "enable", enable, "accept mail and logins for a disabled domain again (global admins only)")
    p.add_argument("domain", help=DOMAIN_HELP)
    p = leaf(g, "ratelimit", ratelimit, "set the outbound limit of the domain's users that have none of "
             "their own (domain and global admins)")
    p.add_argument("domain", help=DOMAIN_HELP)
    p.add_argument("limit", nargs="+",
                   help=ratelimits.HELP + " (then the setting default_rate_limit applies)")
