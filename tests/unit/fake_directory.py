"""An in-memory stand-in for LDAP under the real :class:`mailrouter.directory.Directory`.

For UNIT tests of decision logic only (routing, the lookup table): the
integration tests ask a real slapd.  Only the two primitives that talk to
LDAP, ``read`` and ``search_level``, are replaced; every typed lookup
(``user``, ``alias``, ``setting``, ...) and its decoding is the real code.
The entries come from LDIF -- ``ldap/seed.ldif`` plus the suite's data set
(``tests/dataset.py``) -- so unit and integration tests reason about the
same directory.  What slapd would do that matters here is mirrored: DNs match
case-insensitively and modulo escaping, ``objectClass`` is checked, every
requested attribute is returned (empty when absent), and the one-level search
understands the only filter the code sends, an AND of equalities.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from mailrouter.config import LdapConfig
from mailrouter.directory import Directory

Entry = tuple[str, dict[str, list[str]]]


def parse_ldif(text: str) -> list[Entry]:
    """Entries of an LDIF text (comments, folded lines and base64 values allowed)."""
    found: list[Entry] = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines: list[str] = []
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith(" ") and lines:
                lines[-1] += line[1:]
            else:
                lines.append(line)
        dn = None
        attributes: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            if value.startswith(":"):
                value = base64.b64decode(value[1:].strip()).decode("utf-8")
            else:
                value = value.removeprefix(" ")
            if name.lower() == "dn":
                dn = value
            else:
                attributes.setdefault(name, []).append(value)
        if dn is not None:
            found.append((dn, attributes))
    return found


def _unescape(value: str) -> str:
    return re.sub(r"\\([0-9a-fA-F]{2}|.)", lambda m: chr(int(m[1], 16)) if len(m[1]) == 2 else m[1], value)


def normal_dn(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN as slapd compares it (every naming attribute here matches case-insensitively)."""
    return tuple((name.lower(), _unescape(value).lower()) for name, value, _sep in parse_dn(dn))


def _get(attributes: dict[str, list[str]], name: str) -> list[str]:
    return next((v for k, v in attributes.items() if k.lower() == name.lower()), [])


def _filter_terms(search_filter: str) -> list[tuple[str, str]]:
    """``(&(a=x)(b=y))`` -> [(a, x), (b, y)], values unescaped; nothing else is sent."""
    match = re.fullmatch(r"\(&((?:\([A-Za-z]+=[^()]*\))+)\)", search_filter)
    if match is None:
        raise AssertionError(f"the fake understands AND-of-equality filters only: {search_filter}")
    return [(name, _unescape(value)) for name, value in re.findall(r"\(([A-Za-z]+)=([^()]*)\)", match[1])]


class FakeDirectory(Directory):
    """A :class:`Directory` whose LDAP is a list of entries; it never opens a connection."""

    def __init__(self, *ldif: str, base_dn: str = "o=top") -> None:
        super().__init__(LdapConfig(uris=("ldap://fake.invalid/",), base_dn=base_dn))
        self.entries = {
            normal_dn(dn): (dn, attributes) for text in ldif for dn, attributes in parse_ldif(text)
        }
        self.reads = 0  # how many questions reached "LDAP"

    def __call__(self, _config: LdapConfig, read_only: bool = True) -> FakeDirectory:
        """Stands in for the class itself (``Directory(config)`` in code under test)."""
        return self

    def _visible(self, attributes: dict[str, list[str]], wanted: Sequence[str]) -> dict[str, Any]:
        return {name: list(_get(attributes, name)) for name in wanted}

    def read(self, dn: str, object_class: str, attributes: Sequence[str]) -> dict[str, Any] | None:
        self.reads += 1
        try:
            found = self.entries.get(normal_dn(dn))
        except LDAPInvalidDnError:  # slapd: "invalid DN syntax", i.e. nothing found
            return None
        if found is None:
            return None
        classes = {value.lower() for value in _get(found[1], "objectClass")}
        if object_class.lower() not in classes:
            return None
        return self._visible(found[1], attributes)

    def domain_active(self, domain: str) -> bool:
        """slapd's Compare of the domain's status, answered from the entries."""
        self.reads += 1
        found = self.entries.get(normal_dn(self.domain_dn(domain)))
        statuses = _get(found[1], "mailAccountStatus") if found is not None else []
        return not statuses or statuses[0].lower() == "active"

    def search_level(
        self, base: str, search_filter: str, attributes: Sequence[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        self.reads += 1
        parent = normal_dn(base)
        terms = _filter_terms(search_filter)
        return [
            (dn, self._visible(entry, attributes))
            for key, (dn, entry) in self.entries.items()
            if key[1:] == parent
            and all(value.lower() in {v.lower() for v in _get(entry, name)} for name, value in terms)
        ]
