"""Export a domain as LDIF (RFC 2849), parents before children, for ldapadd/slapadd.

Password hashes are readable by nobody (ldap/acl.conf), so they are never in
the export.  Takes a bound :class:`~mailrouter.admin.session.AdminSession`; raises
only AdminError, DirectoryUnavailable or TemporaryFailure.  Writing the text
somewhere is the caller's job.
"""

from __future__ import annotations

from typing import Any

from mailrouter import entries
from mailrouter.admin.normalise import normalise_domain
from mailrouter.admin.session import AdminSession
from mailrouter.directory import values
from mailrouter.errors import AdminError


def export_ldif(s: AdminSession, domain: str) -> dict[str, Any]:
    """``{"domain", "entries": count, "ldif": text}`` of the domain and everything below it."""
    name = normalise_domain(domain)
    found = s.search(s.domain_dn(name), "(objectClass=*)", ["*"], subtree=True)
    if not found:
        raise AdminError(f"no such domain {name}", kind="not_found")
    found.sort(key=lambda item: (item[0].count(","), item[0].lower()))
    exported = [
        entries.Entry(entry_dn, {attribute: values(attributes, attribute) for attribute in attributes})
        for entry_dn, attributes in found
    ]
    return {"domain": name, "entries": len(exported), "ldif": entries.to_ldif(exported)}
