"""``mailrouter-admin setting get|list|set|add|remove``."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import settings
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.admin.cli.output import table
from mailrouter.admin.normalise import SETTINGS
from mailrouter.exitcodes import EX_OK


def get(cli: Cli) -> int:
    info = settings.get_setting(cli.session(), cli.args.name)
    values: list[str] = info["values"]
    cli.output.emit(info, lambda: "\n".join(values) or "(none)")
    return EX_OK


def list_(cli: Cli) -> int:
    rows = settings.list_settings(cli.session())
    cli.output.emit(rows, lambda: table(rows, ["setting", "values"]))
    return EX_OK


def change(cli: Cli) -> int:
    return cli.output.done(settings.change_setting(cli.session(), cli.args.name, cli.args.command2,
                                                   cli.args.values))


NAME_HELP = "one of: " + ", ".join(SETTINGS)
VALUES_HELP = ("IPs or networks (host_accept_relay, blacklisted_hosts), domains (blacklisted_domains, "
               "backup_mx_domains), addresses (blacklisted_senders) or one rate limit (default_rate_limit: "
               "100/1h or unlimited, for users whose entry and domain set none)")


def register(top: Any) -> None:
    g = group(top, "setting", "system settings (global admins)")
    p = leaf(g, "get", get, "values of a setting")
    p.add_argument("name", help=NAME_HELP)
    leaf(g, "list", list_, "every setting with its values")
    for mode in settings.MODES:
        what = {"set": "replace every value of", "add": "add values to", "remove": "remove values from"}[mode]
        p = leaf(g, mode, change, f"{what} a setting")
        p.add_argument("name", help=NAME_HELP)
        p.add_argument("values", nargs="+" if mode != "set" else "*", metavar="value", help=VALUES_HELP)
