"""What every command module of mailrouter-admin shares: the parser pieces, the
per-run context (config, arguments, the acting admin's session, output) and the
reading of secrets from files or a terminal -- never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mailrouter import config as config_module
from mailrouter.admin.cli.output import Output
from mailrouter.admin.session import AdminSession, resolve_login
from mailrouter.config import Config, secret_line
from mailrouter.errors import AdminError, UsageError

PROG = "mailrouter-admin"
# Defaults an environment may set (``eval "$(mailrouter-sandbox env --dir D)"`` sets them all).
CONFIG_ENV = "MAILROUTER_CONFIG"
BIND_DN_ENV = "MAILROUTER_BIND_DN"
PASSWORD_FILE_ENV = "MAILROUTER_PASSWORD_FILE"
QUOTA_HELP = "32M, 1G, 500K, a byte count, or 0 = unlimited"


# -- secrets -------------------------------------------------------------------------------
def read_secret_file(path: str, what: str) -> str:
    """The secret in ``path`` (``-`` = stdin) by :func:`mailrouter.config.secret_line`; empty is refused."""
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AdminError(f"cannot read {what} file {path}: {exc.strerror}") from None
    secret = secret_line(text)
    if not secret:
        raise AdminError(f"{what} file {path} is empty")
    return secret


def prompt_secret(prompt: str, confirm: bool) -> str:
    # getpass falls back to echoing stdin without a terminal: never do that.
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise AdminError("no terminal to ask for a password: use a --*password-file option") from None
    secret = getpass.getpass(prompt)
    if not secret:
        raise AdminError("empty password refused")
    if confirm and getpass.getpass("again: ") != secret:
        raise AdminError("the two passwords differ")
    return secret


# -- one run ----------------------------------------------------------------------------------
class Cli:
    """One run: the config, the parsed arguments, output, and the session -- the
    config read and the session bound on first use, so commands that need neither
    (``queue``, ``completion``) run without a config and never ask for a password."""

    def __init__(
        self, load_config: Callable[[], Config], args: argparse.Namespace, out: IO[str], err: IO[str]
    ) -> None:
        self._load_config = load_config
        self._config: Config | None = None
        self.args = args
        self.err = err
        self.output = Output(bool(getattr(args, "json", False)), out)
        self._session: AdminSession | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = self._load_config()
        return self._config

    @property
    def json(self) -> bool:
        return self.output.json

    def session(self) -> AdminSession:
        """Bound as --bind-dn (password from --password-file or a prompt), or as the
        service account with --use-service-account."""
        if self._session is None:
            if getattr(self.args, "use_service_account", False):
                self._session = AdminSession.service(self.config)
            else:
                who = getattr(self.args, "bind_dn", None) or os.environ.get(BIND_DN_ENV)
                if not who:
                    raise UsageError(f"say who you are: --bind-dn DN|ADDRESS|NAME (or ${BIND_DN_ENV})")
                dn = resolve_login(self.config, who)
                password_file = getattr(self.args, "password_file", None) or os.environ.get(PASSWORD_FILE_ENV)
                if password_file:
                    password = read_secret_file(password_file, "password")
                else:
                    password = prompt_secret(f"LDAP password for {dn}: ", confirm=False)
                self._session = AdminSession(self.config, dn, password)
        return self._session

    def new_password(self, allow_none: bool = False) -> str | None:
        """--new-password-file, or --no-password (when allowed: None), or a prompt asked twice."""
        path = getattr(self.args, "new_password_file", None)
        if path:
            return read_secret_file(path, "new password")
        if allow_none and getattr(self.args, "no_password", False):
            return None
        return prompt_secret("new password: ", confirm=True)

    def secret(self, prompt: str) -> str:
        """--secret-file, or a prompt."""
        path = getattr(self.args, "secret_file", None)
        return read_secret_file(path, "secret") if path else prompt_secret(prompt, confirm=False)

    def rollback_note(self) -> str:
        """Undo a failed operation's earlier steps; the suffix for its error message."""
        return self._session.rollback_note() if self._session is not None else ""

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


Handler = Callable[[Cli], int]


# -- parsing -------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def common_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS defaults: the options work before or after the subcommand
    # without the subparser's defaults overwriting the top level's values.
    s = argparse.SUPPRESS
    parser.add_argument("--config", default=s, metavar="FILE",
                        help=f"the hooks' TOML config (default ${CONFIG_ENV}, else "
                        f"{config_module.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--bind-dn", default=s, metavar="WHO",
                        help=f"who acts: DN, address or global admin name (default ${BIND_DN_ENV})")
    parser.add_argument("--password-file", default=s, metavar="FILE",
                        help=f"bind password: first line of FILE ('-' = stdin; default ${PASSWORD_FILE_ENV}, "
                        "else a prompt)")
    parser.add_argument("--use-service-account", action="store_true", default=s,
                        help="bind as the config's read-only service account")
    parser.add_argument("--json", action="store_true", default=s,
                        help='one JSON document on stdout, errors too ({"error", "code", ...})')


def group(top: Any, name: str, help_text: str) -> Any:
    """A command group (``domain``, ``user``...): returns its subparsers."""
    sub = top.add_parser(name, help=help_text, allow_abbrev=False)
    return sub.add_subparsers(dest="command2", required=True, parser_class=Parser)


def leaf(commands: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    """One subcommand, run by ``handler``; the common options work here too."""
    sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text, allow_abbrev=False)
    common_options(sub)
    sub.set_defaults(handler=handler)
    return sub


def page_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--contains", metavar="TEXT", help=f"only {what} containing TEXT")
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N rows")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N rows")
