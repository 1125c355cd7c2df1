"""How the admin tools run Exim: one command line, chosen once.

The deployed hub's Exim is ``/usr/sbin/exim4`` with its own configuration.  A
hub whose Exim needs more (the sandbox runs Exim in a mount namespace with a
private ``-C`` file) names its command line in ``$MAILROUTER_EXIM`` (shell
words, as ``mailrouter-sandbox env`` prints it) or ``--exim-command``; every
Exim argument (``-bt ADDRESS``, ``-bp``, ``-qf``, ``-Mt ID``) is appended to it.
The command is run without a shell: the words are split once, here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from mailrouter.errors import AdminError

EXIM = "/usr/sbin/exim4"
EXIM_ENV = "MAILROUTER_EXIM"
TIMEOUT = 120.0


@dataclass(frozen=True)
class Ran:
    """One finished Exim command: exit code and stdout + stderr."""

    rc: int
    output: str


def exim_argv(command: str | None = None) -> list[str]:
    """``command`` (shell words), else ``$MAILROUTER_EXIM``, else the system's Exim."""
    text = command if command is not None else os.environ.get(EXIM_ENV, "")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise AdminError(f"unusable Exim command {text!r}: {exc}", field="exim_command") from None
    return words or [EXIM]


def run(argv: Sequence[str], timeout: float = TIMEOUT) -> Ran:
    """Run ``argv``; AdminError ``refused`` when it cannot be run at all."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AdminError(f"cannot run exim ({argv[0]}): {exc}", kind="refused") from None
    output = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    return Ran(done.returncode, output)


def configuration_error(output: str) -> bool:
    """Exim refused to start: its configuration (or a -D macro) is wrong."""
    return "configuration error" in output.lower()
