"""Convert an OpenLDAP ``.schema`` file into its cn=config LDIF form.

``ldap/mailrouter.schema`` is the single source of the schema;
``ldap/mailrouter.ldif`` is this module's output, checked by a test.

Usage: ``python -m mailrouter.sandbox.schemaldif ldap/mailrouter.schema > ldap/mailrouter.ldif``
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_KEYWORDS = {"attributetype": "olcAttributeTypes", "objectclass": "olcObjectClasses"}


def definitions(schema_text: str) -> list[tuple[str, str]]:
    """(keyword, definition) pairs, continuation lines joined, comments dropped."""
    statements: list[list[str]] = []
    for line in schema_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and statements:
            statements[-1].append(line.strip())
        else:
            statements.append([line.strip()])
    result = []
    for parts in statements:
        keyword, _, rest = parts[0].partition(" ")
        if keyword.lower() not in _KEYWORDS:
            raise ValueError(f"unsupported schema statement {keyword!r}")
        body = " ".join([rest.strip(), *parts[1:]])
        result.append((keyword.lower(), re.sub(r"\s+", " ", body)))
    return result


def to_ldif(schema_text: str, name: str) -> str:
    lines = [
        f"# Generated from {name}.schema by mailrouter.sandbox.schemaldif -- do not edit.",
        f"dn: cn={name},cn=schema,cn=config",
        "objectClass: olcSchemaConfig",
        f"cn: {name}",
    ]
    for keyword, body in definitions(schema_text):
        lines.append(f"{_KEYWORDS[keyword]}: {body}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mailrouter.sandbox.schemaldif FILE.schema", file=sys.stderr)
        return 2
    path = Path(args[0])
    sys.stdout.write(to_ldif(path.read_text(encoding="utf-8"), path.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
