"""Mailbox locations, built from the configured template -- never taken from LDAP.

Why: a domain admin can write any attribute of their users, including
``mailMessageStore``; trusting it would let them point delivery at any file
the storage account can write.  The path is built from the template and the
*canonical* local part and domain only, and checked to stay inside the
template's fixed directory prefix.
"""

from __future__ import annotations

import os

from mailrouter import names
from mailrouter.errors import InvalidName


def spool_root(template: str) -> str:
    """The fixed directory part of a template: everything before the first field."""
    head = template.split("{", 1)[0]
    return head if head.endswith("/") else os.path.dirname(head) + "/"


def mailbox_path(template: str, local: str, domain: str) -> str:
    """The mailbox (mbox file or Maildir directory) of ``local@domain``."""
    names.local_part(local)
    names.domain(domain)
    path = template.format(local=local, domain=domain)
    root = spool_root(template)
    normal = os.path.normpath(path)
    if normal != path or not normal.startswith(root) or "/." in normal[len(root) - 1 :]:
        raise InvalidName(f"mailbox path for {local}@{domain} leaves the spool {root}")
    return path
