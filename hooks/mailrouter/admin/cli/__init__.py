"""The mailrouter-admin command line (manual: ``pydoc mailrouter.admin``).

A thin layer over the operations library: each command module (``domain``,
``user``, ...) registers its subcommands and its handlers parse arguments, read
password files or prompts, call the library and print.  :func:`main` maps every
exception to an exit code, here and nowhere else:

    0 (EX_OK)        done
    1 (EX_REFUSED)   refused by slapd, invalid input, a bad config, interrupted
    2 (EX_USAGE)     usage error
    75 (EX_TEMPFAIL) LDAP (or the server under test) did not answer

An error is one line on stderr; with ``--json`` it is also the JSON document on
stdout: ``{"error": MESSAGE, "code": EXIT_CODE, "kind": KIND, "field": FIELD}``
(``kind`` and ``field`` as :class:`~mailrouter.errors.AdminError` has them, else
``kind`` is ``usage``, ``unavailable``, ``config`` or ``failed`` and ``field`` null).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mailrouter import config as config_module
from mailrouter.admin.cli import (
    admin,
    alias,
    audit,
    catchall,
    completion,
    domain,
    export,
    imports,
    queue,
    setting,
    test,
    user,
)
from mailrouter.admin.cli.base import CONFIG_ENV, PROG, Cli, Parser, common_options
from mailrouter.errors import (
    AdminError,
    ConfigError,
    DirectoryUnavailable,
    PermanentFailure,
    TemporaryFailure,
    UsageError,
)
from mailrouter.exitcodes import EX_REFUSED, EX_TEMPFAIL, EX_USAGE

COMMANDS = (domain, user, alias, catchall, setting, admin, audit, test, queue, imports, export, completion)


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
    # Known before parsing, so that a usage error is JSON too.
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv

    def fail(code: int, message: str, kind: str, field: str | None = None) -> int:
        err.write(f"{PROG}: {message}\n")
        if as_json:
            sys.stdout.write(json.dumps({"error": message, "code": code, "kind": kind, "field": field},
                                        sort_keys=True) + "\n")
        return code

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return fail(EX_USAGE, str(exc), "usage")
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    cli: Cli | None = None
    config_path: str | None = None

    def undone(message: str) -> str:
        """``message`` plus what undoing the failed operation's earlier steps gave."""
        return message + (cli.rollback_note() if cli is not None else "")

    try:
        config_path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
        cli = Cli(lambda: config_module.load(config_path), args, sys.stdout, err)
        return int(args.handler(cli))
    except UsageError as exc:
        return fail(EX_USAGE, str(exc), "usage")
    except AdminError as exc:  # refused or invalid, worded for the admin
        return fail(EX_REFUSED, undone(str(exc)), exc.kind, exc.field)
    except PermanentFailure as exc:
        return fail(EX_REFUSED, undone(str(exc)), "refused")
    except DirectoryUnavailable as exc:
        return fail(EX_TEMPFAIL, undone(f"LDAP unavailable, try again later: {exc}"), "unavailable")
    except ConfigError as exc:
        where = config_path or config_module.DEFAULT_CONFIG_PATH
        return fail(EX_REFUSED, f"bad configuration ({where}): {exc}; name yours with --config FILE "
                    f"or ${CONFIG_ENV}", "config")
    except TemporaryFailure as exc:
        return fail(EX_TEMPFAIL, undone(f"temporary failure, try again later: {exc}"), "unavailable")
    except KeyboardInterrupt:
        return fail(EX_REFUSED, undone("interrupted"), "failed")
    except (EOFError, OSError) as exc:
        return fail(EX_REFUSED, undone(str(exc)), "failed")
    finally:
        if cli is not None:
            cli.close()
