"""The import layering of hooks/mailrouter, read from the source (no daemons, no imports).

Why: the sandbox starts slapd and Exim as root in mount namespaces; nothing that
Exim, PAM, Dovecot or an admin runs may pull it in.  ldap3 and passlib each
have one door (directory.py, passwords.py), so LDAP escaping and password
hashing are decided in one place.  Every import counts, also those inside
functions (the project imports lazily for start-up time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "hooks" / "mailrouter"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Every module ``path`` (a file of ``package_dir``) imports, absolute, at any
    depth of the file.  ``from a import b`` counts as ``a`` and ``a.b`` (b may be a module)."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def importers(prefix: str) -> list[str]:
    """The package's files that import ``prefix`` or anything below it."""
    return [
        str(path.relative_to(PACKAGE))
        for path in SOURCES
        if any(m == prefix or m.startswith(prefix + ".") for m in imported(path))
    ]


def test_the_sources_are_there() -> None:
    # A wrong path would make every check below pass on nothing.
    assert len(SOURCES) > 30
    assert "directory.py" in importers("ldap3")


def test_nothing_outside_the_sandbox_imports_it() -> None:
    outside = [name for name in importers("mailrouter.sandbox") if not name.startswith("sandbox/")]
    assert outside == []


@pytest.mark.parametrize(("library", "door"), [("ldap3", "directory.py"), ("passlib", "passwords.py")])
def test_one_door_per_library(library: str, door: str) -> None:
    assert importers(library) == [door]


def test_the_scanner_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "mailrouter" / "admin" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "def f():\n"
        "    from mailrouter.sandbox import exim\n"
        "    from ..sandbox.slapd import Slapd\n"
        "    import ldap3.utils\n",
        encoding="utf-8",
    )
    found = imported(source, tmp_path / "mailrouter")
    expected = {"mailrouter.sandbox", "mailrouter.sandbox.exim", "mailrouter.sandbox.slapd", "ldap3.utils"}
    assert expected <= found
