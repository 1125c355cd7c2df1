"""Console-script entry points, each a guard around one executable's ``main(argv)``.

Why a guard module: Exim bounces mail on any pipe exit code but 75/73 and
treats ``${run}`` output (stderr merged in) as the answer.  A traceback exits 1
and prints to stderr -- both fatal.  So each entry point here

* imports nothing but the standard library and ``mailrouter.exitcodes`` (constants)
  at module level,
* for hooks, points fd 2 at /dev/null *before* importing anything else,
* imports the real module inside a ``try`` (a broken install is an exception too),
* returns whatever integer ``main`` returns, unchanged: that is how an executable
  gives its documented codes, usage errors (``EX_USAGE``) included,
* maps every exception that escapes ``main`` to the caller's temporary-failure
  code -- for a hook with silenced stderr also a ``SystemExit`` other than 0
  (argparse's exit 2 is not an answer anyone chose; a hook that means "usage
  error" returns ``EX_USAGE`` from ``main``).

The per-executable exit codes of the *expected* outcomes live in each module's
docstring and ``main``; this file holds only the "anything else" code.

Manuals: each executable's module docstring is its manual (:data:`MANUALS`
names the module of every console script; ``mailrouter.manpages`` turns them
into man pages).  A hook that parses no options of its own prints that manual
for ``--help`` given as its only argument, on stdout with exit 0 -- only then:
Exim, PAM and Dovecot always pass other arguments first, so no address or
login can ever be taken for ``--help``.
"""

from __future__ import annotations

import importlib
import os
import sys

# The one project import at module level: constants only, no dependencies.
from mailrouter.exitcodes import CHECKPASSWORD_TEMPFAIL, EX_TEMPFAIL


def _silence_stderr() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


# console script -> the module whose docstring is its manual
MANUALS = {
    "mailrouter-lookup": "mailrouter.cmd.lookup",
    "mailrouter-lookupd": "mailrouter.cmd.lookupd",
    "mailrouter-lmtpd": "mailrouter.cmd.lmtpd",
    "mailrouter-deliver": "mailrouter.cmd.deliver",
    "mailrouter-authd": "mailrouter.cmd.authd",
    "mailrouter-pam-auth": "mailrouter.cmd.pam_auth",
    "mailrouter-userdb": "mailrouter.cmd.userdb",
    "mailrouter-checkpassword": "mailrouter.cmd.checkpassword",
    "mailrouter-passwd": "mailrouter.cmd.passwd",
    "mailrouter-web": "mailrouter.cmd.web",
    "mailrouter-admin": "mailrouter.admin",
    "mailrouter-sandbox": "mailrouter.sandbox.cli",
}


def _manual(module_name: str) -> int | None:
    """``--help`` alone: the module's docstring on stdout, exit 0; else None."""
    if sys.argv[1:] != ["--help"]:
        return None
    try:
        module = importlib.import_module(module_name)
        sys.stdout.write((module.__doc__ or module_name).strip() + "\n")
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - a broken install still exits 0 only when it printed
        return None
    return 0


def _guarded(module_name: str, temporary_code: int, silence_stderr: bool, manual: bool = False) -> int:
    if manual:
        printed = _manual(module_name)
        if printed is not None:
            return printed
    if silence_stderr:
        try:
            _silence_stderr()
        except OSError:
            return temporary_code
    try:
        module = importlib.import_module(module_name)
        code = module.main(sys.argv[1:])
    except SystemExit as exc:  # argparse's own exits (--help, a usage error)
        code = exc.code if isinstance(exc.code, int) else temporary_code
        return code if code == 0 or not silence_stderr else temporary_code
    except BaseException:  # noqa: BLE001 - the whole point: nothing escapes as rc 1
        return temporary_code
    return code if isinstance(code, int) else temporary_code


def lookup() -> int:
    return _guarded("mailrouter.cmd.lookup", EX_TEMPFAIL, silence_stderr=True, manual=True)


def deliver() -> int:
    return _guarded("mailrouter.cmd.deliver", EX_TEMPFAIL, silence_stderr=True, manual=True)


def pam_auth() -> int:
    return _guarded("mailrouter.cmd.pam_auth", EX_TEMPFAIL, silence_stderr=True, manual=True)


def userdb() -> int:
    return _guarded("mailrouter.cmd.userdb", EX_TEMPFAIL, silence_stderr=False)


def checkpassword() -> int:
    return _guarded("mailrouter.cmd.checkpassword", CHECKPASSWORD_TEMPFAIL, silence_stderr=False, manual=True)


def authd() -> int:
    return _guarded("mailrouter.cmd.authd", EX_TEMPFAIL, silence_stderr=False)


def lookupd() -> int:
    return _guarded("mailrouter.cmd.lookupd", EX_TEMPFAIL, silence_stderr=False)


def lmtpd() -> int:
    return _guarded("mailrouter.cmd.lmtpd", EX_TEMPFAIL, silence_stderr=False)


def web() -> int:
    return _guarded("mailrouter.cmd.web", EX_TEMPFAIL, silence_stderr=False)


def admin() -> int:
    from mailrouter.admin.cli import main  # an admin wants to see a traceback

    return main(sys.argv[1:])


def passwd() -> int:
    from mailrouter.cmd.passwd import main  # interactive: a user wants to see errors

    return main(sys.argv[1:])
