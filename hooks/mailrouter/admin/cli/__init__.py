"""The mailrouter-admin command line (manual: ``pydoc mailrouter.admin``).

A thin layer over the operations library: each command module (``domain``,
``user``, ...) registers its subcommands and its handlers parse arguments, read
password files or prompts, call the library and print.  :func:`main` maps every
exception to an exit code, here and nowhere else:

    0 (EX_OK)        done
    1 (EX_REFUSED)   refused by slapd, invalid input, a bad config, interrupted
    2 (EX_USAGE)     usage error
    75 (EX_TEMPFAIL) LDAP (or the server under test) did not answer
"""

from __future__ import annotations

import argparse
import sys

from mailrouter import config as config_module
from mailrouter.admin.cli import admin, alias, catchall, domain, export, imports, setting, test, user
from mailrouter.admin.cli.base import PROG, Cli, Parser, common_options
from mailrouter.errors import (
    ConfigError,
    DirectoryUnavailable,
    PermanentFailure,
    TemporaryFailure,
    UsageError,
)
from mailrouter.exitcodes import EX_REFUSED, EX_TEMPFAIL, EX_USAGE

COMMANDS = (domain, user, alias, catchall, setting, admin, test, imports, export)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations anywhere: "--password x" must never be taken for
    # "--password-file x", nor any other prefix for an option.
    parser = Parser(prog=PROG, description="Administer mailrouter as a delegated admin.",
                    allow_abbrev=False,
                    epilog="Exit status: 0 done, 1 refused or invalid, 2 usage, 75 LDAP unavailable.")
    common_options(parser)
    top = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(top)
    return parser


def main(argv: list[str]) -> int:
    err = sys.stderr

    def fail(code: int, message: str) -> int:
        err.write(f"{PROG}: {message}\n")
        return code

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return fail(EX_USAGE, str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    cli: Cli | None = None

    def undone(message: str) -> str:
        """``message`` plus what undoing the failed operation's earlier steps gave."""
        return message + (cli.rollback_note() if cli is not None else "")

    try:
        cli = Cli(config_module.load(getattr(args, "config", None)), args, sys.stdout, err)
        return int(args.handler(cli))
    except UsageError as exc:
        return fail(EX_USAGE, str(exc))
    except PermanentFailure as exc:  # AdminError: refused or invalid, worded for the admin
        return fail(EX_REFUSED, undone(str(exc)))
    except DirectoryUnavailable as exc:
        return fail(EX_TEMPFAIL, undone(f"LDAP unavailable, try again later: {exc}"))
    except ConfigError as exc:
        return fail(EX_REFUSED, f"bad configuration: {exc}")
    except TemporaryFailure as exc:
        return fail(EX_TEMPFAIL, undone(f"temporary failure, try again later: {exc}"))
    except KeyboardInterrupt:
        return fail(EX_REFUSED, undone("interrupted"))
    except (EOFError, OSError) as exc:
        return fail(EX_REFUSED, undone(str(exc)))
    finally:
        if cli is not None:
            cli.close()
