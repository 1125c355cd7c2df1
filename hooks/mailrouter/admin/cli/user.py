"""``mailrouter-admin user add|remove|list|show|passwd|quota|ratelimit|format|enable|disable|name|rename|
vacation|sieve``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mailrouter.admin import ratelimits, rules, users
from mailrouter.admin.cli.base import QUOTA_HELP, Cli, group, leaf, page_options
from mailrouter.admin.cli.output import pairs
from mailrouter.errors import AdminError
from mailrouter.exitcodes import EX_OK
from mailrouter.mailbox.addressdata import FORMATS

ADDRESS_HELP = "the user's address, local@domain"


def add(cli: Cli) -> int:
    args = cli.args
    session = cli.session()  # bind (and ask for the admin's password) before asking for the new one
    password = cli.new_password(allow_none=True)
    return cli.output.done(users.add_user(session, args.address, password, quota=args.quota, name=args.name,
                                          enabled=not args.disabled, admin=args.admin,
                                          mailbox_format=args.format))


def remove(cli: Cli) -> int:
    return cli.output.done(users.remove_user(cli.session(), cli.args.address))


def list_(cli: Cli) -> int:
    args = cli.args
    page = users.list_users(cli.session(), args.domain, args.contains, args.offset, args.limit)
    return cli.output.page(page, ["address", "status", "quota", "format", "name"])


def show(cli: Cli) -> int:
    info = users.show_user(cli.session(), cli.args.address)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK


def passwd(cli: Cli) -> int:
    session = cli.session()
    password = cli.new_password()
    assert password is not None
    return cli.output.done(users.set_password(session, cli.args.address, password))


def quota(cli: Cli) -> int:
    return cli.output.done(users.set_quota(cli.session(), cli.args.address, cli.args.quota))


def ratelimit(cli: Cli) -> int:
    limit = " ".join(cli.args.limit)  # "100 / 1h" may come as three words
    return cli.output.done(ratelimits.set_user_rate_limit(cli.session(), cli.args.address, limit))


def format_(cli: Cli) -> int:
    return cli.output.done(users.set_format(cli.session(), cli.args.address, cli.args.format))


def enable(cli: Cli) -> int:
    return cli.output.done(users.set_enabled(cli.session(), cli.args.address, cli.args.command2 == "enable"))


def name(cli: Cli) -> int:
    return cli.output.done(users.set_name(cli.session(), cli.args.address, cli.args.name))


def rename(cli: Cli) -> int:
    return cli.output.done(users.rename_user(cli.session(), cli.args.address, cli.args.new_address))


def _text_file(path: str, field: str) -> str:
    """A text argument read from FILE (``-``: standard input), as UTF-8."""
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}", field=field) from None


def vacation(cli: Cli) -> int:
    args = cli.args
    session = cli.session()
    if args.action == "show":
        info = rules.vacation_show(session, args.address)
        cli.output.emit(info, lambda: pairs(info))
        return EX_OK
    if args.action == "off":
        return cli.output.done(rules.vacation_off(session, args.address))
    if args.text_file is None and args.text is None:
        raise AdminError("vacation set needs --text or --text-file", field="text")
    text = _text_file(args.text_file, "text") if args.text_file is not None else args.text
    return cli.output.done(rules.vacation_set(session, args.address, text, subject=args.subject,
                                              start=args.start, end=args.end))


def sieve(cli: Cli) -> int:
    args = cli.args
    session = cli.session()
    if args.action == "show":
        info = rules.sieve_show(session, args.address)
        cli.output.emit(info, info["script"] or f"# {info['address']} has no Sieve script")
        return EX_OK
    if args.action == "remove":
        return cli.output.done(rules.sieve_remove(session, args.address))
    if args.file is None:
        raise AdminError("sieve set needs the script's FILE (- for standard input)", field="script")
    return cli.output.done(rules.sieve_set(session, args.address, _text_file(args.file, "script")))


def register(top: Any) -> None:
    g = group(top, "user", "mailbox users")
    p = leaf(g, "add", add, "add a user")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("--new-password-file", metavar="FILE", help="the user's password: first line of FILE")
    p.add_argument("--no-password", action="store_true", help="no password (cannot log in yet)")
    p.add_argument("--quota", metavar="QUOTA", help=f"mailbox quota: {QUOTA_HELP} (default: unlimited)")
    p.add_argument("--name", metavar="TEXT", help="full name (cn; default: the address)")
    p.add_argument("--disabled", action="store_true", help="create the account disabled")
    p.add_argument("--admin", action="store_true", help="also make the user an admin of the domain")
    p.add_argument("--format", choices=FORMATS, help="mailbox format (mailMessageFormat; default: "
                   "none stored, the hub's spool.format applies)")
    p = leaf(g, "remove", remove, "remove a user (the mailbox stays on disk; the answer says where)")
    p.add_argument("address", help=ADDRESS_HELP)
    p = leaf(g, "list", list_, "list users with quota and mailbox use (one domain, or every domain)")
    p.add_argument("domain", nargs="?", help="the domain (default: every domain you can see)")
    page_options(p, "local parts (addresses without DOMAIN)")
    p = leaf(g, "show", show, "show a user: status, quota and use, mailbox path, admin rights")
    p.add_argument("address", help=ADDRESS_HELP)
    p = leaf(g, "passwd", passwd, "set a user's password (hashed with auth.password_scheme)")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("--new-password-file", metavar="FILE", help="first line of FILE; default: prompt")
    p = leaf(g, "quota", quota, "set a user's quota")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("quota", help=QUOTA_HELP)
    p = leaf(g, "ratelimit", ratelimit,
             "set a user's outbound limit for authenticated submissions (domain and global admins)")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("limit", nargs="+", help=ratelimits.HELP + " (then the domain's or the default applies)")
    p = leaf(g, "format", format_, "switch a user's mailbox format (refused while the old mailbox holds "
             "mail: nothing is converted, nothing left behind)")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("format", choices=FORMATS, help="mbox (POP3 and IMAP) or maildir (IMAP)")
    for verb in ("enable", "disable"):
        what = "receive mail and log in again" if verb == "enable" else "refuse its mail (550) and logins"
        p = leaf(g, verb, enable, f"{verb} an account: {what}")
        p.add_argument("address", help=ADDRESS_HELP)
    p = leaf(g, "name", name, "set a user's full name (cn)")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("name", help="the full name; empty resets it to the address")
    p = leaf(g, "vacation", vacation,
             "the out-of-office reply: show, set (and switch on), off (the text is kept)")
    p.add_argument("action", choices=["show", "set", "off"],
                   help="show it, set it (with --text or --text-file; switches it on), or switch it off")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("--text", metavar="TEXT", help="set: the reply's text")
    p.add_argument("--text-file", metavar="FILE", help="set: the reply's text from FILE (- = stdin)")
    p.add_argument("--subject", metavar="TEXT", help="set: the reply's subject (default: Out of office)")
    p.add_argument("--start", metavar="DATE", help="set: first day, YYYY-MM-DD[THH:MM] UTC ('' clears)")
    p.add_argument("--end", metavar="DATE", help="set: last day, YYYY-MM-DD[THH:MM] UTC ('' clears)")
    p = leaf(g, "sieve", sieve,
             "the Sieve filter: show, set FILE (checked by our rules and Exim's parser), remove")
    p.add_argument("action", choices=["show", "set", "remove"],
                   help="show the script, set it from FILE (checked first), or remove it")
    p.add_argument("address", help=ADDRESS_HELP)
    p.add_argument("file", nargs="?", metavar="FILE", help="set: the script (- = stdin)")
    p = leaf(g, "rename", rename,
             "rename a user within the domain (entry, admin rights, alias targets, mailbox)")
    p.add_argument("address", help="the current address")
    p.add_argument("new_address", metavar="new-address", help="the new address, in the same domain")
