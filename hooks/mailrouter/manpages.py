"""Man pages (section 8) from the executables' docstrings, made at install time.

Each executable's module docstring is its manual (``mailrouter.cmd.guard.MANUALS``
names the module of every console script).  This turns each into a roff page:
``NAME`` from the docstring's first line (``prog -- summary``), then the text
with its layout kept -- a line in capitals at the left margin (``SYNOPSIS``,
``EXIT CODES``) becomes a section heading, everything else is set verbatim.
The docstrings are read from the source files (``ast``), never imported: making
the pages starts no daemon and needs no configuration.

    python -m mailrouter.manpages DIR       write DIR/<script>.8 for every script

bin/install-deps runs it into ``VENV/share/man/man8`` (and, for the default
venv, ``/usr/local/share/man/man8``, where ``man`` finds them).  Exit 0, or 2 on
a usage error.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

from mailrouter import __version__
from mailrouter.cmd.guard import MANUALS

_HEADING = re.compile(r"[A-Z][A-Z0-9 /()-]*[A-Z)]")


def docstring(module: str) -> str:
    """The module docstring of ``module``, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"no module {module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    text = ast.get_docstring(tree, clean=True)
    if not text:
        raise LookupError(f"{module} has no docstring")
    return text


def _escape(line: str) -> str:
    """A text line safe for roff: backslashes doubled, hyphens literal (options and
    names copy and paste as typed), a leading . or ' neutralised."""
    line = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + line if line.startswith((".", "'")) else line


def render(script: str, text: str) -> str:
    """The roff source of ``script``'s page from its docstring ``text``."""
    lines = text.splitlines()
    first = lines[0].strip()
    summary = first.split(" -- ", 1)[1] if " -- " in first else first
    body = lines[1:] if " -- " in first else lines
    out = [
        f'.TH {script.upper()} 8 "" "mailrouter {__version__}" "mailrouter manual"',
        ".ad l",  # ragged right, no hyphenation: names and options stay whole
        ".nh",
        ".SH NAME",
        f"{_escape(script)} \\- {_escape(summary)}",
    ]
    opened = False
    for line in body:
        if _HEADING.fullmatch(line.strip()) and line == line.lstrip() and len(line.strip()) > 2:
            if opened:
                out.append(".fi")
            out += [f".SH {line.strip()}", ".nf"]
            opened = True
            continue
        if not opened:
            if not line.strip():
                continue
            out += [".SH DESCRIPTION", ".nf"]
            opened = True
        out.append(_escape(line))
    if opened:
        out.append(".fi")
    return "\n".join(out) + "\n"


def write_pages(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for script, module in sorted(MANUALS.items()):
        path = directory / f"{script}.8"
        path.write_text(render(script, docstring(module)), encoding="utf-8")
        path.chmod(0o644)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python -m mailrouter.manpages DIR\n")
        return 2
    for path in write_pages(Path(argv[0])):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
