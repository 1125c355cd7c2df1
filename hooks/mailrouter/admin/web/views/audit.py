"""The audit log page: slapd's record of who changed what (``mailrouter.admin.audit``).

Filters come as GET parameters (``domain``, ``since``, ``actor``): the page
changes nothing, so it needs no CSRF token and its URL can be shared.  Which
records appear is slapd's decision: all for global admins, their domains' for
domain admins, none for anyone else.
"""

from __future__ import annotations

from typing import Any

from flask import render_template, request

from mailrouter.admin import audit
from mailrouter.admin.web import auth
from mailrouter.admin.web.views import MAX_FILTER, blueprint


def _param(name: str) -> str | None:
    return (request.args.get(name) or "").strip()[:MAX_FILTER] or None


@blueprint.route("/audit")
def audit_log() -> Any:
    person = auth.current()
    filters = {name: _param(name) for name in ("domain", "since", "actor")}
    rows = audit.records(auth.ldap(), **filters)
    return render_template("audit.html", person=person, rows=rows, filters=filters)
