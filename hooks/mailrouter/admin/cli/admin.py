"""``mailrouter-admin admin grant|revoke|list``: domain and global admins."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import admins
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.exitcodes import EX_OK


def grant(cli: Cli) -> int:
    args = cli.args
    session = cli.session()
    if not args.global_:
        return cli.output.done(admins.grant_domain_admin(session, args.who, args.domain))
    password = cli.new_password() if args.create else None
    return cli.output.done(admins.grant_global_admin(session, args.who, create=args.create,
                                                     password=password))


def revoke(cli: Cli) -> int:
    args = cli.args
    if args.global_:
        return cli.output.done(admins.revoke_global_admin(cli.session(), args.who))
    return cli.output.done(admins.revoke_domain_admin(cli.session(), args.who, args.domain))


def list_(cli: Cli) -> int:
    info = admins.list_admins(cli.session(), cli.args.domain)
    members: list[str] = info["admins"]
    label = info["domain"] or "(global)"
    cli.output.emit(info, lambda: "\n".join(members) or f"{label}: no admins")
    return EX_OK


def register(top: Any) -> None:
    g = group(top, "admin", "domain and global admins")
    for verb, handler in (("grant", grant), ("revoke", revoke)):
        p = leaf(g, verb, handler, f"{verb} admin rights")
        p.add_argument("who", help="a user's address (domain admin) or an account name (--global)")
        p.add_argument("--domain", help="domain to administer (default: the user's own)")
        p.add_argument("--global", dest="global_", action="store_true", help="global admin (every domain)")
        if verb == "grant":
            p.add_argument("--create", action="store_true", help="create the global admin account first")
            p.add_argument("--new-password-file", metavar="FILE", help="password of the created account")
    p = leaf(g, "list", list_, "admins of a domain (or the global admins), by address or name")
    p.add_argument("domain", nargs="?", help="the domain (default: the global admins)")
