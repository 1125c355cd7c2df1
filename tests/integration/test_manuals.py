"""Issue 18 item 6: every executable explains itself -- ``--help``, man pages, the sandbox's subcommands.

The installed console scripts of the venv under test are run as a user runs
them; the man pages are made by the generator bin/install-deps runs and
rendered by ``man -l``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from mailrouter import manpages
from mailrouter.cmd.guard import MANUALS
from mailrouter.sandbox import cli as sandbox_cli

SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"])


def test_every_console_script_has_a_manual() -> None:
    assert sorted(MANUALS) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_manual(script: str) -> None:
    done = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done
    assert script in done.stdout and len(done.stdout.splitlines()) >= 5, done.stdout


def test_a_hook_takes_help_only_as_its_only_argument() -> None:
    # Exim passes --config first: a local part "--help" is data (the hook answers, here 75: no config).
    done = subprocess.run([str(BIN / "mailrouter-lookup"), "--config", "/nonexistent", "alias", "--help",
                           "example.com"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 75 and done.stdout == ""


def test_man_pages_for_every_script_render(tmp_path: Path) -> None:
    written = manpages.write_pages(tmp_path / "man8")
    assert sorted(path.name for path in written) == [f"{script}.8" for script in SCRIPTS]
    for path in written:
        script = path.stem
        done = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True, timeout=60,
                              check=False, env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"})
        assert done.returncode == 0, done.stderr
        assert "NAME" in done.stdout and f"{script} - " in done.stdout, done.stdout[:300]
        assert "troff:" not in done.stderr, done.stderr  # no roff warnings
    admin_page = subprocess.run(["man", "-l", str(tmp_path / "man8" / "mailrouter-admin.8")],
                                capture_output=True, text=True, check=True,
                                env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"}).stdout
    assert "EXIT STATUS" in admin_page and "queue" in admin_page


def test_sandbox_subcommands_are_described() -> None:
    parser = sandbox_cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert set(helps) == set(subparsers.choices) and all(helps.values()), helps
    for command in subparsers.choices.values():
        for action in command._actions:
            assert action.help, (command.prog, action.dest)
